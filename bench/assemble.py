"""Assemble bench/RESULTS.md from the sections the benchmarks wrote to bench/results/.

The headline sections (:data:`HEADLINES`) are given with their text and first table (the
per-task tables stay in results/); every other section is indexed by its title. Each links
to its full text in results/.
"""

from __future__ import annotations

import argparse
import json

from common import RESULTS, machine

ORDER = [
    "heldout-report",
    "heldout-report-first",
    "imbalance",
    "extended-final",
    "extended-fresh",
    "domains-report",
    "domains-tuning",
    "resize-tuning",
    "probe-scale-fresh",
    "probe-scale-report",
    "probe-scale-tuning",
    "interval-tuning",
    "interval-report",
    "balanced-loss-report",
    "balanced-loss-tuning",
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
    "stage-rule-tuning",
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

#: The sections RESULTS.md shows: the current figures of what ships.
HEADLINES = [
    "extended-final",
    "interval-tuning",
    "balanced-loss-report",
    "heldout-report",
    "large-report",
    "wall",
]


def _title(text: str, stem: str) -> str:
    first = next((line for line in text.splitlines() if line.startswith("## ")), f"## {stem}")
    return first[3:].strip()


def _headline(text: str, stem: str) -> str:
    """The section's text and its first table (later tables, per task, stay in results/)."""
    out: list[str] = []
    tables, in_table = 0, False
    for line in text.strip().splitlines():
        row = line.startswith("|")
        if row and not in_table:
            tables += 1
        in_table = row
        if not (row and tables > 1) and not (not line.strip() and out and not out[-1].strip()):
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join([*out, "", f"All of it: [results/{stem}.md](results/{stem}.md).", ""])


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
    texts = {p.stem: p.read_text() for p in sections}
    body = [_headline(texts[stem], stem) for stem in HEADLINES if stem in texts]
    body += ["## Every other section", ""]
    body += [
        f"- {_title(text, stem)}: [results/{stem}.md](results/{stem}.md)"
        for stem, text in texts.items()
        if stem not in HEADLINES
    ]
    (RESULTS.parent / "RESULTS.md").write_text("\n".join(head) + "\n" + "\n".join(body) + "\n")
    print(f"wrote {RESULTS.parent / 'RESULTS.md'} from {len(sections)} sections")


if __name__ == "__main__":
    main()
