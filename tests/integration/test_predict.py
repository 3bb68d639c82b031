"""``tlkit predict``, ``evaluate`` and ``export``: one prediction path through ``Trainer.predict``.

The checkpoints here are written by hand from a tiny random model, so every expected probability is
computed in the test itself: the softmax of the model over the preprocessed images, averaged over
snapshot members (the checkpoint's model with one snapshot's tensors loaded over it) and over
mirror images.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch  # noqa: F401
import pytest
import timm
import torch
from helpers import write_shapes

from tlkit.callbacks import SnapshotEnsemble
from tlkit.cli.predict import evaluate_command, export_command, predict_command
from tlkit.data.images import load_image
from tlkit.errors import TlkitError
from tlkit.inference import (
    LoadedModel,
    ensemble_probabilities,
    ensemble_size,
    load_checkpoint,
    predict_probabilities,
)
from tlkit.module import TransferModule
from tlkit.transforms import eval_transform

CLASSES = ["circle", "square", "triangle"]
SIZE = 32

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _tiny_model(seed: int) -> TransferModule:
    torch.manual_seed(seed)
    model = TransferModule(
        num_classes=3, backbone="test_efficientnet", pretrained=False, class_names=CLASSES
    )
    with torch.no_grad():
        model.head[-1].weight.mul_(20)  # confident outputs: averaging visibly changes them
    return model.eval()


def _head_snapshots(model: TransferModule, count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [
        {
            f"head.{name}": param.detach() + torch.randn(param.shape, generator=generator)
            for name, param in model.head.named_parameters()
        }
        for _ in range(count)
    ]


def _write_checkpoint(
    path: Path, model: TransferModule, snapshots: list[dict[str, torch.Tensor]] | None = None
) -> Path:
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "datamodule_hyper_parameters": {"image_size": SIZE},
    }
    if snapshots:
        state = SnapshotEnsemble(cycles=len(snapshots)).state_dict()
        state.update(
            taken=len(snapshots),
            tracked=sorted(snapshots[0]),
            snapshots=[{"cycle": c + 1, "tensors": t} for c, t in enumerate(snapshots)],
        )
        checkpoint["callbacks"] = {"SnapshotEnsemble": state}
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    write_shapes(data / "train", per_class=3, size=SIZE, seed=0)
    write_shapes(data / "test", per_class=3, size=SIZE, seed=1)
    plain, snap = _tiny_model(0), _tiny_model(1)
    return {
        "data": data,
        "plain": _write_checkpoint(root / "plain.ckpt", plain),
        "snap": _write_checkpoint(root / "snap.ckpt", snap, _head_snapshots(snap, 3)),
    }


def _images(runs: dict[str, Path]) -> list[str]:
    return sorted(str(p) for p in (runs["data"] / "test").rglob("*.png"))


@torch.no_grad()
def _softmax_by_hand(loaded: LoadedModel, files: list[str], flip: bool = False) -> torch.Tensor:
    """The model's softmax over the images, loaded and preprocessed one by one."""
    transform = eval_transform(loaded.pipeline())
    x = torch.stack([transform(image=load_image(f))["image"] for f in files])
    model = loaded.model.eval()
    probs = model(x).softmax(-1)
    return (probs + model(x.flip(-1)).softmax(-1)) / 2 if flip else probs


def _members(loaded: LoadedModel) -> list[LoadedModel]:
    """The snapshot-ensemble members: the checkpoint's model with each snapshot loaded over it."""
    (state,) = loaded.checkpoint["callbacks"].values()
    members = []
    for snapshot in state["snapshots"]:
        model = copy.deepcopy(loaded.model)
        model.load_state_dict(snapshot["tensors"], strict=False)
        members.append(LoadedModel(model, loaded.path, loaded.class_names, SIZE, {}))
    return members


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_predict_writes_the_top_k_labels_and_probabilities_of_the_model(runs, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    argv = ["--checkpoint", str(runs["plain"]), "--data", str(runs["data"] / "test")]
    assert predict_command([*argv, "--out", str(out), "--top-k", "2", "--batch-size", "4"]) == 0
    assert capsys.readouterr().out == f"wrote 9 predictions to {out}\n"
    files = _images(runs)
    expected = _softmax_by_hand(load_checkpoint(runs["plain"]), files)
    header, *rows = _rows(out)
    assert header == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    assert [row[0] for row in rows] == files
    top_p, top_i = expected.topk(2, dim=1)
    for row, ps, ix in zip(rows, top_p.tolist(), top_i.tolist(), strict=True):
        assert row[1::2] == [CLASSES[i] for i in ix]
        assert [float(p) for p in row[2::2]] == pytest.approx(ps, abs=1e-5)


def test_a_snapshot_checkpoint_predicts_the_mean_softmax_of_its_snapshots(runs):
    loaded = load_checkpoint(runs["snap"])
    files = _images(runs)
    members = _members(loaded)
    expected = torch.stack([_softmax_by_hand(m, files) for m in members]).mean(0)
    predicted = predict_probabilities(loaded, files, batch_size=4)
    assert torch.allclose(predicted, expected, atol=1e-5)
    assert not torch.allclose(predicted, _softmax_by_hand(loaded, files), atol=1e-2)
    assert ensemble_size(loaded) == 3
    assert "forward" not in vars(loaded.model)


def test_flip_tta_runs_in_the_trainer_predict_path(runs):
    loaded = load_checkpoint(runs["plain"])
    files = _images(runs)
    flipped = predict_probabilities(loaded, files, batch_size=4, tta=True)
    assert torch.allclose(flipped, _softmax_by_hand(loaded, files, flip=True), atol=1e-5)
    assert not torch.allclose(flipped, predict_probabilities(loaded, files), atol=1e-3)


def test_flip_tta_and_snapshots_average_both_and_leave_the_model_as_it_was(runs):
    loaded = load_checkpoint(runs["snap"])
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    files = _images(runs)
    expected = torch.stack([_softmax_by_hand(m, files, flip=True) for m in _members(loaded)])
    predicted = predict_probabilities(loaded, files, batch_size=4, tta=True)
    assert torch.allclose(predicted, expected.mean(0), atol=1e-5)
    assert "forward" not in vars(loaded.model)
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)


def test_an_ensemble_counts_every_snapshot_as_one_model(runs, tmp_path):
    snap, plain = load_checkpoint(runs["snap"]), load_checkpoint(runs["plain"])
    files = _images(runs)
    members = [*_members(snap), plain]
    expected = torch.stack([_softmax_by_hand(m, files) for m in members]).mean(0)
    assert torch.allclose(ensemble_probabilities([snap, plain], files), expected, atol=1e-5)

    other = _tiny_model(2)
    other.hparams.class_names = ["a", "b", "c"]
    other_loaded = load_checkpoint(_write_checkpoint(tmp_path / "other.ckpt", other))
    with pytest.raises(TlkitError, match="have different classes"):
        ensemble_probabilities([plain, other_loaded], files)


def test_evaluate_writes_metrics_and_a_confusion_matrix_of_the_ensemble(runs, tmp_path, capsys):
    out = tmp_path / "evaluation"
    argv = ["--checkpoint", str(runs["snap"]), str(runs["plain"]), "--data", str(runs["data"])]
    assert evaluate_command([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'evaluation.json'} and {out / 'confusion_matrix.png'}" in printed
    result = json.loads((out / "evaluation.json").read_text())
    assert result["checkpoints"] == [str(runs["snap"])] * 3 + [str(runs["plain"])]
    snap, plain = load_checkpoint(runs["snap"]), load_checkpoint(runs["plain"])
    files = _images(runs)
    targets = torch.tensor([CLASSES.index(Path(f).parent.name) for f in files])
    probs = torch.stack([_softmax_by_hand(m, files) for m in [*_members(snap), plain]]).mean(0)
    assert result["num_samples"] == 9
    assert result["acc"] == pytest.approx(float((probs.argmax(1) == targets).float().mean()))
    assert sum(map(sum, result["confusion_matrix"])) == 9
    assert (out / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_bad_arguments_and_data_raise_one_line_errors(runs, tmp_path):
    plain = str(runs["plain"])
    with pytest.raises(TlkitError, match="--top-k and --batch-size must be positive"):
        predict_command(["--checkpoint", plain, "--data", str(runs["data"]), "--top-k", "0"])
    with pytest.raises(TlkitError, match="--batch-size must be positive"):
        evaluate_command(["--checkpoint", plain, "--data", str(runs["data"]), "--batch-size", "0"])
    with pytest.raises(TlkitError, match="does not exist; pass an image file or a folder"):
        predict_command(["--checkpoint", plain, "--data", str(tmp_path / "nope")])
    other = write_shapes(tmp_path / "other", per_class=1, size=SIZE)
    (other / "dog").mkdir()
    shutil.copy(_images(runs)[0], other / "dog" / "x.png")
    with pytest.raises(TlkitError, match=r"classes \['dog'\] of .* are not among the model's"):
        evaluate_command(["--checkpoint", plain, "--data", str(other), "--split", "train"])


def test_export_writes_a_timm_loadable_file_and_a_torchscript_model(runs, tmp_path, capsys):
    loaded = load_checkpoint(runs["plain"])
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = loaded.model(x)
    out = tmp_path / "model"
    assert export_command(["--checkpoint", str(runs["plain"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {out}.safetensors", f"wrote {out}.json"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["labels"] == CLASSES and meta["format"] == "safetensors"
    overlay = {"file": str(out.with_suffix(".safetensors")), "num_classes": 3}
    rebuilt = timm.create_model(
        "test_efficientnet", num_classes=3, pretrained=True, pretrained_cfg_overlay=overlay
    )
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), reference, atol=1e-4)

    argv = ["--checkpoint", str(runs["plain"]), "--format", "torchscript", "--out", str(out)]
    assert export_command(argv) == 0
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(f"{out}.pt")(x), reference, atol=1e-4)


def _run_predict(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlkit", "predict", *argv],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_prediction_is_quiet_unless_verbose(runs, tmp_path):
    argv = ["--checkpoint", str(runs["snap"]), "--data", str(runs["data"] / "test")]
    quiet = _run_predict(*argv, "--out", "q.csv", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "wrote 9 predictions to q.csv\n"
    assert quiet.stderr == ""
    verbose = _run_predict(*argv, "--out", "v.csv", "--verbose", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "GPU available" in verbose.stderr
    assert _rows(tmp_path / "q.csv") == _rows(tmp_path / "v.csv")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_prediction_runs_on_the_gpu_when_there_is_one(runs):
    loaded = load_checkpoint(runs["snap"])
    files = _images(runs)
    devices = []
    step = loaded.model.predict_step

    def recording_step(batch, batch_idx):
        devices.append(batch.device.type)
        return step(batch, batch_idx)

    loaded.model.predict_step = recording_step
    predicted = predict_probabilities(loaded, files, batch_size=4)
    assert devices and set(devices) == {"cuda"}
    expected = torch.stack([_softmax_by_hand(m, files) for m in _members(loaded)]).mean(0)
    assert torch.allclose(predicted, expected, atol=1e-5)
    assert next(loaded.model.parameters()).device.type == "cpu"
