"""Export a trained model: timm-loadable safetensors, ONNX or TorchScript, each verified."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from tlkit.errors import TlkitError
from tlkit.heads import Classifier
from tlkit.inference import LoadedModel
from tlkit.probe_ensemble import ProbeEnsemble
from tlkit.utils import atomic_path

__all__ = ["FORMATS", "export", "timm_state_dict"]

FORMATS = ("safetensors", "onnx", "torchscript")
_TOLERANCE = 1e-4


def timm_state_dict(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The model as one timm state dict: backbone weights plus the head as timm's classifier.

    Only a linear head on the final features maps onto timm's classifier.
    """
    model = loaded.model
    if isinstance(model, ProbeEnsemble):
        raise TlkitError(
            "this model is an ensemble of a fine-tuned network and a probe, which no single "
            "timm model holds; export it with `format=onnx` or `format=torchscript`"
        )
    fmp = model.hparams.pool == "fmp"
    if model.hparams.head_hidden or model.strategy.feature_stage is not None or fmp:
        raise TlkitError(
            "this model's head (hidden layer, earlier-stage features or fractional max pooling) "
            "has no timm equivalent; "
            "export it with `format=onnx` or `format=torchscript`"
        )
    classifier = model.backbone.pretrained_cfg.get("classifier")
    if not isinstance(classifier, str):
        raise TlkitError(
            f"timm names no classifier for {model.hparams.backbone}; use `format=onnx`"
        )
    linear = model.head[-1]
    state = {k: v.detach().clone().contiguous() for k, v in model.backbone.state_dict().items()}
    state[f"{classifier}.weight"] = linear.weight.detach().clone().contiguous()
    state[f"{classifier}.bias"] = linear.bias.detach().clone().contiguous()
    return state


def _timm_args(model) -> dict:
    """What ``timm.create_model`` needs besides the name to build the same network as ``model``."""
    stride = model.hparams.get("output_stride")
    return {"output_stride": stride} if stride else {}


def _metadata(loaded: LoadedModel, weights_file: Path | None) -> dict:
    spec = loaded.pipeline()
    name, num = loaded.model.hparams.backbone, len(loaded.class_names)
    meta = {
        "backbone": name,
        "num_classes": num,
        "labels": loaded.class_names,
        "preprocessing": {
            "input_size": [3, spec.size, spec.size],
            "crop_pct": spec.crop_pct,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": loaded.model.backbone.pretrained_cfg.get("interpolation", "bilinear"),
        },
    }
    if weights_file is not None:
        extra = "".join(f"{key}={value}, " for key, value in _timm_args(loaded.model).items())
        meta["timm"] = (
            f"timm.create_model('{name}', num_classes={num}, pretrained=True, {extra}"
            f"pretrained_cfg_overlay=dict(file='{weights_file}', num_classes={num}))"
        )
    return meta


def _check_same(reference: torch.Tensor, exported: torch.Tensor, fmt: str) -> None:
    diff = float((reference - exported).abs().max())
    if diff > _TOLERANCE:
        raise TlkitError(f"{fmt} export differs from the PyTorch model (max |diff| {diff:.2e})")


def _example(loaded: LoadedModel) -> torch.Tensor:
    size = loaded.pipeline().size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def export(loaded: LoadedModel, out: str | Path, fmt: str = "safetensors") -> list[Path]:
    """Write ``out.<ext>`` plus ``out.json`` (labels and preprocessing), verified against PyTorch.

    Args:
        loaded: A checkpoint from :func:`tlkit.inference.load_checkpoint`.
        out: Output path without extension.
        fmt: ``safetensors`` (loads with ``timm.create_model``), ``onnx`` or ``torchscript``.

    Returns:
        The files written.
    """
    if fmt not in FORMATS:
        raise TlkitError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = loaded.model.eval()
    if isinstance(module, ProbeEnsemble):
        model = module.plain().eval()
    else:
        strategy = module.strategy
        model = Classifier(module.backbone, module.head, strategy.feature_stage, strategy.grid)
        model = model.eval()
    example = _example(loaded)
    with torch.inference_mode():
        reference = model(example)
    if fmt == "safetensors":
        target = out.with_suffix(".safetensors")
        with atomic_path(target) as tmp:
            save_file(timm_state_dict(loaded), str(tmp))
        name, num = module.hparams.backbone, len(loaded.class_names)
        overlay = {"file": str(target), "num_classes": num}
        rebuilt = timm.create_model(
            name,
            num_classes=num,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            **_timm_args(module),
        )
        with torch.inference_mode():
            _check_same(reference, rebuilt.eval()(example), fmt)
    elif fmt == "torchscript":
        target = out.with_suffix(".pt")
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        with atomic_path(target) as tmp:
            traced.save(str(tmp))
        with torch.inference_mode():
            _check_same(reference, torch.jit.load(str(target))(example), fmt)
    else:
        target = out.with_suffix(".onnx")
        _export_onnx(model, example, target, reference)
    meta_path = out.with_suffix(".json")
    meta = _metadata(loaded, target if fmt == "safetensors" else None)
    meta["format"], meta["file"] = fmt, target.name
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return [target, meta_path]


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, target: Path, reference) -> None:
    try:
        import onnxruntime
    except ImportError as err:
        raise TlkitError(
            "ONNX export needs onnx and onnxruntime, which tlkit installs: "
            "pip install onnx onnxruntime"
        ) from err
    with atomic_path(target) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {"images": example.numpy()})
    _check_same(reference, torch.from_numpy(outputs), "onnx")
