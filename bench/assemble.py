"""Assemble bench/RESULTS.md from the sections the benchmarks wrote to bench/results/."""

from __future__ import annotations

import argparse
import json

from common import RESULTS, machine

ORDER = [
    "heldout-report",
    "heldout-report-first",
    "imbalance",
    "extended-fresh",
    "domains-report",
    "domains-tuning",
    "probe-scale-fresh",
    "probe-scale-report",
    "probe-scale-tuning",
    "interval-report",
    "interval-tuning",
    "large-report",
    "large-report-pooled-floor",
    "large-report-trained-head",
    "refit_cost",
    "large-report-first",
    "large-tuning-runs",
    "large-tuning",
    "large-variants-report",
    "large-variants-tuning",
    "grid-readout-report",
    "grid-readout-tuning",
    "grid-fewshot-report",
    "grid-fewshot-tuning",
    "spatial-readout-tuning",
    "large_options",
    "shapes",
    "wall",
    "runtimes",
    "runtime_agreement",
    "solver",
    "probe_wall",
    "advise_threads",
    "heldout_rules",
    "overhead",
    "cache",
    "lbfgs",
    "floor",
    "memory",
    "precision",
    "ensemble",
    "options",
    "fmp",
    "quadrants",
    "gpu",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--note", default="", help="a sentence on how the figures were measured")
    opts = parser.parse_args()
    sections = sorted(RESULTS.glob("*.md"), key=lambda p: [*ORDER, p.stem].index(p.stem))
    info = machine()
    for path in RESULTS.glob("*.json"):
        info = json.loads(path.read_text()).get("machine", info)
        break
    head = [
        "# Benchmark results",
        "",
        "Each speed figure is a ratio measured side by side in one run (contenders",
        "interleaved, medians), so it survives the noise of a shared machine. Rerun the speed",
        "benchmarks with `bench/run_all.sh` (about 16 minutes on 2 CPU cores); the ensemble",
        "(about 10 minutes) and quadrant (30-60 minutes) benchmarks run on their own. Every",
        "section gives its command.",
        "",
        f"Machine: {info['cores']} CPU cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads, Python {info['python']}, GPU: {info['gpu'] or 'none'}.",
        "",
    ]
    if opts.note:
        head += [f"**Conditions:** {opts.note}", ""]
    body = [p.read_text().strip() + "\n" for p in sections]
    (RESULTS.parent / "RESULTS.md").write_text("\n".join(head) + "\n" + "\n".join(body))
    print(f"wrote {RESULTS.parent / 'RESULTS.md'} from {len(sections)} sections")


if __name__ == "__main__":
    main()
