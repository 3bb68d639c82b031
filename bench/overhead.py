"""Overhead: TransferModule + Lightning Trainer vs a plain PyTorch loop.

Same timm model (the real Lite0 weights), same data tensors, batch size, optimizer (AdamW) and
number of steps; everything trains (strategy ``full``). Reports images/s of both, measured
interleaved, and their ratio (target: at least 0.95).

    python bench/overhead.py [--steps 30] [--image-size 96] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from common import interleaved, median, write
from torch.utils.data import DataLoader, TensorDataset

from tlkit.backbones import create_backbone
from tlkit.module import TransferModule


def data(steps: int, batch: int, size: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(steps * batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (steps * batch,), generator=generator)
    return TensorDataset(images, labels)


def plain_loop(dataset: TensorDataset, batch: int, lr: float) -> float:
    torch.manual_seed(0)
    model = create_backbone("tf_efficientnet_lite0", num_classes=10)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    start = time.perf_counter()
    for images, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    return len(dataset) / (time.perf_counter() - start)


class Timer(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def tlkit_loop(dataset: TensorDataset, batch: int, lr: float) -> float:
    torch.manual_seed(0)
    model = TransferModule(
        num_classes=10, strategy="full", strategy_args={"layer_decay": 1.0},
        optimizer="adamw", lr=lr, weight_decay=1e-4, scheduler="constant",
    )  # fmt: skip
    timer = Timer()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, DataLoader(dataset, batch_size=batch, shuffle=True))
    return len(dataset) / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    dataset = data(opts.steps, opts.batch_size, opts.image_size)
    lr = 1e-3
    figures = interleaved(
        {
            "plain": lambda: plain_loop(dataset, opts.batch_size, lr),
            "tlkit": lambda: tlkit_loop(dataset, opts.batch_size, lr),
        },
        opts.repeats,
    )
    plain, ours = median(figures["plain"]), median(figures["tlkit"])
    ratio = ours / plain
    table = (
        "| loop | images/s (median) | runs |\n|---|---|---|\n"
        f"| plain PyTorch | {plain:.1f} | {', '.join(f'{v:.1f}' for v in figures['plain'])} |\n"
        f"| tlkit TransferModule + Trainer | {ours:.1f} | "
        f"{', '.join(f'{v:.1f}' for v in figures['tlkit'])} |\n\n"
        f"**Ratio tlkit / plain: {ratio:.3f}** (target >= 0.95). tf_efficientnet_lite0, "
        f"{opts.image_size} px, batch {opts.batch_size}, {opts.steps} AdamW steps per run, "
        f"everything trains; {opts.repeats} interleaved repeats."
    )
    write(
        "Overhead: TransferModule vs a plain PyTorch loop",
        table,
        {**vars(opts), **figures, "ratio": ratio},
    )


if __name__ == "__main__":
    main()
