"""The bench scripts, run end to end on the tiny test models with a few lines and a few steps, so
that a change to the code they drive cannot break them unnoticed (as once happened to
bench/serve.py). No figure is checked, only that each script finishes and prints what it
promises: the speeds and the checks that docs/results.md quotes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _decode_fixtures import SAMPLE, _head, arch_checkpoint, sample_checkpoint  # noqa: F401
from conftest import CLI_ENV, run_cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**CLI_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                               os.environ.get("PYTHONPATH")]))}


def bench(script: str, *args, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench-lines")
    return (_head(SAMPLE / "test.src", folder / "test.src", 12),
            _head(SAMPLE / "test.tgt", folder / "test.tgt", 12))


def test_decode_bench_reports_both_speeds_bleu_and_the_batch_check(arch_checkpoint, lines):
    src, ref = lines
    out = bench("decode.py", "-m", arch_checkpoint, "-i", src, "-r", ref, "--beam-size", "2",
                "--batch-size", "4", "--threads", "1", "--batch-1-check")
    assert re.search(r"decode only +\(.*\): 12 sentences, .* sentences/s", out), out
    assert re.search(r"whole process \(.*\): 12 sentences, .* sentences/s", out), out
    assert "BLEU" in out and "batch 1 vs batch 4: 0 of 12 lines differ" in out, out


def test_decode_bench_compares_an_exported_model(tmp_path, lines):
    pytest.importorskip("ctranslate2")
    from _decode_fixtures import trained_checkpoint

    checkpoint = trained_checkpoint("transformer")
    exported = tmp_path / "ct2"
    proc = run_cli("export", str(checkpoint), "-o", str(exported), "--quantization", "int8")
    assert proc.returncode == 0, proc.stderr
    src, ref = lines
    out = bench("decode.py", "-m", checkpoint, "--ct2", exported, "-i", src, "-r", ref,
                "--beam-sizes", "1", "--threads", "1")
    assert "ct2" in out and re.search(r"x\d+\.\d+", out) and "%" in out, out


def test_serve_bench_reports_latency_and_agreement(sample_checkpoint, lines):
    out = bench("serve.py", "-m", sample_checkpoint, "-i", lines[0], "--lines", "12",
                "--beam-size", "2", "--concurrency", "1,4", "--threads", "1")
    assert re.search(r"server, concurrency  1: .* sentences/s, latency p50 .* ms", out), out
    assert re.search(r"concurrency  4: 0 of 12 answers differ", out), out
    assert "server / nmt translate's own figure" in out and "exit status 0" in out, out


def test_serve_load_bench_runs_every_scenario(sample_checkpoint, lines):
    out = bench("serve_load.py", "-m", sample_checkpoint, "-i", lines[0], "--lines", "40",
                "--seconds", "2")
    assert re.search(r"heavy: second client's one-line requests: \d+, p50 \d+ ms", out), out
    flood = re.search(r"flood: 500 requests at once: \{(.*)\}; /health ready (\d+) of (\d+)", out)
    assert flood and set(re.findall(r"(\d+): \d+", flood.group(1))) <= {"200", "503"}, out
    assert flood.group(2) == flood.group(3), out  # /health answered every poll
    cancel = re.search(r"-> (\d+) \(0.5 s after\) -> (\d+) \(5 s later\)", out)
    assert cancel and cancel.group(1) == cancel.group(2), out  # nothing computed after they left
    assert "sigterm: exit 0" in out and "traceback in the log: False" in out, out


def test_startup_bench_reports_the_ratio_to_the_torch_import(sample_checkpoint):
    out = bench("startup.py", "-m", sample_checkpoint, "--runs", "1")
    assert re.search(r"ratio first line / import torch: \d+\.\d+x", out), out


def test_train_speed_bench_reports_tokens_per_second_and_the_share_of_peak(arch_checkpoint):
    recipe = arch_checkpoint.parents[1] / "recipe.yaml"
    assert recipe.is_file()
    out = bench("train_speed.py", recipe, "--steps", "2", "--peak", "--profile", "2",
                "--set", "train.threads=1")
    result = json.loads(out)
    assert result["steps"] == 2 and result["tgt_tok_per_s"] > 0
    assert 0 < result["share_of_peak"] and result["gemm_peak_gflops"] > 0
    # the profile finds the matrix products, and the bound lies between the share and 1
    assert 0 < result["profile_matmul_share_of_time"] < 1
    assert result["profile_updates"] == 2 and result["profile_largest_other_operators"]
    assert result["share_of_peak"] <= result["share_of_peak_bound_with_matmuls_at_peak"] < 1


def test_constraints_bench_draws_missing_phrases_and_checks_coverage(tmp_path, lines):
    from _decode_fixtures import trained_checkpoint

    src, ref = lines
    out = bench("constraints.py", "run", "-m", trained_checkpoint("transformer"), "--src", src,
                "--ref", ref, "-o", tmp_path / "out", "--beam-size", "2", "--check")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["coverage"]["present"] == summary["coverage"]["constraints"] > 0, out
    assert summary["empty_file_identical"] and summary["batch1_vs_64_differ"] == 0
    cons = (tmp_path / "out" / "constraints.tsv").read_text(encoding="utf-8").split("\n")[:-1]
    plain = (tmp_path / "out" / "plain.hyp").read_text(encoding="utf-8").split("\n")
    refs = ref.read_text(encoding="utf-8").split("\n")
    assert len(cons) == 12
    for line, hyp, reference in zip(cons, plain, refs):
        phrases = [p for p in line.split("\t") if p]
        assert len(phrases) <= 2
        for phrase in phrases:  # from the reference, and missing from the plain output
            assert phrase in reference and phrase not in hyp.split(), (phrase, hyp)
