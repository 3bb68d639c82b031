"""Heads: what reads a backbone's pooled features and predicts classes.

:class:`Head` is dropout and a linear layer (optionally a hidden layer first, and a
:class:`Standardize` layer that scales each feature by training-set statistics);
:func:`pooled_features` pools the final or an intermediate stage of a timm backbone;
:class:`Classifier` joins them into a plain ``images -> logits`` module for export.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlkit.errors import TlkitError

__all__ = [
    "Classifier",
    "Encoder",
    "FractionalMaxPool",
    "Head",
    "Standardize",
    "feature_moments",
    "feature_width",
    "log_mean_probabilities",
    "pooled_features",
    "stage_grids",
    "truncate",
    "use_fractional_pool",
]


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with statistics fixed from the training set.

    The statistics are buffers (saved in checkpoints, never trained); until :meth:`fit` sets
    them the module is the identity.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, total: torch.Tensor, total_sq: torch.Tensor, count: float) -> None:
        """Set the statistics from per-feature sums of ``x`` and ``x**2`` over ``count`` rows."""
        mean = total.double() / max(count, 1.0)
        var = (total_sq.double() / max(count, 1.0) - mean**2).clamp_min(0.0)
        std = var.sqrt()
        # A constant feature carries nothing: leave it unscaled rather than divide by ~0.
        std = torch.where(std < 1e-6 * std.max().clamp_min(1e-12), torch.ones_like(std), std)
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _load_without_standardizer(state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Let a head without the standardisation layer (an older checkpoint) load into one that
    has it: its layers move up one place and the new layer loads as the identity."""
    mine = [k for k in state if k.startswith(prefix)]
    if not mine or f"{prefix}0.mean" in state:
        return
    moved = {}
    for key in mine:
        index, rest = key[len(prefix) :].split(".", 1)
        if index.isdigit():
            moved[(int(index) + 1, rest)] = state.pop(key)
    if not moved:
        return
    for (index, rest), value in moved.items():
        state[f"{prefix}{index}.{rest}"] = value
    width = min((i, v.shape[1]) for (i, r), v in moved.items() if r == "weight")[1]
    state[f"{prefix}0.mean"] = torch.zeros(width)
    state[f"{prefix}0.std"] = torch.ones(width)
    state[f"{prefix}0.fitted"] = torch.ones((), dtype=torch.bool)


class Head(nn.Sequential):
    """Dropout -> Linear, or Linear -> GELU -> Dropout -> Linear with a hidden layer; with
    ``standardize``, a :class:`Standardize` layer first."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int = 0,
        dropout: float = 0.0,
        standardize: bool = False,
    ):
        first: list[nn.Module] = [Standardize(in_features)] if standardize else []
        if hidden > 0:
            layers = [
                nn.Dropout(dropout),
                nn.Linear(in_features, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            ]
        else:
            layers = [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
        super().__init__(*first, *layers)
        if standardize:
            self._register_load_state_dict_pre_hook(_load_without_standardizer)

    @property
    def standardizer(self) -> Standardize | None:
        """The input standardisation layer, if the head has one."""
        return self[0] if isinstance(self[0], Standardize) else None


class FractionalMaxPool(nn.Module):
    """Fractional max pooling (Graham 2014, "Fractional Max-Pooling") of a feature map.

    Overlapping 2x2 max pools on a pseudo-random grid shrink each side by ``ratio`` (default
    1/sqrt(2), Graham's choice): in training the grid is drawn afresh for every image, a
    regulariser; in evaluation it is the fixed middle grid, so predictions are deterministic.
    A map with a side under 2 (a small input's last stage) passes through unchanged.

    Args:
        ratio: Output side / input side, in (0, 1).
    """

    def __init__(self, ratio: float = 2**-0.5) -> None:
        super().__init__()
        if not 0 < ratio < 1:
            raise TlkitError(f"fractional max pooling ratio must be in (0, 1), got {ratio}")
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2:
            return x
        samples = None
        if not self.training:
            samples = x.new_full((x.shape[0], x.shape[1], 2), 0.5)
        return nn.functional.fractional_max_pool2d(
            x, 2, output_ratio=(self.ratio, self.ratio), _random_samples=samples
        )


def truncate(backbone: nn.Module, stage: int, name: str = "the backbone") -> None:
    """Drop ``backbone``'s layers above feature ``stage`` (timm's ``prune_intermediate_layers``:
    the later blocks, the final norm and head go), so that fine-tuning it up to that stage
    computes and trains nothing else.

    Raises:
        TlkitError: If the backbone cannot be pruned or the stage is out of range.
    """
    feature_width(backbone, stage, name)  # the stage is in range
    if not hasattr(backbone, "prune_intermediate_layers"):
        raise TlkitError(
            f"{name} cannot be cut at a stage (no prune_intermediate_layers); "
            "fine-tune it whole (no `stage`) or pick a timm CNN/ViT"
        )
    backbone.prune_intermediate_layers([stage], prune_head=True, prune_norm=True)


def use_fractional_pool(backbone: nn.Module, name: str = "the backbone") -> None:
    """Put :class:`FractionalMaxPool` on ``backbone``'s last feature map, before its global
    pooling (timm's ``global_pool``); the pooled width is unchanged.

    Raises:
        TlkitError: If the backbone has no ``global_pool`` over a feature map.
    """
    pool = getattr(backbone, "global_pool", None)
    if not isinstance(pool, nn.Module) or isinstance(pool, nn.Identity):
        raise TlkitError(
            f"{name} has no global pooling of a feature map for fractional max pooling; "
            "use `pool=avg` or a CNN backbone (EfficientNet, ResNet, ...)"
        )
    backbone.global_pool = nn.Sequential(FractionalMaxPool(), pool)


Grid = int | tuple[int, ...]


def stage_grids(stage: int | tuple[int | None, ...] | None, grid: Grid = 1) -> tuple[int, ...]:
    """Cells per side for each stage of ``stage`` (as a tuple): ``grid`` for all of them, or
    ``grid``'s own entry for each (a tuple as long as the stages; the top's entry is unused)."""
    stages = stage if isinstance(stage, tuple) else (stage,)
    if isinstance(grid, int):
        return (grid,) * len(stages)
    if len(grid) != len(stages):
        raise TlkitError(
            f"grid {list(grid)} gives {len(grid)} entries for {len(stages)} stages; give one "
            "number, or one per stage"
        )
    return tuple(grid)


def pooled_features(
    backbone: nn.Module,
    images: torch.Tensor,
    stage: int | tuple[int | None, ...] | None,
    grid: Grid = 1,
) -> torch.Tensor:
    """Globally pooled features of a timm backbone: final ones, those of feature ``stage``, or
    (a tuple) several stages concatenated in order, ``None`` in it for the final features.

    ``grid`` > 1 reads each stage's map average-pooled to ``grid x grid`` cells and flattened
    (channel-major), so the features keep where in the image they fired; the final features
    stay globally pooled. A tuple gives each stage of ``stage`` its own number of cells (e.g.
    ``(4, 2)`` for an earlier stage at twice the resolution of a later one)."""
    if stage is None:
        return backbone(images)
    stages = stage if isinstance(stage, tuple) else (stage,)
    grids = stage_grids(stages, grid)
    count = len(backbone.feature_info)
    indices = sorted({s % count for s in stages if s is not None})
    top = None
    if None in stages:
        final, maps = backbone.forward_intermediates(images, indices=indices or [count - 1])
        top = backbone.forward_head(final)
    else:
        maps = backbone.forward_intermediates(
            images, indices=indices, intermediates_only=True, stop_early=True
        )
    by_index = dict(zip(indices, maps, strict=False))
    return torch.cat(
        [
            top if s is None else _cells(by_index[s % count], g)
            for s, g in zip(stages, grids, strict=True)
        ],
        dim=1,
    )


def _cells(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """``(N, C, H, W)`` averaged over the whole map (``grid`` 1) or to ``grid x grid`` cells,
    flattened channel-major.

    The cells are torch's adaptive average pooling windows (cell ``i`` of ``grid`` spans rows
    ``floor(i * H / grid)`` to ``ceil((i + 1) * H / grid)``). Exported to ONNX they are written
    out as slices of the map's fixed size: the exporter has no adaptive pooling for a map whose
    size it cannot see, which is every map under a dynamic batch axis."""
    if grid == 1:
        return feature_map.mean(dim=(2, 3))
    if not torch.onnx.is_in_onnx_export():
        return nn.functional.adaptive_avg_pool2d(feature_map, grid).flatten(1)
    with warnings.catch_warnings():  # the map's size is fixed by the model's input size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        height, width = (int(n) for n in feature_map.shape[2:])
    rows = [(i * height // grid, -(-(i + 1) * height // grid)) for i in range(grid)]
    cols = [(j * width // grid, -(-(j + 1) * width // grid)) for j in range(grid)]
    cells = [feature_map[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in rows for c0, c1 in cols]
    return torch.stack(cells, dim=2).flatten(1)


def feature_width(
    backbone: nn.Module,
    stage: int | tuple[int | None, ...] | None,
    name: str = "the backbone",
    grid: Grid = 1,
) -> int:
    """Width of :func:`pooled_features` for ``stage`` and ``grid``.

    Raises:
        TlkitError: If a stage is out of range for ``backbone`` (called ``name`` in the message).
    """
    stages = stage if isinstance(stage, tuple) else (stage,)
    info = backbone.feature_info
    for index in stages:
        if index is not None and not -len(info) <= index < len(info):
            raise TlkitError(
                f"probe_stage: stage {index} out of range for {name} "
                f"({len(info)} stages); pass a stage in {-len(info)}..{len(info) - 1}"
            )
    return sum(
        backbone.num_features if s is None else g * g * info[s]["num_chs"]
        for s, g in zip(stages, stage_grids(stages, grid), strict=True)
    )


@torch.no_grad()
def feature_moments(
    dataset: Dataset,
    encode: Callable[[torch.Tensor], torch.Tensor],
    width: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum, sum of squares and count of the ``width``-wide features of ``dataset``, in float64.

    One pass in order; items are ``(input, label)`` or inputs; ``(N, D)`` inputs are features
    already, images go through ``encode``. The global RNG is left as it was. These are the
    statistics :meth:`Standardize.fit` takes (reduce them over ranks first under DDP).
    """
    total = torch.zeros(width, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    count = torch.zeros((), dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[]):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            inputs = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            features = (inputs if inputs.ndim == 2 else encode(inputs)).double()
            total += features.sum(0)
            total_sq += features.pow(2).sum(0)
            count += features.shape[0]
    return total, total_sq, count


def log_mean_probabilities(*logits: torch.Tensor) -> torch.Tensor:
    """The log of the mean of ``softmax(z)`` over ``logits`` (an ensemble's or a test-time
    augmentation's output: its softmax is that mean), finite where a probability underflows."""
    mean = torch.stack([z.float().softmax(dim=-1) for z in logits]).mean(dim=0)
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


class Classifier(nn.Module):
    """A plain ``images -> logits`` module (backbone, pooling, head) for tracing and export."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        stage: int | tuple[int | None, ...] | None = None,
        grid: Grid = 1,
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.stage, self.grid = backbone, head, stage, grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.backbone, images, self.stage, self.grid))


class Encoder(nn.Module):
    """A plain ``images -> features`` module (backbone and pooling) for a frozen pass."""

    def __init__(
        self,
        backbone: nn.Module,
        stage: int | tuple[int | None, ...] | None = None,
        grid: Grid = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.stage, self.grid = backbone, stage, grid
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and not torch.onnx.is_in_onnx_export():
            images = images.contiguous(memory_format=torch.channels_last)
        return pooled_features(self.backbone, images, self.stage, self.grid)
