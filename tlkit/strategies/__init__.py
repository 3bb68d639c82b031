"""Layer groups and fine-tune strategies (``tlkit.advise`` picks one from the data)."""

from tlkit.strategies.base import (
    BN_POLICIES,
    LPFT,
    PRIORS,
    STRATEGIES,
    Full,
    Gradual,
    LinearProbe,
    Partial,
    ProbeStage,
    Strategy,
    create_strategy,
    register_strategy,
    strategy_settings,
)
from tlkit.strategies.groups import LayerGroup, layer_groups

__all__ = [
    "BN_POLICIES",
    "LPFT",
    "PRIORS",
    "STRATEGIES",
    "Full",
    "Gradual",
    "LayerGroup",
    "LinearProbe",
    "Partial",
    "ProbeStage",
    "Strategy",
    "create_strategy",
    "layer_groups",
    "register_strategy",
    "strategy_settings",
]
