"""Terminology constraints: the constrained beam search on bigram tables whose best constrained
output is known by exhaustive search, the phrase tracker, the glossary's matching, and
``nmt translate --constraints/--glossary`` and the server's ``constraints`` on tiny trained
models (plain lines unchanged, batch invariance, every mistake one line or a 4xx)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from _decode_fixtures import SAMPLE, decode_settings, source_lines, trained_checkpoint
from conftest import assert_one_line_error, run_cli
from nmt_cli.decoding.constrained import Phrases, Progress, constrained_beam, \
    constrained_beam_search
from nmt_cli.decoding.constraints import Glossary, needed, parse_line
from nmt_cli.decoding.search import beam_search
from nmt_cli.errors import DataError
from test_search import A, B, C, V, TableModel, decode, random_tables, src_for

TOKENS = [A, B, C]


def contains(tokens, phrase) -> bool:
    n = len(phrase)
    return any(tuple(tokens[i:i + n]) == tuple(phrase) for i in range(len(tokens) - n + 1))


def exhaustive_best(model: TableModel, table: int, phrases, max_len: int):
    """(log-probability, tokens) of the most likely output of at most ``max_len`` tokens that
    holds every phrase, or None."""
    best = None
    for n in range(max_len + 1):
        for seq in itertools.product(TOKENS, repeat=n):
            if all(contains(seq, p) for p in phrases):
                lp = model.sequence_log_prob(table, list(seq))
                if best is None or lp > best[0] + 1e-9:
                    best = (lp, list(seq))
    return best


def search(model, tables, lengths, constraints, **settings):
    src, src_lengths = src_for(tables, lengths)
    return constrained_beam_search(model, src, src_lengths, constraints, decode(**settings))


def never_c_table(eps: float = 1e-6) -> torch.Tensor:
    """A then B then EOS is likely; C is next to impossible after anything."""
    t = torch.full((V, V), 0.01)
    t[:, C] = eps
    t[2, A], t[A, B], t[B, 3], t[C, 3] = 0.9, 0.9, 0.9, 0.5  # BOS=2, EOS=3
    return t


# -- the search ----------------------------------------------------------------------------------

def test_a_phrase_the_model_would_never_produce_is_forced_in():
    model = TableModel(never_c_table().unsqueeze(0))
    src, lengths = src_for([0], [4])
    plain = beam_search(model, src, lengths, decode(beam_size=5, n_best=5)).hypotheses[0]
    assert all(C not in h.tokens for h in plain)
    found = search(model, [0], [4], [[(C,)]], beam_size=5, length_norm="none",
                   max_len_a=1.0, max_len_b=1).hypotheses[0]
    assert found and C in found[0].tokens
    best = exhaustive_best(model, 0, [(C,)], 5)
    assert found[0].tokens == best[1]
    assert found[0].log_prob == pytest.approx(best[0], abs=1e-4)


def test_two_constraints_in_reversed_order_meet_in_the_order_the_model_prefers():
    model = TableModel(never_c_table().unsqueeze(0))
    # the model prefers A before B; the constraints are given as B then A, and C then A
    for given in ([(B,), (A,)], [(A,), (B,)]):
        out = search(model, [0], [3], [given], beam_size=3, length_norm="none").hypotheses[0]
        assert out[0].tokens == [A, B]
    out = search(model, [0], [4], [[(C,), (A,)]], beam_size=3, length_norm="none",
                 max_len_a=1.0, max_len_b=1).hypotheses[0][0]
    assert contains(out.tokens, (C,)) and contains(out.tokens, (A,))
    assert out.tokens == exhaustive_best(model, 0, [(C,), (A,)], 5)[1]


@pytest.mark.parametrize("seed", range(12))
def test_a_wide_beam_finds_the_exhaustive_best_constrained_output(seed):
    tables = random_tables(1, seed, eos_boost=0.3)
    model = TableModel(tables)
    g = torch.Generator().manual_seed(seed)
    phrases = []
    while len(phrases) < 2:  # two phrases that cannot overlap: a shared token would do it
        phrase = tuple(torch.randint(A, C + 1, (1 + len(phrases),), generator=g).tolist())
        if not any(set(phrase) & set(p) for p in phrases):
            phrases.append(phrase)
    best = exhaustive_best(model, 0, phrases, 4)
    out = search(model, [0], [3], [phrases], beam_size=81, length_norm="none",
                 max_len_a=1.0, max_len_b=1).hypotheses[0]
    assert out[0].tokens == best[1], (phrases, out[0].tokens, best)


@pytest.mark.parametrize("seed", range(20))
def test_every_hypothesis_holds_every_phrase_whatever_the_beam(seed):
    model = TableModel(random_tables(3, seed, eos_boost=0.5))
    g = torch.Generator().manual_seed(100 + seed)
    constraints = [needed([tuple(torch.randint(A, C + 1, (int(torch.randint(1, 3, (1,),
                                                                             generator=g)),),
                                               generator=g).tolist()) for _ in range(n)])
                   for n in (1, 2, 3)]
    out = search(model, [0, 1, 2], [6, 5, 7], constraints, beam_size=constrained_beam(2, 3),
                 n_best=3)
    for hyps, phrases in zip(out.hypotheses, constraints):
        assert hyps, phrases
        for h in hyps:
            assert all(contains(h.tokens, p) for p in phrases), (h.tokens, phrases)
    # each sentence alone gives the same
    for i in range(3):
        alone = search(model, [i], [[6, 5, 7][i]], [constraints[i]],
                       beam_size=constrained_beam(2, 3), n_best=3)
        assert [h.tokens for h in alone.hypotheses[0]] == [h.tokens for h in out.hypotheses[i]]


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_rows_that_can_no_longer_fit_their_phrase_leave_room_for_those_that_can(seed):
    # a 3-piece phrase in outputs of at most 4 pieces: a row that has not begun it by the second
    # step is dropped, so a beam of 2 still finds 2 hypotheses that hold it
    model = TableModel(random_tables(1, seed))
    phrase = (C, C, A)
    out = search(model, [0], [3], [[phrase]], beam_size=2, n_best=2, max_len_a=0.0,
                 max_len_b=4, length_norm="none").hypotheses[0]
    assert len(out) == 2 and all(contains(h.tokens, phrase) for h in out)
    assert all(len(h.tokens) <= 4 for h in out)


def test_a_completed_phrase_ends_its_word():
    # A then B is the model's choice; with B marked as a piece that goes on a word, B may not
    # follow the phrase (A,), as "dog" may not become "dogs"
    model = TableModel(never_c_table().unsqueeze(0))
    free = search(model, [0], [3], [[(A,)]], beam_size=3).hypotheses[0][0]
    assert free.tokens[:2] == [A, B]
    word_pieces = torch.zeros(V, dtype=torch.bool)
    word_pieces[B] = True
    src, lengths = src_for([0], [3])
    ended = constrained_beam_search(model, src, lengths, [[(A,)]], decode(beam_size=3),
                                    word_pieces=word_pieces).hypotheses[0]
    assert ended and all(A in h.tokens for h in ended)
    for h in ended:
        at = h.tokens.index(A)
        assert at + 1 == len(h.tokens) or h.tokens[at + 1] != B, h.tokens


def test_word_continuations_are_pieces_without_a_word_mark(model_and_tok):
    from nmt_cli.decoding.constraints import word_continuations

    tok = model_and_tok[2]
    marks = word_continuations(tok)
    for i, goes_on in enumerate(marks):
        piece = tok.tgt.id_to_piece(i)
        assert goes_on == (not piece.startswith("\u2581") and piece[:1].isalnum()), piece
    assert any(marks) and not all(marks) and not any(marks[:4])


def test_an_impossible_constraint_leaves_no_hypothesis():
    # the length limit is 2 pieces; the phrases need 3
    model = TableModel(random_tables(1, 0))
    out = search(model, [0], [3], [[(A, B), (C,)]], beam_size=3, max_len_a=0.0, max_len_b=2)
    assert out.hypotheses == [[]]


def test_the_tracker_restarts_on_the_phrase_that_the_last_pieces_begin():
    ph = Phrases([(B, C), (B, A)])
    p = ph.advance(Progress(), B)
    assert (p.phrase, p.pos, p.done) == (0, 1, 1)
    p = ph.advance(p, A)  # leaves (B, C) half-made, but B A is the second phrase
    assert p.met == 0b10 and p.done == 2 and p.phrase == -1
    p = ph.advance(ph.advance(p, B), A)  # B A again: nothing more to meet there
    assert p.met == 0b10 and p.done == 2
    p = ph.advance(ph.advance(p, B), C)
    assert p.met == 0b11 and p.done == ph.total
    assert ph.next_tokens(Progress()) == [B]


def test_repeated_and_contained_phrases_are_searched_once():
    assert needed([(4, 5), (4, 5), (5,), (6,)]) == ((4, 5), (6,))
    assert parse_line("a  b\t\t c\t") == ["a b", "c"]


# -- the glossary --------------------------------------------------------------------------------

def test_the_glossary_matches_whole_words_case_sensitively_by_default(tmp_path):
    path = tmp_path / "g.tsv"
    path.write_text("# comment\ncat\tKatze\nNew York\tNew York\nC++\tC++\n\nred\trot\n",
                    encoding="utf-8")
    g = Glossary.read(path)
    assert g.match("a cat sat.") == ["Katze"]
    assert g.match("the category of cats") == []  # inside words: no match
    assert g.match("Cat") == []
    assert Glossary.read(path, ignore_case=True).match("Cat, red!") == ["Katze", "rot"]
    assert g.match("in New York, in C++") == ["New York", "C++"]
    assert g.match("in New Yorker") == []
    assert g.match("C++x") == []


def test_a_bad_glossary_line_is_named(tmp_path):
    path = tmp_path / "g.tsv"
    path.write_text("cat\tKatze\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"g.tsv:2: expected 'source term<TAB>target term'"):
        Glossary.read(path)


# -- translate_lines on trained models ---------------------------------------------------------

@pytest.fixture(scope="module", params=["rnn", "transformer"])
def model_and_tok(request):
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(1)
    ckpt = trained_checkpoint(request.param)
    return (ckpt, *model_from_checkpoint(load_checkpoint(ckpt), ckpt, "cpu"))


def target_pieces(tok, phrase: str) -> list[int]:
    return tok.encode_tgt([phrase])[0]


def constraints_for(lines) -> list[list[str]]:
    """One or two words of another line's reference for each line, none for every fourth."""
    refs = (SAMPLE / "test.tgt").read_text(encoding="utf-8").splitlines()[:40]
    out = []
    for i in range(len(lines)):
        words = [w for w in refs[(i + 7) % len(refs)].split() if w.isalpha()]
        out.append([] if i % 4 == 3 else words[: 1 + i % 2])
    return out


def translate(model_and_tok, lines, constraints=None, **changes):
    from nmt_cli.decoding.inference import translate_lines

    _, model, tok, recipe = model_and_tok
    return translate_lines(model, tok, lines, decode_settings(recipe, **changes),
                           normalize=recipe.preprocess.normalize, constraints=constraints)


def test_constrained_lines_hold_their_phrases_and_the_others_are_plain(model_and_tok):
    _, model, tok, _ = model_and_tok
    lines = source_lines(16)
    cons = constraints_for(lines)
    plain = translate(model_and_tok, lines)
    found = translate(model_and_tok, lines, cons)
    for t, p, c in zip(found, plain, cons):
        if not c:
            assert t.text == p.text and t.hypotheses[0].tokens == p.hypotheses[0].tokens
            continue
        assert t.warning is None
        for phrase in c:
            assert contains(t.hypotheses[0].tokens, target_pieces(tok, phrase)), (phrase, t.text)
            assert re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", t.text), (phrase, t.text)
    assert sum(t.text != p.text for t, p, c in zip(found, plain, cons) if c) > 0


def test_constrained_output_does_not_depend_on_the_batch(model_and_tok):
    lines = source_lines(16)
    cons = constraints_for(lines)
    one = translate(model_and_tok, lines, cons, batch_size=1)
    many = translate(model_and_tok, lines, cons, batch_size=64)
    assert [t.text for t in one] == [t.text for t in many]


def test_greedy_n_best_and_an_ensemble_keep_the_constraints(model_and_tok):
    from nmt_cli.decoding.ensemble import Ensemble
    from nmt_cli.decoding.inference import translate_lines

    ckpt, model, tok, recipe = model_and_tok
    lines = source_lines(6)
    cons = [["pipen"]] * 6
    pieces = target_pieces(tok, "pipen")
    for changes in ({"beam_size": 1}, {"beam_size": 4, "n_best": 3}):
        for t in translate(model_and_tok, lines, cons, **changes):
            assert len(t.hypotheses) == changes.get("n_best", 1)
            assert all(contains(h.tokens, pieces) for h in t.hypotheses)
    cfg = decode_settings(recipe, beam_size=3)
    ens = translate_lines(Ensemble([model, model]).eval(), tok, lines, cfg,
                          normalize=recipe.preprocess.normalize, constraints=cons)
    alone = translate(model_and_tok, lines, cons, beam_size=3)
    assert [t.text for t in ens] == [t.text for t in alone]


def test_a_constraint_that_cannot_be_used_gives_the_plain_translation_and_says_why(
        model_and_tok):
    lines = source_lines(3)
    too_long = " ".join(["tesi huden"] * 80)
    plain = translate(model_and_tok, lines)
    found = translate(model_and_tok, lines, [[too_long], [], ["\u4e2d\u6587"]])
    assert [t.text for t in found] == [t.text for t in plain]
    assert "at most" in found[0].warning and "max_len" in found[0].warning
    assert found[1].warning is None
    assert "<unk>" in found[2].warning


def test_sampling_cannot_be_constrained(model_and_tok):
    from nmt_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="decode.sample"):
        translate(model_and_tok, source_lines(2), [["la"], []], sample=True)


# -- nmt translate -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("constraints-cli")
    src = folder / "in.txt"
    src.write_text("".join(line + "\n" for line in source_lines(8)), encoding="utf-8")
    return trained_checkpoint("transformer"), src, folder


def cli(ckpt, src, *args):
    return run_cli("translate", "-m", ckpt, "-i", src, "--device", "cpu", "-q", *args,
                   timeout=120)


def test_no_or_empty_constraints_are_byte_identical_to_plain_translation(cli_files):
    ckpt, src, folder = cli_files
    plain = cli(ckpt, src)
    empty = folder / "empty.txt"
    empty.write_text("\n" * 8, encoding="utf-8")
    blank = cli(ckpt, src, "--constraints", empty)
    assert plain.returncode == blank.returncode == 0, blank.stderr
    assert blank.stdout == plain.stdout and blank.stderr == ""


def test_the_cli_forces_the_phrases_and_names_a_line_whose_constraint_cannot_fit(cli_files):
    ckpt, src, folder = cli_files
    cons = folder / "cons.txt"
    words = "tesi huden langi aldi folgen".split()  # its 5 rotations need too many pieces
    too_long = "\t".join(" ".join(words[i:] + words[:i]) for i in range(5))
    cons.write_text("pipen\n\nbärn\tlangi\n" + too_long + "\n\n\n\n\n", encoding="utf-8")
    plain = cli(ckpt, src).stdout.split("\n")
    out = cli(ckpt, src, "--constraints", cons)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")[:-1]
    assert len(lines) == 8
    assert "pipen" in lines[0] and "bärn" in lines[2] and "langi" in lines[2]
    assert lines[1] == plain[1] and lines[3] == plain[3] and lines[4:] == plain[4:8]
    problems = out.stderr.strip().splitlines()
    assert len(problems) == 1 and "input line 4" in problems[0] and "at most" in problems[0]


def test_a_constraint_file_of_another_length_stops_before_writing(cli_files):
    ckpt, src, folder = cli_files
    cons = folder / "short.txt"
    cons.write_text("la\n\n", encoding="utf-8")
    out = folder / "out.txt"
    proc = cli(ckpt, src, "--constraints", cons, "-o", out)
    assert_one_line_error(proc, "short.txt", "2 line(s)", "has 8")
    assert not out.exists()
    stdin = run_cli("translate", "-m", ckpt, "--device", "cpu", "-q", "--constraints", cons,
                    input="a\nb\nc\n", timeout=120)
    assert_one_line_error(stdin, "2 line(s)", "<stdin>", "has 3")
    assert stdin.stdout == ""


def test_the_glossary_constrains_the_lines_with_its_source_terms(cli_files):
    ckpt, src, folder = cli_files
    lines = source_lines(8)
    word = next(w for w in lines[0].split() if w.isalpha() and len(w) > 3)
    glossary = folder / "g.tsv"
    glossary.write_text(f"{word}\ttesi huden\n", encoding="utf-8")
    out = cli(ckpt, src, "--glossary", glossary)
    assert out.returncode == 0, out.stderr
    plain = cli(ckpt, src).stdout.split("\n")
    for line, got, was in zip(lines, out.stdout.split("\n"), plain):
        if any(w.strip(".,") == word for w in line.split()):
            assert "tesi huden" in got
        else:
            assert got == was
    bad = folder / "bad.tsv"
    bad.write_text("just one field\n", encoding="utf-8")
    assert_one_line_error(cli(ckpt, src, "--glossary", bad), "bad.tsv:1")


@pytest.mark.parametrize("args, needle", [
    (["--sample"], "--sample"),
    (["--score-reference", "REF"], "--score-reference"),
])
def test_constraints_with_sampling_or_scoring_are_refused(cli_files, args, needle):
    ckpt, src, folder = cli_files
    cons = folder / "ok.txt"
    cons.write_text("la\n" * 8, encoding="utf-8")
    args = [str(src) if a == "REF" else a for a in args]
    assert_one_line_error(cli(ckpt, src, "--constraints", cons, *args), needle)


def test_an_exported_model_refuses_constraints(cli_files):
    pytest.importorskip("ctranslate2")
    from nmt_cli.export.ct2 import export_ctranslate2

    ckpt, src, folder = cli_files
    exported = export_ctranslate2(ckpt, folder / "ct2", "float32")
    cons = folder / "ok.txt"
    cons.write_text("la\n" * 8, encoding="utf-8")
    proc = run_cli("translate", "-m", exported, "-i", src, "--constraints", cons, "-q",
                   timeout=120)
    assert_one_line_error(proc, "CTranslate2", "constraints", ".pt checkpoint")


# -- the server ----------------------------------------------------------------------------------

BAD = [
    ({"constraints": "la"}, 422, "constraints"),
    ({"constraints": [1]}, 422, "constraints"),
    ({"constraints": ["la", ["et"]]}, 422, "constraints"),
    ({"constraints": [" "]}, 422, "constraints[0]"),
    ({"constraints": ["a\tb"]}, 422, "constraints[0]"),
    ({"constraints": [["la"]]}, 422, "constraints"),  # one list for two texts
    ({"constraints": [["la"], [7]]}, 422, "constraints[1][0]"),
    ({"constraints": ["x" * 500]}, 413, "constraints[0]"),
    ({"constraints": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}, 422, "constraints"),
    ({"constraints": ["la"], "sample": True}, 422, "constraints"),
]


def test_the_server_forces_phrases_and_refuses_bad_constraints_with_4xx(tmp_path):
    pytest.importorskip("fastapi")
    from _serve_helpers import Server

    ckpt = trained_checkpoint("transformer")
    texts = source_lines(2)
    server = Server(ckpt, tmp_path / "server.log", "--max-chars", "200", "--max-beam-size", "8")
    try:
        with server.client() as client:
            for extra, status, field in BAD:
                response = client.post("/translate", json={"texts": texts, **extra})
                assert response.status_code == status, (extra, response.text)
                assert response.json()["field"] == field, (extra, response.json())
            plain = client.post("/translate", json={"texts": texts}).json()["translations"]
            body = {"texts": texts, "constraints": [["tesi huden"], []]}
            found = client.post("/translate", json=body)
            assert found.status_code == 200, found.text
            got = found.json()["translations"]
            assert "tesi huden" in got[0]["text"] and got[1] == plain[1]
            every = client.post("/translate", json={"texts": texts, "constraints": ["bärn"]})
            assert all("bärn" in t["text"] for t in every.json()["translations"])
            short = client.post("/translate", json={"text": "I was"}).json()["translations"]
            long = " ".join(["tesi huden"] * 8)  # more pieces than two words' output may have
            warned = client.post("/translate", json={"text": "I was", "constraints": [long]})
            item = warned.json()["translations"][0]
            assert item["text"] == short[0]["text"] and "at most" in item["warning"]
            assert client.get("/health").status_code == 200
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


def test_constraints_count_in_a_requests_work():
    from nmt_cli.serve.protocol import line_work

    cfg = decode(beam_size=2)
    assert line_work("a b c", cfg, 5) == 3 * line_work("a b c", cfg)
    assert json.dumps(BAD[0][0])  # the cases are plain JSON
