"""Held-out large tasks: cheap variants of what ``--recipe auto`` ships, scored on its own runs.

The large cells ship the ensemble of the fine-tuned network and the exact probe
(:func:`tlkit.floor.ship`). Two ways to make it stronger cost no training: average in each
image's mirror image (flip test-time augmentation, :class:`tlkit.callbacks.FlipTTA`), and add
probes on other stages as further members (the candidates ``tlkit advise`` measured; their
features are already computed). This bench measures both.

Each draw of each large family runs ``tlkit finetune --recipe auto`` as its own process (as
bench/large.py does) and keeps the run. Then, on the run's own validation and test splits:

* the fine-tuned network (``finetuned.ckpt``, or ``best.ckpt`` when it shipped alone);
* a probe on each candidate's features (advise's L2 strength; fitted on train alone for the
  validation figures, on train and validation for test, as :func:`tlkit.floor.probe_floor`
  fits the chosen one, so the chosen probe is the run's own floor);
* the chosen probe as a network (pretrained backbone, solved head), to score mirror images;
* the fine-tuned network with its head refitted exactly (:func:`tlkit.head_refit.refit_head`),
  the member the floor's ensemble ships, against the head fine-tuning trained;
* one exact head on the fine-tuned and the chosen probe's pretrained features side by side
  (stacked: :func:`tlkit.exact.fit_exact` on the concatenation, fitted as the refitted head is),
  instead of averaging the two members' probabilities.

Reported: gain over the chosen probe on test for each variant, mean ± std over the runs, and
how often each variant tests and validates above and below the pair of the fine-tuned network
(its trained head) and the chosen probe.

Run: python bench/large_variants.py --draws tuning   (draws the choice is made on)
     python bench/large_variants.py --draws report   (draws never tuned on)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from common import append_row, pm, read_rows, write_draws
from heldout import HERE, _run
from heldout_data import LARGE_FAMILIES, REPORT_SEEDS, TUNING_SEEDS, build_task

from tlkit.advise import feature_stages, measure
from tlkit.data import TransferDataModule
from tlkit.exact import fit_exact
from tlkit.floor import probe_network
from tlkit.head_refit import eval_features, eval_loader, refit_head
from tlkit.inference import load_checkpoint
from tlkit.probe import fit_probe, rescale_l2

TLKIT = [str(Path(sys.executable).parent / "tlkit")]
PAIR = "fine-tuned + probe (trained head)"
REFIT_PAIR = "fine-tuned, head refitted + probe (what ships)"
STACKED = "one exact head on fine-tuned + probe features (stacked)"
#: The reading of the report draws' figures (written by hand from them), appended to them.
FINDINGS = HERE / "large_variants_findings.md"


def _outputs(forward, loader) -> dict[str, torch.Tensor]:
    """Class probabilities of ``forward`` on each image and on its mirror image."""
    plain, mirror, labels = [], [], []
    with torch.no_grad():
        for images, targets in loader:
            plain.append(forward(images).softmax(-1).float())
            mirror.append(forward(images.flip(-1)).softmax(-1).float())
            labels.append(targets)
    return {"plain": torch.cat(plain), "mirror": torch.cat(mirror), "labels": torch.cat(labels)}


def _probe_network(hparams, candidate: dict, fitted) -> torch.nn.Module:
    """The chosen probe as a frozen network (pretrained backbone, solved head)."""
    settings = {**dict(hparams), "pretrained": True, "weights": None}  # the run's own backbone
    return probe_network(settings, candidate["stage"], fitted).eval()


def _fit(x: torch.Tensor, y: torch.Tensor, l2: float, measured: int, classes: int):
    """A probe at advise's strength ``l2`` (chosen on ``measured`` images), rescaled to ``y``."""
    return fit_probe(x, y, rescale_l2(l2, measured, len(y)), classes)


def _member(probs: dict[str, torch.Tensor], member) -> torch.Tensor:
    """One member's probabilities; a tuple of outputs is one member, their mean."""
    if isinstance(member, tuple):
        return sum(probs[p] for p in member) / len(member)
    return probs[member]


def load_run(run: Path, cache: Path):
    """A kept ``tlkit finetune`` run: its fine-tuned network, its datamodule (set up for fit and
    test) and advise's decision and features, measured again from the run's feature cache."""
    checkpoints = run / "checkpoints"
    best = load_checkpoint(checkpoints / "best.ckpt")
    tuned_path = checkpoints / "finetuned.ckpt"
    tuned = load_checkpoint(tuned_path).model if tuned_path.exists() else best.model
    data = best.checkpoint["datamodule_hyper_parameters"]
    settings = {k: v for k, v in data.items() if not k.startswith("_")}  # _instantiator: the CLI's
    dm = TransferDataModule(**{**settings, "cache_features": False, "num_workers": 0})
    os.environ["TLKIT_CACHE_DIR"] = str(cache)  # the run's own feature cache
    decision, features = measure(str(dm.hparams.data), backbone=tuned.hparams.backbone, seed=42,
                                 with_test=True, datamodule=dm)  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    return tuned, dm, decision, features


def _stacked(tuned, dm, x: dict, y: dict) -> dict[str, torch.Tensor]:
    """Probabilities on val (fitted on train) and test (fitted on train + val) of one exact head
    on the fine-tuned network's features beside the probe's pretrained features ``x``."""
    loaders = {"train": eval_loader(dm, "train"), "val": dm.val_dataloader(),
               "test": dm.test_dataloader()}  # fmt: skip
    joined = {}
    for split, loader in loaders.items():
        ft, labels = eval_features(tuned.eval(), loader)
        if not torch.equal(labels, y[split]):
            raise RuntimeError(f"the {split} images of the stacked head differ in order")
        joined[split] = (torch.cat([ft, x[split]], 1), labels)
    fit = fit_exact(joined, "stacked", (None,), dm.num_classes)
    with torch.no_grad():
        return {"val": fit.on_train.logits(joined["val"][0]).softmax(-1).float(),
                "test": fit.probe.logits(joined["test"][0]).softmax(-1).float()}  # fmt: skip


def score(run: Path, cache: Path) -> dict:
    """Member probabilities on the run's splits, then the accuracy of each variant."""
    tuned, dm, decision, features = load_run(run, cache)
    hp = tuned.hparams
    loaders = {"val": dm.val_dataloader(), "test": dm.test_dataloader()}
    labels = {s: features.labels(s) for s in loaders}
    probs: dict[str, dict[str, torch.Tensor]] = {s: {} for s in loaders}
    for split, loader in loaders.items():
        out = _outputs(tuned, loader)
        if not torch.equal(out["labels"], labels[split]):
            raise RuntimeError(f"{run}: the {split} images and advise's features differ in order")
        probs[split]["ft"], probs[split]["ft mirror"] = out["plain"], out["mirror"]
    refit = refit_head(tuned, dm)  # the fine-tuned member of the ensemble the floor ships
    if refit is not None:
        for split in loaders:
            if not torch.equal(getattr(refit, f"{split}_labels"), labels[split]):
                raise RuntimeError(f"{run}: the {split} images of the refitted head differ")
            probs[split]["ft refit"] = getattr(refit, f"{split}_probs")
    measured = decision["evidence"]["images_measured"]
    chosen = decision["probe"]["name"]
    for candidate in decision["evidence"]["candidates"]:
        stages = feature_stages(candidate["stage"])
        x = {s: features.select(s, stages) for s in ("train", "val", "test")}
        y = {s: features.labels(s) for s in ("train", "val", "test")}
        both_x, both_y = torch.cat([x["train"], x["val"]]), torch.cat([y["train"], y["val"]])
        fits = {
            "val": _fit(x["train"], y["train"], candidate["l2"], measured, dm.num_classes),
            "test": _fit(both_x, both_y, candidate["l2"], measured, dm.num_classes),
        }
        for split, fitted in fits.items():
            with torch.no_grad():
                probs[split][candidate["name"]] = fitted.logits(x[split]).softmax(-1).float()
            if candidate["name"] == chosen:
                mirrored = _outputs(_probe_network(hp, candidate, fitted), loaders[split])
                probs[split]["probe mirror"] = mirrored["mirror"]
        if candidate["name"] == chosen:
            for split, stacked in _stacked(tuned, dm, x, y).items():
                probs[split]["stacked"] = stacked
    others = [c["name"] for c in decision["evidence"]["candidates"] if c["name"] != chosen]
    variants = {
        "fine-tuned": ["ft"],
        "fine-tuned, flip TTA": ["ft", "ft mirror"],
        "probe": [chosen],
        "probe, flip TTA": [chosen, "probe mirror"],
        PAIR: ["ft", chosen],
        "fine-tuned, head refitted exactly": ["ft refit"],
        REFIT_PAIR: ["ft refit", chosen],
        STACKED: ["stacked"],
        "pair, flip TTA on both": ["ft", "ft mirror", chosen, "probe mirror"],
        "pair, flip TTA on the fine-tuned member": [("ft", "ft mirror"), chosen],
        "pair + probe on blocks.6": ["ft", chosen, "blocks.6"],
        "pair + probe on the top": ["ft", chosen, "top"],
        "pair + probe on top+blocks.4": ["ft", chosen, "top+blocks.4"],
        "pair + probe on blocks.2": ["ft", chosen, "blocks.2"],
        "pair + every other probe": ["ft", chosen, *others],
        "fine-tuned x2 + probe + probe on blocks.6": ["ft", "ft", chosen, "blocks.6"],
    }
    shipped = json.loads((run / "metrics.json").read_text())["shipped"]
    row: dict = {"probe": chosen, "shipped": shipped}
    for split in loaders:
        acc = {}
        for name, members in variants.items():
            if any(isinstance(m, str) and m not in probs[split] for m in members):
                continue  # a candidate this run's measurement did not have
            if members.count(chosen) > 1:
                continue  # the extra probe is the chosen one
            total = sum(_member(probs[split], m) for m in members)
            acc[name] = float((total.argmax(-1) == labels[split]).float().mean())
        row[split] = acc
    return row


def summarise(rows: list[dict], draws: str) -> str:
    names = list(rows[0]["test"])
    lines = [
        f"Draws: **{draws}** ({'never tuned on' if draws == 'report' else 'used for tuning'}), "
        f"{len(rows)} runs of `tlkit finetune --recipe auto`. Gain over the chosen probe on "
        "test, points (mean ± std over runs, worst); in how many runs each variant scores above "
        "and below the pair of the fine-tuned network's trained head and the probe on test and "
        "on validation. A row "
        "whose extra probe is the one the run chose skips that run.",
        "",
        "| variant | test - probe | worst | above / below the pair, test | validation |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        runs = [r for r in rows if name in r["test"]]
        gain = [r["test"][name] - r["test"]["probe"] for r in runs]
        counts = []
        for split in ("test", "val"):
            d = [r[split][name] - r[split][PAIR] for r in runs]
            counts.append(f"{sum(x > 0 for x in d)} / {sum(x < 0 for x in d)}")
        lines.append(f"| {name} | {pm(gain)} | {100 * min(gain):+.1f} | {counts[0]} | "
                     f"{counts[1]} |")  # fmt: skip
    refit = [r for r in rows if REFIT_PAIR in r["test"]]
    if refit:
        d = [r["test"][REFIT_PAIR] - r["test"][PAIR] for r in refit]
        lines += ["", f"The head refitted exactly, paired by run: {REFIT_PAIR} - {PAIR}: "
                      f"**{pm(d)}** points on test over {len(d)} runs (above on "
                      f"{sum(x > 0 for x in d)}, below on {sum(x < 0 for x in d)})."]  # fmt: skip
    stacked = [r for r in rows if STACKED in r["test"] and REFIT_PAIR in r["test"]]
    if stacked:
        d = [r["test"][STACKED] - r["test"][REFIT_PAIR] for r in stacked]
        v = [r["val"][STACKED] - r["val"][REFIT_PAIR] for r in stacked]
        lines += ["", f"One stacked head against the pair that ships, paired by run: {STACKED} - "
                      f"{REFIT_PAIR}: **{pm(d)}** points on test over {len(d)} runs (above on "
                      f"{sum(x > 0 for x in d)}, below on {sum(x < 0 for x in d)}); on "
                      f"validation {pm(v)}."]  # fmt: skip
    lines += ["", "Per task: test accuracy % (validation in brackets) of the main variants.", ""]
    main = ["fine-tuned", "fine-tuned, head refitted exactly", "probe", PAIR, REFIT_PAIR, STACKED,
            "pair, flip TTA on both", "pair + every other probe"]  # fmt: skip
    lines += ["| task | probe | shipped | " + " | ".join(main) + " |",
              "|---|---|---|" + "---|" * len(main)]  # fmt: skip
    for r in rows:
        cells = [f"{100 * r['test'][v]:.1f} ({100 * r['val'][v]:.1f})" if v in r["test"] else "-"
                 for v in main]  # fmt: skip
        lines.append(f"| {r['task']} | {r['probe']} | {r['shipped']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", choices=("report", "tuning"), default="tuning")
    parser.add_argument("--families", nargs="*", default=list(LARGE_FAMILIES))
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "large-variants")  # fmt: skip
    opts = parser.parse_args()
    seeds = REPORT_SEEDS if opts.draws == "report" else TUNING_SEEDS
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / f"variants-{opts.draws}.jsonl"
    rows = read_rows(log)
    done = {r["task"] for r in rows}
    for name in opts.families:
        family = LARGE_FAMILIES[name]
        for seed in seeds:
            task = build_task(opts.work / "tasks", family, seed)
            if task.name in done:
                continue
            run, cache = opts.work / "runs" / task.name, opts.work / "cache" / task.name
            if not (run / "metrics.json").exists():
                shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts again
                _run([*TLKIT, "finetune", "--recipe", "auto", "--data", str(task),
                      "--image-size", str(family.image_size), "--out", str(run)],
                     cache)  # fmt: skip
            row = {"task": task.name, "family": name, "seed": seed, **score(run, cache)}
            rows.append(row)
            append_row(log, row)
    rows.sort(key=lambda r: (list(LARGE_FAMILIES).index(r["family"]), r["seed"]))
    write_draws(
        "Cheap variants of the shipped model on large held-out tasks",
        opts.draws,
        summarise(rows, opts.draws),
        {"draws": opts.draws, "rows": rows},
        FINDINGS,
    )


if __name__ == "__main__":
    main()
