"""TransferModule: a timm backbone, a new head, a fine-tune strategy, metrics and optimizers."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from tlkit.backbones import DEFAULT_BACKBONE, create_backbone, weights_source
from tlkit.data.datasets import item_seed
from tlkit.data.features import FeatureExtractor, tensor_digest
from tlkit.errors import TlkitError, check_number, check_type, unknown_name
from tlkit.heads import Classifier, Head, Standardize, feature_width, pooled_features
from tlkit.optim import OPTIMIZERS, build_optimizer
from tlkit.schedules import SCHEDULES, make_schedule
from tlkit.strategies import Strategy, create_strategy, layer_groups

__all__ = ["SOLVERS", "Classifier", "Head", "Standardize", "TransferModule", "pooled_features"]

#: How the head is fitted: by the optimizer over epochs, or exactly (frozen linear heads).
SOLVERS = ("epochs", "exact", "auto")


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def _check_settings(given: dict[str, Any]) -> None:
    """Types and ranges of the TransferModule settings, before anything is built from them."""
    check_number("num_classes", given["num_classes"], integer=True)
    check_type("backbone", given["backbone"], str, "a timm model name")
    if given["weights"] is not None:
        check_type("weights", given["weights"], (str, os.PathLike), "a file path")
    for name in ("pretrained", "trust_weights", "channels_last"):
        check_type(name, given[name], bool, "true or false")
    check_type("strategy", given["strategy"], (str, Strategy), "a strategy name")
    args = given["strategy_args"]
    if args is not None and not (isinstance(args, dict) and all(isinstance(k, str) for k in args)):
        raise TlkitError(f"strategy_args must be a mapping of setting names, got {args!r}")
    check_number("head_hidden", given["head_hidden"], integer=True, minimum=0)
    check_number("dropout", given["dropout"], minimum=0, below=1)
    check_number("label_smoothing", given["label_smoothing"])
    if given["drop_path_rate"] is not None:
        check_number("drop_path_rate", given["drop_path_rate"], minimum=0, below=1)
    for name in ("optimizer", "scheduler", "solver"):
        check_type(name, given[name], str, f"a {name} name")
    check_number("learning rate", given["lr"])
    check_number("weight_decay", given["weight_decay"], minimum=0)
    check_number("momentum", given["momentum"], minimum=0, maximum=1)
    check_number("warmup_epochs", given["warmup_epochs"], minimum=0)
    if given["gamma"] is not None:
        check_number("gamma", given["gamma"], above=0)
    check_number("step_epochs", given["step_epochs"], integer=True, minimum=1)
    names = given["class_names"]
    if names is not None and not (
        isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    ):
        raise TlkitError(f"class_names must be a list of names, got {names!r}")
    if names is not None and len(names) != given["num_classes"]:
        raise TlkitError(
            f"class_names has {len(names)} names for {given['num_classes']} classes; "
            "give one name per class"
        )
    l2_range = given["l2_range"]
    if not isinstance(l2_range, (list, tuple)) or len(l2_range) != 2:
        raise TlkitError(f"l2_range must be a pair (first, last), got {l2_range!r}")
    for value in l2_range:
        check_number("l2_range", value, minimum=0)
    check_number("lbfgs_max_iter", given["lbfgs_max_iter"], integer=True, minimum=1)


class TransferModule(L.LightningModule):
    """A pretrained timm backbone with a new classification head.

    Args:
        num_classes: Number of target classes (linked from the data in the CLI).
        backbone: timm model name.
        weights: Weight file for the backbone (``.pth``, ``.safetensors``, a Lightning
            checkpoint); ``None`` uses the bundled weights or timm's hub.
        pretrained: Start from pretrained weights (``False``: random init).
        trust_weights: Allow weight files that need arbitrary code to unpickle.
        strategy: Fine-tune strategy name (``linear_probe``, ``probe_stage``, ``partial``, ``full``,
            ``gradual``, ``lp_ft``).
        strategy_args: Settings of the strategy, e.g. ``{"k": 2}`` or ``{"prior": "pretrained"}``.
        head_hidden: Width of an optional hidden layer in the head (0: linear head).
        dropout: Dropout before the head's linear layer(s).
        label_smoothing: Cross-entropy label smoothing.
        drop_path_rate: Stochastic depth of the backbone (timm ``drop_path_rate``).
        optimizer: ``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``,
            ``adamw``.
        lr: Learning rate of the head; backbone groups get ``lr`` times their layer-decay scale.
        weight_decay: Weight decay of the head (and of the backbone under ``prior: zero``).
        momentum: Momentum for the SGD family and RMSProp.
        scheduler: ``constant``, ``cosine``, ``exponential`` or ``step`` (per step).
        warmup_epochs: Linear warmup length in epochs.
        gamma: Decay factor of ``exponential`` (per epoch) or ``step`` (per ``step_epochs``).
        step_epochs: Epochs between cuts of the ``step`` scheduler.
        class_names: Class names, stored in checkpoints for prediction.
        l2_range: With ``optimizer: lbfgs``: the L2 strengths tried, from the first to the last
            epoch (geometric); each epoch fits the head to convergence on the full batch of
            cached features, and the best checkpoint by validation accuracy picks the strength.
        lbfgs_max_iter: L-BFGS iterations per epoch.
        channels_last: Run the backbone in channels-last memory format (faster convolutions
            on some CPUs and on GPUs with bf16; measured in ``bench/precision.py``).
        solver: ``epochs`` (the optimizer, epoch by epoch), ``exact`` (a frozen backbone and a
            linear head: ``tlkit finetune`` solves the head instead, :mod:`tlkit.exact`:
            logistic regression, L2 chosen by cross-validation over every labelled image,
            refitted on all of them) or ``auto`` (``exact`` where it applies, else ``epochs``;
            the plain Lightning ``fit`` always trains by epochs).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | None = None,
        pretrained: bool = True,
        trust_weights: bool = False,
        strategy: str = "linear_probe",
        strategy_args: dict[str, Any] | None = None,
        head_hidden: int = 0,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        drop_path_rate: float | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        gamma: float | None = None,
        step_epochs: int = 10,
        class_names: list[str] | None = None,
        l2_range: tuple[float, float] = (1.0, 1e-4),
        lbfgs_max_iter: int = 200,
        channels_last: bool = False,
        solver: str = "epochs",
    ) -> None:
        super().__init__()
        _check_settings(locals())
        if num_classes < 2:
            raise TlkitError(f"need at least 2 classes, got {num_classes}")
        if not lr > 0:
            raise TlkitError(f"learning rate must be positive, got {lr}; pass e.g. --lr 1e-3")
        if not 0.0 <= label_smoothing < 1.0:
            raise TlkitError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", optimizer, OPTIMIZERS)
        if scheduler not in SCHEDULES:
            raise unknown_name("scheduler", scheduler, SCHEDULES)
        if solver not in SOLVERS:
            raise unknown_name("solver", str(solver), SOLVERS)
        self.save_hyperparameters()
        self.strategy: Strategy = create_strategy(strategy, **(strategy_args or {}))
        if optimizer == "lbfgs" and not self.strategy.frozen_backbone:
            raise TlkitError(
                "optimizer lbfgs trains a linear head on cached features: use it with strategy "
                "linear_probe or probe_stage"
            )
        if solver == "exact" and not self._exact_applies:
            raise TlkitError(
                "solver exact fits a linear head on frozen features: use it with strategy "
                "linear_probe or probe_stage, head_hidden 0 and a BatchNorm policy other than train"
            )
        if min(l2_range) < 0 or lbfgs_max_iter < 1:
            raise TlkitError("l2_range must be >= 0 and lbfgs_max_iter >= 1")
        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.backbone = create_backbone(
            backbone,
            weights=weights,
            pretrained=pretrained,
            num_classes=0,
            trust_weights=trust_weights,
            **extra,
        )
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.weights_source = weights_source(backbone, weights, pretrained)
        self.groups = layer_groups(self.backbone)
        stage = self.strategy.feature_stage
        info = self.backbone.feature_info
        for index in stage if isinstance(stage, tuple) else (stage,):
            if index is not None and not -len(info) <= index < len(info):
                raise TlkitError(
                    f"probe_stage: stage {index} out of range for {backbone} "
                    f"({len(info)} stages); pass a stage in {-len(info)}..{len(info) - 1}"
                )
        in_features = feature_width(self.backbone, stage)
        self.head = Head(
            in_features, num_classes, head_hidden, dropout, standardize=self.strategy.standardize
        )
        self.val_metrics = _metrics(num_classes, "val_")
        self.test_metrics = _metrics(num_classes, "test_")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        #: Confusion matrix (rows true, columns predicted) of the last test run.
        self.last_test_confusion: torch.Tensor | None = None
        self.anchor = nn.Module()
        if self.strategy.prior == "pretrained":
            for name, param in self.backbone.named_parameters():
                self.anchor.register_buffer(name.replace(".", "__"), param.detach().clone(), False)
        self._apply_plan(0)

    # --- the plan: which groups train, BN modes -------------------------------------------
    def _apply_plan(self, epoch: int) -> None:
        mask = self.strategy.trainable(epoch, len(self.groups))
        params = dict(self.backbone.named_parameters())
        for group, trains in zip(self.groups, mask, strict=True):
            for name in group.params:
                params[name].requires_grad_(trains)
        if self.training:
            self.train(True)

    def plan(self, epochs: int) -> list[dict[str, Any]]:
        """The fine-tune plan as plain data: each layer group (shallow to deep, then the head),
        its size, the first epoch it trains (``None``: never), its LR, and its BatchNorm mode
        while frozen."""
        masks = [self.strategy.trainable(e, len(self.groups)) for e in range(max(epochs, 1))]
        scales = self.strategy.lr_scales(len(self.groups))
        params = dict(self.backbone.named_parameters())
        frozen_bn = {"frozen_eval": "eval", "eval": "eval", "train": "train"}[self.strategy.bn]
        rows = []
        for i, group in enumerate(self.groups):
            start = next((e for e, mask in enumerate(masks) if mask[i]), None)
            rows.append(
                {
                    "group": group.name,
                    "params": sum(params[n].numel() for n in group.params),
                    "trains_from_epoch": start,
                    "lr": self.hparams.lr * scales[i],
                    "bn_while_frozen": frozen_bn,
                }
            )
        head = sum(p.numel() for p in self.head.parameters())
        rows.append(
            {"group": "head", "params": head, "trains_from_epoch": 0, "lr": self.hparams.lr,
             "bn_while_frozen": "-"}
        )  # fmt: skip
        return rows

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone parameter trains at the current epoch."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def _apply_eval_policy(self) -> None:
        """Put frozen parts (every module whose parameters are all frozen) in eval mode."""
        policy = self.strategy.bn
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and policy == "eval":
                module.eval()
        if policy == "train":
            return
        for module in self.backbone.modules():
            own = list(module.parameters())
            if own and not any(p.requires_grad for p in own):
                module.eval()

    def train(self, mode: bool = True) -> TransferModule:
        """Switch modes; frozen parts stay in eval mode so their BN statistics never drift."""
        super().train(mode)
        if mode:
            self._apply_eval_policy()
        return self

    @property
    def _exact_applies(self) -> bool:
        """A frozen backbone whose features can be cached and a linear head on them."""
        strategy = self.strategy
        return strategy.frozen_backbone and strategy.bn != "train" and not self.hparams.head_hidden

    @property
    def exact(self) -> bool:
        """True when ``tlkit finetune`` solves the head exactly instead of training it."""
        return self.hparams.solver != "epochs" and self._exact_applies

    def on_fit_start(self) -> None:
        if self.hparams.solver == "exact":
            raise TlkitError(
                "solver exact is solved by `tlkit finetune` (no epochs); to train this config "
                "epoch by epoch here, pass --model.solver epochs"
            )

    def on_train_start(self) -> None:
        self._fit_standardizer()

    @torch.no_grad()
    def _fit_standardizer(self) -> None:
        """Fix the head's feature statistics from the training set, once (a resumed run keeps
        those of its checkpoint).

        One pass in order over the training data (cached features, or the frozen backbone's
        features of the training images); the global RNG is left as it was, and under DDP the
        sums are reduced over ranks so every rank gets the same statistics.
        """
        layer = self.head.standardizer
        if layer is None or bool(layer.fitted):
            return
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise TlkitError("standardising the head's features needs a map-style training set")
        batch_size = getattr(loader, "batch_size", None) or 64
        total = torch.zeros(layer.mean.shape, dtype=torch.float64, device=self.device)
        total_sq = torch.zeros_like(total)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.random.fork_rng(devices=[]):
            ordered = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
            for batch in ordered:
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                inputs = inputs.to(self.device)
                features = (inputs if inputs.ndim == 2 else self.encode(inputs)).double()
                total += features.sum(0)
                total_sq += features.pow(2).sum(0)
                count += features.shape[0]
        self.backbone.train(was_training)
        if self.training:
            self._apply_eval_policy()
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        total_sq = self.trainer.strategy.reduce(total_sq, reduce_op="sum")
        count = self.trainer.strategy.reduce(count, reduce_op="sum")
        layer.fit(total, total_sq, float(count))

    def on_train_epoch_start(self) -> None:
        self._apply_plan(self.current_epoch)
        if self.full_batch:
            # Each epoch solves a new L2 strength from the previous solution: fresh curvature.
            self.optimizers().optimizer.state.clear()
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            # Dropout and stochastic depth draw from the global RNG: reseeding it from
            # (seed, epoch, rank) makes an epoch's randomness independent of what ran before,
            # so a run resumed at any epoch matches an uninterrupted one.
            torch.manual_seed(item_seed(int(seed), self.current_epoch, self.global_rank))

    # --- forward -----------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features the head reads (from ``feature_stage`` when set)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            return pooled_features(self.backbone, images, self.strategy.feature_stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``(N, C, H, W)`` or for cached features ``(N, D)``."""
        features = x if x.ndim == 2 else self.encode(x)
        return self.head(features)

    def frozen_feature_extractor(self) -> FeatureExtractor | None:
        """The frozen ``images -> features`` map when the backbone never changes, else ``None``.

        ``bn: train`` lets BatchNorm statistics move during training, so features cannot be cached.
        """
        if not self.strategy.frozen_backbone or self.strategy.bn == "train":
            return None
        key = (
            f"{self.hparams.backbone}:{tensor_digest(self.backbone)}:{self.strategy.feature_stage}"
        )

        def extract(images: torch.Tensor) -> torch.Tensor:
            self.backbone.eval()
            return self.encode(images)

        return FeatureExtractor(extract, key)

    # --- steps -------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)

    def prior_penalty(self) -> torch.Tensor:
        """L2-SP: ``strength/2 * ||w - w_pretrained||^2`` over the training backbone weights."""
        strategy = self.strategy
        if strategy.prior != "pretrained":
            return torch.zeros((), device=self.device)
        strength = 0.01 if strategy.prior_strength is None else strategy.prior_strength
        terms = [
            (param - getattr(self.anchor, name.replace(".", "__"))).pow(2).sum()
            for name, param in self.backbone.named_parameters()
            if param.requires_grad
        ]
        if not terms:
            return torch.zeros((), device=self.device)
        return 0.5 * strength * torch.stack(terms).sum()

    @property
    def full_batch(self) -> bool:
        """True when training wants the whole training set as one batch (L-BFGS)."""
        return self.hparams.optimizer == "lbfgs"

    def l2_strength(self, epoch: int) -> float:
        """The L-BFGS head's L2 strength at ``epoch``: geometric over ``l2_range``."""
        first, last = self.hparams.l2_range
        epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer else 1
        if epochs == 1 or first == last:
            return float(first)
        if min(first, last) == 0:
            return float(first if epoch < epochs - 1 else last)
        return float(first * (last / first) ** (epoch / (epochs - 1)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        loss = self._loss(self(inputs), targets) + self.prior_penalty()
        if self.full_batch:
            l2 = self.l2_strength(self.current_epoch)
            weights = [p for n, p in self.head.named_parameters() if n.endswith("weight")]
            loss = loss + 0.5 * l2 * sum(w.pow(2).sum() for w in weights)
            self.log("l2", l2, on_step=False, on_epoch=True)
        if not torch.isfinite(loss):
            raise TlkitError(
                f"training diverged at epoch {self.current_epoch}, step {self.global_step}: the "
                f"loss is {loss.item()}; lower the learning rate (now {self.hparams.lr}) or check "
                "the data; the last good checkpoint is kept (resume with --resume)"
            )
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def _eval_step(self, batch, metrics: MetricCollection, prefix: str) -> torch.Tensor:
        inputs, targets = batch
        logits = self(inputs)
        self.log(f"{prefix}loss", self._loss(logits, targets), on_epoch=True, sync_dist=True)
        metrics.update(logits, targets)  # logged once per epoch: per-step logging costs more
        return logits

    def _log_metrics(self, metrics: MetricCollection, prog_bar: bool) -> None:
        # compute() gathers the states of every rank, so the values need no further sync.
        self.log_dict(metrics.compute(), prog_bar=prog_bar)
        metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val_")

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_metrics, "test_")
        self.test_confusion.update(logits, batch[1])

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, prog_bar=False)
        self.last_test_confusion = self.test_confusion.compute().cpu()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(inputs).softmax(dim=-1)

    # --- optimization ------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """One stable optimizer group per backbone layer group (split by decay), plus the head.

        Every parameter is in a group from the start, so unfreezing never adds groups.
        Biases and normalisation weights get no weight decay.
        """
        hp, strategy = self.hparams, self.strategy
        backbone_decay = 0.0
        if strategy.prior == "zero":
            backbone_decay = (
                hp.weight_decay if strategy.prior_strength is None else strategy.prior_strength
            )
        params = dict(self.backbone.named_parameters())
        scales = strategy.lr_scales(len(self.groups))
        groups: list[dict[str, Any]] = []
        sections = [
            (g.name, [params[n] for n in g.params], s, backbone_decay)
            for g, s in zip(self.groups, scales, strict=True)
        ]
        sections.append(("head", list(self.head.parameters()), 1.0, hp.weight_decay))
        for name, tensors, scale, decay in sections:
            for suffix, subset, wd in (
                ("", [p for p in tensors if p.ndim > 1], decay),
                ("/no_decay", [p for p in tensors if p.ndim <= 1], 0.0),
            ):
                if subset:
                    groups.append(
                        {
                            "params": subset,
                            "name": name + suffix,
                            "lr": hp.lr * scale,
                            "weight_decay": wd,
                        }
                    )
        return groups

    def configure_optimizers(self):
        hp = self.hparams
        if self.full_batch:
            head = [{"params": list(self.head.parameters())}]
            return build_optimizer("lbfgs", head, 1.0, lbfgs_max_iter=hp.lbfgs_max_iter)
        optimizer = build_optimizer(
            hp.optimizer, self.param_groups(), hp.lr, hp.weight_decay, hp.momentum
        )
        trainer = self.trainer
        if not math.isfinite(trainer.estimated_stepping_batches):
            raise TlkitError("training has no end: set --trainer.max_epochs or --trainer.max_steps")
        total = int(trainer.estimated_stepping_batches)
        batches = trainer.num_training_batches
        if math.isfinite(batches):
            steps_per_epoch = math.ceil(batches / max(trainer.accumulate_grad_batches, 1))
        else:
            steps_per_epoch = total // max(int(trainer.max_epochs or 1), 1)
        schedule = make_schedule(
            hp.scheduler,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=hp.warmup_epochs,
            gamma=hp.gamma,
            step_epochs=hp.step_epochs,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints hold every weight, so reloading one needs no pretrained download."""
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict):
            checkpoint["init_weights"] = self.weights_source
            hparams.update(pretrained=False, weights=None)
