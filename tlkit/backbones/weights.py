"""Read weights files and fit their state dicts onto timm models."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn

from tlkit.backbones.bundled import (
    classifier_prefixes,
    describe_mismatch,
    is_lukemelas,
    lukemelas_to_timm,
)
from tlkit.errors import TlkitError

__all__ = [
    "UNSAFE_GLOBAL",
    "fit_state_dict",
    "load_state_dict_into",
    "read_state_dict",
    "strip_prefix",
]

CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
    "ema",
    "model_ema",
    "state_dict_ema",
)
"""Keys under which checkpoints nest the actual state dict, in order of preference."""

KNOWN_PREFIXES = ("module.", "model.", "backbone.", "_orig_mod.", "encoder.", "net.")
"""Wrapper prefixes (DataParallel, Lightning, torch.compile, ...) stripped when nothing matches."""

UNSAFE_GLOBAL = re.compile(
    r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)"
)
"""Matches torch's ``weights_only`` refusal of a pickled object; group 1 names it."""


def _torch_load(path: Path, trust: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = UNSAFE_GLOBAL.search(str(err))
        if found is None:
            raise
        if not trust:
            culprit = found.group(1)
            raise TlkitError(
                f"weights file {path} holds Python objects ({culprit}) whose loading can run "
                "arbitrary code; if you trust the file, pass `trust_weights=True`"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=False)


def _unwrap(obj: object) -> object:
    for _ in range(8):
        if isinstance(obj, nn.Module):
            return obj.state_dict()
        if not isinstance(obj, Mapping):
            return obj
        inner = next(
            (obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None
        )
        if inner is None:
            return obj
        obj = inner
    return obj


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``name -> tensor`` dict.

    ``.safetensors`` files are read with safetensors; anything else (``.pth``, ``.pt``, ``.bin``,
    Lightning ``.ckpt``) with ``torch.load(weights_only=True)``. Containers such as
    ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped and non-tensor entries dropped.

    Args:
        path: The weights file.
        trust: Allow unpickling arbitrary Python objects (only for trusted files).

    Returns:
        The state dict, on CPU.

    Raises:
        TlkitError: If the file is missing, unreadable, needs ``trust`` or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"weights file {path} does not exist; check `weights=FILE`")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(path, device="cpu")
        else:
            obj = _torch_load(path, trust)
    except TlkitError:
        raise
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError):
            reason = "not a valid pickle"
        elif isinstance(err, EOFError):
            reason = "file is empty or truncated"
        else:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise TlkitError(
            f"cannot read weights file {path} ({reason}); expected a PyTorch .pth/.pt/.bin, "
            ".safetensors or Lightning .ckpt file"
        ) from err
    obj = _unwrap(obj)
    tensors = (
        {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        raise TlkitError(
            f"weights file {path} holds no state dict (found {type(obj).__name__} without "
            "tensors); pass a file saved from model.state_dict() or a Lightning checkpoint"
        )
    return tensors


def strip_prefix(state_dict: Mapping[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Remove the key prefix that makes the most keys match the model.

    The prefix is chosen among every dotted head of every key (``module.``, ``model.backbone.``,
    ``_orig_mod.module.``, ...). When a non-empty prefix wins, keys outside it are dropped (e.g.
    a Lightning module's own head). When no key matches at all, the :data:`KNOWN_PREFIXES`
    shared by every key are stripped repeatedly.

    Args:
        state_dict: Parameter name -> tensor.
        model_keys: The model's state dict keys.

    Returns:
        A new state dict with the prefix removed.
    """
    model_keys = set(model_keys)
    counts: dict[str, int] = {}
    for key in state_dict:
        if key in model_keys:
            counts[""] = counts.get("", 0) + 1
        for i, char in enumerate(key):
            if char == "." and key[i + 1 :] in model_keys:
                counts[key[: i + 1]] = counts.get(key[: i + 1], 0) + 1
    if counts:
        prefix = max(counts, key=lambda p: (counts[p], -len(p)))
        return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = dict(state_dict)
    while out:
        prefix = next((p for p in KNOWN_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _adapt_input_conv(
    state_dict: dict[str, torch.Tensor], key: str | None, want: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    weight = state_dict.get(key) if key is not None else None
    if weight is None or want is None or weight.ndim != 4 or weight.shape == want.shape:
        return state_dict
    if weight.shape[:1] + weight.shape[2:] != want.shape[:1] + want.shape[2:]:
        return state_dict
    return {**state_dict, key: adapt_input_conv(want.shape[1], weight)}


def fit_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str, backbone: str
) -> dict[str, torch.Tensor]:
    """Adapt a state dict to a timm model and check that it fits.

    Renames lukemelas EfficientNet keys, strips wrapper prefixes, adapts the first conv to the
    model's input channels, and drops the old classifier when the model has none or its shape
    differs. Missing ``num_batches_tracked`` buffers are tolerated.

    Args:
        state_dict: Parameter name -> tensor, as read from ``source``.
        model: The timm model to load into.
        source: What to call the weights in errors, e.g. the file path.
        backbone: The backbone name, for errors.

    Returns:
        A state dict ready for ``model.load_state_dict(..., strict=False)``.

    Raises:
        TlkitError: If keys are missing or unexpected, or shapes differ, outside the classifier.
    """

    def misfit(detail: str) -> TlkitError:
        return TlkitError(
            f"weights file {source} does not fit backbone {backbone}: {detail}; "
            "check `backbone=NAME`"
        )

    target = model.state_dict()
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    conv_key = f"{first_conv}.weight" if isinstance(first_conv, str) else None
    if is_lukemelas(state_dict):
        stem = next(k for k in state_dict if k.endswith("_conv_stem.weight"))
        state_dict = _adapt_input_conv(state_dict, stem, target.get(conv_key))
        try:
            state_dict = lukemelas_to_timm(state_dict, model)
        except ValueError as err:
            raise misfit(str(err)) from None
    else:
        state_dict = strip_prefix(state_dict, target)
        state_dict = _adapt_input_conv(state_dict, conv_key, target.get(conv_key))

    head = classifier_prefixes(model)
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if not (k.startswith(head) and (k not in target or v.shape != target[k].shape))
    }
    missing = [
        k
        for k in target
        if k not in state_dict and not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [k for k, v in state_dict.items() if k in target and v.shape != target[k].shape]
    if missing or unexpected or shapes:
        raise misfit(describe_mismatch(missing, unexpected, shapes))
    return state_dict


def load_state_dict_into(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, backbone: str
) -> nn.Module:
    """Fit ``state_dict`` onto ``model`` (see :func:`fit_state_dict`) and load it in place.

    Args:
        model: The timm model.
        state_dict: Parameter name -> tensor.
        source: What to call the weights in errors.
        backbone: The backbone name, for errors.

    Returns:
        ``model``, with the weights loaded.
    """
    model.load_state_dict(fit_state_dict(state_dict, model, source, backbone), strict=False)
    return model
