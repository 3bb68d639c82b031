"""DropConnect on a module's linear layers (Wan et al. 2013), as a layer and as a callback."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from tlkit.errors import TlkitError

__all__ = ["DropConnect", "DropConnectLinear", "add_dropconnect"]


class DropConnectLinear(nn.Linear):
    """A linear layer that zeroes each weight with probability ``p`` during training.

    Kept weights are scaled by ``1 / (1 - p)``, so evaluation uses the weights as they are. The
    bias is never dropped. Parameter names match ``nn.Linear``: checkpoints load either way.

    Args:
        in_features: Input width.
        out_features: Output width.
        bias: Whether the layer has a bias.
        p: Drop probability of each weight.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5):
        super().__init__(in_features, out_features, bias)
        if not 0.0 <= p < 1.0:
            raise TlkitError(f"DropConnect: p must be in [0, 1), got {p}")
        self.p = float(p)

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float) -> DropConnectLinear:
        """A DropConnect layer sharing ``linear``'s parameters (the optimizer sees no change)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        if not 0.0 <= p < 1.0:
            raise TlkitError(f"DropConnect: p must be in [0, 1), got {p}")
        layer.p = float(p)
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return super().forward(x)
        keep = torch.empty_like(self.weight).bernoulli_(1.0 - self.p)
        return F.linear(x, self.weight * keep / (1.0 - self.p), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def add_dropconnect(module: nn.Module, p: float) -> int:
    """Swap every ``nn.Linear`` inside ``module`` for a :class:`DropConnectLinear` in place.

    Returns:
        The number of layers swapped.
    """
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, DropConnectLinear.from_linear(child, p))
                swapped += 1
    return swapped


class DropConnect(Callback):
    """Add DropConnect to the linear layers of one part of the model (the head by default).

    At setup, every ``nn.Linear`` under ``pl_module.<module>`` becomes a
    :class:`DropConnectLinear` that shares its parameters, so optimizers, checkpoints and
    evaluation are unchanged; only training forward passes drop weights.

    Args:
        p: Drop probability of each weight.
        module: Dotted attribute path of the part to regularise (``head`` for TransferModule).
    """

    def __init__(self, p: float = 0.3, module: str = "head") -> None:
        if not 0.0 < p < 1.0:
            raise TlkitError(f"DropConnect: p must be in (0, 1), got {p}")
        if not module:
            raise TlkitError("DropConnect: module must name a part of the model, e.g. head")
        self.p = float(p)
        self.module = module

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        target: nn.Module = pl_module
        for part in self.module.split("."):
            child = getattr(target, part, None)
            if not isinstance(child, nn.Module):
                raise TlkitError(
                    f"DropConnect: the model has no submodule {self.module!r}; pass module=NAME "
                    f"(e.g. head)"
                )
            target = child
        if isinstance(target, DropConnectLinear) or any(
            isinstance(m, DropConnectLinear) for m in target.modules()
        ):
            return
        if type(target) is nn.Linear:
            raise TlkitError(
                f"DropConnect: {self.module!r} is a bare nn.Linear; name the module holding it"
            )
        if add_dropconnect(target, self.p) == 0:
            raise TlkitError(f"DropConnect: {self.module!r} holds no nn.Linear layer")
