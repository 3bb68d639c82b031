"""``tlkit predict``, ``tlkit evaluate`` and ``tlkit export``: commands over checkpoints."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from tlkit.cli.lightning import verbose
from tlkit.data.images import probe_image
from tlkit.data.sources import IMAGE_EXTENSIONS, load_source
from tlkit.errors import ArgumentParser, TlkitError
from tlkit.inference import LoadedModel, ensemble_probabilities, ensemble_size, load_checkpoint
from tlkit.utils import atomic_path

__all__ = ["evaluate_command", "export_command", "predict_command"]


def _ensemble_options(parser: ArgumentParser) -> None:
    """The options ``predict`` and ``evaluate`` share: how to load and run the checkpoints."""
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--trust-weights", action="store_true")
    parser.add_argument("--strict", action="store_true", help="stop on undecodable images")


def _checkpoints(paths: Sequence[str], trust: bool) -> list[LoadedModel]:
    return [load_checkpoint(path, trust=trust) for path in paths]


def _image_files(data: str) -> list[str]:
    path = Path(data)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise TlkitError(f"--data {data} does not exist; pass an image file or a folder of images")
    files = sorted(
        str(p)
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise TlkitError(f"no images found under {data}; supported: {sorted(IMAGE_EXTENSIONS)}")
    return files


def _decodable(items: Sequence, strict: bool) -> list[int]:
    """Indices of the items that decode; the others are named in a warning, or refused if strict.

    In-memory arrays (IDX data) are not probed.
    """
    bad = [
        (i, reason)
        for i, item in enumerate(items)
        if isinstance(item, (str, os.PathLike)) and (reason := probe_image(item)) is not None
    ]
    if bad:
        shown = "; ".join(f"{items[i]} ({reason})" for i, reason in bad[:3])
        if strict or len(bad) == len(items):
            raise TlkitError(
                f"{len(bad)} of {len(items)} image(s) do not decode, e.g. {shown}; remove them"
                + (" or drop --strict to skip them" if strict else "")
            )
        print(f"tlkit: warning: skipping {len(bad)} undecodable image(s), e.g. {shown}",
              file=sys.stderr)  # fmt: skip
    skipped = {i for i, _ in bad}
    return [i for i in range(len(items)) if i not in skipped]


def predict_command(argv: Sequence[str]) -> int:
    """Predict the top-k labels of images with one checkpoint or an ensemble of several."""
    parser = ArgumentParser(
        prog="tlkit predict",
        description="Top-k labels and probabilities for an image or a folder of images; "
        "several checkpoints are averaged as an ensemble.",
        epilog="example: tlkit predict --checkpoint runs/x/checkpoints/best.ckpt "
        "--data photos/ --out preds.csv --top-k 3",
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one or more .ckpt files")
    parser.add_argument("--data", required=True, help="an image file or a folder (recursive)")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write")
    parser.add_argument("--top-k", type=int, default=1, help="labels per image (default 1)")
    _ensemble_options(parser)
    opts = parser.parse_args(argv)
    if opts.top_k <= 0 or opts.batch_size <= 0:
        raise TlkitError("--top-k and --batch-size must be positive")
    models = _checkpoints(opts.checkpoint, opts.trust_weights)
    files = _image_files(opts.data)
    files = [files[i] for i in _decodable(files, opts.strict)]
    probs = ensemble_probabilities(
        models, files, opts.batch_size, progress=verbose(), verbose=verbose()
    )
    k = min(opts.top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    names = models[0].class_names
    header = ["path"] + [f"{kind}_{j + 1}" for j in range(k) for kind in ("label", "prob")]
    try:
        with atomic_path(opts.out) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for path, ps, ix in zip(files, top_p.tolist(), top_i.tolist(), strict=True):
                row = [path]
                for p, i in zip(ps, ix, strict=True):
                    row += [names[i], f"{p:.6f}"]
                writer.writerow(row)
    except OSError as err:
        raise TlkitError(
            f"cannot write {opts.out} ({err.strerror or err}); pass a writable --out FILE"
        ) from None
    print(f"wrote {len(files)} predictions to {opts.out}")
    return 0


def evaluate_command(argv: Sequence[str]) -> int:
    """Metrics, per-class accuracy and a confusion matrix on labelled data."""
    from tlkit.report import confusion_matrix_png, evaluation_metrics, print_evaluation

    parser = ArgumentParser(
        prog="tlkit evaluate",
        description="Evaluate one checkpoint, or several as an ensemble (mean softmax), on "
        "labelled data: accuracy, top-5, macro F1, per-class accuracy, confusion matrix.",
        epilog="example: tlkit evaluate --checkpoint a.ckpt b.ckpt --data path/to/images",
    )
    parser.add_argument("--checkpoint", nargs="+", required=True, help="one or more .ckpt files")
    parser.add_argument("--data", required=True, help="demo | fashion-mnist | folder | CSV")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--out", help="folder for evaluation.json and confusion_matrix.png")
    _ensemble_options(parser)
    opts = parser.parse_args(argv)
    if opts.batch_size <= 0:
        raise TlkitError("--batch-size must be positive")
    models = _checkpoints(opts.checkpoint, opts.trust_weights)
    source = load_source(opts.data)
    split = getattr(source, opts.split) or (source.train if opts.split == "test" else None)
    if split is None:
        raise TlkitError(f"{opts.data} has no {opts.split} split; pass --split test or train")
    names = models[0].class_names
    unknown = sorted(set(source.classes) - set(names))
    if unknown:
        raise TlkitError(
            f"classes {unknown[:5]} of {opts.data} are not among the model's classes; "
            "evaluate on data with the classes the model was trained on"
        )
    split = split.subset(_decodable(split.items, opts.strict))
    index = {name: i for i, name in enumerate(names)}
    targets = torch.tensor([index[source.classes[label]] for label in split.labels])
    probs = ensemble_probabilities(
        models, split.items, opts.batch_size, progress=verbose(), verbose=verbose()
    )
    result = evaluation_metrics(probs, targets, names)
    # one entry per model of the ensemble: a snapshot checkpoint once per snapshot
    result["checkpoints"] = [str(m.path) for m in models for _ in range(ensemble_size(m))]
    print_evaluation(result)
    if opts.out:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
        confusion_matrix_png(result["confusion_matrix"], names, out / "confusion_matrix.png")
        print(f"wrote {out / 'evaluation.json'} and {out / 'confusion_matrix.png'}")
    return 0


def export_command(argv: Sequence[str]) -> int:
    """Export a checkpoint to safetensors (timm-loadable), ONNX or TorchScript."""
    from tlkit.export import export

    parser = ArgumentParser(
        prog="tlkit export",
        description="Export a checkpoint: safetensors that timm.create_model loads (plus a "
        "labels/preprocessing JSON), or ONNX / TorchScript for serving; each export is "
        "checked to give the same outputs as the PyTorch model.",
        epilog="example: tlkit export --checkpoint best.ckpt --format safetensors --out model",
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument(
        "--format", default="safetensors", choices=("safetensors", "onnx", "torchscript")
    )
    parser.add_argument(
        "--out", help="output path without extension (default: beside the checkpoint)"
    )
    parser.add_argument("--trust-weights", action="store_true")
    opts = parser.parse_args(argv)
    loaded = load_checkpoint(opts.checkpoint, trust=opts.trust_weights)
    out = Path(opts.out) if opts.out else loaded.path.with_suffix("")
    written = export(loaded, out, opts.format)
    for path in written:
        print(f"wrote {path}")
    return 0
