"""Feature cache: run a frozen backbone over a dataset once, keep the features on disk."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from tlkit.errors import TlkitError
from tlkit.utils import atomic_path, rank_zero_print

__all__ = [
    "Collective",
    "FeatureExtractor",
    "ViewFeatures",
    "cached_features",
    "default_cache_dir",
    "tensor_digest",
]


class Collective(Protocol):
    """The processes of a distributed run, as Lightning's ``trainer.strategy`` offers them."""

    @property
    def world_size(self) -> int: ...

    @property
    def global_rank(self) -> int: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any: ...

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor: ...


def default_cache_dir() -> Path:
    """``$TLKIT_CACHE_DIR`` or ``~/.cache/tlkit``, with ``features/`` below it."""
    root = os.environ.get("TLKIT_CACHE_DIR") or Path.home() / ".cache" / "tlkit"
    return Path(root) / "features"


def tensor_digest(module: torch.nn.Module) -> str:
    """A content hash of a module's parameters and buffers (identifies its weights)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class FeatureExtractor:
    """A frozen ``images -> features`` function plus a key naming what it computes.

    Args:
        fn: Maps a batch of images to a batch of feature vectors; must not depend on training
            state (a frozen backbone in eval mode).
        key: Identifies the backbone, its weights and the feature stage.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], key: str) -> None:
        self.fn = fn
        self.key = key

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images).float()


def cached_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    identity: dict[str, Any],
    cache_dir: Path | None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    description: str = "features",
    views: int = 1,
    collective: Collective | None = None,
) -> Dataset:
    """Features of every item of ``dataset``, from the disk cache or computed once.

    Args:
        extractor: The frozen feature function.
        dataset: Yields ``(image tensor, label)``; its transform must be deterministic.
        identity: Plain data naming the data and transform (hashed into the cache key together
            with ``extractor.key``).
        cache_dir: Where the cache lives; ``None`` keeps the features in memory only.
        batch_size: Inference batch size.
        num_workers: DataLoader workers for decoding.
        device: Where the extractor runs.
        description: Label of the progress bar.
        views: Augmented views per item: view ``v`` of item ``i`` is ``dataset[(v, i)]``
            (a seeded augmentation); with ``views > 1`` the result is indexed by
            ``(epoch, i)`` and serves view ``epoch % views``.
        collective: The processes of a distributed run (``trainer.strategy``): each extracts
            its shard, the shards are gathered, rank zero writes. ``None``: one process.

    Returns:
        A dataset of ``(feature vector, label)``.

    Raises:
        TlkitError: If ``dataset`` is empty (e.g. none of its images decode).
    """
    if len(dataset) == 0:
        raise TlkitError(f"no images for {description} (empty split); add decodable images to it")
    blob = json.dumps({"extractor": extractor.key, **identity}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    path = None if cache_dir is None else Path(cache_dir) / f"{key}.safetensors"
    rank, world = (collective.global_rank, collective.world_size) if collective else (0, 1)
    hit = path is not None and path.is_file()
    if world > 1:
        hit = collective.broadcast(hit, src=0)  # every rank takes rank zero's path
    cached = _load_cached(path, description, views, rank) if hit else None
    if cached is not None:
        return cached
    source = dataset if views == 1 else _Views(dataset, views)
    shard = Subset(source, range(rank, len(source), world)) if world > 1 else source
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    feats, labs = _extract(extractor, loader, device, f"caching {description}", rank == 0)
    if world > 1:
        feats, labs = _gather_shards(collective, feats, labs, len(source))
    if path is not None and rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": feats, "labels": labs}, str(tmp), metadata={"key": blob})
    return _feature_dataset(feats, labs, views)


def _load_cached(path: Path, description: str, views: int, rank: int) -> Dataset | None:
    """The features cached at ``path``, or ``None`` (rank zero deletes a damaged file)."""
    try:
        tensors = load_file(str(path))
        rank_zero_print(f"reusing cached {description} ({len(tensors['labels'])} items): {path}")
        return _feature_dataset(tensors["features"], tensors["labels"], views)
    except Exception:  # a damaged cache file is recomputed, never trusted
        if rank == 0:
            path.unlink(missing_ok=True)
        return None


def _extract(
    extractor: FeatureExtractor,
    loader: DataLoader,
    device: torch.device | str,
    label: str,
    show: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every batch of ``loader``, with a progress bar if ``show``."""
    features, labels = [], []
    # On stderr, and only on a terminal: a transient bar leaves a blank line in a log or a pipe.
    console = Console(stderr=True)
    with Progress(
        transient=True, console=console, disable=not show or not console.is_terminal
    ) as progress:
        task = progress.add_task(label, total=len(loader.dataset))
        for images, targets in loader:
            features.append(extractor(images.to(device)).cpu())
            labels.append(targets)
            progress.advance(task, len(targets))
    return torch.cat(features).contiguous(), torch.cat(labels).long()


class _Views(Dataset):
    """Item ``v * n + i`` is view ``v`` of item ``i``: ``dataset[(v, i)]``."""

    def __init__(self, dataset: Dataset, views: int) -> None:
        self.dataset, self.views, self.size = dataset, views, len(dataset)

    def __len__(self) -> int:
        return self.views * self.size

    def __getitem__(self, index: int):
        return self.dataset[divmod(index, self.size)]


class ViewFeatures(Dataset):
    """Features of ``views`` augmented views: key ``(epoch, i)`` gives view ``epoch % views``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, views: int) -> None:
        self.size = len(labels) // views
        self.features = features.view(views, self.size, -1)
        self.labels = labels[: self.size]
        self.views = views

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.features[epoch % self.views, index], self.labels[index]


def _feature_dataset(features: torch.Tensor, labels: torch.Tensor, views: int) -> Dataset:
    return TensorDataset(features, labels) if views == 1 else ViewFeatures(features, labels, views)


def _gather_shards(
    collective: Collective, feats: torch.Tensor, labels: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reassemble strided shards (rank r holds items r, r+world, ...) on every rank.

    Shards differ in length by at most one item: each is padded to the longest before the
    gather (the collective gathers tensors of one shape), and the padding is dropped after.
    """
    world = collective.world_size
    longest = -(-total // world)
    pad = longest - len(labels)
    padded = torch.cat([feats, feats.new_zeros((pad, feats.shape[1]))])
    padded_labels = torch.cat([labels, labels.new_zeros(pad)])
    all_feats = collective.all_gather(padded).cpu()  # (world, longest, width)
    all_labels = collective.all_gather(padded_labels).cpu()
    out_feats = torch.empty((total, feats.shape[1]), dtype=feats.dtype)
    out_labels = torch.empty(total, dtype=torch.long)
    for rank in range(world):
        count = len(range(rank, total, world))
        out_feats[rank::world] = all_feats[rank, :count]
        out_labels[rank::world] = all_labels[rank, :count]
    return out_feats, out_labels
