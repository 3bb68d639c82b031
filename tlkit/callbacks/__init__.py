"""Lightning callbacks for transfer learning, usable in any Lightning project.

- :class:`SnapshotEnsemble`: cyclic cosine LR, a snapshot per cycle, ensembled evaluation.
- :class:`LRDecay`: LR schedules (cosine, exponential, step, warmup, plateau) over any groups.
- :class:`AugmentationSchedule`, :class:`AugmentationPreview`, :class:`FlipTTA`: augmentation by
  epoch, a PNG grid of augmented samples, flip test-time augmentation.
- :class:`MixUp`: MixUp/CutMix on training batches.
- :class:`DropConnect`: DropConnect on the head's linear layers.
"""

from tlkit.callbacks.augment_preview import AugmentationPreview
from tlkit.callbacks.augment_schedule import AugmentationSchedule
from tlkit.callbacks.lr_decay import LR_DECAY_SCHEDULES, LRDecay
from tlkit.callbacks.mixup import MixUp, mix_batch, soft_target_cross_entropy
from tlkit.callbacks.regularize import DropConnect, DropConnectLinear
from tlkit.callbacks.snapshot import SnapshotEnsemble
from tlkit.callbacks.tta import FlipTTA, flip_averaged_logits
from tlkit.transforms import complete_pipeline, load_pipeline, save_pipeline

__all__ = [
    "LR_DECAY_SCHEDULES",
    "AugmentationPreview",
    "AugmentationSchedule",
    "DropConnect",
    "DropConnectLinear",
    "FlipTTA",
    "LRDecay",
    "MixUp",
    "SnapshotEnsemble",
    "complete_pipeline",
    "flip_averaged_logits",
    "load_pipeline",
    "mix_batch",
    "save_pipeline",
    "soft_target_cross_entropy",
]
