"""Ignite handlers of the train task: epoch summary, ``last.pt`` every epoch, ``best.pt`` only when it beats the served model.

Before the first epoch the model being served is scored on this run's validation images; ``best.pt`` is written
only by an epoch whose validation Dice beats that score (and every earlier epoch of the run), so a bad
fine-tune never replaces a good model. Each epoch's decision and its reason are logged (the train task's log is
what ``GET /train/`` shows) and stored in the checkpoint metadata under ``publish``. ``last.pt`` also carries the
optimizer and learning-rate schedule state and the run's epoch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from medsegdiff.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from medsegdiff.diffusion import DiffusionConfig

from ..model_files import ModelFiles

__all__ = ["CheckpointPublisher", "unwrap"]

logger = logging.getLogger(__name__)

_RUN_KEYS = (
    "trained", "epochs_trained", "iterations_trained", "train_loss", "learning_rate", "val_dice", "saved_at", "run",
    "publish",
)


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or the network itself)."""
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


class CheckpointPublisher:
    """Logs each epoch and writes the model's checkpoints (atomically, rank 0 only).

    ``last.pt`` after every epoch (training resumes from it, optimizer and schedule included); ``best.pt`` when
    the validation Dice beats both the served model (scored before the first epoch, on the same validation images)
    and every earlier epoch of this run (inference picks it up without a restart). On several ranks, the
    iteration counts and losses of all ranks are gathered every epoch and the served model is scored on every
    rank (collective calls, so every rank attaches this handler).

    Args:
        files: where to write.
        network: the trained network (possibly DDP-wrapped).
        diffusion: its diffusion configuration.
        metadata: metadata of the checkpoint training started from (spacing, labels, …; run keys are replaced).
        run: facts about this run stored with every checkpoint (images, resume source, distributed setup).
        key_metric: the evaluator's metric that decides ``best.pt``.
        rank: this process's rank.
        optimizer: the run's optimizer (its state goes into ``last.pt``).
        lr_scheduler: the run's learning-rate schedule, if any (its state goes into ``last.pt``).
        served: the checkpoint inference serves now, scored before the first epoch (``None``: not compared).
        resume_epoch: epoch of the interrupted run this one continues (0: a new run).
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
        optimizer: Any = None,
        lr_scheduler: Any = None,
        served: Any = None,
        resume_epoch: int = 0,
    ) -> None:
        self.files = files
        self.network = network
        self.diffusion = diffusion
        self.metadata = {k: v for k, v in metadata.items() if k not in _RUN_KEYS}
        # a resumed run's first epochs are already counted in the checkpoint it resumes from
        self.start_epochs = (int(metadata.get("epochs_trained", 0)) if metadata.get("trained", True) else 0) - resume_epoch
        self.start_iterations = int(metadata.get("iterations_trained", 0)) if metadata.get("trained", True) else 0
        self.run = run
        self.key_metric = key_metric
        self.rank = rank
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.served = served
        self.resume_epoch = resume_epoch
        self.evaluator: Engine | None = None
        self.served_dice: float | None = None
        self.best_dice = float("-inf")
        self.val_dice: float | None = None
        self.iterations = 0
        self._epoch_losses: list[float] = []
        self._epoch_start = 0.0
        self._epoch_lr: float | None = None

    def attach(self, trainer: Engine, evaluator: Engine | None) -> None:
        self.evaluator = evaluator
        trainer.add_event_handler(Events.STARTED, self._started)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    def _started(self, engine: Engine) -> None:
        if self.resume_epoch:
            epoch_length = engine.state.epoch_length or len(engine.state.dataloader)
            engine.state.epoch, engine.state.iteration = self.resume_epoch, self.resume_epoch * epoch_length
            logger.info(
                "%s: resuming the interrupted run at epoch %d/%d (optimizer and learning-rate schedule restored)",
                self.files.name, self.resume_epoch, engine.state.max_epochs,
            )
        self.served_dice = self._score_served()
        self.best_dice = float("-inf") if self.served_dice is None else self.served_dice

    def _score_served(self) -> float | None:
        """Validation Dice of the served checkpoint on this run's validation images (None: nothing to protect)."""
        if self.evaluator is None or self.served is None:
            return None
        try:
            payload = read_checkpoint(self.served)
        except (CheckpointError, FileNotFoundError) as e:
            logger.warning("%s: served checkpoint unreadable (%s): not compared", self.files.name, e)
            return None
        if not payload.get("metadata", {}).get("trained", True):
            logger.info("%s: the served model is untrained: the first validated epoch is published", self.files.name)
            return None
        network = unwrap(self.network)
        current = {k: v.detach().clone() for k, v in network.state_dict().items()}
        try:
            network.load_state_dict(payload["state_dict"])
        except RuntimeError:
            network.load_state_dict(current)
            logger.warning("%s: the served model has another architecture: not compared", self.files.name)
            return None
        try:
            self.evaluator.run()
            dice = float(self.evaluator.state.metrics[self.key_metric])
        finally:
            network.load_state_dict(current)
            self.val_dice = None
            # the run's own best starts after this: MONAI Label reports the evaluator's best as the run's
            self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = -1, -1
        logger.info(
            "%s: the served model scores val Dice %.4f on this run's validation images; a checkpoint is published "
            "only when it beats that", self.files.name, dice,
        )
        return dice

    def _decide(self) -> tuple[bool, str]:
        """Whether this epoch's checkpoint is published, and why."""
        if self.val_dice is None:
            return False, "not published: no validation this epoch"
        if math.isnan(self.val_dice):
            return False, "not published: validation Dice is NaN"
        rival = "the served model" if self.best_dice == self.served_dice else "this run's best epoch"
        if self.val_dice > self.best_dice:
            beaten = "" if math.isinf(self.best_dice) else f" beats {rival} ({self.best_dice:.4f})"
            return True, f"published: val Dice {self.val_dice:.4f}{beaten}"
        return False, f"not published: val Dice {self.val_dice:.4f} does not beat {rival} ({self.best_dice:.4f})"

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
        improved, reason = self._decide()
        if improved:
            self.best_dice = self.val_dice
        state = engine.state
        logger.info(
            "%s: epoch %d/%d: loss %.4f over %d iterations (%.1f s); %s",
            self.files.name, state.epoch, state.max_epochs, loss, iterations, time.perf_counter() - self._epoch_start, reason,
        )
        if self.rank == 0:
            self._save(state, loss, improved, reason, per_rank)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks wait for the checkpoints: no rank runs ahead into the next epoch or exit

    def _save(self, state: Any, loss: float, improved: bool, reason: str, per_rank: list[tuple[int, float]]) -> None:
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
            "publish": {"published": improved, "reason": reason, "served_val_dice": self.served_dice},
        }
        network = unwrap(self.network)
        training_state = {
            "epoch": int(state.epoch),
            "max_epochs": int(state.max_epochs),
            "lr_schedule": self.run.get("lr_schedule"),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
        }
        save_checkpoint(self.files.last, network, self.diffusion, metadata, training_state=training_state)
        if improved:
            save_checkpoint(self.files.best, network, self.diffusion, metadata)
            logger.info("%s: published %s (val Dice %s)", self.files.name, self.files.best, metadata["val_dice"])
