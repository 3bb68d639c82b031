"""The eval transform's resize: tlkit's (albumentations, OpenCV bicubic) against timm's own
(torchvision, PIL bicubic with antialiasing), the same exact probe on the top features.

On every family of bench/probe_scale.py's task list, one draw at a time, the frozen Lite0's
pooled top features are computed twice from the same decoded images (transparency composited on
white as tlkit does): through tlkit's eval transform (what every tlkit run reads) and through
``timm.data.create_transform`` (what bench/sklearn_probe.py reads). The same exact probe
(:func:`tlkit.exact.fit_exact`, its scaling chosen on the folds) is fitted on each and scored on
the test split (balanced accuracy). The difference isolates the image pipeline from the probe.

Run: python bench/resize.py --draws tuning [--work /tmp/interval]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from common import write_draws
from probe_scale import SEEDS, _tasks
from sklearn_probe import features as timm_features

from tlkit.advise.measure import measure
from tlkit.backbones import create_backbone
from tlkit.balance import balanced_accuracy
from tlkit.exact import fit_exact

HERE = Path(__file__).resolve().parent
TOP = (None,)


def _score(split: dict, classes: int) -> float:
    fit = fit_exact(split, "top", TOP, classes)
    test_x, test_y = split["test"]
    return balanced_accuracy(fit.probe.logits(test_x).argmax(1), test_y)


def run_task(task: Path, size: int | None, model) -> dict:
    """Both pipelines' features on one task, the same probe on each."""
    report, feats = measure(str(task), image_size=size, with_test=True)
    classes = int(report["num_classes"])
    ours = {k: (feats.select(k, TOP), feats.labels(k)) for k in feats.splits}
    config = timm.data.resolve_data_config({}, model=model)
    if size is not None:
        config["input_size"] = (3, size, size)
    transform = timm.data.create_transform(**config)
    names = sorted(p.name for p in (task / "train").iterdir())
    empty = (torch.zeros(0, ours["train"][0].shape[1]), torch.zeros(0, dtype=torch.long))
    theirs = {"val": empty}  # without val/, tlkit's val came out of train: the same images
    for split in ("train", "val", "test"):
        if (task / split).is_dir():
            x, y = timm_features(model, task / split, transform, names, "tlkit")
            theirs[split] = (torch.as_tensor(x), torch.as_tensor(y))
    return {"task": task.name, "tlkit": _score(ours, classes), "timm": _score(theirs, classes)}


def summarise(rows: list[dict], draws: str) -> str:
    lines = [
        f"Draws: **{draws}**. Balanced test accuracy of the same exact probe on the top "
        "features (every labelled image, folds over them), in %.",
        "",
        "| family | tlkit transform | timm transform | tlkit - timm |",
        "|---|---|---|---|",
    ]
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        a = statistics.mean(100 * r["tlkit"] for r in mine)
        b = statistics.mean(100 * r["timm"] for r in mine)
        lines.append(f"| {family} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    diffs = [100 * (r["tlkit"] - r["timm"]) for r in rows]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    mean = float(np.mean(diffs))
    lines += ["", f"Paired over {len(rows)} tasks: **{mean:+.1f} ± {spread:.1f}** points."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=list(SEEDS), default="tuning")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "interval")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TLKIT_CACHE_DIR", str(opts.work / "cache"))
    model = create_backbone("tf_efficientnet_lite0", num_classes=0).eval()
    rows = []
    for family, task, size in _tasks(opts.work, SEEDS[opts.draws]):
        rows.append({"family": family, **run_task(task, size, model)})
        print(json.dumps(rows[-1]), flush=True)
    write_draws("The eval resize", opts.draws, summarise(rows, opts.draws), {"rows": rows},
                HERE / "findings" / "resize.md")  # fmt: skip


if __name__ == "__main__":
    main()
