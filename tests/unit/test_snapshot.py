"""Tests for SnapshotEnsemble: cyclic LR per group, lean snapshots, ensembling, resuming."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import StopAfter, quiet_trainer
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit.callbacks import SnapshotEnsemble
from tlkit.errors import TlkitError
from tlkit.recipes import recipe_path, recipe_summary
from tlkit.schedules import cycle_bounds, cyclic_cosine

pytestmark = pytest.mark.usefixtures("one_thread")


EPOCHS, BATCH, N_TRAIN = 6, 16, 96  # 6 steps per epoch, 36 steps in all


class TinyNet(L.LightningModule):
    """An encoder (frozen unless ``unfreeze_at`` says when) and a trainable BN head."""

    def __init__(self, unfreeze_at: int | None = None, scheduler: bool = True) -> None:
        super().__init__()
        self.unfreeze_at = unfreeze_at
        self.scheduler = scheduler
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
        )
        self.encoder.requires_grad_(False)

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True) -> TinyNet:
        super().train(mode)
        if mode and self.encoder_frozen:
            self.encoder.eval()
        return self

    def on_train_epoch_start(self) -> None:
        if self.unfreeze_at is not None and self.current_epoch >= self.unfreeze_at:
            self.encoder.requires_grad_(True)
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(-1) == y).float().mean())

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).softmax(-1)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(
            [
                {"params": self.encoder.parameters(), "lr": 0.02},
                {"params": self.head.parameters(), "lr": 0.2},
            ],
            momentum=0.9,
        )
        if not self.scheduler:
            return optimizer
        halving = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": halving, "interval": "step"}}


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 1.2
    return TensorDataset(centres[y] + torch.randn(n, 8, generator=g), y)


def loader(n: int, seed: int) -> DataLoader:
    return DataLoader(blobs(n, seed), batch_size=BATCH, shuffle=False)


def trainer(*callbacks: Callback, **kwargs) -> L.Trainer:
    return quiet_trainer(*callbacks, **{"max_epochs": EPOCHS, "deterministic": True, **kwargs})


class RecordLR(Callback):
    """The LR of every group as the optimizer steps, and the weights at every step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights[trainer.global_step] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()
        }


def fit(snapshot: SnapshotEnsemble, model: TinyNet, *extra: Callback, **kwargs) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    run = trainer(snapshot, *extra, **kwargs)
    run.fit(model, train_dataloaders=loader(N_TRAIN, 1))
    return run


def test_lr_restarts_each_cycle_per_group_over_the_module_scheduler():
    snapshot, record = SnapshotEnsemble(cycles=4, min_lr_ratio=0.1), RecordLR()
    fit(snapshot, TinyNet(), record)
    total = EPOCHS * N_TRAIN // BATCH
    assert len(record.lrs) == total
    for step, (encoder_lr, head_lr) in enumerate(record.lrs):
        factor = cyclic_cosine(step, total, 4, 0.1)
        assert encoder_lr == pytest.approx(0.02 * factor, rel=1e-9)
        assert head_lr == pytest.approx(0.2 * factor, rel=1e-9)
    starts = cycle_bounds(total, 4)[:-1]
    assert [record.lrs[s][1] for s in starts] == pytest.approx([0.2] * 4)


def test_snapshots_hold_only_changed_tensors_taken_at_cycle_ends(tmp_path):
    snapshot, record = SnapshotEnsemble(cycles=4, dirpath=str(tmp_path)), RecordLR()
    model = TinyNet()
    fit(snapshot, model, record)
    assert snapshot.snapshot_cycles == [1, 2, 3, 4]
    head_bn = {f"head.1.{b}" for b in ("running_mean", "running_var", "num_batches_tracked")}
    head_params = {name for name, _ in model.head.named_parameters(prefix="head")}
    for tensors in snapshot.snapshots:
        assert set(tensors) == head_params | head_bn
    size = sum(t.numel() for t in snapshot.snapshots[0].values())
    assert size == sum(p.numel() for p in model.head.parameters()) + 2 * 16 + 1
    total = EPOCHS * N_TRAIN // BATCH
    for tensors, end in zip(snapshot.snapshots, cycle_bounds(total, 4)[1:], strict=True):
        for name, value in tensors.items():
            assert torch.equal(value, record.weights[end][name])
    on_disk = load_file(str(tmp_path / "snapshot-2.safetensors"))
    assert all(torch.equal(on_disk[k], v) for k, v in snapshot.snapshots[1].items())


def test_test_logs_each_snapshot_and_the_softmax_mean_of_the_last_k():
    snapshot = SnapshotEnsemble(cycles=4, keep_last=3)
    model = TinyNet()
    run = fit(snapshot, model)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    (results,) = run.test(model, dataloaders=loader(120, 2), verbose=False)
    assert torch.equal(model.state_dict()["head.0.weight"], final["head.0.weight"])

    x, y = blobs(120, 2).tensors
    model.eval()
    probs, accs = [], []
    for tensors in snapshot.snapshots:
        model.load_state_dict({**final, **tensors})
        with torch.no_grad():
            probs.append(model(x).softmax(-1))
        accs.append((probs[-1].argmax(-1) == y).float().mean().item())
    ensemble = (torch.stack(probs).mean(0).argmax(-1) == y).float().mean().item()

    assert [results[f"test_acc_snapshot_{c}"] for c in (2, 3, 4)] == pytest.approx(accs, abs=1e-6)
    assert "test_acc_snapshot_1" not in results
    assert results["test_acc_ensemble"] == pytest.approx(ensemble, abs=1e-6)
    assert results["test_ensemble_gain"] == pytest.approx(ensemble - accs[-1], abs=1e-6)
    assert results["test_acc"] == pytest.approx(accs[-1], abs=1e-6)


def test_predict_returns_the_ensemble_and_restores_forward():
    snapshot = SnapshotEnsemble(cycles=3)
    model = TinyNet()
    run = fit(snapshot, model)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    predicted = torch.cat(run.predict(model, dataloaders=loader(48, 3)))
    assert "forward" not in vars(model)

    x = blobs(48, 3).tensors[0]
    model.eval()
    probs = []
    for tensors in snapshot.snapshots:
        model.load_state_dict({**final, **tensors})
        with torch.no_grad():
            probs.append(model(x).softmax(-1))
    assert torch.allclose(predicted, torch.stack(probs).mean(0), atol=1e-6)


def test_a_tensor_unfrozen_later_joins_earlier_snapshots_with_its_old_value():
    snapshot = SnapshotEnsemble(cycles=3)  # cycle 1 ends at step 12 (epoch 2)
    model = TinyNet(unfreeze_at=3)
    initial = model.encoder[0].weight.detach().clone()
    fit(snapshot, model)
    first, last = snapshot.snapshots[0], snapshot.snapshots[-1]
    assert torch.equal(first["encoder.0.weight"], initial)
    assert torch.equal(first["encoder.1.running_mean"], torch.zeros(16))
    assert not torch.equal(last["encoder.0.weight"], initial)


def test_resuming_mid_cycle_gives_the_same_snapshots(tmp_path):
    full = SnapshotEnsemble(cycles=4)
    fit(full, TinyNet(unfreeze_at=2))

    first = SnapshotEnsemble(cycles=4)
    stopped = fit(first, TinyNet(unfreeze_at=2), StopAfter(epoch=2))  # stops at step 18 of 36
    assert first.snapshot_cycles == [1, 2]
    ckpt = tmp_path / "mid.ckpt"
    stopped.save_checkpoint(ckpt)

    resumed = SnapshotEnsemble(cycles=4)
    L.seed_everything(0, verbose=False)
    trainer(resumed).fit(TinyNet(unfreeze_at=2), loader(N_TRAIN, 1), ckpt_path=str(ckpt))
    assert resumed.snapshot_cycles == full.snapshot_cycles == [1, 2, 3, 4]
    for a, b in zip(resumed.snapshots, full.snapshots, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-6), name

    tester = SnapshotEnsemble(cycles=4)
    trainer(tester).test(TinyNet(), loader(60, 2), ckpt_path=str(ckpt), verbose=False)
    assert tester.snapshot_cycles == [1, 2]


def test_transfer_module_linear_probe_copies_the_head_only(tmp_path, monkeypatch):
    from tlkit import TransferDataModule, TransferModule

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path))
    L.seed_everything(0, verbose=False)
    data = TransferDataModule(
        "demo", backbone="test_resnet", image_size=32, batch_size=50, augment="none"
    )
    model = TransferModule(
        data.num_classes, backbone="test_resnet", pretrained=False, lr=0.05, scheduler="constant"
    )
    snapshot = SnapshotEnsemble(cycles=3)
    run = trainer(snapshot, max_epochs=3, num_sanity_val_steps=2)
    run.fit(model, datamodule=data)
    head = sum(p.numel() for p in model.head.parameters())
    assert [sum(t.numel() for t in s.values()) for s in snapshot.snapshots] == [head] * 3
    assert all(name.startswith("head.") for s in snapshot.snapshots for name in s)
    assert {"val_acc_ensemble", "val_acc_snapshot_3"} <= set(run.callback_metrics)
    (results,) = run.test(model, datamodule=data, verbose=False)
    assert {"test_acc_snapshot_1", "test_acc_ensemble", "test_ensemble_gain"} <= set(results)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"cycles": 0}, "cycles"),
        ({"cycles": 2.5}, "cycles"),
        ({"cycles": 3, "keep_last": 4}, "keep_last"),
        ({"cycles": 3, "keep_last": 0}, "keep_last"),
        ({"cycles": 3, "min_lr_ratio": 1.0}, "min_lr_ratio"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(TlkitError, match=argument):
        SnapshotEnsemble(**kwargs)


def test_more_cycles_than_steps_is_refused():
    with pytest.raises(TlkitError, match="cycles"):
        fit(SnapshotEnsemble(cycles=50), TinyNet())


def test_a_second_lr_owner_is_refused():
    from tlkit.callbacks import LRDecay

    with pytest.raises(TlkitError, match="LRDecay"):
        fit(SnapshotEnsemble(cycles=3), TinyNet(), LRDecay("cosine"))


def test_snapshot_recipe_trains_the_top_stages_under_the_callback_schedule():
    import yaml
    from jsonargparse import ArgumentParser

    config = yaml.safe_load(recipe_path("snapshot-ensemble").read_text())
    assert recipe_summary("snapshot-ensemble").startswith("snapshot-ensemble:")
    (entry,) = config["trainer"]["callbacks"]
    assert entry["class_path"] == "tlkit.callbacks.SnapshotEnsemble"
    parser = ArgumentParser()
    parser.add_class_arguments(SnapshotEnsemble, "snapshot")
    callback = parser.instantiate_classes(parser.parse_object({"snapshot": entry["init_args"]}))
    assert callback.snapshot.cycles == 3
    assert config["model"]["strategy"] == "partial"
    assert config["model"]["strategy_args"] == {"k": 2, "bn": "frozen_eval"}
    assert config["data"]["cache_features"] is False  # the top stages train: nothing to cache
    assert config["model"]["scheduler"] == "constant"  # the callback owns the LR
    assert config["checkpoint"]["monitor"] is None  # test the last checkpoint: all snapshots
