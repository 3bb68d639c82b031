"""The large cells never ship worse than the exact probe: compared on validation, the better one
becomes ``best.ckpt``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_shapes

from tlkit.cli import main
from tlkit.inference import ensemble_probabilities, load_checkpoint

pytestmark = pytest.mark.usefixtures("isolated_cwd")



@pytest.fixture
def tiny(tmp_path) -> list[str]:
    """A tiny backbone with weights from a file: every fresh copy of it is the same network."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(path))
    return ["--backbone", "test_efficientnet", "--weights", str(path), "--image-size", "32"]


def _test_accuracy(checkpoint: Path, folder: Path) -> float:
    items, labels = [], []
    for label, class_dir in enumerate(sorted(folder.iterdir())):
        for image in sorted(class_dir.iterdir()):
            items.append(str(image))
            labels.append(label)
    probs = ensemble_probabilities([load_checkpoint(checkpoint)], items, progress=False)
    return float((probs.argmax(1) == torch.tensor(labels)).float().mean())


def test_when_fine_tuning_loses_on_validation_best_ckpt_is_the_probe(tmp_path, tiny, capsys):
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=16, seed=0)
    write_shapes(data / "test", per_class=6, seed=1)
    # One epoch at a vanishing LR leaves the new head random: the probe wins on validation.
    argv = ["finetune", "--recipe", "large-similar", "--data", str(data), *tiny, "--epochs", "1"]
    assert main([*argv, "--model.lr", "1e-9", "--out", "RUN"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["shipped"] == "probe"
    assert metrics["probe_val_acc"] >= metrics["finetuned_val_acc"]
    assert metrics["test_acc"] == pytest.approx(metrics["probe_test_acc"])
    assert "best.ckpt is the probe" in out and "did NOT beat" in out
    best, tuned = Path("RUN/checkpoints/best.ckpt"), Path("RUN/checkpoints/finetuned.ckpt")
    assert tuned.is_file() and metrics["finetuned_checkpoint"] == str(tuned.resolve())
    # What predict reads is the probe, and it scores what the run reported.
    assert load_checkpoint(best).model.hparams.solver == "exact"
    assert _test_accuracy(best, data / "test") == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert _test_accuracy(tuned, data / "test") == pytest.approx(
        metrics["finetuned_test_acc"], abs=1e-6
    )
    report = Path("RUN/report.md").read_text()
    assert f"{metrics['test_acc']:.4f}" in report


def test_when_fine_tuning_wins_on_validation_nothing_is_swapped(tmp_path):
    from types import SimpleNamespace

    from tlkit.floor import ProbeFloor, settle
    from tlkit.probe import fit_probe

    x, y = torch.randn(20, 4), torch.arange(20) % 2
    probs, labels = torch.full((10, 2), 0.5), torch.zeros(10, dtype=torch.int64)
    top = {"name": "top", "stage": None}
    floor = ProbeFloor(top, (None,), fit_probe(x, y, 1.0, 2), 0.5, probs, labels, 0.1)
    best = tmp_path / "best.ckpt"
    best.write_bytes(b"fine-tuned")
    metrics = {"val_acc": 0.75, "test_acc": 0.8, "best_checkpoint": str(best)}
    assert settle(floor, metrics, SimpleNamespace(), SimpleNamespace()) is None
    assert metrics["shipped"] == "finetuned" and metrics["test_acc"] == 0.8
    assert "75.0 % vs 50.0 % on validation" in metrics["probe_verdict"]
    assert best.read_bytes() == b"fine-tuned" and not (tmp_path / "finetuned.ckpt").exists()
