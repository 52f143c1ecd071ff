"""Self-describing checkpoints: a plain dict of weights, recipe and tokenizer, written atomically
and read with ``weights_only=True`` so that loading never runs code. Training checkpoints also hold
the optimizer, schedule, grad scaler, RNG states and data position, to continue exactly."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import platform
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt_cli import __version__, faults
from nmt_cli.config import Recipe, to_dict
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.files import atomic_write_bytes, replace_durably
from nmt_cli.model import TrainableModel, build_model
from nmt_cli.recipes import recipe_from_dict
from nmt_cli.text.tokenizer import Tokenizers

FORMAT = "nmt-checkpoint-1"


def library_versions() -> dict[str, str]:
    import sacrebleu
    import sentencepiece

    return {"nmt": __version__, "torch": str(torch.__version__), "sentencepiece": sentencepiece.__version__,
            "sacrebleu": str(sacrebleu.__version__), "python": platform.python_version()}


def make_checkpoint(model: TrainableModel, recipe: Recipe, tok: Tokenizers,
                    weights: dict[str, Any] | None = None, **extra: Any) -> dict:
    """A checkpoint's payload; ``model`` holds ``weights`` when given (the moving average of
    ``train.ema_decay``), else the model's own."""
    return {
        "format": FORMAT,
        "recipe": to_dict(recipe),
        "model": weights if weights is not None else
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": {"src": tok.src_bytes, "tgt": tok.tgt_bytes},
        "versions": library_versions(),
        **extra,
    }


def save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    faults.point("checkpoint-write", path=Path(path), data=data)
    atomic_write_bytes(path, data)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers, which load under weights_only."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


_STEP_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
INDEX = "index.json"


def step_files(folder: Path) -> list[Path]:
    """The trainer's ``ckpt-STEP.pt`` files in ``folder``, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("ckpt-*.pt")
             if (m := _STEP_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _entry_problem(entry: Any) -> str | None:
    """Why an ``index.json`` entry cannot be used, or None: it must name a step file of this
    folder, its step, and a finite metric or null."""
    if not isinstance(entry, dict):
        return "is not a mapping"
    name, step, metric = entry.get("file"), entry.get("step"), entry.get("metric")
    match = _STEP_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        return "has no 'file' named like ckpt-00000100.pt"
    if isinstance(step, bool) or not isinstance(step, int) or step != int(match.group(1)):
        return f"has no 'step' that matches its file ({match.group(1).lstrip('0') or 0})"
    if metric is not None and (isinstance(metric, bool) or not isinstance(metric, (int, float))
                               or not math.isfinite(metric)):
        return "has a 'metric' that is not a number or null"
    return None


class CheckpointStore:
    """``ckpt-STEP.pt`` files (in ``index.json`` with their metric; the newest ``keep_last`` and
    the ``keep_best`` best are kept), plus ``last.pt`` and ``best.pt``, hard links that pruning
    never removes."""

    def __init__(self, folder: Path, keep_last: int = 1, keep_best: int = 1):
        self.folder, self.keep_last, self.keep_best = Path(folder), keep_last, keep_best

    def _index(self) -> list[dict[str, Any]]:
        """The entries of ``index.json`` whose files exist; a malformed one is skipped with a
        warning, so that pruning never removes a file it cannot vouch for."""
        path = self.folder / INDEX
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            _warn(f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc}); starting a new "
                  "index, no checkpoint is pruned by it")
            return []
        entries = raw.get("checkpoints") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            _warn(f"{path}: has no 'checkpoints' list; starting a new index")
            return []
        kept = []
        for i, entry in enumerate(entries):
            problem = _entry_problem(entry)
            if problem:
                _warn(f"{path}: checkpoints[{i}] {str(entry)[:80]} {problem}; skipped, its file "
                      "is left alone")
            elif (self.folder / entry["file"]).is_file():
                kept.append({"file": entry["file"], "step": entry["step"],
                             "metric": entry.get("metric")})
        return kept

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        from nmt_cli.files import atomic_write_text

        atomic_write_text(self.folder / INDEX, json.dumps({"checkpoints": entries}, indent=1) + "\n")

    def _link(self, source: Path, name: str) -> None:
        """Point ``name`` at ``source`` atomically: link (or copy) under a temporary name, rename."""
        target = self.folder / name
        tmp = self.folder / f".{name}.link.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            atomic_write_bytes(tmp, source.read_bytes())
        replace_durably(tmp, target)

    def save(self, payload: dict, step: int, metric: float | None, is_best: bool) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{step:08d}.pt"
        save_checkpoint(path, payload)
        self._link(path, "last.pt")
        if is_best:
            self._link(path, "best.pt")
        entries = [e for e in self._index() if e["step"] != step]
        entries.append({"file": path.name, "step": step, "metric": metric})
        self._prune(entries)
        return path

    def _prune(self, entries: list[dict[str, Any]]) -> None:
        by_step = sorted(entries, key=lambda e: e["step"])
        keep = {e["file"] for e in by_step[-self.keep_last:]}
        scored = [e for e in entries if e["metric"] is not None]
        scored.sort(key=lambda e: (-e["metric"], e["step"]))
        keep |= {e["file"] for e in scored[: self.keep_best]}
        kept = [e for e in by_step if e["file"] in keep]
        self._write_index(kept)
        for e in by_step:
            if e["file"] not in keep:
                (self.folder / e["file"]).unlink(missing_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)

    def latest(self) -> tuple[Path, dict] | None:
        """The newest training checkpoint that loads: step files newest first (a crash before
        relinking ``last.pt`` leaves the step file the newer), then ``last.pt``."""
        for path in step_files(self.folder)[::-1] + [self.folder / "last.pt"]:
            if not path.is_file():
                continue
            try:
                payload = load_checkpoint(path)
            except UnreadableCheckpoint:
                raise  # not left behind by a crash: resuming from an older one would lose steps
            except CheckpointError:
                continue
            if "train_state" in payload:
                return path, payload
        return None

    def has_run(self) -> bool:
        return (self.folder / "last.pt").exists() or any(self.folder.glob("ckpt-*.pt"))

    def clear(self) -> None:
        """Remove every checkpoint of a previous run (for ``--overwrite``)."""
        for path in list(self.folder.glob("ckpt-*.pt")) + list(self.folder.glob(".*.tmp")):
            path.unlink(missing_ok=True)
        for name in ("last.pt", "best.pt", INDEX):
            (self.folder / name).unlink(missing_ok=True)


class UnreadableCheckpoint(CheckpointError):
    """The file may be whole, but the system will not read it (permissions, I/O errors)."""


_DAMAGED = (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError,
            pickle.UnpicklingError)


def load_checkpoint(path: Path | str, mmap: bool = False) -> dict:
    """The checkpoint's payload; ``mmap`` maps the file, so what is never used is never read."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "checkpoints" / "best.pt", path / "best.pt") if p.is_file()]
        hint = f"such as {found[0]}" if found else "(nmt train writes WORKDIR/checkpoints/best.pt)"
        raise CheckpointError(f"{path}: is a folder, not a checkpoint; give a .pt file {hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with 'nmt train RECIPE' "
                              "(checkpoints are written to WORKDIR/checkpoints/)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as exc:  # permissions, a file gone, an I/O error: its cause, not "truncated"
        raise UnreadableCheckpoint(f"{path}: cannot read the checkpoint: {exc.strerror or exc} "
                                   f"({exc.__class__.__name__}); check the path and its "
                                   "permissions") from None
    except _DAMAGED as exc:  # what torch's zip reader and unpickler raise on a damaged file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.__class__.__name__}); it is "
                              "truncated, corrupt or not an nmt checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nmt checkpoint (expected format {FORMAT!r})")
    return payload


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Builds a model without drawing the random weights that the checkpoint's (loaded strictly)
    replace, a large share of ``nmt translate``'s start-up."""

    SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.nn.init.normal_,
                         torch.nn.init.uniform_, torch.nn.init.xavier_uniform_,
                         torch.nn.init.kaiming_uniform_, torch.nn.init.orthogonal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def model_from_checkpoint(payload: dict, path: Path | str = "checkpoint",
                          device: torch.device | str = "cpu") -> tuple[TrainableModel, Tokenizers, Recipe]:
    """Rebuild the model, its tokenizers and recipe; a vocabulary that does not fit is an error."""
    try:
        recipe = recipe_from_dict(payload["recipe"])
        tok = Tokenizers.from_bytes(payload["tokenizer"]["src"], payload["tokenizer"]["tgt"])
    except (KeyError, NmtError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's recipe or tokenizer is unreadable ({exc})") \
            from None
    with _SkipRandomInit():
        model = build_model(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint)
    state = payload["model"]
    expected = {"src_embed.weight": tok.src_vocab_size, "output_layer.weight": tok.tgt_vocab_size}
    for key, size in expected.items():
        if key in state and state[key].size(0) != size:
            raise CheckpointError(f"{path}: vocabulary/model mismatch: {key} has {state[key].size(0)} "
                                  f"rows but the tokenizer has {size} pieces; use the tokenizer the "
                                  "model was trained with")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model in its recipe: {first}") \
            from None
    return model.to(device).eval(), tok, recipe
