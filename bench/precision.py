"""channels_last and bf16 autocast on this machine: training and inference throughput.

TransferModule (strategy ``full``, real Lite0 weights) under a Lightning Trainer, fp32 vs
``channels_last`` vs ``precision="bf16-mixed"`` vs both, measured interleaved; plus inference
(forward under inference mode) in the same settings. Ratios > 1 mean faster than fp32.

    python bench/precision.py [--steps 10] [--image-size 128] [--batch-size 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from common import interleaved, median, write
from torch.utils.data import DataLoader, TensorDataset

from tlkit.module import TransferModule

SETTINGS = {
    "fp32": (False, "32-true"),
    "channels_last": (True, "32-true"),
    "bf16-mixed": (False, "bf16-mixed"),
    "channels_last + bf16-mixed": (True, "bf16-mixed"),
}


class Timer(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def train(setting: str, data: TensorDataset, batch: int) -> float:
    channels_last, precision = SETTINGS[setting]
    torch.manual_seed(0)
    model = TransferModule(
        num_classes=10, strategy="full", scheduler="constant", channels_last=channels_last
    )
    timer = Timer()
    trainer = L.Trainer(
        max_epochs=1, accelerator="auto", devices=1, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=batch))
    return len(data) / timer.seconds


def infer(setting: str, data: TensorDataset, batch: int) -> float:
    channels_last, precision = SETTINGS[setting]
    model = TransferModule(num_classes=10, channels_last=channels_last).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    start = time.perf_counter()
    with (
        torch.inference_mode(),
        torch.autocast(device, torch.bfloat16, enabled="bf16" in precision),
    ):
        for images, _ in DataLoader(data, batch_size=batch):
            model(images.to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    n = opts.steps * opts.batch_size
    size = opts.image_size
    data = TensorDataset(
        torch.randn(n, 3, size, size, generator=generator), torch.randint(0, 10, (n,))
    )
    runs = {}
    for setting in SETTINGS:
        runs[f"train {setting}"] = lambda s=setting: train(s, data, opts.batch_size)
        runs[f"infer {setting}"] = lambda s=setting: infer(s, data, opts.batch_size)
    figures = interleaved(runs, opts.repeats)
    table = (
        "| setting | train img/s | vs fp32 | inference img/s | vs fp32 |\n|---|---|---|---|---|\n"
    )
    base_train, base_infer = median(figures["train fp32"]), median(figures["infer fp32"])
    for setting in SETTINGS:
        tr, inf = median(figures[f"train {setting}"]), median(figures[f"infer {setting}"])
        table += (
            f"| {setting} | {tr:.1f} | {tr / base_train:.2f}x | {inf:.1f} "
            f"| {inf / base_infer:.2f}x |\n"
        )
    table += (
        f"\ntf_efficientnet_lite0, strategy full, {size} px, batch {opts.batch_size}, "
        f"{opts.steps} steps per run, {opts.repeats} interleaved repeats (medians)."
    )
    write("channels_last and bf16 autocast", table, {**vars(opts), **figures})


if __name__ == "__main__":
    main()
