"""Does the data wait for the model, or the model for the data? The frozen pass's two halves
measured apart, then together, on PNG folders as a user's would be read.

For each input size: images/s of decoding + the eval transform alone (tlkit's ImageDataset
through a DataLoader with 0, 1 and 2 workers), of the model alone on ready tensors (the default
runtime of tlkit.runtimes), and of the whole pass as ``cached_features`` runs it (workers 0, as
tlkit runs it). Interleaved over the rounds.

Run: python bench/data_side.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write
from heldout_data import Family, build_task
from torch.utils.data import DataLoader

from tlkit.backbones import create_backbone
from tlkit.data import TransferDataModule
from tlkit.data.datasets import ImageDataset
from tlkit.heads import Encoder
from tlkit.runtimes import FrozenPass
from tlkit.transforms import build_pipeline, eval_transform

SIZES = (64, 128, 224)
TASK = Family("fashion10-30-data-side", "fashion", 10, 30, 0, 2, 224)


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def measure_size(task: Path, model: torch.nn.Module, size: int, rounds: int) -> list[dict]:
    """Images/s of each part at one input size."""
    dm = TransferDataModule(data=str(task), image_size=size)
    dataset = ImageDataset(dm.check_images()["train"], build_pipeline(eval_transform(dm.spec)))
    frozen = FrozenPass(Encoder(model), "lite0")
    ready = torch.stack([dataset[i][0] for i in range(len(dataset))])
    frozen(ready[:2])  # export and check once, outside the timing

    def decode(workers: int) -> None:
        for _ in DataLoader(dataset, batch_size=64, num_workers=workers):
            pass

    def forward() -> None:
        for start in range(0, len(ready), 64):
            frozen(ready[start : start + 64])

    def whole() -> None:
        for images, _ in DataLoader(dataset, batch_size=64):
            frozen(images)

    runs = {
        "decode + transform, 0 workers": lambda: decode(0),
        "decode + transform, 1 worker": lambda: decode(1),
        "decode + transform, 2 workers": lambda: decode(2),
        f"model alone ({frozen.runtime})": forward,
        "whole pass (0 workers)": whole,
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            rates[name].append(rate(fn, len(dataset)))
    return [{"size": size, "part": n, "images_per_s": v, "images": len(dataset)}
            for n, v in rates.items()]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    task = build_task(Path(tempfile.mkdtemp()), TASK, seed=3)
    model = create_backbone("tf_efficientnet_lite0").eval()
    rows = [row for size in SIZES for row in measure_size(task, model, size, opts.rounds)]
    table = ["| px | part | img/s (median) | rounds |", "|---|---|---|---|"]
    for r in rows:
        shown = ", ".join(f"{v:.0f}" for v in r["images_per_s"])
        table.append(
            f"| {r['size']} | {r['part']} | {statistics.median(r['images_per_s']):.0f} | {shown} |"
        )
    table += [
        "",
        f"{rows[0]['images']} PNG images (Fashion-MNIST, 28 px files resized to each size), "
        f"batch 64, {torch.get_num_threads()} torch threads, Lite0 pooled features.",
    ]
    write("The frozen pass: data side against model side", "\n".join(table), {"rows": rows})


if __name__ == "__main__":
    main()
