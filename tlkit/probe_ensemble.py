"""A fine-tuned model averaged with the frozen exact probe: what a large-cell run ships when
the pair beats both members on validation (:mod:`tlkit.floor`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlkit.errors import TlkitError
from tlkit.heads import Classifier, log_mean_probabilities
from tlkit.module import TransferModule

__all__ = ["MeanOfTwo", "ProbeEnsemble", "frozen_probe", "is_ensemble"]

PROBE_STRATEGIES = ("linear_probe", "probe_stage")


class ProbeEnsemble(TransferModule):
    """A :class:`~tlkit.module.TransferModule` whose class probabilities are averaged with
    those of a frozen probe on the same backbone's pretrained weights.

    It is a finished model, assembled after fine-tuning, never trained: ``fit`` refuses it.
    ``forward`` returns the log of the members' mean probabilities, so its softmax (what
    ``tlkit predict`` and the test metrics read) is that mean.

    Args:
        probe_partner: The probe as ``{"strategy": "linear_probe" | "probe_stage",
            "strategy_args": {...}}``; it reads the pretrained backbone (``weights`` /
            ``pretrained``) and a head solved exactly (``solver: exact``).
        **settings: The fine-tuned model's :class:`~tlkit.module.TransferModule` settings.
    """

    def __init__(self, probe_partner: dict[str, Any], **settings: Any) -> None:
        if not isinstance(probe_partner, dict) or probe_partner.get("strategy") not in (
            PROBE_STRATEGIES
        ):
            raise TlkitError(
                f"probe_partner must be a mapping with strategy linear_probe or probe_stage, "
                f"got {probe_partner!r}; pass the probe of a large-cell run"
            )
        super().__init__(**settings)
        self.probe_partner = frozen_probe(self.hparams, probe_partner)

    def on_fit_start(self) -> None:
        raise TlkitError(
            "this model averages a fine-tuned network with a probe, an ensemble assembled after "
            "fine-tuning; to train, start from its fine-tuned member (finetuned.ckpt)"
        )

    def use_frozen_pass(self, on: bool, images: int | None = None) -> None:
        """Both members' frozen passes on or off together."""
        super().use_frozen_pass(on, images)
        self.probe_partner.use_frozen_pass(on, images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The log of the two members' mean class probabilities for images ``(N, C, H, W)``."""
        if x.ndim == 2:
            raise TlkitError("an ensemble with a probe reads images, not cached features")
        return log_mean_probabilities(self.head(self.encode(x)), self.probe_partner(x))

    def plain(self) -> nn.Module:
        """The ensemble as one plain ``images -> log mean probabilities`` module (export)."""
        members = (self, self.probe_partner)
        return MeanOfTwo(
            *(
                Classifier(m.backbone, m.head, m.strategy.feature_stage, m.strategy.grid)
                for m in members
            )
        )


class MeanOfTwo(nn.Module):
    """Two ``images -> logits`` modules as one: the log of their mean class probabilities."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return log_mean_probabilities(self.first(images), self.second(images))


def frozen_probe(settings, spec: dict[str, Any]) -> TransferModule:
    """A frozen probe on the pretrained backbone of ``settings`` (a TransferModule's
    hyperparameters), its head to be solved exactly; ``spec`` as ``probe_partner``. Built in
    this function, not in ``ProbeEnsemble.__init__`` itself: this frame ends Lightning's walk up
    the constructor frames, so the probe records its own hyperparameters."""
    return TransferModule(
        num_classes=settings["num_classes"],
        backbone=settings["backbone"],
        weights=settings["weights"],
        pretrained=settings["pretrained"],
        trust_weights=settings["trust_weights"],
        strategy=spec["strategy"],
        strategy_args=spec.get("strategy_args"),
        class_names=settings["class_names"],
        solver="exact",
    )


def is_ensemble(hparams: dict[str, Any]) -> bool:
    """True for the hyperparameters of a :class:`ProbeEnsemble` checkpoint."""
    return hparams.get("probe_partner") is not None
