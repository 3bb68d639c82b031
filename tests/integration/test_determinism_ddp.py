"""Reproducible runs: the same command twice gives the same metrics; DDP matches one process.

All runs start together (subprocesses for the separate-process and DDP runs, the rest in this
process meanwhile, every one on one thread) and are compared once they have finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch  # noqa: F401
import pytest
import torch
from helpers import write_tinted

from tlkit.cli import main

pytestmark = pytest.mark.slow  # the real Lite0 weights, the command line

TIMEOUT = 600
QUICK = ["--epochs", "2", "--image-size", "32", "--trainer.enable_progress_bar", "false"]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
#: the recipe's LR cycles and snapshots on a linear probe of cached features: quick under DDP
SNAPSHOT = ["--recipe", "snapshot-ensemble", "--model.dropout", "0",
            "--model.strategy", "linear_probe", "--model.strategy_args", "{bn: frozen_eval}",
            "--data.cache_features", "true"]  # fmt: skip
#: name -> (finetune options, batch size of one process)
RUNS = {
    # a probe trained by epochs on cached features (the default recipe solves it exactly: no
    # training loop, nothing to distribute)
    "default": (["--model.solver", "epochs"], 8),
    "partial": (["--model.strategy", "partial", "--data.augment", "light"], 8),
    "snapshot": (SNAPSHOT, 8),
}
UNTIMED = ("fit_seconds", "best_checkpoint", "resumed_from")


def _spawn(root: Path, out: str, argv: list[str], hash_seed: str) -> subprocess.Popen:
    """``tlkit ARGV --out OUT`` in a new process, with its own feature cache ``OUT-cache``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLKIT_CACHE_DIR": str(root / f"{out}-cache"),
           "PYTHONHASHSEED": hash_seed}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "tlkit", *argv, "--out", out],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run of this module; returns the folder holding ``<name>-<kind>/`` run directories.

    ``<name>-process``: a separate process (another hash seed); ``<name>-here``: this process;
    ``<name>-ddp``: two DDP ranks with half the batch each. Each has its own feature cache in
    ``<run>-cache/``.
    """
    root = tmp_path_factory.mktemp("runs")
    # 3 classes x 12: 24 train / 6 val / 6 test, so two ranks split every set evenly.
    data = str(write_tinted(root / "data", per_class=12, size=24))

    def argv(name: str, batch: int) -> list[str]:
        options, _ = RUNS[name]
        return ["finetune", "--data", data, *QUICK, "--batch-size", str(batch), *options]

    procs = {
        f"{name}-process": _spawn(root, f"{name}-process", argv(name, batch), "1")
        for name, (_, batch) in RUNS.items()
        if name != "snapshot"
    }
    for name in ("default", "snapshot"):
        half = RUNS[name][1] // 2
        procs[f"{name}-ddp"] = _spawn(root, f"{name}-ddp", [*argv(name, half), *DDP], "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            for name, (_, batch) in RUNS.items():
                mp.setenv("TLKIT_CACHE_DIR", str(root / f"{name}-here-cache"))
                assert main([*argv(name, batch), "--out", f"{name}-here"]) == 0
    finally:
        torch.set_num_threads(threads)
        for out, proc in procs.items():
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"{out}: {err}"
    return root


def metrics(run: Path) -> dict:
    record = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in record.items() if k not in UNTIMED}


@pytest.mark.parametrize("name", ["default", "partial"])
def test_the_same_command_twice_gives_the_same_metrics(runs, name):
    """A separate process (another hash seed) and this process agree on every metric, exactly;
    ``partial`` trains the top of the backbone on augmented images, ``default`` a probe on
    cached features."""
    here, there = metrics(runs / f"{name}-here"), metrics(runs / f"{name}-process")
    assert here == there
    assert here["epochs"] == 2 and here["test_acc"] > 1 / 3  # three tinted classes
    weights = [
        torch.load(runs / f"{name}-{kind}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
        for kind in ("here", "process")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("name", ["default", "snapshot"])
def test_ddp_on_two_cpu_ranks_matches_one_process(runs, name):
    """DDP (gloo, 2 ranks, half the batch each) against one process with the whole batch.

    Each step of the two ranks together sees exactly the one process's batch (tlkit deals the
    seeded order out to the ranks) and DDP averages their gradients, so the runs differ only in
    the order of floating-point sums (the gradient all-reduce, convolutions over 4 images instead
    of 8): about 1e-7 per step. Tolerance: weights within 1e-4, test loss within 1e-4, and
    accuracies within one test image, since a borderline prediction could flip. Dropout is off
    in the snapshot run: each rank draws its own masks, which no single process reproduces.
    """
    ddp, single = metrics(runs / f"{name}-ddp"), metrics(runs / f"{name}-here")
    assert ddp.keys() == single.keys()
    one_image = 1 / single["num_test"]
    for key in (k for k in single if k.startswith("test_")):
        tolerance = 1e-4 if "loss" in key or "nll" in key else one_image + 1e-6
        assert abs(ddp[key] - single[key]) <= tolerance, key
    assert abs(ddp["val_acc"] - single["val_acc"]) <= 1 / single["num_val"] + 1e-6
    measured = ("test_", "val_acc")
    assert {k: v for k, v in ddp.items() if not k.startswith(measured)} == {
        k: v for k, v in single.items() if not k.startswith(measured)
    }
    weights = [
        torch.load(runs / f"{name}-{kind}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
        for kind in ("ddp", "here")
    ]
    for key, tensor in weights[1].items():
        assert torch.allclose(weights[0][key], tensor, rtol=0, atol=1e-4), key
    if name == "snapshot":
        assert any(k.startswith("test_acc_snapshot_") for k in ddp)


@pytest.mark.parametrize("name", ["default", "snapshot"])
def test_only_rank_zero_writes_files(runs, name):
    run = runs / f"{name}-ddp"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        p.name for p in (runs / f"{name}-here").iterdir()
    )
    assert [p.relative_to(run) for p in run.rglob("metrics.json")] == [Path("metrics.json")]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run / "logs").glob("*.csv")) == ["metrics.csv"]
    cached = sorted((runs / f"{name}-ddp-cache").rglob("*.safetensors"))
    assert len(cached) == 3, "one feature file per split (train, val, test)"
    single = sorted((runs / f"{name}-here-cache").rglob("*.safetensors"))
    assert [p.name for p in cached] == [p.name for p in single], "same cache keys"
    assert not (runs / "runs").exists() and not (runs / "lightning_logs").exists()
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".tlkit-write-test"))
