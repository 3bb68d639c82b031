"""The frozen feature pass per runtime: torch eager, channels_last, torch.compile, ONNX Runtime
and OpenVINO, on each bundled backbone at 64, 128 and 224 px.

Each contender computes the pooled top features of the same real weights on the same batch
(32 images, the CPU's thread count as torch has it); rounds are interleaved (A, B, C, A, B,
C...) so that other work on the machine hits every contender alike. Reported: images/s (median
of the rounds), the ratio to torch eager, the largest difference from eager's features, and
each runtime's one-off cost (export + load, or compile) beside it. The ONNX model is exported
the way :class:`tlkit.runtimes.FrozenPass` exports it.

Run: python bench/runtimes.py [--rounds 3] [--compile]   (OpenVINO: pip install openvino)
     python bench/runtimes.py --device cuda              (the GPU check, bench/gpu.sh)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from common import write

from tlkit.backbones import bundled_backbones, create_backbone
from tlkit.heads import Encoder
from tlkit.runtimes import FrozenPass, available_runtimes

SIZES = (64, 128, 224)
BATCH = 32
#: Forward passes per round, so that every round lasts about a second.
PASSES = {64: 8, 128: 4, 224: 2}


def contenders(
    backbone: str, size: int, compile_too: bool, device: str = "cpu"
) -> tuple[dict, dict, torch.Tensor]:
    """``name -> images -> features`` for every runtime, the one-off seconds of each, and the
    batch. On a GPU: torch's paths and tlkit's frozen pass there (which stays on torch)."""
    model = create_backbone(backbone).eval().to(device)
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    eager = Encoder(model).eval()
    last = Encoder(model, channels_last=True).eval()
    runs = {"torch eager": eager, "channels_last": last}
    setup = {"torch eager": 0.0, "channels_last": 0.0}
    if compile_too:
        compiled = torch.compile(eager)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(images)
        runs["torch.compile"], setup["torch.compile"] = compiled, time.perf_counter() - start
    if device != "cpu":
        runs["tlkit frozen pass"], setup["tlkit frozen pass"] = FrozenPass(eager, backbone), 0.0
        return runs, setup, images
    for runtime in available_runtimes()[:-1]:
        frozen = FrozenPass(eager, f"bench:{backbone}", runtime)
        start = time.perf_counter()
        frozen(images)  # export, load, check against torch
        runs[runtime], setup[runtime] = frozen, time.perf_counter() - start
    return runs, setup, images


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    backbone: str, size: int, rounds: int, compile_too: bool, device: str = "cpu"
) -> list[dict]:
    runs, setup, images = contenders(backbone, size, compile_too, device)
    with torch.inference_mode():
        reference = runs["torch eager"](images)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                fn(images)  # warm
                _sync(device)
                start = time.perf_counter()
                for _ in range(PASSES[size]):
                    fn(images)
                _sync(device)
                seconds[name].append((time.perf_counter() - start) / PASSES[size])
    eager = statistics.median(seconds["torch eager"])
    rows = []
    for name, fn in runs.items():
        with torch.inference_mode():
            gap = float((fn(images).float().to(reference.device) - reference).abs().max())
        median = statistics.median(seconds[name])
        rows.append(
            {
                "backbone": backbone,
                "device": device,
                "size": size,
                "runtime": name,
                "images_per_s": BATCH / median,
                "rounds_images_per_s": [BATCH / s for s in seconds[name]],
                "ratio_to_eager": eager / median,
                "max_abs_diff": gap,
                "feature_scale": float(reference.abs().max()),
                "setup_s": setup[name],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow start)")
    parser.add_argument("--backbones", nargs="*", default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU check")
    opts = parser.parse_args()
    backbones = opts.backbones or list(bundled_backbones())
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TLKIT_CACHE_DIR"] = cache  # a cold export cache: setup_s includes export
        rows = [
            row
            for backbone in backbones
            for size in SIZES
            for row in measure(backbone, size, opts.rounds, opts.compile, opts.device)
        ]
    table = [
        "| backbone | px | runtime | img/s (median) | rounds | x eager | max diff | one-off s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shown = ", ".join(f"{v:.0f}" for v in r["rounds_images_per_s"])
        table.append(
            f"| {r['backbone'].removeprefix('tf_efficientnet_')} | {r['size']} | {r['runtime']} "
            f"| {r['images_per_s']:.0f} | {shown} | {r['ratio_to_eager']:.2f}x "
            f"| {r['max_abs_diff']:.1e} | {r['setup_s']:.2f} |"
        )
    default = available_runtimes()[0] if opts.device == "cpu" else "tlkit frozen pass"
    at_224 = [r["ratio_to_eager"] for r in rows if r["size"] == 224 and r["runtime"] == default]
    table += [
        "",
        f"Device {opts.device}. Default runtime here (`TLKIT_RUNTIME=auto`): **{default}**, "
        f"{min(at_224):.2f}x-{max(at_224):.2f}x torch eager at 224 px. Batch {BATCH}, "
        f"{torch.get_num_threads()} threads, pooled top features of the bundled weights; "
        "max diff: largest absolute difference from eager's features (features reach "
        f"{max(r['feature_scale'] for r in rows):.1f}). One-off: export + load + check "
        "against torch (cold cache), or the first compiled call.",
    ]
    write("The frozen feature pass per runtime", "\n".join(table), {"rows": rows})


if __name__ == "__main__":
    main()
