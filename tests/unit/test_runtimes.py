"""Frozen passes on ONNX Runtime and OpenVINO give torch's features, follow the weights and fall
back to torch when they cannot run a model."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import error_line, needs_lite0
from torch import nn

from tlkit.backbones import create_backbone
from tlkit.errors import TlkitError
from tlkit.heads import Encoder
from tlkit.runtimes import FrozenPass, available_runtimes, runtime_cache_dir, selected_runtime

FAST = [name for name in available_runtimes() if name != "torch"]


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return create_backbone("tf_efficientnet_lite0").eval()


def images(n: int = 5, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_both_runtimes_are_installed_with_the_test_extra():
    assert FAST == ["openvino", "onnxruntime"]
    assert selected_runtime() == "openvino"


@needs_lite0
@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("stage", [None, (None, 4)])
def test_the_runtimes_give_torchs_features(lite0, runtime, stage):
    encoder = Encoder(lite0, stage)
    frozen = FrozenPass(encoder, "lite0", runtime)
    x = images()
    got = frozen(x)
    with torch.inference_mode():
        want = encoder(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert frozen._sessions[tuple(x.shape[1:])] is not None, "it ran on the runtime, not torch"
    # a batch of another length reuses the export (dynamic batch axis)
    torch.testing.assert_close(frozen(x[:2]), want[:2], atol=1e-4, rtol=1e-4)
    assert len(list(runtime_cache_dir().glob("*.onnx"))) == 1


@needs_lite0
def test_a_change_of_weights_is_never_served_stale(lite0):
    backbone = create_backbone("tf_efficientnet_lite0").eval()
    encoder = Encoder(backbone)
    frozen = FrozenPass(encoder, "lite0", "onnxruntime")
    x = images()
    before = frozen(x)
    with torch.no_grad():
        backbone.conv_head.weight.mul_(0.5)  # in place, as load_state_dict writes
    after = frozen(x)
    with torch.inference_mode():
        want = encoder(x)
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after, want, atol=1e-4, rtol=1e-4)
    assert len(list(runtime_cache_dir().glob("*.onnx"))) == 2, "one export per weights"


@needs_lite0
def test_a_second_pass_on_the_same_weights_reuses_the_export_on_disk(lite0):
    x = images()
    FrozenPass(Encoder(lite0), "lite0", "onnxruntime")(x)
    (export,) = runtime_cache_dir().glob("*.onnx")
    stamp = export.stat().st_mtime_ns
    FrozenPass(Encoder(lite0), "lite0", "onnxruntime")(x)
    assert [p.stat().st_mtime_ns for p in runtime_cache_dir().glob("*.onnx")] == [stamp]


class NumpyHop(nn.Module):
    """A module the ONNX exporter cannot trace through (its output goes through numpy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.mean(dim=(2, 3)).numpy() * 2.0)


def test_a_model_the_runtime_cannot_run_stays_on_torch(capsys):
    x = images(4, 16)
    got = FrozenPass(NumpyHop(), "hop", "onnxruntime")(x)
    torch.testing.assert_close(got, x.mean(dim=(2, 3)) * 2.0)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("frozen pass on torch (onnxruntime")


def test_a_small_pass_and_the_torch_runtime_stay_on_torch():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = images(4, 16)
    small = FrozenPass(model, "tiny", "onnxruntime")
    small.planned = 4
    small(x)
    on_torch = FrozenPass(model, "tiny", "torch")
    on_torch(x)
    assert small._sessions == {(3, 16, 16): None} and on_torch._sessions == {}
    assert not runtime_cache_dir().exists()


def test_the_runtime_is_chosen_by_name_or_environment(monkeypatch):
    monkeypatch.setenv("TLKIT_RUNTIME", "torch")
    assert selected_runtime() == "torch"
    assert selected_runtime("onnxruntime") == "onnxruntime"
    monkeypatch.setenv("TLKIT_RUNTIME", "tensorrt")
    with pytest.raises(TlkitError, match="unknown runtime 'tensorrt'; choose one of: auto"):
        selected_runtime()
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    assert selected_runtime("auto") == "onnxruntime"
    with pytest.raises(TlkitError, match="runtime openvino is not installed: pip install"):
        selected_runtime("openvino")


def test_the_command_line_names_a_wrong_runtime_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("TLKIT_RUNTIME", raising=False)
    line = error_line(capsys, "advise", "--data", "demo", "--runtime", "tensorrt")
    assert line == (
        "tlkit: error: unknown runtime 'tensorrt'; choose one of: auto, onnxruntime, openvino, "
        "torch"
    )


@needs_lite0
def test_a_module_predicts_the_same_through_its_frozen_pass():
    from tlkit.module import TransferModule

    model = TransferModule(num_classes=3, strategy="probe_stage", strategy_args={"stage": 4})
    model.eval()
    x = images(4, 64)
    with torch.no_grad():
        want = model(x)
        model.use_frozen_pass(True, images=1000)
        got = model(x)
        model.use_frozen_pass(False)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert model.frozen_pass()._sessions[(3, 64, 64)] is not None
    assert model.frozen_pass().runtime == "openvino"
