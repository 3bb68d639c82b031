"""Feature cache: a 10-epoch linear probe with the cache vs without.

Same data (the bundled demo: 200 train / 100 val / 500 test images), no augmentation, the real
Lite0 weights, AdamW; runs interleaved. "cold" starts from an empty cache directory (the features
are computed once inside the timed fit), "warm" reuses the cache of an earlier run. Reports fit
time and test accuracy (target: at least 10x faster, accuracy within 0.5 points).

    python bench/cache.py [--epochs 10] [--image-size 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import lightning as L
from common import interleaved, median, write

from tlkit import TransferDataModule, TransferModule


def run(cache: str, epochs: int, size: int, cache_dir: str) -> tuple[float, float]:
    if cache == "cold":
        shutil.rmtree(cache_dir, ignore_errors=True)
    L.seed_everything(0, verbose=False)
    data = TransferDataModule(
        "demo", image_size=size, augment="none", batch_size=32,
        cache_features=cache != "off", cache_dir=cache_dir,
    )  # fmt: skip
    model = TransferModule(num_classes=data.num_classes, strategy="linear_probe", lr=3e-3)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    accuracy = trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"]
    return seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="tlkit-bench-cache-")
    os.environ["TLKIT_CACHE_DIR"] = cache_dir
    accuracy: dict[str, float] = {}

    def measure(mode: str):
        def go() -> float:
            seconds, accuracy[mode] = run(mode, opts.epochs, opts.image_size, cache_dir)
            return seconds

        return go

    figures = interleaved({m: measure(m) for m in ("off", "cold", "warm")}, opts.repeats)
    shutil.rmtree(cache_dir, ignore_errors=True)
    off, cold, warm = (median(figures[m]) for m in ("off", "cold", "warm"))
    table = (
        "| feature cache | fit seconds (median) | runs | test accuracy |\n|---|---|---|---|\n"
        + "".join(
            f"| {label} | {median(figures[m]):.2f} | "
            f"{', '.join(f'{v:.2f}' for v in figures[m])} | {accuracy[m]:.4f} |\n"
            for m, label in (("off", "off"), ("cold", "on, empty cache"), ("warm", "on, reused"))
        )
        + f"\n**Speed-up: {off / cold:.1f}x with a cold cache, {off / warm:.1f}x warm** "
        f"(target >= 10x); accuracy difference {abs(accuracy['off'] - accuracy['cold']) * 100:.2f} "
        f"points (target <= 0.5). {opts.epochs} epochs, linear_probe on tf_efficientnet_lite0 at "
        f"{opts.image_size} px, demo data, {opts.repeats} interleaved repeats. A cold cache "
        "pushes every train and val image through the backbone once, which is one of the "
        f"{opts.epochs} passes the uncached fit makes, so a cold fit can be at most about "
        f"{opts.epochs}x faster; it reaches {off / cold / opts.epochs:.0%} of that bound, and "
        "every later fit on the same data, backbone and transform (another head, LR, seed or "
        "optimizer) is a warm one."
    )
    write(
        "Feature cache: 10-epoch linear probe",
        table,
        {**vars(opts), **figures, "accuracy": accuracy},
    )


if __name__ == "__main__":
    main()
