"""Data: sources, transforms, datasets, the feature cache and the DataModule."""

from tlkit.data.datamodule import TransferDataModule
from tlkit.data.images import load_image
from tlkit.data.sources import DataSource, Split, load_source, sample_shots, split_stratified
from tlkit.transforms import AUGMENT_PRESETS, data_config_for, eval_transform, train_transform

__all__ = [
    "AUGMENT_PRESETS",
    "DataSource",
    "Split",
    "TransferDataModule",
    "data_config_for",
    "eval_transform",
    "load_image",
    "load_source",
    "sample_shots",
    "split_stratified",
    "train_transform",
]
