"""Tests for LRDecay: every group's LR step by step, plateau cuts, resuming, validation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import StopAfter
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from tlkit.callbacks import LRDecay
from tlkit.errors import TlkitError
from tlkit.schedules import constant, cosine, exponential, step, with_warmup

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, SPE = 6, 4  # 4 optimizer steps per epoch (64 samples, batch 16)
TOTAL = EPOCHS * SPE
BASES = (0.01, 0.1, 0.3)


class ThreeGroups(L.LightningModule):
    """Three named param groups; validation logs a scripted ``val_score`` per epoch."""

    def __init__(self, scores: list[float] | None = None) -> None:
        super().__init__()
        self.scores = scores
        self.body = nn.Linear(4, 8)
        self.neck = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.neck(torch.relu(self.body(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        if self.scores is not None:
            self.log("val_score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        groups = [
            {"params": m.parameters(), "lr": lr, "name": name}
            for m, lr, name in zip(
                (self.body, self.neck, self.head), BASES, ("body", "neck", "head"), strict=True
            )
        ]
        optimizer = torch.optim.AdamW(groups)
        wild = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 10.0 ** (s % 3))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": wild, "interval": "step"}}


def data(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


class RecordLR(Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, list[float]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        lrs = [group["lr"] for group in optimizer.param_groups]
        self.rows.append((trainer.global_step, trainer.current_epoch, lrs))


def fit(decay: LRDecay, *extra: Callback, scores=None, ckpt_path=None, **kwargs) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    options = dict(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        log_every_n_steps=1,
    )
    trainer = L.Trainer(callbacks=[decay, *extra], **{**options, **kwargs})
    trainer.fit(ThreeGroups(scores), data(), data(16), ckpt_path=ckpt_path)
    return trainer


CURVES = {
    "cosine+warmup": (
        dict(schedule="cosine", warmup_epochs=1, final=0.1),
        lambda s, e: with_warmup(lambda i, t: cosine(i, t, 0.1), SPE)(s, TOTAL),
    ),
    "exponential/step": (
        dict(schedule="exponential", gamma=0.5),
        lambda s, e: exponential(s, TOTAL, 0.5, SPE),
    ),
    "exponential/epoch": (
        dict(schedule="exponential", gamma=0.5, interval="epoch"),
        lambda s, e: exponential(e * SPE, TOTAL, 0.5, SPE),
    ),
    "step": (
        dict(schedule="step", gamma=0.3, step_epochs=2),
        lambda s, e: step(s, TOTAL, 0.3, 2 * SPE),
    ),
    "warmup": (
        dict(schedule="warmup", warmup_epochs=2.5),
        lambda s, e: with_warmup(constant, 10)(s, TOTAL),
    ),
    "cosine/epoch": (
        dict(schedule="cosine", interval="epoch"),
        lambda s, e: cosine(e * SPE, TOTAL),
    ),
}


@pytest.mark.parametrize("curve", list(CURVES))
def test_every_group_follows_the_pure_schedule_step_by_step(curve):
    kwargs, expected = CURVES[curve]
    record = RecordLR()
    trainer = fit(LRDecay(**kwargs), record)
    assert len(record.rows) == TOTAL
    for s, e, lrs in record.rows:
        assert lrs == pytest.approx([b * expected(s, e) for b in BASES], rel=1e-9), (s, e)
    *_, last = record.rows[-1]
    logged = {k: float(v) for k, v in trainer.logged_metrics.items() if k.startswith("lr/")}
    assert logged == pytest.approx(dict(zip(("lr/body", "lr/neck", "lr/head"), last, strict=True)))


SCORES = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7]  # mode max, patience 2: cuts after 3 and 6


def test_plateau_cuts_after_patience_epochs_without_improvement():
    record = RecordLR()
    fit(
        LRDecay("plateau", monitor="val_score", mode="max", patience=2, factor=0.5),
        record,
        scores=SCORES,
        max_epochs=8,
    )
    per_epoch = {e: lrs for _, e, lrs in record.rows}
    factors = [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    for e, f in enumerate(factors):
        assert per_epoch[e] == pytest.approx([b * f for b in BASES]), e


def test_plateau_observe_threshold_and_floor():
    decay = LRDecay("plateau", mode="min", patience=1, factor=0.1, threshold=0.05, min_factor=0.01)
    cuts = [decay.observe(v) for v in (1.0, 0.97, 0.90, 0.89, 0.88, 0.5)]
    assert cuts == [False, True, False, True, False, False]
    assert decay.observe(0.5) is False  # already at min_factor 0.01: no further cut
    assert decay.state_dict()["plateau_factor"] == pytest.approx(0.01)


def test_resumed_fit_continues_the_same_curve(tmp_path):
    make = lambda: LRDecay(  # noqa: E731
        "plateau", monitor="val_score", mode="max", patience=2, factor=0.5, warmup_epochs=1
    )
    full = RecordLR()
    fit(make(), full, scores=SCORES, max_epochs=8)
    first = fit(make(), StopAfter(4), scores=SCORES, max_epochs=8)
    first.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = RecordLR()
    fit(make(), resumed, scores=SCORES, max_epochs=8, ckpt_path=str(tmp_path / "mid.ckpt"))
    assert resumed.rows[0][0] == 5 * SPE
    assert resumed.rows == full.rows[5 * SPE :]


def test_missing_monitor_names_the_logged_metrics():
    with pytest.raises(TlkitError, match=r"val_loss.*val_score"):
        fit(LRDecay("plateau"), scores=SCORES)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"schedule": "cosin"}, "cosine"),
        ({"interval": "batch"}, "interval"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"gamma": 1.5}, "gamma"),
        ({"step_epochs": 0}, "step_epochs"),
        ({"mode": "up"}, "mode"),
        ({"patience": 0}, "patience"),
        ({"factor": 1.0}, "factor"),
        ({"min_factor": 2.0}, "min_factor"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(TlkitError, match=argument):
        LRDecay(**kwargs)


def test_the_schedule_is_the_trainers_one_scheduler_and_a_monitor_logs_it(tmp_path):
    record, monitor = RecordLR(), LearningRateMonitor(logging_interval="step")
    logger = CSVLogger(tmp_path)
    trainer = fit(LRDecay("cosine", final=0.1), record, monitor, logger=logger)
    configs = trainer.lr_scheduler_configs
    assert len(configs) == 1 and isinstance(configs[0].scheduler, LambdaLR)
    assert configs[0].scheduler.last_epoch == TOTAL
    assert not any(key.startswith("lr/") for key in trainer.logged_metrics)  # logged once
    logged = {key.rsplit("/", 1)[-1]: values for key, values in monitor.lrs.items()}
    assert sorted(logged) == ["body", "head", "neck"]
    for i, name in enumerate(("body", "neck", "head")):
        assert logged[name] == pytest.approx([lrs[i] for _, _, lrs in record.rows])
