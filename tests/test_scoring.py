"""Scores agree with the sacrebleu command line on the same files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nmt_cli.errors import DataError
from nmt_cli.scoring import score_files, score_lines

from conftest import sample_lines


def degrade(lines: list[str]) -> list[str]:
    """Plausible system output: some words dropped or swapped, some trailing spaces."""
    out = []
    for i, line in enumerate(lines):
        words = line.split()
        if i % 3 == 0 and len(words) > 2:
            del words[1]
        if i % 4 == 1 and len(words) > 3:
            words[0], words[2] = words[2], words[0]
        if i % 7 == 2:
            words = words[: max(1, len(words) // 2)]
        out.append(" ".join(words) + ("  " if i % 5 == 0 else ""))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scoring")
    ref = sample_lines("test", "tgt", 120)
    # A second, different reference: every other sentence with its first two words swapped.
    ref2 = [" ".join([w[1], w[0], *w[2:]]) if i % 2 == 0 and len(w) > 2 else " ".join(w)
            for i, w in enumerate(line.split() for line in ref)]
    hyp = degrade(ref)
    paths = {}
    for name, lines in (("ref", ref), ("ref2", ref2), ("hyp", hyp)):
        paths[name] = folder / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def sacrebleu_cli(refs, hyp, *extra: str, metrics=("bleu", "chrf")) -> list[float]:
    proc = subprocess.run([sys.executable, "-m", "sacrebleu", *map(str, refs), "-i", str(hyp),
                           "-m", *metrics, "-b", "-w", "4", *extra],
                          capture_output=True, text=True, check=True)
    text = proc.stdout.replace("[", " ").replace("]", " ").replace(",", " ")
    return [float(x) for x in text.split()]


def test_single_reference_matches_sacrebleu_cli(files):
    ours = score_files(files["hyp"], [files["ref"]], ["bleu", "chrf"])
    cli = sacrebleu_cli([files["ref"]], files["hyp"])
    assert [s.metric for s in ours] == ["bleu", "chrf"]
    assert 20 < ours[0].score < 95  # the degraded output is neither perfect nor garbage
    assert ours[0].score == pytest.approx(cli[0], abs=0.01)
    assert ours[1].score == pytest.approx(cli[1], abs=0.01)


def test_multiple_references_match_sacrebleu_cli(files):
    refs = [files["ref"], files["ref2"]]
    ours = score_files(files["hyp"], refs, ["bleu", "chrf"])
    cli = sacrebleu_cli(refs, files["hyp"])
    assert ours[0].score == pytest.approx(cli[0], abs=0.01)
    assert ours[1].score == pytest.approx(cli[1], abs=0.01)
    assert "nrefs:2" in ours[0].signature
    single = score_files(files["hyp"], [files["ref"]], ["bleu"])[0]
    assert ours[0].score != pytest.approx(single.score, abs=0.01)  # the second one counts


def test_lowercase_and_tokenizer_options_match_cli(files):
    ours = score_files(files["hyp"], [files["ref"]], ["bleu", "chrf"], tokenize="intl",
                       lowercase=True)
    # --lowercase in nmt covers every metric; sacrebleu has a separate flag for chrF.
    cli = sacrebleu_cli([files["ref"]], files["hyp"], "-tok", "intl", "-lc", "--chrf-lowercase")
    assert ours[0].score == pytest.approx(cli[0], abs=0.01)
    assert ours[1].score == pytest.approx(cli[1], abs=0.01)
    assert "tok:intl" in ours[0].signature and "case:lc" in ours[0].signature


def test_ter_matches_sacrebleu_cli(files):
    # nmt scores TER case-sensitively unless --lowercase is given (its signature says case:mixed).
    ours = score_files(files["hyp"], [files["ref"]], ["ter"])[0]
    cli = sacrebleu_cli([files["ref"]], files["hyp"], "--ter-case-sensitive", metrics=("ter",))
    assert ours.score == pytest.approx(cli[0], abs=0.01)


def test_signatures_and_text():
    ref = ["the cat sat on the mat"]
    scores = score_lines(ref, [ref], ["bleu", "chrf", "ter"])
    assert [s.metric for s in scores] == ["bleu", "chrf", "ter"]
    assert scores[0].score == pytest.approx(100.0)
    assert scores[1].score == pytest.approx(100.0)
    assert scores[2].score == pytest.approx(0.0)
    assert scores[0].signature.startswith("nrefs:1|") and "tok:13a" in scores[0].signature
    assert scores[0].text.startswith("BLEU = 100.00")
    assert scores[1].text.startswith("chrF2 = 100.00")


def test_reference_with_different_line_count(files, tmp_path):
    short = tmp_path / "short.ref"
    short.write_text("\n".join(sample_lines("test", "tgt", 119)) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        score_files(files["hyp"], [files["ref"], short])
    msg = str(info.value)
    assert str(short) in msg
    assert "119" in msg and "120" in msg


def test_missing_reference_and_unknown_metric(files, tmp_path):
    with pytest.raises(DataError) as info:
        score_files(files["hyp"], [tmp_path / "nope.txt"])
    assert "nope.txt" in str(info.value)
    with pytest.raises(DataError) as info:
        score_files(files["hyp"], [files["ref"]], ["bleu", "meteor"])
    assert "meteor" in str(info.value)
    with pytest.raises(DataError):
        score_files(files["hyp"], [])


def test_compressed_reference_scores_the_same(files, tmp_path):
    import gzip

    gz = tmp_path / "ref.txt.gz"
    gz.write_bytes(gzip.compress(files["ref"].read_bytes()))
    plain = score_files(files["hyp"], [files["ref"]])
    packed = score_files(files["hyp"], [gz])
    assert [s.score for s in plain] == [s.score for s in packed]
