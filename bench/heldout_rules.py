"""The rule behind ``auto``'s choice of features, compared on the tuning draws only.

For every tuning draw of bench/heldout_data.py: ``tlkit.advise.measure`` (the code of ``tlkit
advise`` and ``--recipe auto``) scores every candidate feature set on the same folds; then each
candidate rule picks one, the pick is refitted on every labelled image and tested:

* ``top``: always the top features (what ``small-similar`` fits);
* ``best CV``: the candidate with the best cross-validated accuracy, whatever its depth;
* ``rule``: the shipped rule (best deep candidate; a shallow stage must win by the noise).

Also: scikit-learn's LogisticRegressionCV on the same top features, and whether the predicted
interval of the rule's pick holds its test accuracy. In-process, one feature pass per task.

Run: python bench/heldout_rules.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from common import write
from heldout_data import FAMILIES, TUNING_SEEDS, build_task

from tlkit.advise import feature_stages, measure
from tlkit.probe import fit_probe, rescale_l2


def _test(features, stage, l2: float, measured: int) -> float:
    stages = feature_stages(stage)
    x = torch.cat([features.select(s, stages) for s in ("train", "val")])
    y = torch.cat([features.labels(s) for s in ("train", "val")])
    probe = fit_probe(x, y, rescale_l2(l2, measured, len(y)))
    return probe.accuracy(features.select("test", stages), features.labels("test"))


def _sklearn(features) -> float:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([features.select(s, [None]) for s in ("train", "val")]).numpy()
    y = torch.cat([features.labels(s) for s in ("train", "val")]).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=1000))
        probe.fit(x, y)
    return float(probe.score(features.select("test", [None]).numpy(), features.labels("test")))


def run_task(task: Path, size: int, cache: Path) -> dict:
    report, features = measure(str(task), image_size=size, with_test=True, cache_dir=cache)
    measured = report["evidence"]["images_measured"]
    candidates = report["evidence"]["candidates"]
    by_cv = max(candidates, key=lambda c: c["accuracy"])
    top = next(c for c in candidates if c["name"] == "top")
    rule = report["probe"]
    expected = report["expected_accuracy"]
    rule_acc = _test(features, rule["stage"], rule["l2"], measured)
    return {
        "task": task.name,
        "sklearn": _sklearn(features),
        "top": _test(features, "top", top["l2"], measured),
        "best CV": _test(features, by_cv["stage"], by_cv["l2"], measured),
        "best CV pick": by_cv["name"],
        "rule": rule_acc,
        "rule pick": rule["name"],
        "expected": expected,
        "inside": expected["low"] <= rule_acc <= expected["high"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "heldout")
    opts = parser.parse_args()
    rows = []
    for name in opts.families:
        for seed in TUNING_SEEDS:
            task = build_task(opts.work / "tasks", FAMILIES[name], seed)
            row = run_task(task, FAMILIES[name].image_size, opts.work / "rules-cache")
            rows.append({"family": name, **row})
            print(row, flush=True)
    lines = [
        "Draws: **tuning** (the only draws the rule was chosen on). Test accuracy in %.",
        "",
        "| task | sklearn | top | best CV (pick) | rule (pick) | predicted | in |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["expected"]
        lines.append(
            f"| {r['task']} | {100 * r['sklearn']:.1f} | {100 * r['top']:.1f} | "
            f"{100 * r['best CV']:.1f} ({r['best CV pick']}) | {100 * r['rule']:.1f} "
            f"({r['rule pick']}) | {100 * e['low']:.1f}-{100 * e['high']:.1f} | "
            f"{'yes' if r['inside'] else 'no'} |"
        )
    means = {
        k: 100 * statistics.mean(r[k] for r in rows) for k in ("sklearn", "top", "best CV", "rule")
    }
    inside = sum(r["inside"] for r in rows)
    lines += [
        "",
        "Mean over tasks: " + ", ".join(f"{k} {v:.1f}" for k, v in means.items())
        + f"; the rule's interval holds on {inside} of {len(rows)}.",
    ]  # fmt: skip
    write("Feature choice rules on the tuning draws", "\n".join(lines), {"rows": rows})


if __name__ == "__main__":
    main()
