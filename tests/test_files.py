"""Atomic writes: a finished file is published by one rename, and the folder is fsynced after the
rename so that the new name survives a power cut."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from nmt_cli import files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def disk_log(monkeypatch):
    """Record renames and fsyncs in order; an fsync is logged as ('fsync-dir', path) or
    ('fsync-file', None)."""
    events: list[tuple[str, object]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("replace", Path(dst)))

    def fsync(fd):
        real_fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync-dir", Path(os.readlink(f"/proc/self/fd/{fd}"))
                           if os.path.exists(f"/proc/self/fd/{fd}") else None))
        else:
            events.append(("fsync-file", None))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def _folder_synced_after(events, target: Path) -> bool:
    """True when a rename onto ``target`` is followed by an fsync of its folder before any other
    rename happens."""
    for i, (kind, where) in enumerate(events):
        if kind == "replace" and where == target:
            later = [(k, w) for k, w in events[i + 1:] if k != "fsync-file"]
            return bool(later) and later[0][0] == "fsync-dir" and later[0][1] in (None,
                                                                                 target.parent)
    return False


def test_atomic_write_syncs_the_file_then_the_folder_after_the_rename(tmp_path, disk_log):
    target = tmp_path / "out.txt"
    files.atomic_write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    kinds = [k for k, _ in disk_log]
    assert kinds.index("fsync-file") < kinds.index("replace") < kinds.index("fsync-dir")
    assert _folder_synced_after(disk_log, target)


def test_checkpoint_names_are_published_durably(tmp_path, disk_log):
    from nmt_cli.checkpoint import CheckpointStore

    store = CheckpointStore(tmp_path, keep_last=1, keep_best=1)
    store.save({"format": "nmt-checkpoint-1", "train_state": {"step": 3}}, 3, 1.0, True)
    for name in ("ckpt-00000003.pt", "last.pt", "best.pt"):
        assert _folder_synced_after(disk_log, tmp_path / name), name


def test_translation_output_is_published_durably(tmp_path, disk_log):
    from nmt_cli.decoding.translate import _Output

    out = _Output(tmp_path / "hyp.txt")
    out.fh.write("a line\n")
    out.commit()
    assert (tmp_path / "hyp.txt").read_text() == "a line\n"
    assert _folder_synced_after(disk_log, tmp_path / "hyp.txt")


def test_every_rename_in_the_package_goes_through_the_durable_helper():
    """A new os.replace elsewhere would publish a name that a power cut can lose."""
    offenders = []
    for path in sorted((ROOT / "nmt_cli").rglob("*.py")):
        if path.name == "files.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bos\.(replace|rename)\(|\.rename\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_preprocessed_shards_are_published_durably(tmp_path, disk_log):
    import numpy as np

    from nmt_cli.text.shards import ShardWriter

    shard = ShardWriter(tmp_path / "train.src.bin", np.dtype(np.uint16))
    shard.add(np.arange(5), np.array([2, 3]))
    shard.commit()
    assert _folder_synced_after(disk_log, tmp_path / "train.src.bin")
    assert _folder_synced_after(disk_log, tmp_path / "train.src.idx.npy")
