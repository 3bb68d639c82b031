"""Fine-tune strategies: which layer groups train at each epoch, at which LR, under which prior.

A strategy is a plan, not a mutation: ``trainable(epoch, num_groups)`` is a pure function, so a
resumed run recomputes exactly the state it stopped in. Every parameter sits in the optimizer from
the start in a stable group per layer group; "frozen" means ``requires_grad`` off (the optimizer
skips parameters without a gradient) and, for the modules it covers, eval mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from tlkit.errors import TlkitError, unknown_name

__all__ = [
    "BN_POLICIES",
    "LPFT",
    "PRIORS",
    "STRATEGIES",
    "Full",
    "Gradual",
    "LinearProbe",
    "Partial",
    "ProbeStage",
    "Strategy",
    "create_strategy",
    "register_strategy",
    "strategy_settings",
]

STRATEGIES: dict[str, type[Strategy]] = {}
PRIORS = ("none", "zero", "pretrained")
BN_POLICIES = ("frozen_eval", "eval", "train")


def _number(name: str, value: Any) -> float:
    """``value`` as a float, or a TlkitError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TlkitError(f"{name} must be a number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (at least ``minimum``), or a TlkitError naming the setting."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise TlkitError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise TlkitError(f"{name} must be >= {minimum}, got {value}")
    return value


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator adding a strategy to the registry under ``name``."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return add


class Strategy:
    """Base class: a schedule of trainable layer groups plus LR scales and a prior.

    Args:
        prior: Regulariser on the backbone weights: ``none``; ``zero`` (weight decay towards 0,
            strength ``prior_strength`` or the optimizer's ``weight_decay``); ``pretrained``
            (L2-SP, Li et al. 2018: ``prior_strength/2 * ||w - w_pretrained||^2``, a Gaussian prior
            centred on the pretrained weights).
        prior_strength: Strength of the prior; ``None`` uses the optimizer's weight decay for
            ``zero`` and 0.01 for ``pretrained``.
        bn: BatchNorm policy: ``frozen_eval`` (frozen parts run in eval mode, their running
            statistics never change), ``eval`` (every BatchNorm in eval mode, for tiny batches) or
            ``train`` (statistics update everywhere, even in frozen parts).
        layer_decay: LR multiplier per layer group going down from the head: group ``i`` of ``n``
            gets ``layer_decay ** (n - i)``; 1 keeps one LR.
    """

    name: ClassVar[str] = ""
    #: True when the backbone never trains, so its features can be cached.
    frozen_backbone: ClassVar[bool] = False
    #: Index into the backbone's feature stages the head reads from (``None``: final features;
    #: a tuple: several, concatenated, ``None`` in it for the final features).
    feature_stage: int | tuple[int | None, ...] | None = None
    #: Cells per side of the pooling of stage maps (1: global; a tuple: one per stage;
    #: :func:`tlkit.heads.pooled_features`).
    grid: int | tuple[int, ...] = 1
    #: True when the head standardises its input features with statistics of the training set.
    standardize: bool = False

    def __init__(
        self,
        prior: str = "zero",
        prior_strength: float | None = None,
        bn: str = "frozen_eval",
        layer_decay: float = 1.0,
    ) -> None:
        if prior not in PRIORS:
            raise unknown_name("prior", str(prior), PRIORS)
        if bn not in BN_POLICIES:
            raise unknown_name("BatchNorm policy", str(bn), BN_POLICIES)
        if prior_strength is not None:
            prior_strength = _number("prior_strength", prior_strength)
            if prior_strength < 0:
                raise TlkitError(f"prior_strength must be >= 0, got {prior_strength}")
        layer_decay = _number("layer_decay", layer_decay)
        if not 0 < layer_decay <= 1:
            raise TlkitError(f"layer_decay must be in (0, 1], got {layer_decay}")
        self.prior = prior
        self.prior_strength = prior_strength
        self.bn = bn
        self.layer_decay = layer_decay

    @property
    def reads(self) -> str:
        """What the head reads, as text (a feature cache key): the stage, and the grid if any."""
        return str(self.feature_stage) + ("" if self.grid == 1 else f"@{self.grid}")

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        """Which backbone layer groups (shallow to deep) train during ``epoch``."""
        raise NotImplementedError

    def lr_scales(self, num_groups: int) -> list[float]:
        """LR multiplier of each backbone layer group (the head's is 1)."""
        return [self.layer_decay ** (num_groups - i) for i in range(num_groups)]

    def describe(self) -> dict[str, Any]:
        """The strategy's name and every setting (its own and the base class's) as plain data."""
        return {"name": self.name, **{k: getattr(self, k) for k in _settings_of(type(self))}}


@register_strategy("linear_probe")
class LinearProbe(Strategy):
    """Backbone frozen; only the new head trains (small data similar to the pretraining data)."""

    frozen_backbone = True

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        return [False] * num_groups


@register_strategy("probe_stage")
class ProbeStage(Strategy):
    """A linear head on pooled features of an earlier stage; the backbone stays frozen.

    For small data unlike the pretraining data: the top features are too source-specific.

    Pooled activations of different stages differ in scale by orders of magnitude (an early
    stage's are small and nearly constant across channels), so by default the head standardises
    each feature with the mean and standard deviation of the training set before its linear
    layer: it then sees what ``tlkit advise`` scores when it picks a stage (a linear probe on
    standardised features), and one learning rate suits every stage.

    Args:
        stage: Index into the backbone's feature stages (timm ``feature_info``); negative counts
            from the top, so ``-2`` is the stage below the last. A list reads several stages at
            once, concatenated in order (a multi-stage probe, cf. Head2Toe); ``top`` in it
            stands for the backbone's final pooled features, e.g. ``[top, -2]``.
        standardize: Standardise the pooled features in the head (statistics of the training
            set, fixed before the first step; the feature cache holds the raw features).
        grid: Pool each stage's map to ``grid x grid`` cells instead of one (the top features
            stay pooled): the head sees where in the image each feature fired, at ``grid**2``
            times the width. A list gives each stage of a ``stage`` list its own, e.g.
            ``stage: [2, 3]`` with ``grid: [4, 2]`` (what the large cells' floor reads when it
            wins by cross-validation, :mod:`tlkit.floor`). On the held-out report draws
            ``grid: 2`` raised the exact probe by 1.6 +/- 0.7 points on the large tasks
            (32-64 px) and 2.1 +/- 1.6 on the few-shot ones (64-128 px; bench/RESULTS.md,
            "Grid readout").
        **kwargs: See :class:`Strategy`.
    """

    frozen_backbone = True

    def __init__(
        self,
        stage: int | list[int | str] = -2,
        standardize: bool = True,
        grid: int | list[int] = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(grid, (list, tuple)):
            if not isinstance(stage, (list, tuple)) or len(grid) != len(stage):
                raise TlkitError(
                    f"probe_stage: grid {list(grid)} needs a stage list as long, e.g. stage "
                    "[2, 3] with grid [4, 2]; or give one number"
                )
            self.grid = tuple(_integer("probe_stage: grid", g, minimum=1) for g in grid)
            self.grid = 1 if set(self.grid) == {1} else self.grid
        else:
            self.grid = _integer("probe_stage: grid", grid, minimum=1)
        if isinstance(stage, (list, tuple)):
            if not stage:
                raise TlkitError("probe_stage: stage list is empty; give e.g. [top, -2]")
            self.stage = [s if s == "top" else _integer("probe_stage: stage", s) for s in stage]
            self.feature_stage = tuple(None if s == "top" else s for s in self.stage)
        else:
            self.stage = _integer("probe_stage: stage", stage)
            self.feature_stage = self.stage
        if not isinstance(standardize, bool):
            raise TlkitError(f"probe_stage: standardize must be true or false, got {standardize!r}")
        self.standardize = standardize

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        return [False] * num_groups


@register_strategy("partial")
class Partial(Strategy):
    """The top ``k`` layer groups train; the rest stay frozen (large, similar data).

    Args:
        k: Number of layer groups, counted from the top, that train.
        **kwargs: See :class:`Strategy`.
    """

    def __init__(self, k: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = _integer("partial: k", k, minimum=0)

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        return [i >= num_groups - self.k for i in range(num_groups)]


@register_strategy("full")
class Full(Strategy):
    """Everything trains, deeper layers at higher LR (large data unlike the pretraining data).

    Args:
        layer_decay: See :class:`Strategy`; 0.75 by default here.
        stage: Fine-tune the network only up to this feature stage (an index as in
            ``probe_stage``; the layers above it are dropped with timm's
            ``prune_intermediate_layers``) and put the head on its pooled features: for data
            whose best frozen features are an earlier stage's (``tlkit advise``'s probe).
            ``None``, or advise's joined probe (a list with ``top``, e.g. ``[top, 3]``): the
            whole network.
        head_init: ``random`` (a new head) or ``probe``: a large-cell run of ``tlkit finetune``
            starts the head from an exact probe on the training split, on the features the
            head reads (LP-FT with an exact LP, Kumar et al. 2022;
            :func:`tlkit.floor.start_head_from_probe`, which re-estimates BatchNorm statistics
            first unless ``bn: eval``). The head then standardises its input with the probe's
            statistics, so its weights stay small. Elsewhere the head starts new. Measured on
            the large held-out tuning draws: +0.1 ± 0.5 points over a new head (bench/RESULTS.md),
            so the recipes keep ``random``.
        grid: The head reads ``stage``'s map pooled to ``grid x grid`` cells (as in
            ``probe_stage``); needs a single ``stage``.
        **kwargs: See :class:`Strategy`.
    """

    def __init__(
        self,
        layer_decay: float = 0.75,
        stage: int | list[int | str] | None = None,
        head_init: str = "random",
        grid: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer_decay=layer_decay, **kwargs)
        if head_init not in ("random", "probe"):
            raise unknown_name("head_init", str(head_init), ("random", "probe"))
        self.head_init = head_init
        self.standardize = head_init == "probe"
        if isinstance(stage, (list, tuple)):
            if "top" not in stage:
                raise TlkitError(f"full: stage takes one stage index, got {list(stage)}")
            self.stage, self.feature_stage = list(stage), None  # the top is read: all trains
        elif stage is not None:
            self.stage = self.feature_stage = _integer("full: stage", stage)
        else:
            self.stage = self.feature_stage = None
        self.grid = _integer("full: grid", grid, minimum=1)
        if self.grid > 1 and not isinstance(self.feature_stage, int):
            raise TlkitError(f"full: grid {self.grid} pools a stage's map; give one stage, e.g. -2")

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        return [True] * num_groups


@register_strategy("gradual")
class Gradual(Strategy):
    """Unfreeze layer groups from the top down, one more every ``every`` epochs (ULMFiT).

    Epochs ``0 .. start-1`` train the head only; from epoch ``start`` one group more trains each
    ``every`` epochs, down to ``min_group`` (groups below it never train).

    Args:
        every: Epochs between two unfreezings.
        start: First epoch at which a backbone group trains.
        min_group: Lowest group index that is ever unfrozen (0 = the stem).
        **kwargs: See :class:`Strategy`.
    """

    def __init__(self, every: int = 1, start: int = 1, min_group: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.every = _integer("gradual: every", every, minimum=1)
        self.start = _integer("gradual: start", start, minimum=0)
        self.min_group = _integer("gradual: min_group", min_group, minimum=0)

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        count = 0 if epoch < self.start else 1 + (epoch - self.start) // self.every
        lowest = max(num_groups - count, self.min_group)
        return [i >= lowest for i in range(num_groups)]


@register_strategy("lp_ft")
class LPFT(Strategy):
    """Linear probe for ``probe_epochs``, then fine-tune everything (Kumar et al. 2022).

    Args:
        probe_epochs: Epochs of linear probing before the backbone unfreezes.
        layer_decay: See :class:`Strategy`.
        **kwargs: See :class:`Strategy`.
    """

    def __init__(self, probe_epochs: int = 5, layer_decay: float = 1.0, **kwargs: Any) -> None:
        super().__init__(layer_decay=layer_decay, **kwargs)
        self.probe_epochs = _integer("lp_ft: probe_epochs", probe_epochs, minimum=0)

    def trainable(self, epoch: int, num_groups: int) -> list[bool]:
        return [epoch >= self.probe_epochs] * num_groups


def _settings_of(cls: type[Strategy]) -> list[str]:
    accepted: list[str] = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and issubclass(klass, Strategy):
            for key, param in inspect.signature(klass.__init__).parameters.items():
                if key != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                    accepted.append(key)
    return list(dict.fromkeys(accepted))


def strategy_settings(name: str) -> list[str]:
    """The settings a registered strategy accepts (its own and the base class's)."""
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, STRATEGIES)
    return _settings_of(STRATEGIES[name])


def create_strategy(name: str | Strategy, **kwargs: Any) -> Strategy:
    """Build a registered strategy by name; unknown names and settings give a clear error.

    Args:
        name: A registered strategy name (see :data:`STRATEGIES`) or a ready strategy.
        **kwargs: Its settings, e.g. ``k=2`` for ``partial`` or ``prior="pretrained"``.

    Returns:
        The strategy.

    Raises:
        TlkitError: For an unknown strategy or setting, or an invalid value.
    """
    if isinstance(name, Strategy):
        return name
    if not isinstance(name, str):
        raise TlkitError(f"strategy must be a strategy name, got {name!r}")
    accepted = strategy_settings(name)
    for key in kwargs:
        if key not in accepted:
            raise unknown_name(f"{name} setting", key, accepted)
    return STRATEGIES[name](**kwargs)
