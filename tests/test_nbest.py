"""The n-best list of ``nmt translate --n-best K`` reads back row for row (index, score, text) from
both engines, and a malformed row is one error naming its file and line."""

from __future__ import annotations

import pytest

from _decode_fixtures import source_lines, trained_checkpoint
from conftest import assert_one_line_error, run_cli
from nmt_cli.decoding.nbest import NbestEntry, format_entry, group_nbest, read_nbest
from nmt_cli.errors import DataError


def _source(tmp_path, n: int = 8):
    lines = source_lines(n)
    lines[3] = ""  # an empty line gives one row, score 0, no text
    path = tmp_path / "src.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines


@pytest.fixture(scope="module")
def exported_folder(tmp_path_factory):
    from nmt_cli.export.ct2 import export_ctranslate2

    return export_ctranslate2(trained_checkpoint("transformer"),
                              tmp_path_factory.mktemp("ct2") / "model", "float32")


@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
def test_translate_n_best_round_trips(engine, tmp_path, request):
    model = (trained_checkpoint("transformer") if engine == "torch"
             else request.getfixturevalue("exported_folder"))
    src, lines = _source(tmp_path)
    out = tmp_path / "nbest.tsv"
    proc = run_cli("translate", "-m", model, "-i", src, "-o", out, "--beam-size", "4",
                   "--n-best", "3", "-q")
    assert proc.returncode == 0, proc.stderr
    written = out.read_text(encoding="utf-8").splitlines()
    entries = list(read_nbest(out))
    assert [format_entry(e) for e in entries] == written  # byte for byte
    groups = group_nbest(out, len(lines))
    assert [len(g) for g in groups] == [3, 3, 3, 1, 3, 3, 3, 3]
    assert groups[3] == [NbestEntry(3, 0.0, "")]
    for group in groups:
        assert [e.score for e in group] == sorted((e.score for e in group), reverse=True)
    best = run_cli("translate", "-m", model, "-i", src, "--beam-size", "4", "-q")
    assert [g[0].text for g in groups] == best.stdout.split("\n")[:-1]


def test_a_tab_inside_a_hypothesis_survives(tmp_path):
    path = tmp_path / "n.tsv"
    path.write_text("0\t-0.5000\ta\tb\n1\t-1.2500\t\n", encoding="utf-8")
    assert list(read_nbest(path)) == [NbestEntry(0, -0.5, "a\tb"), NbestEntry(1, -1.25, "")]


@pytest.mark.parametrize("text, line, needle", [
    ("0\t-0.5\tgood\nbroken line\n", 2, "expected index<TAB>score<TAB>text"),
    ("0\t-0.5\tgood\n0\tnan\tx\n", 2, "not a finite number"),
    ("0\tabc\tx\n", 1, "'abc' is not a finite number"),
    ("-1\t-0.5\tx\n", 1, "'-1' is not a whole number"),
    ("0\t-0.5\tx\n2\t-0.5\ty\n1\t-0.5\tz\n", 3, "index 1 after index 2"),
])
def test_a_malformed_row_names_its_file_and_line(tmp_path, text, line, needle):
    path = tmp_path / "n.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:{line}: .*{needle}"):
        list(read_nbest(path))


def test_group_refuses_rows_past_the_source_and_lines_without_rows(tmp_path):
    path = tmp_path / "n.tsv"
    path.write_text("0\t-0.5\tx\n2\t-0.5\ty\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no rows for 1 of the 3 source line\(s\) \(index 1\)"):
        group_nbest(path, 3)
    with pytest.raises(DataError, match=f"^{path}:2: index 2, but the source has 2 line"):
        group_nbest(path, 2)


def test_rerank_on_a_malformed_row_is_one_line_and_writes_nothing(tmp_path):
    src, lines = _source(tmp_path, 4)
    nbest = tmp_path / "n.tsv"
    nbest.write_text("0\t-0.5\tx\n1\t-0.5\n2\t-0.5\tz\n3\t0.0\t\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    proc = run_cli("rerank", "-n", nbest, "-s", src, "-o", out)
    assert_one_line_error(proc, f"{nbest}:2:", "index<TAB>score<TAB>text")
    assert not out.exists() and not list(tmp_path.glob(".out.txt*"))
