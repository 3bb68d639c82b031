"""Memory: peak RSS of training with `linear_probe` and `partial` vs `full`, same batch size.

Each strategy runs in a fresh process (real Lite0 weights, images, no feature cache, so the
difference is the activations kept for backward and the optimizer state) for a few training
steps; the peak resident set size of that process is reported.

    python bench/memory.py [--steps 5] [--image-size 160] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

STRATEGIES = {"linear_probe": {}, "partial": {"k": 2}, "full": {}}


def child(strategy: str, steps: int, size: int, batch: int) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tlkit.module import TransferModule

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(steps * batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (steps * batch,), generator=generator)
    model = TransferModule(
        num_classes=10, strategy=strategy, strategy_args=STRATEGIES[strategy], scheduler="constant"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=batch))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"strategy": strategy, "peak_mb": peak / 1024, "before_mb": before / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.steps, opts.image_size, opts.batch_size)
        return
    from common import write

    rows = {}
    for strategy in STRATEGIES:
        command = [
            sys.executable, __file__, "--child", strategy, "--steps", str(opts.steps),
            "--image-size", str(opts.image_size), "--batch-size", str(opts.batch_size),
        ]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows[strategy] = json.loads(output.strip().splitlines()[-1])
    full = rows["full"]["peak_mb"] - rows["full"]["before_mb"]
    table = "| strategy | peak RSS MB | growth during fit MB | vs full |\n|---|---|---|---|\n"
    for name, row in rows.items():
        growth = row["peak_mb"] - row["before_mb"]
        table += f"| {name} | {row['peak_mb']:.0f} | {growth:.0f} | {growth / full:.2f}x |\n"
    table += (
        f"\ntf_efficientnet_lite0, {opts.image_size} px, batch {opts.batch_size}, {opts.steps} "
        "steps, images (no feature cache). Growth = peak RSS minus RSS after building the model: "
        "activations kept for backward, gradients and optimizer state."
    )
    write("Memory: peak RSS by strategy", table, {**vars(opts), "rows": rows})


if __name__ == "__main__":
    main()
