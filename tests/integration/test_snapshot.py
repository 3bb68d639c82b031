"""Tests for SnapshotEnsemble: cyclic LR per group, lean snapshots, ensembling, resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tlkit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_snapshot_recipe_runs_end_to_end(tmp_path):
    env = dict(os.environ, TLKIT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "tlkit", "finetune", "--recipe", "snapshot-ensemble"]
    command += ["--epochs", "3", "--image-size", "32", "--shots", "5", "--out", "run"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    accs = [metrics[f"test_acc_snapshot_{c}"] for c in range(1, 4)]
    assert "test_acc_snapshot_4" not in metrics
    # each snapshot was scored on the whole test split
    assert all(
        a * metrics["num_test"] == pytest.approx(round(a * metrics["num_test"])) for a in accs
    )
    assert metrics["test_ensemble_gain"] == pytest.approx(
        metrics["test_acc_ensemble"] - accs[-1], abs=1e-6
    )
    assert metrics["test_acc"] == pytest.approx(accs[-1], abs=1e-6)  # tested the last weights
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)
    snapshots = ckpt["callbacks"]["SnapshotEnsemble"]["snapshots"]
    assert [s["cycle"] for s in snapshots] == [1, 2, 3]
    # partial k=2 trains the top two stages of tf_efficientnet_lite0 (blocks 5 and 6, with the
    # final conv and its BN) and the head; a snapshot stores those and none of the frozen rest
    trained = ("backbone.blocks.5.", "backbone.blocks.6.", "backbone.conv_head.", "backbone.bn2.")
    trained += ("head.",)
    state = ckpt["state_dict"]
    frozen = {name for name in state if not name.startswith(trained)}
    assert any(name.startswith("backbone.blocks.4.") for name in frozen)
    assert any(name.startswith("backbone.conv_stem.") for name in frozen)
    for s in snapshots:
        assert set(s["tensors"]) == set(state) - frozen
    # `tlkit evaluate` on that checkpoint averages its snapshots: the callback's ensemble figure
    from tlkit.inference import ensemble_size, load_checkpoint

    assert ensemble_size(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")) == 3
    code = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
                 "--data", "demo", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0
    evaluated = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluated["acc"] == pytest.approx(metrics["test_acc_ensemble"], abs=2 / 500)
