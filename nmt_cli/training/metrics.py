"""What a run records in its folder (``metrics.jsonl``, TensorBoard logs, ``environment.json``),
and the running sums behind each ``train`` line."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt_cli.errors import NmtError
from nmt_cli.files import atomic_write_text

METRICS = "metrics.jsonl"
ENVIRONMENT = "environment.json"
_TB_SCALARS = ("loss", "nll", "lr", "tok_per_s", "dev_loss", "dev_ppl", "dev_bleu")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NmtError("train.tensorboard is true but the tensorboard package is missing; "
                       "install it with: pip install 'nmt[tensorboard]'") from None
    return SummaryWriter


class MetricsLog:
    """One JSON object per event, written by the main process only (``enabled``); with
    ``tensorboard`` the train and valid numbers also go to ``RUN_DIR/tensorboard``."""

    def __init__(self, workdir: Path, enabled: bool = True, tensorboard: bool = False):
        self.path = Path(workdir) / METRICS
        self.enabled = enabled
        self._tb_dir = Path(workdir) / "tensorboard" if tensorboard and enabled else None
        self._writer_cls = _summary_writer() if self._tb_dir else None  # fail before training
        self._tb = None

    def start(self, resume_step: int | None) -> None:
        """A fresh log, or one cut back to ``resume_step`` so resumed steps are not logged twice."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            kept = [r for r in _records(self.path) if r.get("step", -1) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if self._writer_cls is not None:
            self._tb = self._writer_cls(str(self._tb_dir),
                                        purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None and record.get("event") in ("train", "valid"):
            for key in _TB_SCALARS:  # under train/ or valid/, the record's event
                if isinstance(record.get(key), (int, float)):
                    self._tb.add_scalar(f"{record['event']}/{key}", record[key], record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


@dataclass
class TrainWindow:
    """Sums over the updates since the last ``train`` line; validation moves ``start`` on."""

    tokens: int = 0
    loss: float = 0.0
    nll: float = 0.0
    start: float = field(default_factory=time.time)

    def add(self, tokens: int, loss: float, nll: float) -> None:
        self.tokens += tokens
        self.loss += loss
        self.nll += nll

    def record(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The ``train`` line for the window, which then starts afresh."""
        elapsed = max(1e-9, time.time() - self.start)
        tokens = max(1, self.tokens)
        record = {"event": "train", "step": step, "epoch": epoch, "loss": self.loss / tokens,
                  "nll": self.nll / tokens, "tok_per_s": self.tokens / elapsed, "lr": lr}
        self.tokens, self.loss, self.nll, self.start = 0, 0.0, 0.0, time.time()
        return record


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    path = Path(workdir) / METRICS
    if not Path(workdir).is_dir():
        raise NmtError(f"{workdir}: no such folder; give a training run folder (the recipe's "
                       "workdir)")
    if not path.is_file():
        raise NmtError(f"{path}: no metrics log; is {workdir} a training run folder (the "
                       "recipe's workdir), and has 'nmt train' run in it?")
    return _records(path)


def _records(path: Path) -> list[dict[str, Any]]:
    """The log's records; a line cut short by a killed process is left out."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_environment(workdir: Path, versions: dict[str, str], manifest: dict[str, Any],
                      session: dict[str, Any]) -> None:
    """Record library versions, hardware and input-data SHA-256s; each resume adds a session."""
    import torch

    path = Path(workdir) / ENVIRONMENT
    try:
        sessions = json.loads(path.read_text(encoding="utf-8"))["sessions"]
    except (OSError, ValueError, KeyError):
        sessions = []
    if session.get("resumed_from_step") is None:
        sessions = []
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **session,
                     "versions": versions, "host": platform.node(),
                     "cuda": torch.version.cuda, "gpu": gpu})
    data = {name: {"files": info["files"], "sha256": info["sha256"]}
            for name, info in manifest.get("splits", {}).items()}
    record = {"versions": versions, "data": data,
              "tokenizer_sha256": manifest.get("tokenizer_sha256"), "sessions": sessions}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
