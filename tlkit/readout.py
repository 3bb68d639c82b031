"""How the large cells' exact probe reads the frozen backbone: advise's pooled features, or a
spatial readout of the same stage and the one before it, whichever cross-validates higher.

``tlkit advise`` scores globally average-pooled features. At the sizes where the large cells
meet small images (32-64 px), that pooling throws away where in the image each feature fired:
the probe's stage leaves a 2x2 to 4x4 map. The spatial readout keeps it: the probe's deepest
stage pooled to 2x2 cells and the stage before it (in a CNN, half its stride) to 4x4, flattened and
joined (the top features, when the probe reads them, stay beside them, pooled). On the large
held-out tuning draws it beat the pooled probe on every draw (bench/RESULTS.md, "Spatial
readout"); :func:`spatial_fit` fits it exactly on the same folds, and the floor takes it when its
cross-validated accuracy is the higher.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from tlkit.probe import Probe

__all__ = [
    "SPATIAL_GRID",
    "probe_network",
    "probe_spec",
    "spatial_fit",
    "spatial_floor",
    "spatial_readout",
]

#: Cells per side of the stage before the probe's and of the probe's own stage.
SPATIAL_GRID = (4, 2)


def probe_spec(stage, grid: int | list[int] = 1) -> dict[str, Any]:
    """A probe's strategy and settings as a frozen-backbone TransferModule, from its ``stage``
    as advise reports it (``None``: the top features; an index, or a joined list) and the
    cells per side its maps are pooled to (``grid``: one number, or one per stage)."""
    if stage is None:
        return {"strategy": "linear_probe", "strategy_args": {"bn": "frozen_eval"}}
    args: dict[str, Any] = {"stage": stage, "standardize": True, "bn": "frozen_eval"}
    if grid != 1:
        args["grid"] = grid
    return {"strategy": "probe_stage", "strategy_args": args}


def probe_network(settings, stage, fitted: Probe, grid: int | list[int] = 1):
    """The probe as a frozen-backbone module: the pretrained backbone of ``settings`` (a
    TransferModule's hyperparameters) and ``fitted`` as its head."""
    from tlkit.exact import install_probe
    from tlkit.probe_ensemble import frozen_probe

    network = frozen_probe(settings, probe_spec(stage, grid))
    install_probe(network.head, fitted)
    return network


def spatial_readout(stage, names: list[str]) -> dict[str, Any] | None:
    """The spatial readout of a probe on ``stage`` (advise's ``stage`` setting; ``names``: the
    backbone's feature stages): ``name``, ``stage`` and ``grid`` settings, or ``None`` when the
    probe reads no stage map with one before it (the top alone, or the first stage)."""
    stages = [stage] if isinstance(stage, int) else list(stage or [])
    maps = [s % len(names) for s in stages if s != "top"]
    if not maps or max(maps) == 0:
        return None
    deep = max(maps)
    joined: list[Any] = ["top"] if "top" in stages else []
    wide, narrow = SPATIAL_GRID
    return {
        "name": "+".join(
            [*joined, f"{names[deep - 1]}@{wide}x{wide}", f"{names[deep]}@{narrow}x{narrow}"]
        ),
        "stage": [*joined, deep - 1, deep],
        "grid": [1] * len(joined) + [wide, narrow],
    }


def spatial_fit(datamodule, model, readout: dict[str, Any], seed: int):
    """The exact probe on ``readout``'s features of ``model``'s pretrained backbone (one pass
    over each split, through the feature cache): an :class:`~tlkit.exact.ExactFit` chosen on
    the folds advise's candidates were scored on (same rows and seed), and the features."""
    from tlkit.advise import feature_stages
    from tlkit.exact import fit_exact
    from tlkit.probe_ensemble import frozen_probe

    settings = dict(model.hparams)
    network = frozen_probe(settings, probe_spec(readout["stage"], readout["grid"]))
    network = network.eval().to(model.device)  # where the run's model is: the GPU, when it has one
    features = datamodule.split_features(network.frozen_feature_extractor(), model.device)
    stages = feature_stages(readout["stage"])  # per-feature scaling, as the large cells measured
    fit = fit_exact(features, readout["name"], stages, datamodule.num_classes, seed, ("feature",))
    return fit, features


def spatial_floor(floor, datamodule, model, names: list[str], seed: int):
    """``floor`` (a :class:`~tlkit.floor.ProbeFloor` on advise's pooled probe) with its probe
    read out spatially when that cross-validates higher on the same folds (``names``: the
    backbone's feature stages); else as it was, the spatial readout's accuracy noted."""
    readout = spatial_readout(floor.probe["stage"], names)
    if readout is None:
        return floor
    start = time.perf_counter()
    fit, split = spatial_fit(datamodule, model, readout, seed)
    seconds = floor.seconds + time.perf_counter() - start
    measured = fit.candidate.describe()
    pooled = {k: floor.probe[k] for k in ("name", "stage", "accuracy", "std", "l2")}
    pooled.update(val_acc=floor.val_acc, test_acc=floor.test_acc)
    if measured["accuracy"] <= floor.probe["accuracy"]:
        spatial = {**readout, "accuracy": measured["accuracy"]}
        return replace(floor, probe={**floor.probe, "spatial": spatial}, seconds=seconds)
    probe = {**readout, **{k: measured[k] for k in ("accuracy", "std", "l2", "channels")}}
    with torch.no_grad():
        test = fit.probe.logits(split["test"][0]).softmax(-1).float()
        val = None if fit.on_train is None else fit.on_train.logits(split["val"][0]).softmax(-1)
    return replace(floor, probe={**probe, "pooled": pooled}, stages=fit.candidate.stages,
                   fitted=fit.probe, val_acc=fit.val_acc, test_probs=test,
                   test_labels=split["test"][1], seconds=seconds,
                   val_probs=None if val is None else val.float(), val_labels=split["val"][1],
                   on_train=fit.on_train)  # fmt: skip
