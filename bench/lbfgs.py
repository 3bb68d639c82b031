"""Full-batch L-BFGS vs AdamW for a linear head on the same cached features.

The demo data (200 train / 100 val / 500 test), the real Lite0 weights, features cached once
(warm cache for both). L-BFGS fits the multinomial logistic regression to convergence once per
epoch, one L2 strength per epoch (geometric over ``l2_range``), and the checkpoint with the best
validation accuracy is tested; AdamW trains the same head with the small-similar recipe's
settings. Reports test accuracy and fit time of each, interleaved over repeats.

    python bench/lbfgs.py [--image-size 96] [--adam-epochs 30] [--lbfgs-epochs 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import lightning as L
from common import interleaved, median, write
from lightning.pytorch.callbacks import ModelCheckpoint

from tlkit import TransferDataModule, TransferModule


def run(optimizer: str, epochs: int, size: int, work: str) -> tuple[float, float]:
    L.seed_everything(0, verbose=False)
    data = TransferDataModule("demo", image_size=size, augment="none", batch_size=32)
    extra = {"scheduler": "constant"} if optimizer == "lbfgs" else {"lr": 3e-3, "warmup_epochs": 1}
    model = TransferModule(data.num_classes, strategy="linear_probe", optimizer=optimizer, **extra)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True, default_root_dir=work,
        callbacks=[ModelCheckpoint(os.path.join(work, optimizer), monitor="val_acc", mode="max")],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    result = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)
    return seconds, result[0]["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--adam-epochs", type=int, default=30)
    parser.add_argument("--lbfgs-epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tlkit-bench-lbfgs-")
    os.environ["TLKIT_CACHE_DIR"] = os.path.join(work, "cache")
    run("adamw", 1, opts.image_size, work)  # fill the feature cache once, untimed
    accuracy: dict[str, float] = {}

    def measure(optimizer: str, epochs: int):
        def go() -> float:
            seconds, accuracy[optimizer] = run(optimizer, epochs, opts.image_size, work)
            return seconds

        return go

    figures = interleaved(
        {"adamw": measure("adamw", opts.adam_epochs), "lbfgs": measure("lbfgs", opts.lbfgs_epochs)},
        opts.repeats,
    )
    shutil.rmtree(work, ignore_errors=True)
    rows = (("adamw", f"AdamW, {opts.adam_epochs} epochs, cosine"),
            ("lbfgs", f"L-BFGS full batch, {opts.lbfgs_epochs} L2 strengths"))  # fmt: skip
    table = "| head optimizer | fit seconds (median) | runs | test accuracy |\n|---|---|---|---|\n"
    for key, label in rows:
        runs = ", ".join(f"{v:.2f}" for v in figures[key])
        table += f"| {label} | {median(figures[key]):.2f} | {runs} | {accuracy[key]:.4f} |\n"
    table += (
        f"\nL-BFGS minus AdamW: {100 * (accuracy['lbfgs'] - accuracy['adamw']):+.1f} accuracy "
        f"points in {median(figures['lbfgs']) / median(figures['adamw']):.2f}x the time. "
        f"linear_probe on tf_efficientnet_lite0 at {opts.image_size} px, demo data, warm feature "
        f"cache, best validation checkpoint tested, {opts.repeats} interleaved repeats."
    )
    write("Full-batch L-BFGS vs AdamW on cached features", table, {**vars(opts), **figures,
          "accuracy": accuracy})  # fmt: skip


if __name__ == "__main__":
    main()
