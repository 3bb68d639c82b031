"""Weights and checkpoints whose unpickling runs code: refused unless ``--trust-weights``.

The payload of every file here creates a marker folder when unpickled, so each test sees
whether code ran, not only what the command said.
"""

from __future__ import annotations

import os
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch  # noqa: F401
import pytest
import torch
from helpers import write_tinted

from tlkit.backbones import create_backbone
from tlkit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cwd")]

QUICK = ["--epochs", "1", "--image-size", "32", "--trainer.enable_progress_bar", "false"]


class Payload:
    """Unpickles by creating ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker, 0o777, True))


def refused(capsys: pytest.CaptureFixture, argv: list[str], marker: Path) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "whose loading can run arbitrary code" in lines[0]
    assert "--trust-weights" in lines[0]
    assert not marker.exists(), "refused files must not run their code"
    return lines[0]


def test_weights_and_checkpoints_with_code_load_only_when_trusted(tmp_path, capsys):
    data = write_tinted(tmp_path / "data", per_class=5, size=16, classes=("a", "b"))
    marker = tmp_path / "code-ran"
    weights = {k: v.clone() for k, v in create_backbone().state_dict().items()}
    weights["conv_stem.weight"] += 0.01  # not the bundled weights: the file must be what loads
    torch.save({"state_dict": weights, "extra": Payload(marker)}, "weights.pth")
    finetune = ["finetune", "--data", str(data), *QUICK, "--weights", "weights.pth"]

    line = refused(capsys, [*finetune, "--out", "UNTRUSTED"], marker)
    assert "weights.pth" in line and "(os.makedirs)" in line
    assert not Path("UNTRUSTED").exists()

    assert main([*finetune, "--out", "RUN", "--trust-weights"]) == 0
    capsys.readouterr()
    assert marker.is_dir()
    trained = torch.load("RUN/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(trained["backbone.conv_stem.weight"], weights["conv_stem.weight"])

    checkpoint = torch.load("RUN/checkpoints/best.ckpt", weights_only=True)
    checkpoint["extra"] = Payload(marker)
    torch.save(checkpoint, "tampered.ckpt")
    marker.rmdir()
    image = str(data / "a" / "0.png")
    for command in (
        ["predict", "--checkpoint", "tampered.ckpt", "--data", image, "--out", "p.csv"],
        ["evaluate", "--checkpoint", "tampered.ckpt", "--data", str(data), "--split", "train"],
        ["export", "--checkpoint", "tampered.ckpt", "--out", "exported"],
        [*finetune[:-2], "--weights", "tampered.ckpt", "--out", "UNTRUSTED"],
    ):
        refused(capsys, command, marker)
    assert not Path("p.csv").exists()

    assert main(["predict", "--checkpoint", "tampered.ckpt", "--data", image, "--out", "p.csv",
                 "--trust-weights"]) == 0  # fmt: skip
    assert marker.is_dir()
    assert Path("p.csv").read_text().splitlines()[1].startswith(image)


def test_a_tampered_last_checkpoint_is_not_resumed_unless_trusted(tmp_path, capsys):
    data = write_tinted(tmp_path / "data", per_class=5, size=16, classes=("a", "b"))
    marker = tmp_path / "code-ran"
    epochs = ["--model.solver", "epochs"]  # a run trained by epochs, to resume
    assert main(["finetune", "--data", str(data), *QUICK, *epochs, "--out", "RUN"]) == 0
    last = Path("RUN/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["extra"] = Payload(marker)
    torch.save(checkpoint, last)
    config = Path("RUN/config.yaml")
    config.write_text(config.read_text().replace("max_epochs: 1", "max_epochs: 2"))
    capsys.readouterr()

    line = refused(capsys, ["finetune", "--out", "RUN", "--resume"], marker)
    assert str(last) in line
    assert sorted(p.name for p in Path("RUN/logs").glob("*.csv")) == ["metrics.csv"], "untouched"

    assert main(["finetune", "--out", "RUN", "--resume", "--trust-weights"]) == 0
    assert marker.is_dir()
    assert torch.load(last, weights_only=True)["epoch"] == 1

    last.write_bytes(last.read_bytes()[:50_000])
    capsys.readouterr()
    assert main(["finetune", "--out", "RUN", "--resume"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"checkpoint {last} is corrupt or not a checkpoint (" in line
    assert line.endswith("start a new run without --resume")
