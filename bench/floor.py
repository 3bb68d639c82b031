"""Floor: `tlkit finetune --recipe small-similar` vs one inference pass over the same images.

A linear probe cannot be faster than pushing every image (train, val and test) once through the
frozen backbone. This runs the real finetune command in-process (no interpreter start-up, empty
feature cache) and, interleaved, a plain loop that decodes, transforms and forwards the same
images once under inference mode. Target: finetune at most 1.5x the floor.

    python bench/floor.py [--shots 200] [--image-size 64] [--val-fraction 0.02] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch
from common import interleaved, median, write
from torch.utils.data import DataLoader

from tlkit.backbones import create_backbone
from tlkit.cli import main as tlkit_main
from tlkit.data import TransferDataModule
from tlkit.data.datasets import ImageDataset
from tlkit.transforms import build_pipeline, eval_transform


def finetune(opts, work: str) -> float:
    shutil.rmtree(os.path.join(work, "cache"), ignore_errors=True)
    out = os.path.join(work, "run")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    code = tlkit_main(
        [
            "finetune", "--recipe", "small-similar", "--data", "fashion-mnist",
            "--shots", str(opts.shots), "--image-size", str(opts.image_size),
            "--data.val_fraction", str(opts.val_fraction), "--out", out,
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"finetune failed with exit code {code}")
    return time.perf_counter() - start


def floor(opts) -> tuple[float, int]:
    data = TransferDataModule(
        "fashion-mnist", image_size=opts.image_size, shots=opts.shots,
        val_fraction=opts.val_fraction, augment="none",
    )  # fmt: skip
    source = data.source
    transform = build_pipeline(eval_transform(data.spec))
    model = create_backbone("tf_efficientnet_lite0").eval()
    start = time.perf_counter()
    count = 0
    with torch.inference_mode():
        for split in (source.train, source.val, source.test):
            for images, _ in DataLoader(ImageDataset(split, transform), batch_size=64):
                model(images)
                count += len(images)
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tlkit-bench-floor-")
    os.environ["TLKIT_CACHE_DIR"] = os.path.join(work, "cache")
    images: list[int] = []

    def floor_run() -> float:
        seconds, count = floor(opts)
        images.append(count)
        return seconds

    figures = interleaved(
        {"finetune": lambda: finetune(opts, work), "floor": floor_run}, opts.repeats
    )
    shutil.rmtree(work, ignore_errors=True)
    ours, base = median(figures["finetune"]), median(figures["floor"])
    table = (
        "| what | seconds (median) | runs |\n|---|---|---|\n"
        f"| `tlkit finetune --recipe small-similar` (fit + test, cold cache) | {ours:.1f} | "
        f"{', '.join(f'{v:.1f}' for v in figures['finetune'])} |\n"
        f"| one inference pass over the same {images[0]} images (floor) | {base:.1f} | "
        f"{', '.join(f'{v:.1f}' for v in figures['floor'])} |\n\n"
        f"**Ratio finetune / floor: {ours / base:.2f}** (target <= 1.5). Fashion-MNIST, "
        f"{opts.shots} train images per class, val fraction {opts.val_fraction}, the 10,000 test "
        f"images, {opts.image_size} px, in-process (no interpreter start-up)."
    )
    write(
        "Floor: finetune vs one forward pass", table, {**vars(opts), **figures, "images": images[0]}
    )


if __name__ == "__main__":
    main()
