"""`tlkit pretrain` trains a backbone from scratch and writes weights `--weights` accepts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tlkit.cli import main
from tlkit.inference import load_checkpoint

pytestmark = pytest.mark.slow  # the real Lite0 weights, the command line


def test_pretrain_then_finetune_from_its_weights(make_shapes, tmp_path, one_thread, capsys):
    source = make_shapes(per_class=8)
    pre, post = tmp_path / "pre", tmp_path / "post"
    common = ["--backbone", "test_resnet", "--epochs", "1", "--image-size", "32"]
    common += ["--trainer.enable_progress_bar", "false"]
    assert main(["pretrain", "--data", str(source), "--out", str(pre), *common]) == 0
    weights = load_file(str(pre / "backbone.safetensors"))
    trained = load_checkpoint(json.loads((pre / "metrics.json").read_text())["best_checkpoint"])
    for name, tensor in trained.model.backbone.state_dict().items():
        assert torch.equal(weights[name], tensor)
    assert not any(k.startswith("fc.") for k in weights)  # the source head is not a backbone part

    args = ["finetune", "--recipe", "small-similar", "--data", str(source), "--out", str(post)]
    assert main([*args, "--weights", str(pre / "backbone.safetensors"), *common]) == 0
    tuned = load_checkpoint(post / "checkpoints" / "best.ckpt")
    # linear probe: the backbone is exactly the pretrained one
    for name, tensor in tuned.model.backbone.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    assert json.loads((post / "metrics.json").read_text())["weights"].startswith("file:")
