"""Checkpoint averaging: the element-wise mean of several checkpoints' weights."""

from __future__ import annotations

from pathlib import Path

import torch

from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
from nmt_cli.errors import CheckpointError


def run_checkpoints(run_dir: Path, last: int) -> list[Path]:
    """The newest ``last`` checkpoints by modification time in ``RUN/checkpoints/`` (or ``RUN``
    itself); copies of one step (``best.pt``, ``last.pt``) count once."""
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    files = sorted(folder.glob("*.pt"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    if not files:
        raise CheckpointError(f"{folder}: no checkpoints (*.pt) to average")
    chosen: list[Path] = []
    steps: set[object] = set()
    for path in files:
        step = load_checkpoint(path).get("step")
        if step is not None and step in steps:
            continue
        steps.add(step)
        chosen.append(path)
        if len(chosen) == last:
            break
    return list(reversed(chosen))  # oldest first


def average_checkpoints(paths: list[Path]) -> dict:
    """The newest of ``paths`` without optimizer state, its weights their mean (float64, cast
    back); other tensors, parameter names, shapes and the tokenizer must be equal."""
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
    result = {k: v for k, v in newest.items() if k not in ("optimizer", "schedule", "model")}
    result["model"] = averaged
    result["averaged_from"] = [str(p) for p in paths]
    return result


def average_to_file(paths: list[Path], output: Path) -> dict:
    payload = average_checkpoints(paths)
    save_checkpoint(output, payload)
    return payload
