"""The four recipes of the transfer-learning matrix: content, and an end-to-end run of each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tlkit.recipes import recipe_path
from tlkit.report import effective_lr, read_logs

pytestmark = pytest.mark.slow  # the real Lite0 weights, the command line


CELLS = ("small-similar", "small-different", "large-similar", "large-different")


def _config(name: str) -> dict:
    return yaml.safe_load(recipe_path(name).read_text())


@pytest.mark.parametrize("name", CELLS)
def test_recipe_runs_end_to_end(name: str, tmp_path: Path) -> None:
    env = dict(os.environ, TLKIT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "tlkit", "finetune", "--recipe", name]
    command += ["--epochs", "1", "--image-size", "32", "--shots", "5", "--out", "tmp"]
    command += ["--trainer.log_every_n_steps", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "tmp"
    metrics = json.loads((run / "metrics.json").read_text())
    model = _config(name)["model"]
    assert metrics["strategy"]["name"] == model["strategy"]
    for key, value in (model.get("strategy_args") or {}).items():
        assert metrics["strategy"][key] == value
    assert metrics["num_train"] == 50
    assert (run / "checkpoints" / "last.ckpt").is_file()
    if name.startswith("small-"):  # solved exactly: no epochs, a cross-validated estimate
        assert metrics["solver"] == "exact"
        assert metrics["epochs"] == 0
        assert metrics["labelled"] == metrics["num_train"] + metrics["num_val"]
        expected = metrics["expected_accuracy"]
        assert expected["low"] <= expected["estimate"] <= expected["high"]
        assert metrics["test_acc"] > 0.2  # 10 classes: chance is 0.1
        return
    plan = {row["group"]: row["trains_from_epoch"] for row in metrics["plan"]}
    assert plan["head"] == 0
    series, never = effective_lr(read_logs(run / "logs"), metrics["plan"])
    assert set(never) == {group for group, start in plan.items() if start is None}
    assert "head" in series
    assert (run / "plots" / "lr.png").is_file()
    assert metrics["probe_test_acc"] > 0.2  # the exact probe was fitted first, as a baseline
    assert "exact probe" in metrics["probe_verdict"]
