"""Held-out large tasks: what refitting the ensemble's fine-tuned head exactly adds to a run.

A large-cell run used to score its ensemble with the fine-tuned network's trained head: one pass
over the validation and test images (``tlkit.floor._probabilities``). With the head refitted
(:func:`tlkit.head_refit.refit_head`) the run passes over the training images too and solves the
exact probe on the network's features. Both are measured here side by side, interleaved, on
the largest large task (``fashion10-400-64px``, tuning draw 1001: 3,200 training, 800
validation and 1,000 test images at 64 px) with the large recipe's network (Lite0 cut at
blocks.4, channels_last). The cost does not depend on the weights, so a network fresh from its
pretrained weights stands in for a fine-tuned one.

Run: python bench/refit_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import interleaved, median, timed, write
from heldout_data import LARGE_FAMILIES, TUNING_SEEDS, build_task

from tlkit.data import TransferDataModule
from tlkit.floor import _probabilities
from tlkit.head_refit import refit_head
from tlkit.module import TransferModule

FAMILY = "fashion10-400-64px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "refit-cost")
    opts = parser.parse_args()
    family = LARGE_FAMILIES[FAMILY]
    task = build_task(opts.work / "tasks", family, TUNING_SEEDS[0])
    dm = TransferDataModule(str(task), image_size=family.image_size, augment="medium",
                            cache_features=False, num_workers=0)  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    model = TransferModule(dm.num_classes, "tf_efficientnet_lite0", strategy="full",
                           strategy_args={"stage": 3}, channels_last=True)  # fmt: skip
    model.eval()

    def trained_head() -> float:
        def both() -> None:
            _probabilities(model, dm.val_dataloader())
            _probabilities(model, dm.test_dataloader())

        return timed(both)[0]

    def refitted_head() -> float:
        seconds, refit = timed(lambda: refit_head(model, dm))
        assert refit is not None
        return seconds

    figures = interleaved({"trained": trained_head, "refitted": refitted_head}, opts.repeats)
    trained, refitted = median(figures["trained"]), median(figures["refitted"])
    sizes = {s: len(dm.check_images()[s]) for s in ("train", "val", "test")}
    text = "\n".join([
        f"Task: {task.name} ({sizes['train']} training, {sizes['val']} validation, "
        f"{sizes['test']} test images at {family.image_size} px), Lite0 cut at blocks.4, "
        f"channels_last; median of {opts.repeats} interleaved repeats, seconds.",
        "",
        "| ensemble's fine-tuned member | seconds | per run, added |",
        "|---|---|---|",
        f"| trained head: a pass over val and test | {trained:.1f} | - |",
        f"| head refitted exactly: a pass over train, val and test, and the solve | "
        f"{refitted:.1f} | +{refitted - trained:.1f} |",
    ])  # fmt: skip
    write("Refitted head: cost", text, {"task": task.name, "sizes": sizes, **figures})


if __name__ == "__main__":
    main()
