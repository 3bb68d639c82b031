"""Snapshot ensembles: cyclic cosine LR, a snapshot per cycle, softmax averaging at evaluation.

Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free": the learning rate follows
``cycles`` cosine annealing cycles over the whole fit, each restarting at the base LR; the weights
at the end of every cycle (a local minimum) are kept, and the last ``k`` of them are averaged at
prediction time (mean of their softmax outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors.torch import save_file
from torch import nn

from tlkit.batchnorm import changing_tensors
from tlkit.callbacks.lr_decay import LRDecay
from tlkit.errors import TlkitError
from tlkit.scheduler import base_lrs, fit_steps, install_schedule, require_fit_end
from tlkit.schedules import cycle_bounds, cyclic_cosine
from tlkit.utils import atomic_path

__all__ = ["SnapshotEnsemble", "changing_tensors"]


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _copy_to_cpu(tensors: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    return {name: tensors[name].detach().to("cpu", copy=True) for name in sorted(names)}


class SnapshotEnsemble(Callback):
    """Train one model, get an ensemble: cyclic cosine LR with a snapshot at each cycle's end.

    **Learning rate.** The fit's optimizer steps (``trainer.estimated_stepping_batches``) are
    split into ``cycles`` equal cycles; within each, every param group's LR follows half a cosine
    from the group's base LR down to ``min_lr_ratio`` times it, then restarts
    (:func:`tlkit.schedules.cyclic_cosine`). Base LRs are each group's ``initial_lr`` (set by any
    torch scheduler) or its LR when training starts, so layer-wise LR ratios survive. When
    training starts the callback replaces the module's LR scheduler with a ``LambdaLR`` over the
    cycles (as Lightning's ``StochasticWeightAveraging`` swaps schedulers), so the torch scheduler
    stays the LR's one owner; LRDecay cannot be combined with it.

    **Snapshots.** At the end of each cycle the callback keeps a CPU copy of the tensors that
    changed since the fit started: trainable parameters and the running statistics of BatchNorm
    layers in train mode. A frozen backbone is not copied: the snapshots of a linear probe hold
    the head alone. A tensor that starts training later (gradual unfreezing) is added to the
    earlier snapshots with its value at that moment, which is its value at their time.

    **Evaluation.** During validation (``ensemble_val``) and test, after each batch ``(x, y)`` the
    module's ``forward`` runs once per kept snapshot (its weights loaded in turn, then the current
    ones put back); the callback logs ``{val,test}_acc_snapshot_{c}`` (snapshot of cycle ``c``,
    1-based), ``{val,test}_acc_ensemble`` (softmax mean of the last ``keep_last`` snapshots),
    ``{val,test}_nll_ensemble`` and ``{val,test}_ensemble_gain`` (ensemble accuracy minus the
    last snapshot's, i.e. minus the model one would have without the ensemble). The module's own
    metrics stay those of its current weights. During prediction the module's ``forward`` is
    replaced by the ensemble's (log of the mean softmax), so a ``predict_step`` that calls
    ``self(x)`` returns ensemble outputs; ``softmax`` of them is the mean probability.

    Works with any LightningModule whose ``forward`` returns logits and whose evaluation batches
    are ``(x, y)``. Resumable: base LRs, the step count and the snapshots are in
    :meth:`state_dict`, so a fit resumed mid-cycle from a checkpoint produces the same snapshots as
    an uninterrupted one. Checkpoints grow by the snapshots' size (``keep_last`` times the
    trainable part). Testing a checkpoint restores the snapshots stored in it: test the last
    checkpoint (not an earlier "best" one) to ensemble every snapshot. Under DDP every rank holds
    the snapshots and evaluates its shard, the counts are summed across ranks, and only rank zero
    writes files; sharded strategies (FSDP, DeepSpeed) are not supported.

    Args:
        cycles: Number of cosine cycles (and snapshots) over the fit.
        keep_last: Ensemble (and keep in memory) the last ``keep_last`` snapshots; ``None`` keeps
            all ``cycles``.
        min_lr_ratio: LR at the end of each cycle, as a fraction of the base LR.
        ensemble_val: Also evaluate the ensemble of the snapshots so far during validation.
        dirpath: Also write each snapshot's tensors to ``dirpath/snapshot-{c}.safetensors``
            (rank zero only); load one with ``module.load_state_dict(tensors, strict=False)``.
    """

    def __init__(
        self,
        cycles: int,
        keep_last: int | None = None,
        min_lr_ratio: float = 0.0,
        ensemble_val: bool = True,
        dirpath: str | None = None,
    ) -> None:
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise TlkitError(f"SnapshotEnsemble: cycles must be an integer >= 1, got {cycles!r}")
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise TlkitError(
                f"SnapshotEnsemble: keep_last must be an integer >= 1 or None, got {keep_last!r}"
            )
        if keep_last is not None and keep_last > cycles:
            raise TlkitError(
                f"SnapshotEnsemble: keep_last={keep_last} exceeds cycles={cycles}; "
                "pass keep_last <= cycles"
            )
        if not 0.0 <= min_lr_ratio < 1.0:
            raise TlkitError(
                f"SnapshotEnsemble: min_lr_ratio must be in [0, 1), got {min_lr_ratio}"
            )
        self.cycles = cycles
        self.keep_last = keep_last or cycles
        self.min_lr_ratio = float(min_lr_ratio)
        self.ensemble_val = ensemble_val
        self.dirpath = dirpath
        self._total: int | None = None
        self._base_lrs: list[list[float]] | None = None
        self._tracked: set[str] = set()
        self._taken = 0
        self._snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._eval: dict[str, Any] | None = None
        self._restore_forward: Callable[[], None] | None = None

    # --- public state ----------------------------------------------------------------------
    @property
    def snapshot_cycles(self) -> list[int]:
        """Cycle numbers (1-based) of the snapshots held, oldest first."""
        return [cycle for cycle, _ in self._snapshots]

    @property
    def snapshots(self) -> list[dict[str, torch.Tensor]]:
        """The snapshots held (name -> CPU tensor of the changed tensors), oldest first."""
        return [tensors for _, tensors in self._snapshots]

    def lr_factor(self, step: int) -> float:
        """LR multiplier of optimizer step ``step`` (needs the fit's step count)."""
        if self._total is None:
            raise TlkitError("SnapshotEnsemble: the LR schedule is known once training starts")
        return cyclic_cosine(step, self._total, self.cycles, self.min_lr_ratio)

    # --- fit -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if any(isinstance(cb, LRDecay) for cb in trainer.callbacks):
            raise TlkitError(
                "SnapshotEnsemble sets the learning rate itself; remove the LRDecay callback"
            )
        require_fit_end(trainer, "SnapshotEnsemble", "its cycles have no length")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        estimate = fit_steps(trainer, "SnapshotEnsemble").total
        if self._total is None:
            self._total = estimate
        elif self._total != estimate:
            rank_zero_warn(
                f"SnapshotEnsemble: keeping the schedule of {self._total} steps from the "
                f"checkpoint although this fit is estimated at {estimate} steps"
            )
        if self._total < self.cycles:
            raise TlkitError(
                f"SnapshotEnsemble: {self.cycles} cycles need at least {self.cycles} optimizer "
                f"steps, the fit has {self._total}; lower cycles or train longer"
            )
        self._base_lrs = base_lrs(trainer, self._base_lrs, "SnapshotEnsemble")
        if trainer.lr_scheduler_configs:
            rank_zero_info("SnapshotEnsemble replaces the module's LR scheduler with its cycles")
        install_schedule(trainer, self.lr_factor, self._base_lrs)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        changing = changing_tensors(pl_module)
        new = changing - self._tracked
        if new:
            current = _copy_to_cpu(_tensors(pl_module), new)
            for _, tensors in self._snapshots:
                tensors.update({name: t.clone() for name, t in current.items()})
            self._tracked |= new

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bounds = cycle_bounds(self._total or 0, self.cycles)
        while self._taken < self.cycles and trainer.global_step >= bounds[self._taken + 1]:
            self._take_snapshot(trainer, pl_module)

    def _take_snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._taken += 1
        tensors = _copy_to_cpu(_tensors(pl_module), self._tracked)
        self._snapshots.append((self._taken, tensors))
        del self._snapshots[: -self.keep_last]
        if self.dirpath is not None and trainer.is_global_zero:
            path = Path(self.dirpath) / f"snapshot-{self._taken}.safetensors"
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))

    # --- evaluation ------------------------------------------------------------------------
    def _prepare(self, pl_module: L.LightningModule) -> dict[str, Any]:
        current = _tensors(pl_module)
        names = set().union(*(tensors.keys() for _, tensors in self._snapshots))
        missing = sorted(names - current.keys())
        if missing:
            raise TlkitError(
                f"SnapshotEnsemble: the snapshots hold tensors the module lacks "
                f"(e.g. {missing[0]}); evaluate the model they were taken from"
            )
        device = pl_module.device
        backup = {name: current[name].detach().clone() for name in names}
        return {
            "targets": {name: current[name] for name in names},
            "backup": backup,
            "snapshots": [
                (cycle, {name: t.to(device) for name, t in tensors.items()})
                for cycle, tensors in self._snapshots
            ],
        }

    @staticmethod
    def _load(targets: dict[str, torch.Tensor], *sources: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, target in targets.items():
                for source in sources:
                    if name in source:
                        target.copy_(source[name])
                        break

    def _snapshot_probs(
        self, state: dict[str, Any], run: Callable[[], torch.Tensor]
    ) -> list[torch.Tensor]:
        """Softmax outputs of ``run()`` under each snapshot's weights; current weights after."""
        probs = []
        try:
            with torch.no_grad():
                for _, tensors in state["snapshots"]:
                    self._load(state["targets"], tensors, state["backup"])
                    probs.append(run().float().softmax(dim=-1))
        finally:
            self._load(state["targets"], state["backup"])
        return probs

    def _eval_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval = None
        if trainer.sanity_checking or not self._snapshots:
            return
        state = self._prepare(pl_module)
        k = len(self._snapshots)
        # hits of each snapshot and of the ensemble, then the sample count; summed NLL apart
        state["hits"] = torch.zeros(k + 2, dtype=torch.int64, device=pl_module.device)
        state["nll"] = torch.zeros((), dtype=torch.float32, device=pl_module.device)
        self._eval = state

    def _eval_batch(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        state = self._eval
        if state is None:
            return
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise TlkitError(
                "SnapshotEnsemble: evaluation batches must be (inputs, targets) pairs, "
                f"got {type(batch).__name__}"
            )
        inputs, targets = batch[0], batch[1]
        with trainer.precision_plugin.forward_context():
            probs = self._snapshot_probs(state, lambda: pl_module(inputs))
        mean = torch.stack(probs).mean(dim=0)
        hits = state["hits"]
        for i, p in enumerate([*probs, mean]):
            hits[i] += (p.argmax(dim=-1) == targets).sum()
        hits[-1] += targets.numel()
        picked = mean.gather(1, targets.long().view(-1, 1)).clamp_min(1e-12)
        state["nll"] -= picked.log().sum()

    def _eval_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        state, self._eval = self._eval, None
        if state is None:
            return
        hits = trainer.strategy.reduce(state["hits"], reduce_op="sum").tolist()
        nll = float(trainer.strategy.reduce(state["nll"], reduce_op="sum"))
        count = max(hits[-1], 1)
        accs = [h / count for h in hits[:-1]]
        cycles = [cycle for cycle, _ in state["snapshots"]]
        values = {f"{prefix}acc_snapshot_{c}": a for c, a in zip(cycles, accs[:-1], strict=True)}
        values[f"{prefix}acc_ensemble"] = accs[-1]
        values[f"{prefix}nll_ensemble"] = nll / count
        values[f"{prefix}ensemble_gain"] = accs[-1] - accs[-2]
        for name, value in values.items():
            pl_module.log(name, value, sync_dist=True)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ensemble_val or trainer.state.fn != "fit":
            self._eval_start(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "val_")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._snapshots:
            rank_zero_warn(
                "SnapshotEnsemble: no snapshots to test; fit with this callback first or test "
                "a checkpoint written by such a fit"
            )
        self._eval_start(trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, pl_module, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "test_")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._snapshots:
            rank_zero_warn("SnapshotEnsemble: no snapshots; predicting with the current weights")
            return
        state = self._prepare(pl_module)
        original = pl_module.forward
        had_own = "forward" in vars(pl_module)

        def ensemble_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            probs = self._snapshot_probs(state, lambda: original(*args, **kwargs))
            return torch.stack(probs).mean(dim=0).clamp_min(1e-12).log()

        def restore() -> None:
            if had_own:
                pl_module.forward = original
            else:
                del pl_module.forward

        pl_module.forward = ensemble_forward
        self._restore_forward = restore

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restore_forward is not None:
            self._restore_forward()
            self._restore_forward = None

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "total": self._total,
            "base_lrs": self._base_lrs,
            "tracked": sorted(self._tracked),
            "taken": self._taken,
            "snapshots": [
                {"cycle": cycle, "tensors": dict(tensors)} for cycle, tensors in self._snapshots
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("cycles") != self.cycles:
            raise TlkitError(
                f"SnapshotEnsemble: the checkpoint was written with cycles="
                f"{state_dict.get('cycles')}, this callback has cycles={self.cycles}; "
                "resume with the same setting"
            )
        self._total = state_dict["total"]
        self._base_lrs = state_dict["base_lrs"]
        self._tracked = set(state_dict["tracked"])
        self._taken = int(state_dict["taken"])
        self._snapshots = [
            (int(item["cycle"]), {k: v.cpu() for k, v in item["tensors"].items()})
            for item in state_dict["snapshots"]
        ][-self.keep_last :]
