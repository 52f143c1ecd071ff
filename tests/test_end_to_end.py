"""The five stages through the command line, on the bundled sample, with a handful of steps."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE, run_cli, sample_lines, tiny_recipe_text

N_TEST = 100


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """tokenizer -> preprocess -> train -> translate -> eval, each a separate `nmt` process."""
    folder = tmp_path_factory.mktemp("e2e")
    recipe = folder / "recipes" / "e2e.yaml"
    recipe.parent.mkdir()
    # A relative workdir: it must resolve against the recipe's folder, not the current directory.
    recipe.write_text(tiny_recipe_text("../work", vocab_size=250, max_steps=12, valid_every=6),
                      encoding="utf-8")
    test_src = folder / "test.src"
    test_src.write_text("\n".join(sample_lines("test", "src", N_TEST)) + "\n", encoding="utf-8")
    test_ref = folder / "test.ref"
    test_ref.write_text("\n".join(sample_lines("test", "tgt", N_TEST)) + "\n", encoding="utf-8")
    hyp = folder / "out" / "test.hyp"
    cwd = folder / "elsewhere"
    cwd.mkdir()
    procs = {}
    procs["tokenizer"] = run_cli("tokenizer", recipe, cwd=cwd)
    procs["dry_run"] = run_cli("preprocess", recipe, "--dry-run", cwd=cwd)
    procs["preprocess"] = run_cli("preprocess", recipe, cwd=cwd)
    procs["train"] = run_cli("train", recipe, "--set", "train.valid_max_sentences=20", cwd=cwd)
    ckpt = folder / "work" / "checkpoints" / "best.pt"
    procs["translate"] = run_cli("translate", "-m", ckpt, "-i", test_src, "-o", hyp, cwd=cwd)
    procs["eval"] = run_cli("eval", "-i", hyp, "-r", test_ref, cwd=cwd)
    return {"folder": folder, "recipe": recipe, "workdir": folder / "work", "hyp": hyp,
            "ref": test_ref, "ckpt": ckpt, "cwd": cwd, "procs": procs}


@pytest.mark.parametrize("stage", ["tokenizer", "dry_run", "preprocess", "train", "translate",
                                   "eval"])
def test_stage_succeeds(pipeline, stage):
    proc = pipeline["procs"][stage]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_stages_write_where_the_recipe_says(pipeline):
    wd = pipeline["workdir"]
    assert (wd / "tokenizer" / "joint.model").is_file()
    assert (wd / "data" / "manifest.json").is_file()
    assert (wd / "checkpoints" / "best.pt").is_file()
    assert (wd / "checkpoints" / "last.pt").is_file()
    assert (wd / "recipe.yaml").is_file() and (wd / "metrics.jsonl").is_file()
    assert list(pipeline["cwd"].iterdir()) == []  # nothing lands in the current directory
    out = pipeline["procs"]
    assert "joint.model" in out["tokenizer"].stdout
    assert "250 source / 250 target" in out["tokenizer"].stdout
    assert str(wd / "data") in out["preprocess"].stdout
    assert "best checkpoint:" in out["train"].stdout


def test_dry_run_reported_without_writing(pipeline):
    proc = pipeline["procs"]["dry_run"]
    assert proc.stdout == ""  # no "wrote ..." line
    assert "train: 15000 pairs in" in proc.stderr
    assert "dev: 500 pairs in" in proc.stderr


def test_train_used_the_override_and_logged(pipeline):
    wd = pipeline["workdir"]
    events = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    end = events[-1]
    assert end["event"] == "end" and end["step"] == 12 and end["stopped_by"] == "max_steps"
    assert [e["step"] for e in events if e["event"] == "valid"] == [6, 12]
    summary = json.loads((wd / "train_summary.json").read_text())
    assert summary["steps"] == 12
    from nmt_cli.recipes import load_recipe

    resolved = load_recipe(wd / "recipe.yaml")
    assert resolved.train.valid_max_sentences == 20  # the --set value is what was used
    assert resolved.data.train.src == SAMPLE / "train.src"


def test_translate_writes_one_line_per_input(pipeline):
    lines = pipeline["hyp"].read_text(encoding="utf-8").split("\n")
    assert len(lines) == N_TEST + 1 and lines[-1] == ""
    assert "translated 100 sentences" in pipeline["procs"]["translate"].stderr
    assert [p.name for p in pipeline["hyp"].parent.iterdir()] == ["test.hyp"]  # no temp files


def test_eval_prints_bleu_and_chrf_with_signatures(pipeline):
    out = pipeline["procs"]["eval"].stdout.splitlines()
    assert out[0].startswith("BLEU = ")
    assert out[1].strip().startswith("signature: nrefs:1|case:mixed|eff:no|tok:13a")
    assert out[2].startswith("chrF2 = ")
    assert out[3].strip().startswith("signature: nrefs:1|")
    chrf = float(out[2].split("=")[1].split()[0])
    assert 0.0 < chrf < 100.0



def test_translation_file_gets_normal_permissions(pipeline, tmp_path):
    """`-o` output is an ordinary file for the user and colleagues (umask applies), not 0600."""
    import stat

    probe = tmp_path / "probe.txt"
    probe.write_text("x")
    assert stat.S_IMODE(pipeline["hyp"].stat().st_mode) == stat.S_IMODE(probe.stat().st_mode)
