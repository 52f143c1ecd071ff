"""Checkpoint averaging: the element-wise mean of several checkpoints' weights."""

from __future__ import annotations

from pathlib import Path

import torch

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint, step_files
from nmt_cli.errors import CheckpointError


def run_checkpoints(run_dir: Path, last: int) -> list[Path]:
    """The newest ``last`` step checkpoints (``ckpt-STEP.pt``, as the trainer writes them) in
    ``RUN/checkpoints/`` (or ``RUN`` itself), oldest first: never ``last.pt``, ``best.pt`` (copies
    of a step) or an earlier ``averaged.pt``."""
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    files = step_files(folder)
    if not files:
        raise CheckpointError(f"{folder}: no training checkpoints (ckpt-STEP.pt) to average; "
                              "give the checkpoint files instead of --last")
    return files[-last:]


# what an averaged file keeps of the newest checkpoint: no optimizer, schedule, scaler, RNG
# states or train_state, so that nothing can mistake it for a point to resume from
KEPT = ("format", "recipe", "tokenizer", "versions", "step", "epoch")


def average_checkpoints(paths: list[Path]) -> dict:
    """The newest of ``paths`` without training state (only ``KEPT``), its weights their mean
    (float64, cast back); other tensors, parameter names, shapes and the tokenizer must be equal."""
    if not paths:
        raise CheckpointError("no checkpoints given to average")
    first = load_checkpoint(paths[0])
    names = list(first["model"])
    sums = {n: t.double() if t.is_floating_point() else t.clone()
            for n, t in first["model"].items()}
    newest = first
    for path in paths[1:]:
        payload = load_checkpoint(path)
        weights = payload["model"]
        if payload["tokenizer"] != first["tokenizer"]:
            raise CheckpointError(f"{path}: uses another tokenizer than {paths[0]}; only "
                                  "checkpoints of one model can be averaged")
        if set(weights) != set(names):
            diff = sorted(set(weights) ^ set(names))
            raise CheckpointError(f"{path}: parameters differ from {paths[0]} ({diff[0]}, ...); "
                                  "only checkpoints of one model can be averaged")
        for n in names:
            if weights[n].shape != sums[n].shape:
                raise CheckpointError(f"{path}: {n} has shape {tuple(weights[n].shape)} but "
                                      f"{tuple(sums[n].shape)} in {paths[0]}")
            if sums[n].is_floating_point():
                sums[n] += weights[n].double()
            elif not torch.equal(sums[n], weights[n]):
                raise CheckpointError(f"{path}: integer tensor {n} differs from {paths[0]}")
        newest = payload
    averaged = {n: (sums[n] / len(paths)).to(first["model"][n].dtype)
                if sums[n].is_floating_point() else sums[n] for n in names}
    result = {k: newest[k] for k in KEPT if k in newest}
    result["model"] = averaged
    result["averaged_from"] = [str(p) for p in paths]
    return result


def average_to_file(paths: list[Path], output: Path) -> dict:
    payload = average_checkpoints(paths)
    save_checkpoint(output, payload)
    return payload
