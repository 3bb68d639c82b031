"""The by-hand baseline: scikit-learn's LogisticRegressionCV on a frozen timm backbone's features.

What a user writes without tlkit: torchvision's ImageFolder with timm's eval transform, the
pooled features of the same ImageNet EfficientNet-Lite0 weights, StandardScaler and
LogisticRegressionCV (5-fold, 10 strengths) on every labelled image (train/ and val/), scored on
test/. Prints one JSON line: test accuracy, balanced accuracy and seconds of work after the
imports. ``--class-weight balanced`` is the one-line fix a user reaches for on imbalanced data.

Run: python bench/sklearn_probe.py TASK_FOLDER --image-size 128 [--class-weight balanced]
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


def features(model, folder: Path, transform, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    data = ImageFolder(str(folder), transform=transform)
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
    opts = parser.parse_args()
    start = time.perf_counter()
    model = create_backbone("tf_efficientnet_lite0", num_classes=0).eval()
    config = timm.data.resolve_data_config({}, model=model)
    config["input_size"] = (3, opts.image_size, opts.image_size)
    transform = timm.data.create_transform(**config)
    classes = sorted(p.name for p in (opts.task / "train").iterdir())
    parts = [features(model, opts.task / "train", transform, classes)]
    if (opts.task / "val").is_dir():
        parts.append(features(model, opts.task / "val", transform, classes))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = features(model, opts.task / "test", transform, classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at the weakest strengths
        weight = None if opts.class_weight == "none" else opts.class_weight
        probe = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(Cs=10, cv=5, max_iter=1000, class_weight=weight),
        )
        probe.fit(x, y)
    accuracy = float(probe.score(x_test, y_test))
    balanced = float(balanced_accuracy_score(y_test, probe.predict(x_test)))
    seconds = time.perf_counter() - start
    print(json.dumps({"test_acc": accuracy, "balanced_acc": balanced, "work_seconds": seconds}))


if __name__ == "__main__":
    main()
