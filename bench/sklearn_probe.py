"""The by-hand baseline: scikit-learn's LogisticRegressionCV on a frozen timm backbone's features.

What a user writes without tlkit: torchvision's ImageFolder with timm's eval transform, the
pooled features of the same ImageNet EfficientNet-Lite0 weights, StandardScaler and
LogisticRegressionCV (5-fold, 10 strengths) on every labelled image (train/ and val/), scored on
test/. Prints one JSON line: test accuracy, balanced accuracy and seconds of work after the
imports. ``--class-weight balanced`` is the one-line fix a user reaches for on imbalanced data.

``--decode tlkit`` reads images as tlkit does (transparency composited on white) and
``--no-scaler`` fits on the raw features.

Run: python bench/sklearn_probe.py TASK_FOLDER --image-size 128 [--class-weight balanced]
     [--decode tlkit] [--no-scaler]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.datasets import ImageFolder

from tlkit.backbones import create_backbone  # only for the offline ImageNet weights


def _composited(path: str):
    """tlkit's decoding (transparency composited on white, EXIF orientation), as a PIL image."""
    from PIL import Image

    from tlkit.data.images import load_image

    return Image.fromarray(load_image(path))


def features(
    model, folder: Path, transform, classes: list[str], decode: str = "pil"
) -> tuple[np.ndarray, np.ndarray]:
    loader = {"loader": _composited} if decode == "tlkit" else {}
    data = ImageFolder(str(folder), transform=transform, **loader)
    assert data.classes == classes, "every split must have the same classes"
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    xs, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            xs.append(model(x).numpy())
            ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", type=Path)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--class-weight", choices=["none", "balanced"], default="none")
    parser.add_argument(
        "--decode",
        choices=["pil", "tlkit"],
        default="pil",
        help="pil: ImageFolder's convert('RGB'); tlkit: transparency composited",
    )
    parser.add_argument("--no-scaler", action="store_true", help="raw features, no StandardScaler")
    opts = parser.parse_args()
    start = time.perf_counter()
    model = create_backbone("tf_efficientnet_lite0", num_classes=0).eval()
    config = timm.data.resolve_data_config({}, model=model)
    config["input_size"] = (3, opts.image_size, opts.image_size)
    transform = timm.data.create_transform(**config)
    classes = sorted(p.name for p in (opts.task / "train").iterdir())
    parts = [features(model, opts.task / "train", transform, classes, opts.decode)]
    if (opts.task / "val").is_dir():
        parts.append(features(model, opts.task / "val", transform, classes, opts.decode))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = features(model, opts.task / "test", transform, classes, opts.decode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at the weakest strengths
        weight = None if opts.class_weight == "none" else opts.class_weight
        steps = [] if opts.no_scaler else [StandardScaler()]
        probe = make_pipeline(
            *steps, LogisticRegressionCV(Cs=10, cv=5, max_iter=1000, class_weight=weight)
        )
        probe.fit(x, y)
    accuracy = float(probe.score(x_test, y_test))
    balanced = float(balanced_accuracy_score(y_test, probe.predict(x_test)))
    seconds = time.perf_counter() - start
    print(json.dumps({"test_acc": accuracy, "balanced_acc": balanced, "work_seconds": seconds}))


if __name__ == "__main__":
    main()
