"""Precision choices, skipped non-finite updates, skipped out-of-memory batches, optional extras."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from _train_fixtures import new_run, prepared  # noqa: F401
from nmt_cli.errors import ConfigError, NmtError
from nmt_cli.recipes import load_recipe
from nmt_cli.training.trainer import Trainer


def _trainer(prepared, name, **train):  # noqa: F811
    recipe, workdir = new_run(prepared, name, **train)
    return Trainer(load_recipe(recipe)), workdir


def _linear_output_dtypes(model) -> dict[str, set[torch.dtype]]:
    """Record the output dtypes of every Linear layer called in training mode, by name
    (validation, in eval mode, is left out)."""
    seen: dict[str, set[torch.dtype]] = {}

    def hook(name):
        def record(module, args, output):
            if module.training:
                seen.setdefault(name, set()).add(output.dtype)
        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook(name))
    return seen


@pytest.mark.parametrize("precision, compute", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_step_computes_in_the_chosen_precision(prepared, precision, compute):  # noqa: F811
    """bf16: the output layer of an RNN training step computes in bfloat16 (autocast engaged)
    and, on the CPU, the recurrent part in fp32 (Seq2Seq.forward), while the master weights and
    their gradients stay fp32. fp32: everything in fp32."""
    trainer, workdir = _trainer(prepared, precision, precision=precision, max_steps=3,
                                valid_every=3)
    seen = _linear_output_dtypes(trainer.model)
    summary = trainer.train()
    assert summary.steps == 3 and summary.nonfinite_skipped == 0
    assert seen["output_layer"] == {compute}
    others = set().union(*(d for name, d in seen.items() if name != "output_layer"))
    assert others == {torch.float32}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp16_on_cpu_is_refused_with_the_key(prepared):  # noqa: F811
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        _trainer(prepared, "fp16", precision="fp16")


def test_non_finite_losses_skip_updates_then_stop(prepared, monkeypatch):  # noqa: F811
    trainer, workdir = _trainer(prepared, "nan", max_steps=10, max_nonfinite=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    import nmt_cli.training.update as module

    real = module.sequence_loss
    monkeypatch.setattr(module, "sequence_loss",
                        lambda *a: tuple(x * float("nan") for x in real(*a)))
    with pytest.raises(NmtError, match="3 updates in a row had a non-finite loss"):
        trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update was applied
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("nonfinite") == 3

def _infinite_loss_on_call(monkeypatch, module, n: int) -> None:
    """Make the n-th call of the update's loss return an infinite loss (plain NLL untouched)."""
    real, calls = module.sequence_loss, []

    def poisoned(*args):
        calls.append(1)
        loss, nll = real(*args)
        return (loss * float("inf"), nll) if len(calls) == n else (loss, nll)

    monkeypatch.setattr(module, "sequence_loss", poisoned)



def test_one_non_finite_update_is_skipped_and_counted(prepared, monkeypatch):  # noqa: F811
    trainer, _ = _trainer(prepared, "nan1", max_steps=4, valid_every=4)
    import nmt_cli.training.update as module

    _infinite_loss_on_call(monkeypatch, module, 2)
    summary = trainer.train()
    assert (summary.steps, summary.nonfinite_skipped, summary.oom_skipped) == (4, 1, 0)


def test_out_of_memory_batch_is_skipped_and_counted(prepared, monkeypatch):  # noqa: F811
    trainer, workdir = _trainer(prepared, "oom", max_steps=3, valid_every=3)
    forward, calls = trainer.model.forward, []

    def flaky_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", flaky_forward)
    summary = trainer.train()
    assert (summary.steps, summary.oom_skipped) == (3, 1)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    oom = [r for r in records if r["event"] == "oom"]
    assert len(oom) == 1 and len(oom[0]["src_shape"]) == 2
    assert records[-1]["oom_skipped"] == 1


def test_tensorboard_missing_is_one_clear_error(prepared, monkeypatch):  # noqa: F811
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(NmtError, match=r"pip install 'nmt\[tensorboard\]'"):
        _trainer(prepared, "tb", tensorboard=True)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(prepared):  # noqa: F811
    runs = {}
    for name, seed in (("seed_a", 11), ("seed_b", 11), ("seed_c", 12)):
        trainer, _ = _trainer(prepared, name, seed=seed, max_steps=3, valid_every=3)
        trainer.train()
        runs[name] = trainer.model.state_dict()
    assert all(torch.equal(runs["seed_a"][k], runs["seed_b"][k]) for k in runs["seed_a"])
    assert not all(torch.equal(runs["seed_a"][k], runs["seed_c"][k]) for k in runs["seed_a"])


def test_fp16_grad_scaler_path_skips_overflow_and_saves_its_state(prepared, monkeypatch):  # noqa: F811
    """The fp16 code path (autocast + GradScaler) exercised on the CPU, which torch allows although
    ``nmt`` refuses fp16 there for speed reasons."""
    import nmt_cli.training.trainer
    import nmt_cli.training.update

    monkeypatch.setattr(nmt_cli.training.trainer, "resolve_precision",
                        lambda precision, device, key: precision)
    trainer, workdir = _trainer(prepared, "fp16cpu", precision="fp16", max_steps=3, valid_every=3)
    assert trainer.scaler.is_enabled()
    _infinite_loss_on_call(monkeypatch, nmt_cli.training.update, 1)
    start_scale = trainer.scaler.get_scale()
    summary = trainer.train()
    assert (summary.steps, summary.nonfinite_skipped) == (3, 1)
    assert trainer.scaler.get_scale() == start_scale / 2  # backed off once, no growth yet
    saved = torch.load(workdir / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert saved["scale"] == start_scale / 2


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard (the 'tensorboard' extra) is not installed")
def test_tensorboard_logs_are_written(prepared):  # noqa: F811
    trainer, workdir = _trainer(prepared, "tb_on", tensorboard=True, max_steps=2, valid_every=2)
    trainer.train()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
