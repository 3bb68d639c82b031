"""TransferModule: a timm backbone, a new head, a fine-tune strategy's plan and metrics."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from tlkit.backbones import DEFAULT_BACKBONE, create_backbone, weights_source
from tlkit.balance import NO_BALANCE, TrainingBalance, training_balance
from tlkit.batchnorm import apply_bn_policy
from tlkit.cached_features import CachedFeatures
from tlkit.checkpointing import self_contained
from tlkit.data.datasets import item_seed
from tlkit.data.features import FeatureExtractor, tensor_digest
from tlkit.errors import TlkitError
from tlkit.full_batch import FreshCurvature, head_l2_penalty, l2_strength
from tlkit.heads import (
    Classifier,
    Encoder,
    Head,
    Standardize,
    feature_moments,
    feature_width,
    pooled_features,
    truncate,
    use_fractional_pool,
)
from tlkit.hparams import SOLVERS, check_settings, check_strategy, exact_applies
from tlkit.optim import build_optimizer, layer_param_groups
from tlkit.runtimes import FrozenPass
from tlkit.scheduler import fit_steps, schedule_lr
from tlkit.schedules import make_schedule
from tlkit.strategies import (
    PretrainedAnchor,
    Strategy,
    create_strategy,
    layer_groups,
    plan_rows,
)

__all__ = ["SOLVERS", "Classifier", "Head", "Standardize", "TransferModule", "pooled_features"]


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


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
        class_balance: How the training loss treats unequal classes: ``none``, ``sqrt`` or
            ``balanced`` class weights, ``logit-adjusted`` (the logit-adjusted loss of Menon et
            al., ICLR 2021) or ``auto`` (:data:`~tlkit.balance.TRAINING_BALANCE` when the
            training classes are imbalanced, else none). The counts come from the
            datamodule's training split.
        drop_path_rate: Stochastic depth of the backbone (timm ``drop_path_rate``).
        output_stride: Dilate the backbone's later stages so its feature maps are 1/8 or 1/16 of
            the input, not 1/32 (timm ``output_stride``): more detail from small images, at a cost.
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
        pool: ``avg`` (the backbone's global pooling) or ``fmp`` (fractional max pooling first,
            Graham 2014: a regulariser while it trains; :class:`~tlkit.heads.FractionalMaxPool`).
        channels_last: Run the backbone in channels-last memory format (faster convolutions
            on some CPUs and on GPUs with bf16; measured in ``bench/precision.py``).
        solver: ``epochs`` (the optimizer, epoch by epoch), ``exact`` (a frozen backbone and a
            linear head: ``tlkit finetune`` solves the head instead, :mod:`tlkit.exact`:
            logistic regression, L2 chosen by cross-validation over every labelled image,
            refitted on all of them) or ``auto`` (``exact`` where it applies, else ``epochs``;
            the plain Lightning ``fit`` always trains by epochs).
    """

    #: The frozen pass (built at first use) and whether :meth:`encode` goes through it now.
    _pass: FrozenPass | None = None
    _frozen: FrozenPass | None = None
    #: Confusion matrix (rows true, columns predicted) of the last test run.
    last_test_confusion: torch.Tensor | None = None
    #: How the loss treats unequal classes (resolved from the training labels at fit start).
    class_balance: TrainingBalance = TrainingBalance(NO_BALANCE)

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
        class_balance: str = "auto",
        drop_path_rate: float | None = None,
        output_stride: int | None = None,
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
        pool: str = "avg",
    ) -> None:
        super().__init__()
        check_settings(locals())
        self.save_hyperparameters()
        self.strategy: Strategy = create_strategy(strategy, **(strategy_args or {}))
        check_strategy(self.strategy, optimizer, solver, head_hidden, pool)
        extra = {"drop_path_rate": drop_path_rate, "output_stride": output_stride}
        extra = {key: value for key, value in extra.items() if value is not None}
        self.backbone = create_backbone(
            backbone, weights=weights, pretrained=pretrained, trust_weights=trust_weights, **extra
        )
        stage = self.strategy.feature_stage
        if not self.strategy.frozen_backbone and isinstance(stage, int):
            truncate(self.backbone, stage, backbone)  # it fine-tunes up to that stage only
        if pool == "fmp":
            use_fractional_pool(self.backbone, backbone)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.weights_source = weights_source(backbone, weights, pretrained)
        self.groups = layer_groups(self.backbone)
        width = feature_width(self.backbone, stage, backbone, self.strategy.grid)
        self.head = Head(
            width, num_classes, head_hidden, dropout, standardize=self.strategy.standardize
        )
        self.val_metrics = _metrics(num_classes, "val_")
        self.test_metrics = _metrics(num_classes, "test_")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        anchored = self.strategy.prior == "pretrained"
        self.anchor = PretrainedAnchor(self.backbone if anchored else None)
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
        """The fine-tune plan over ``epochs`` as plain data (:func:`tlkit.strategies.plan_rows`)."""
        return plan_rows(
            self.strategy, self.groups, self.backbone, self.head, self.hparams.lr, epochs
        )

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone parameter trains at the current epoch."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> TransferModule:
        """Switch modes; frozen parts stay in eval mode so their BN statistics never drift."""
        super().train(mode)
        if mode:
            apply_bn_policy(self.backbone, self.strategy.bn)
        return self

    @property
    def _exact_applies(self) -> bool:
        """A frozen backbone whose features can be cached and a linear head on them."""
        return exact_applies(self.strategy, self.hparams.head_hidden)

    @property
    def exact(self) -> bool:
        """True when ``tlkit finetune`` solves the head exactly instead of training it."""
        return self.hparams.solver != "epochs" and self._exact_applies

    @property
    def full_batch(self) -> bool:
        """True when training wants the whole training set as one batch (L-BFGS)."""
        return self.hparams.optimizer == "lbfgs"

    def configure_callbacks(self) -> list[Callback]:
        """Cached features for the data (when the backbone is frozen); fresh L-BFGS curvature
        every epoch (full batch)."""
        callbacks: list[Callback] = [CachedFeatures(self.frozen_feature_extractor, self.full_batch)]
        if self.full_batch:
            callbacks.append(FreshCurvature())
        return callbacks

    def on_fit_start(self) -> None:
        if self.hparams.solver == "exact":
            raise TlkitError(
                "solver exact is solved by `tlkit finetune` (no epochs); to train this config "
                "epoch by epoch here, pass `solver=epochs`"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        split = datamodule.check_images()["train"] if hasattr(datamodule, "check_images") else None
        labels = None if split is None else split.labels
        name = self.hparams.get("class_balance", "none")  # checkpoints from before it: none
        self.class_balance = training_balance(name, labels, self.hparams.num_classes)

    def on_train_start(self) -> None:
        self._fit_standardizer()

    def _fit_standardizer(self) -> None:
        """Fix the head's feature statistics from the training set, once (a resumed run keeps
        those of its checkpoint); under DDP the sums are reduced over ranks, so every rank gets
        the same statistics."""
        layer = self.head.standardizer
        if layer is None or bool(layer.fitted):
            return
        loader = self.trainer.train_dataloader
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise TlkitError("standardising the head's features needs a map-style training set")
        was_training = self.backbone.training
        self.backbone.eval()
        moments = feature_moments(
            loader.dataset, self.encode, layer.mean.numel(), loader.batch_size or 64, self.device
        )
        self.backbone.train(was_training)
        if self.training:
            apply_bn_policy(self.backbone, self.strategy.bn)
        total, total_sq, count = (self.trainer.strategy.reduce(m, reduce_op="sum") for m in moments)
        layer.fit(total, total_sq, float(count))

    def on_train_epoch_start(self) -> None:
        self._apply_plan(self.current_epoch)
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            # Dropout and stochastic depth draw from the global RNG: reseeding it from
            # (seed, epoch, rank) makes an epoch's randomness independent of what ran before,
            # so a run resumed at any epoch matches an uninterrupted one.
            torch.manual_seed(item_seed(int(seed), self.current_epoch, self.global_rank))

    # --- forward -----------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features the head reads (from ``feature_stage`` when set).

        In a frozen pass (testing, predicting, caching features) without gradients they come
        from :meth:`frozen_pass`, on the fastest runtime installed (:mod:`tlkit.runtimes`)."""
        if self._frozen is not None and not torch.is_grad_enabled():
            return self._frozen(images)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            strategy = self.strategy
            return pooled_features(self.backbone, images, strategy.feature_stage, strategy.grid)

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
        key = f"{self.hparams.backbone}:{tensor_digest(self.backbone)}:{self.strategy.reads}"
        return FeatureExtractor(self.frozen_pass(), key)

    def frozen_pass(self) -> FrozenPass:
        """The backbone's ``images -> features`` map as a :class:`~tlkit.runtimes.FrozenPass`:
        on the CPU it runs on the fastest runtime installed, re-exported whenever the weights
        change."""
        if self._pass is None:
            strategy = self.strategy
            encoder = Encoder(
                self.backbone, strategy.feature_stage, strategy.grid, self.hparams.channels_last
            )
            self._pass = FrozenPass(encoder, f"{self.hparams.backbone}:{strategy.reads}")
        return self._pass

    def use_frozen_pass(self, on: bool, images: int | None = None) -> None:
        """Route :meth:`encode` through :meth:`frozen_pass` (``on``, for a pass over ``images``
        images when known) or back to torch."""
        self._frozen = self.frozen_pass() if on else None
        if on:
            self._frozen.planned = images

    def on_test_start(self) -> None:
        self.use_frozen_pass(True, _planned(self.trainer.test_dataloaders))

    def on_test_end(self) -> None:
        self.use_frozen_pass(False)

    def on_predict_start(self) -> None:
        self.use_frozen_pass(True, _planned(self.trainer.predict_dataloaders))

    def on_predict_end(self) -> None:
        self.use_frozen_pass(False)

    # --- steps -------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        treated = self.class_balance
        weight = None if treated.weight is None else treated.weight.to(logits)
        if treated.log_prior is not None:
            logits = logits + treated.log_prior.to(logits)
        return F.cross_entropy(
            logits, targets, weight=weight, label_smoothing=self.hparams.label_smoothing
        )

    def prior_penalty(self) -> torch.Tensor:
        """L2-SP: ``strength/2 * ||w - w_pretrained||^2`` over the training backbone weights."""
        if self.strategy.prior != "pretrained":
            return torch.zeros((), device=self.device)
        return self.anchor.penalty(self.backbone, self.strategy.prior_strength)

    def l2_strength(self, epoch: int) -> float:
        """The L-BFGS head's L2 strength at ``epoch``: geometric over ``l2_range``."""
        epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer else 1
        return l2_strength(epoch, epochs, self.hparams.l2_range)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        loss = self._loss(self(inputs), targets) + self.prior_penalty()
        if self.full_batch:
            l2 = self.l2_strength(self.current_epoch)
            loss = loss + head_l2_penalty(self.head, l2)
            self.log("l2", l2, on_step=False, on_epoch=True)
        if not torch.isfinite(loss):
            raise TlkitError(
                f"training diverged at epoch {self.current_epoch}, step {self.global_step}: the "
                f"loss is {loss.item()}; lower the learning rate (now {self.hparams.lr}) or check "
                "the data; the last good checkpoint is kept"
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
        sections = [
            (g.name, [params[n] for n in g.params], s, backbone_decay)
            for g, s in zip(self.groups, scales, strict=True)
        ]
        sections.append(("head", list(self.head.parameters()), 1.0, hp.weight_decay))
        return layer_param_groups(sections, hp.lr)

    def configure_optimizers(self):
        hp = self.hparams
        if self.full_batch:
            head = [{"params": list(self.head.parameters())}]
            return build_optimizer("lbfgs", head, 1.0, lbfgs_max_iter=hp.lbfgs_max_iter)
        optimizer = build_optimizer(
            hp.optimizer, self.param_groups(), hp.lr, hp.weight_decay, hp.momentum
        )
        steps = fit_steps(self.trainer)
        schedule = make_schedule(
            hp.scheduler,
            steps_per_epoch=steps.per_epoch,
            warmup_epochs=hp.warmup_epochs,
            gamma=hp.gamma,
            step_epochs=hp.step_epochs,
        )
        scheduler = schedule_lr(optimizer, lambda step: schedule(step, steps.total))
        lr_scheduler = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints hold every weight, so reloading one needs no pretrained download."""
        self_contained(checkpoint, self.weights_source)


def _planned(loaders: Any) -> int | None:
    """Images in a trainer's evaluation dataloaders, when they say."""
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    try:
        return sum(len(loader.dataset) for loader in loaders)
    except (AttributeError, TypeError):
        return None
