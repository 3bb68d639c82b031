"""Crash and resume: a run killed with SIGKILL, then resumed, ends where an uninterrupted one does.

The victim runs as a real process and is killed mid-training once its ``last.ckpt`` holds an
epoch; ``tlkit finetune --out RUN --resume`` then finishes it. The uninterrupted reference runs
in this process meanwhile, on one thread like the victim, so the arithmetic is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch as pl
import pytest
import torch
from helpers import write_tinted
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tlkit.checkpointing import AtomicCheckpointIO, LastCheckpoint, protect_checkpoints
from tlkit.cli import main

pytestmark = pytest.mark.slow  # the real Lite0 weights, the command line

EPOCHS = 4
TIMEOUT = 300
# A strategy with state (gradual unfreezing), seeded augmentation, dropout, and a callback with
# state (the snapshot ensemble's LR cycles and snapshots): everything a resume must restore.
ARGS = ["--recipe", "snapshot-ensemble", "--model.strategy", "gradual",
        "--model.strategy_args", "{bn: frozen_eval}", "--model.lr", "0.003",
        "--epochs", str(EPOCHS), "--image-size", "32", "--batch-size", "4",
        "--data.augment", "light", "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.fixture
def other_filesystem(tmp_path: Path):
    """A temporary folder on another filesystem than the runs (``/dev/shm``), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    folder = Path(tempfile.mkdtemp(dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def epoch_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def kill_after_first_epochs(proc: subprocess.Popen, last: Path) -> int:
    """SIGKILL ``proc`` as soon as ``last`` holds epoch 1 or later; return that epoch."""
    deadline, seen = time.monotonic() + TIMEOUT, None
    while time.monotonic() < deadline and proc.poll() is None:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp is not None and stamp != seen:
            seen = stamp
            epoch = epoch_of(last)
            if epoch >= 1:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=TIMEOUT)
                return epoch
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"the run ended (code {proc.returncode}) before it could be killed: {err}")


def test_a_killed_run_resumes_to_the_same_weights_snapshots_and_metrics(
    tmp_path, monkeypatch, one_thread, other_filesystem
):
    monkeypatch.chdir(tmp_path)
    data = write_tinted(tmp_path / "data", per_class=10, size=40)
    argv = ["finetune", "--data", str(data), *ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(other_filesystem)}
    victim = subprocess.Popen(
        [sys.executable, "-m", "tlkit", *argv, "--out", "KILLED"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert main([*argv, "--out", "FULL"]) == 0
        killed_at = kill_after_first_epochs(victim, tmp_path / "KILLED/checkpoints/last.ckpt")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert 1 <= killed_at < EPOCHS - 1, "killed with epochs still to run"
    last = tmp_path / "KILLED/checkpoints/last.ckpt"
    assert epoch_of(last) >= killed_at, "the checkpoint left by the kill loads whole"

    assert main(["finetune", "--out", "KILLED", "--resume"]) == 0

    full = torch.load(tmp_path / "FULL/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert full["epoch"] == resumed["epoch"] == EPOCHS - 1, "last.ckpt is the last epoch"
    assert full["global_step"] == resumed["global_step"]
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    differing = [
        name
        for name, tensor in full["state_dict"].items()
        if not torch.equal(tensor, resumed["state_dict"][name])
    ]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    expected = json.loads((tmp_path / "FULL/metrics.json").read_text())
    got = json.loads((tmp_path / "KILLED/metrics.json").read_text())
    tested = [k for k in expected if k.startswith("test_")]
    assert tested and {k: got[k] for k in tested} == {k: expected[k] for k in tested}
    assert got["val_acc"] == expected["val_acc"]
    assert got["resumed_from"].endswith("last.ckpt")
    assert (tmp_path / "KILLED/logs/metrics.part0.csv").is_file()
    (key,) = [k for k in full["callbacks"] if k.startswith("SnapshotEnsemble")]
    snaps = full["callbacks"][key]["snapshots"]
    resumed_snaps = resumed["callbacks"][key]["snapshots"]
    assert [s["cycle"] for s in resumed_snaps] == [s["cycle"] for s in snaps] != []
    for a, b in zip(snaps, resumed_snaps, strict=True):
        a, b = a["tensors"], b["tensors"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("test_acc_snapshot_") for k in tested)


def test_checkpoints_are_replaced_never_rewritten_in_place(tmp_path, monkeypatch, other_filesystem):
    """With the system temporary folder on another filesystem, Lightning's default writer copies
    the new checkpoint over the old file (same inode: a kill during the copy leaves it torn);
    the writer tlkit installs renames a complete file into place (a new inode every time).
    """
    monkeypatch.setattr(tempfile, "tempdir", str(other_filesystem))
    path = tmp_path / "last.ckpt"

    def inodes(io: TorchCheckpointIO) -> tuple[int, int]:
        io.save_checkpoint({"w": torch.zeros(4)}, path)
        first = path.stat().st_ino
        io.save_checkpoint({"w": torch.ones(4)}, path)
        return first, path.stat().st_ino

    first, second = inodes(TorchCheckpointIO())
    assert first == second, "the default writer rewrites the file in place here"
    path.unlink()

    trainer = pl.Trainer(
        logger=False,
        enable_progress_bar=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", save_last=True)],
    )
    protect_checkpoints(trainer)
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO)
    first, second = inodes(io)
    assert first != second
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "no temporary left"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelCheckpoint)] == [
        ModelCheckpoint,
        LastCheckpoint,
    ]
    assert trainer.checkpoint_callback.save_last is False
