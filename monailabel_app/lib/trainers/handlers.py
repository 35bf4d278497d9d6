"""Ignite handlers of the train task: epoch summary, ``last.pt`` every epoch, ``best.pt`` on a better Dice."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from medsegdiff.checkpoint import save_checkpoint
from medsegdiff.diffusion import DiffusionConfig

from ..model_files import ModelFiles

__all__ = ["CheckpointPublisher", "unwrap"]

logger = logging.getLogger(__name__)

_RUN_KEYS = (
    "trained", "epochs_trained", "iterations_trained", "train_loss", "learning_rate", "val_dice", "saved_at", "run"
)


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or the network itself)."""
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


class CheckpointPublisher:
    """Logs each epoch and writes the model's checkpoints (atomically, rank 0 only).

    ``last.pt`` after every epoch (training resumes from it); ``best.pt`` when the validation Dice beats the best
    of this run (inference picks it up without a restart). On several ranks, the iteration counts and losses of
    all ranks are gathered every epoch (a collective call, so every rank attaches this handler).

    Args:
        files: where to write.
        network: the trained network (possibly DDP-wrapped).
        diffusion: its diffusion configuration.
        metadata: metadata of the checkpoint training started from (spacing, labels, …; run keys are replaced).
        run: facts about this run stored with every checkpoint (images, resume source, distributed setup).
        key_metric: the evaluator's metric that decides ``best.pt``.
        rank: this process's rank.
    """

    def __init__(
        self,
        files: ModelFiles,
        network: nn.Module,
        diffusion: DiffusionConfig,
        metadata: dict[str, Any],
        run: dict[str, Any],
        key_metric: str,
        rank: int = 0,
    ) -> None:
        self.files = files
        self.network = network
        self.diffusion = diffusion
        self.metadata = {k: v for k, v in metadata.items() if k not in _RUN_KEYS}
        self.start_epochs = int(metadata.get("epochs_trained", 0)) if metadata.get("trained", True) else 0
        self.start_iterations = int(metadata.get("iterations_trained", 0)) if metadata.get("trained", True) else 0
        self.run = run
        self.key_metric = key_metric
        self.rank = rank
        self.best_dice = float("-inf")
        self.val_dice: float | None = None
        self.iterations = 0
        self._epoch_losses: list[float] = []
        self._epoch_start = 0.0
        self._epoch_lr: float | None = None

    def attach(self, trainer: Engine, evaluator: Engine | None) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_losses, self._epoch_start, self.val_dice = [], time.perf_counter(), None
        optimizer = getattr(engine, "optimizer", None)  # MONAI's SupervisedTrainer keeps it
        self._epoch_lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None

    def _iteration_completed(self, engine: Engine) -> None:
        self._epoch_losses.append(engine.state.output["loss"].detach().item())

    def _validated(self, engine: Engine) -> None:
        self.val_dice = float(engine.state.metrics[self.key_metric])

    def _gather(self) -> list[tuple[int, float]]:
        """(iterations, loss sum) of this epoch on every rank."""
        mine = (len(self._epoch_losses), float(sum(self._epoch_losses)))
        if not (dist.is_available() and dist.is_initialized()):
            return [mine]
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        return everyone

    def _epoch_completed(self, engine: Engine) -> None:
        per_rank = self._gather()
        iterations = sum(n for n, _ in per_rank)
        loss = sum(s for _, s in per_rank) / max(iterations, 1)
        self.iterations += iterations
        improved = self.val_dice is None or self.val_dice > self.best_dice
        if self.val_dice is not None and improved:
            self.best_dice = self.val_dice
        state = engine.state
        val = "no validation" if self.val_dice is None else f"val Dice {self.val_dice:.4f} (best {self.best_dice:.4f})"
        logger.info(
            "%s: epoch %d/%d: loss %.4f over %d iterations (%.1f s); %s",
            self.files.name, state.epoch, state.max_epochs, loss, iterations, time.perf_counter() - self._epoch_start, val,
        )
        if self.rank == 0:
            self._save(state, loss, improved, per_rank)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks wait for the checkpoints: no rank runs ahead into the next epoch or exit

    def _save(self, state: Any, loss: float, improved: bool, per_rank: list[tuple[int, float]]) -> None:
        metadata = {
            **self.metadata,
            "trained": True,
            "epochs_trained": self.start_epochs + state.epoch,
            "iterations_trained": self.start_iterations + self.iterations,
            "train_loss": loss,
            "learning_rate": self._epoch_lr,
            "val_dice": self.val_dice,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": {**self.run, "iterations_per_rank": [n for n, _ in per_rank]},
        }
        network = unwrap(self.network)
        save_checkpoint(self.files.last, network, self.diffusion, metadata)
        if improved:
            save_checkpoint(self.files.best, network, self.diffusion, metadata)
            logger.info("%s: published %s (val Dice %s)", self.files.name, self.files.best, metadata["val_dice"])
