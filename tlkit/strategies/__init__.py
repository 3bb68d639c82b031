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
from tlkit.strategies.l2sp import PretrainedAnchor
from tlkit.strategies.plan import plan_rows

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
    "PretrainedAnchor",
    "ProbeStage",
    "Strategy",
    "create_strategy",
    "layer_groups",
    "plan_rows",
    "register_strategy",
    "strategy_settings",
]
