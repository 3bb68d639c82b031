"""The BatchNorm policy of frozen parts: which modules of a backbone run in eval mode."""

from __future__ import annotations

from torch import nn

__all__ = ["BN_WHILE_FROZEN", "apply_bn_policy", "changing_tensors"]

#: BatchNorm mode of a frozen layer group under each policy (``tlkit.strategies.BN_POLICIES``).
BN_WHILE_FROZEN = {"frozen_eval": "eval", "eval": "eval", "train": "train"}


def apply_bn_policy(backbone: nn.Module, policy: str) -> None:
    """Put the parts of ``backbone`` the policy freezes in eval mode (call after ``train()``).

    ``frozen_eval``: every module whose parameters are all frozen; ``eval``: those and every
    BatchNorm layer; ``train``: nothing, so BatchNorm statistics move even in frozen groups.
    """
    if policy == "train":
        return
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and policy == "eval":
            module.eval()
    for module in backbone.modules():
        own = list(module.parameters())
        if own and not any(p.requires_grad for p in own):
            module.eval()


def changing_tensors(module: nn.Module) -> set[str]:
    """Names of the tensors a training step can change right now.

    Parameters with ``requires_grad`` plus the running statistics of BatchNorm layers in train
    mode. Frozen parameters and the statistics of BatchNorm layers in eval mode stay as they are.
    """
    names = {name for name, param in module.named_parameters() if param.requires_grad}
    for prefix, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            for name, _ in sub.named_buffers(recurse=False):
                names.add(f"{prefix}.{name}" if prefix else name)
    return names
