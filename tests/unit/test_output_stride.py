"""``output_stride``: a dilated backbone sees small images in more detail, and stays one model
through checkpoints and export."""

from __future__ import annotations

import pytest
import torch

from tlkit.errors import TlkitError
from tlkit.export import export
from tlkit.inference import LoadedModel, load_checkpoint
from tlkit.module import TransferModule

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kwargs) -> TransferModule:
    return TransferModule(3, backbone="test_efficientnet", pretrained=False, **kwargs).eval()


def test_stride_8_keeps_four_times_the_rows_and_columns_of_the_last_map():
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = _model().backbone.forward_features(images)
        dilated = _model(output_stride=8).backbone.forward_features(images)
    assert plain.shape[-2:] == (2, 2)
    assert dilated.shape[-2:] == (8, 8)


def test_a_dilated_model_reloads_and_exports_as_the_same_model(tmp_path):
    torch.manual_seed(0)
    module = _model(output_stride=8, strategy="full")
    path = tmp_path / "dilated.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(path).model(images), module(images), atol=1e-5)
    loaded = LoadedModel(module, path, ["a", "b", "c"], 64, {})
    files = export(loaded, tmp_path / "dilated", "safetensors")  # checks timm's rebuild agrees
    meta = next(f for f in files if f.suffix == ".json").read_text()
    assert "output_stride=8" in meta


def test_other_strides_are_refused_with_the_choices():
    with pytest.raises(TlkitError, match="output_stride must be 8, 16 or 32, got 4"):
        _model(output_stride=4)
