"""Held-out large tasks: which readout of the frozen backbone the large cells' floor should fit,
measured on the runs bench/large_variants.py keeps (no training here).

At 32-64 px the probe's stage of EfficientNet-Lite0 (blocks.4, stride 16) leaves a 2x2 to 4x4
map and the stage before it (blocks.2, stride 8) a 4x4 to 8x8 one. Pooling each to one vector
(what advise scores) throws away where in the image a feature fired. This bench extracts, once
per run, each stage's map pooled to 1, 2, 3 or 4 cells per side, from the pretrained backbone
and from the fine-tuned network, and fits the exact probe (:func:`tlkit.exact.fit_exact`:
standardised, L2 by cross-validation over train and val, fitted on train alone to score val
and on train and val for test) on each readout:

* ``base``: the run's floor as it was (advise's probe, pooled; the top beside it when advise
  joined them);
* ``s3g2``: blocks.4 in 2x2 cells; ``s2g2+s3g2``: with blocks.2 in 2x2; ``s2g4+s3g2``: with
  blocks.2 in 4x4 (the spatial readout, :mod:`tlkit.readout`, which also keeps the top beside
  them when advise joined it);
* ``ft``: the fine-tuned network's refitted head (what the ensemble's fine-tuned member
  reads); ``ftg2``: its map in 2x2 cells;
* ``a|b`` (``a & b`` in the table): the mean of two readouts' class probabilities (an ensemble
  of probe and fine-tuned member).

Reported: test and validation points over ``base``, mean ± std over runs, worst.

Run: python bench/spatial_readout.py --draws tuning --work /tmp/large-tta
     (after bench/large_variants.py --draws tuning --work /tmp/large-tta)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import append_row, pm, read_rows, write
from heldout_data import LARGE_FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task
from large_variants import load_run

from tlkit.exact import fit_exact
from tlkit.head_refit import eval_loader
from tlkit.probe_ensemble import frozen_probe
from tlkit.readout import probe_spec

#: The reading of the tuning draws' figures (written by hand from them), appended to them; the
#: report draws' test is bench/large.py's run of the code that ships it.
FINDINGS = Path(__file__).resolve().parent / "spatial_readout_findings.md"
#: Cells per side extracted for feature stages 2, 3 and 4, of each member.
GRIDS = {"p": {2: [1, 2, 4], 3: [1, 2, 3, 4], 4: [1, 2]}, "f": {2: [1], 3: [1, 2, 3], 4: [1]}}
#: Readouts fitted: the features joined (``None``: the run's own, see the module docstring).
PROBES = {
    "base": None,
    "s3g2": ["p:s3g2"],
    "s2g2+s3g2": ["p:s2g2", "p:s3g2"],
    "s2g4+s3g2": ["p:s2g4", "p:s3g2"],
    "ft": None,
    "ftg2": ["f:s3g2"],
}


@torch.no_grad()
def extract(backbone, loader, channels_last: bool, grids: dict) -> tuple[dict, torch.Tensor]:
    """Every readout of ``grids`` (stage -> cells per side) and the top, over ``loader``."""
    out: dict[str, list] = {}
    labels = []
    for images, targets in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        final, maps = backbone.forward_intermediates(images, indices=[2, 3, 4])
        out.setdefault("top", []).append(backbone.forward_head(final).float())
        for stage, feature_map in zip([2, 3, 4], maps, strict=True):
            for g in grids[stage]:
                cells = torch.nn.functional.adaptive_avg_pool2d(feature_map, g).flatten(1)
                out.setdefault(f"s{stage}g{g}", []).append(cells.float())
        labels.append(targets)
    return {k: torch.cat(v).half() for k, v in out.items()}, torch.cat(labels)


def features(run: Path, cache: Path, store: Path) -> dict:
    """The run's readouts (extracted once, then read from ``store``)."""
    if store.exists():
        return torch.load(store)
    tuned, dm, decision, _ = load_run(run, cache)
    hp = tuned.hparams
    settings = {**dict(hp), "pretrained": True, "weights": None}  # the run's own backbone
    pretrained = frozen_probe(settings, probe_spec(3)).eval()
    tuned.eval()
    loaders = {"train": eval_loader(dm, "train"), "val": dm.val_dataloader(),
               "test": dm.test_dataloader()}  # fmt: skip
    data = {"probe": decision["probe"]["name"], "tuned_stage": str(tuned.strategy.feature_stage)}
    members = (("p", pretrained.backbone, False), ("f", tuned.backbone, bool(hp.channels_last)))
    for member, backbone, channels_last in members:
        for split, loader in loaders.items():
            readouts, labels = extract(backbone, loader, channels_last, GRIDS[member])
            data.update({f"{member}:{k}:{split}": v for k, v in readouts.items()})
            if not torch.equal(data.setdefault(f"y:{split}", labels), labels):
                raise RuntimeError(f"{run}: the members' {split} images differ in order")
    store.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, store)
    return data


def _probs(data: dict, keys: list[str], classes: int) -> dict[str, torch.Tensor]:
    split = {s: (torch.cat([data[f"{k}:{s}"].float() for k in keys], 1), data[f"y:{s}"])
             for s in ("train", "val", "test")}  # fmt: skip
    fit = fit_exact(split, "readout", (None,), classes)
    with torch.no_grad():
        return {"val": fit.on_train.logits(split["val"][0]).softmax(-1).float(),
                "test": fit.probe.logits(split["test"][0]).softmax(-1).float()}  # fmt: skip


def score(data: dict) -> dict:
    """Validation and test accuracy of every readout and pair."""
    classes = int(data["y:train"].max()) + 1
    probs = {}
    for name, keys in PROBES.items():
        if name == "ft" and keys is None:  # what the fine-tuned network's head reads
            keys = ["f:top"] if data["tuned_stage"] == "None" else ["f:s3g1"]
        elif keys is None:  # advise's probe, as the floor fitted it
            keys = ["p:top", "p:s3g1"] if data["probe"].startswith("top+") else ["p:s3g1"]
        probs[name] = _probs(data, keys, classes)
    acc = {}
    for split in ("val", "test"):
        y = data[f"y:{split}"]
        a = {n: float((p[split].argmax(-1) == y).float().mean()) for n, p in probs.items()}
        for probe in (n for n in PROBES if not n.startswith("ft")):
            for tuned in ("ft", "ftg2"):
                mean = probs[probe][split] + probs[tuned][split]
                a[f"{probe}|{tuned}"] = float((mean.argmax(-1) == y).float().mean())
        acc[split] = a
    return acc


def summarise(rows: list[dict], draws: str) -> str:
    names = [n for n in rows[0]["test"] if all(n in r["test"] for r in rows)]
    lines = [
        f"Draws: **{draws}** ({'never tuned on' if draws == 'report' else 'used for tuning'}), "
        f"{len(rows)} kept runs of `tlkit finetune --recipe auto` (bench/large_variants.py). "
        "Points over `base` (advise's pooled probe, the floor before the spatial readout), "
        "mean ± std over runs.",
        "",
        "| readout | test - base | worst | above / below | validation - base |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        d = [r["test"][name] - r["test"]["base"] for r in rows]
        v = [r["val"][name] - r["val"]["base"] for r in rows]
        label = name.replace("|", " & ")  # a pair: the mean of both readouts' probabilities
        lines.append(f"| {label} | {pm(d)} | {100 * min(d):+.1f} | {sum(x > 0 for x in d)} / "
                     f"{sum(x < 0 for x in d)} | {pm(v)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=("report", "tuning"), default="tuning")
    parser.add_argument("--work", type=Path, required=True)
    opts = parser.parse_args()
    seeds = REPORT_SEEDS if opts.draws == "report" else TUNING_SEEDS
    log = opts.work / f"spatial-{opts.draws}.jsonl"
    rows = read_rows(log)
    done = {r["task"] for r in rows}
    for name, family in LARGE_FAMILIES.items():
        for seed in seeds:
            task = build_task(opts.work / "tasks", family, seed)
            if task.name in done:
                continue
            start = time.perf_counter()
            run = opts.work / "runs" / task.name
            data = features(
                run, opts.work / "cache" / task.name, opts.work / "feats" / f"{task.name}.pt"
            )
            row = {"task": task.name, "family": name, "seed": seed, "probe": data["probe"],
                   **score(data), "seconds": round(time.perf_counter() - start)}  # fmt: skip
            rows.append(row)
            append_row(log, row)
    rows.sort(key=lambda r: (list(LARGE_FAMILIES).index(r["family"]), r["seed"]))
    title = "Spatial readout of the floor on large held-out tasks"
    payload = {"draws": opts.draws, "rows": rows}
    markdown = summarise(rows, opts.draws)
    if FINDINGS.exists():  # the reading of the figures, written by hand from them
        markdown += "\n\n" + FINDINGS.read_text().strip()
    write(f"{title} ({opts.draws} draws)", markdown, payload)


if __name__ == "__main__":
    main()
