"""Train task: the MedSegDiff diffusion objective inside MONAI Label's ignite engine.

The ``SupervisedTrainer`` gets ``prepare_batch=SegDiffusionPrepareBatch`` (noise the *label*, condition on the
*image*), ``inferer=DiffusionInferer`` and ``SegDiffusionLoss`` (MSE + the
checkpoint's ``dice_weight`` x soft Dice); samples are random slices (2D model) or patches (3D)
of the datastore's final labels, pre-processed exactly as at inference. Validation samples whole volumes with
a few-step ensemble; ``best.pt``, the checkpoint inference uses, is written only by an epoch whose Dice beats the
served model's on the same images (see :mod:`.handlers`). Training resumes from ``last.pt``: weights and
optimizer state always; an interrupted run (fewer epochs done than it asked for, asked again with the same
``max_epochs`` and schedule) also continues its epoch count and learning-rate schedule. Training curves: MONAI's ``TensorBoardStatsHandler`` writes TensorBoard event files into the model
folder (``<model_dir>/<model>/<train task>/events_<run id>/``): ``train_loss`` per iteration, ``train_epoch_loss``,
and ``val_mean_dice`` per epoch. MONAI Label's ``multi_gpu`` path (``torch.multiprocessing.spawn`` + ``torch.distributed``) also runs
on CPU workers with the gloo backend.
"""

from __future__ import annotations

import gc
import logging
import operator
import os
import socket
from typing import Any

import torch
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    LrScheduleHandler, MeanDice, StatsHandler, TensorBoardStatsHandler, ValidationHandler, from_engine
)
from monai.inferers import DiffusionInferer, Inferer
from monai.transforms import AsDiscreted, Compose, SpatialPadd
from torch import nn

from medsegdiff.checkpoint import from_payload, read_checkpoint
from medsegdiff.diffusion import SegDiffusionLoss, SegDiffusionPrepareBatch, make_scheduler
from medsegdiff.guidance import ErrorClicks, ErrorClicksPrepareBatch
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.transforms import min_volume_size, sample_transforms, volume_transforms
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import strtobool

from ..model_files import ModelFiles, ModelInfo
from ..params import MONAILABEL_TRAIN_PARAMS, TRAIN_PARAMS, check_values, declare, parse
from ..request_keys import log_ignored, unread_keys
from .data import RandomSampleDataset, cache_volumes, make_loader
from .handlers import CheckpointPublisher, unwrap

__all__ = ["MedSegDiffTrain", "SamplingValidationInferer", "TRAIN_EPOCH_LOSS"]

logger = logging.getLogger(__name__)

TRAIN_EPOCH_LOSS = "train_epoch_loss"
"""TensorBoard tag (and trainer metric) of each epoch's mean loss; ``train_loss`` is each iteration's."""

# MONAI Label's own choices that this task fixes (the loaders are its own)
_FIXED = {"train_batch_size": None, "val_batch_size": 1, "dataset": "CacheDataset", "dataloader": "DataLoader"}


class SamplingValidationInferer(Inferer):
    """Whole-volume label from a few-step ensemble, for the validation Dice (unwraps DDP)."""

    def __init__(self, inferer: MedSegDiffInferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inferer(inputs, unwrap(network))["label"]


def _loss_value(output: dict) -> float:
    """The loss of a ``decollate=False`` trainer iteration, as a number."""
    return output["loss"].detach().item()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MedSegDiffTrain(BasicTrainTask):
    """Trains a MedSegDiff model on the datastore's final labels.

    Args:
        files: the model's checkpoints (reads ``current()``/``last.pt``, writes ``last.pt`` and ``best.pt``).
        model_info: labels, spacing, slice axis of the model.
        description: shown in ``/info``.
    """

    def __init__(self, files: ModelFiles, model_info: ModelInfo, description: str) -> None:
        super().__init__(
            model_dir=str(files.output_dir),
            description=description,
            config=declare(TRAIN_PARAMS),
            amp=torch.cuda.is_available(),
            publish_path=None,
            stats_path=str(files.output_dir / "train_stats.json"),
            labels=list(model_info.labels),
            # MONAI's TransformerBlock (the attention blocks) owns a cross-attention LayerNorm that self-attention
            # never uses; DDP must be told, or it waits for gradients that never come
            find_unused_parameters=True,
        )
        for key in _FIXED:
            self._config.pop(key, None)
        # MLflow needs a database or server URI (no file store any more): opt in with tracking + tracking_uri
        self._config["tracking"] = ["None", "mlflow"]
        self.files = files
        self.model_info = model_info

    # ------------------------------------------------------------------ request
    def check_request(self, request: dict) -> list[str]:
        """Validate a train request (ours and MONAI Label's declared parameters); returns the keys nobody reads.

        The server runs this before MONAI Label starts the training process (HTTP 422 on an error), the task
        again when it starts.

        Raises:
            InvalidParameter: a bad value, or a near-miss of a declared parameter.
        """
        ignored = unread_keys(request, self._config, "train")
        check_values(request, MONAILABEL_TRAIN_PARAMS, self._config)
        parse(request, TRAIN_PARAMS)
        return ignored

    def __call__(self, request: dict, datastore: Datastore):
        log_ignored(f"train {self.files.name}", self.check_request(request))
        values = parse(request, TRAIN_PARAMS)
        request = {**request, **values, **_FIXED, "train_batch_size": values["batch_size"]}
        if not torch.cuda.is_available():  # multi_gpu on a CPU server: worker processes talk through gloo
            request.setdefault("distributed_backend", "gloo")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        return super().__call__(request, datastore)

    def pre_process(self, request: dict, datastore: Datastore) -> list[dict]:
        datalist = datastore.datalist()
        if not datalist:
            raise ValueError("no image has a 'final' label yet: save at least one label (PUT /datastore/label) first")
        return datalist

    def partition_datalist(self, context: Context, shuffle: bool = False):
        train, val = super().partition_datalist(context, shuffle)
        context.validated_on_training_images = not val
        if not val:
            logger.warning(
                "%s: %d labelled image(s) leave none for validation (val_split %.2f): the Dice is measured on the "
                "training images", self.files.name, len(train), context.request["val_split"],
            )
            val = list(train)
        return train, val

    def train(self, rank, world_size, request, datalist):
        if request.get("multi_gpu") and not torch.cuda.is_available():  # CPU workers share the cores
            share = max(1, (os.cpu_count() or 1) // max(world_size, 1))
            torch.set_num_threads(min(torch.get_num_threads(), share))
        try:
            return super().train(rank, world_size, request, datalist)
        finally:
            # After destroy_process_group the DDP wrapper, inside ignite's reference cycles, still holds the process
            # group. Free it now: freed during interpreter shutdown, gloo's threads can abort a worker (SIGABRT).
            gc.collect()

    # ------------------------------------------------------------------ model
    def network(self, context: Context) -> nn.Module:
        """Resume from ``last.pt``; else start from the checkpoint inference uses (or fresh weights)."""
        start = self.files.last if self.files.last.is_file() else self.files.current()
        payload = read_checkpoint(start)  # read once: weights, and the optimiser state when resuming
        network, diffusion, metadata = from_payload(payload, "cpu")
        if not strtobool(context.pretrained):
            start, network, metadata = None, MedSegDiffUNet(**network.config), {**metadata, "trained": False}
        logger.info("%s: training starts from %s", self.files.name, start or "fresh weights")
        context.start_checkpoint, context.start_metadata = start, metadata
        context.training_state = payload.get("training_state") if start == self.files.last else None
        context.resume_epoch = self._resume_epoch(context)
        context.diffusion = diffusion
        context.scheduler = make_scheduler(diffusion, "ddpm")
        return network.train()

    def _resume_epoch(self, context: Context) -> int:
        """The epoch an interrupted run stopped at, when this request continues it (else 0: a new run)."""
        state = context.training_state
        if not state:
            return 0
        request = context.request
        same_run = state["max_epochs"] == request["max_epochs"] and state.get("lr_schedule") == request["lr_schedule"]
        return int(state["epoch"]) if same_run and state["epoch"] < state["max_epochs"] else 0

    def optimizer(self, context: Context):
        lr = context.request["learning_rate"]
        optimizer = torch.optim.AdamW(context.network.parameters(), lr=lr, weight_decay=1e-4)
        saved = (context.training_state or {}).get("optimizer")
        if saved:
            optimizer.load_state_dict(saved)  # Adam moments and step counts carry over
            if not context.resume_epoch:  # a new run: its own learning rate and schedule
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] = lr
            logger.info("%s: optimizer state restored from %s", self.files.name, self.files.last.name)
        return optimizer

    def loss_function(self, context: Context):
        return SegDiffusionLoss(context.diffusion)

    def _device(self, context: Context) -> torch.device:
        if context.multi_gpu and not torch.cuda.is_available():
            logger.info("%d - Using Device: cpu (gloo)", context.local_rank)
            return torch.device("cpu")
        return super()._device(context)

    def _create_network_and_optimizer(self, context: Context):
        if not (context.multi_gpu and context.device.type == "cpu"):
            return super()._create_network_and_optimizer(context)
        network = self.network(context).to(context.device)
        context.network = network
        optimizer = self.optimizer(context)
        return nn.parallel.DistributedDataParallel(network, find_unused_parameters=self._find_unused_parameters), optimizer

    # ------------------------------------------------------------------ data
    def _spatial(self, context: Context) -> tuple[list[int], int, int]:
        config = unwrap(context.network).config
        return config["spatial_size"], config["spatial_dims"], self.model_info.slice_axis

    def train_pre_transforms(self, context: Context):
        return volume_transforms(["image", "label"], self.model_info.spacing, list(self.model_info.labels.values()))

    def train_post_transforms(self, context: Context):
        return None

    def val_pre_transforms(self, context: Context):
        pad = min_volume_size(*self._spatial(context), self.model_info.views)
        return [*self.train_pre_transforms(context), SpatialPadd(keys=["image", "label"], spatial_size=pad)]

    def val_post_transforms(self, context: Context):
        classes = len(self.model_info.labels) + 1
        return [AsDiscreted(keys=("pred", "label"), to_onehot=(classes, classes))]

    def train_data_loader(self, context: Context, num_workers=0, shuffle=True):
        volumes = cache_volumes(context.train_datalist, self.train_pre_transforms(context))
        config = unwrap(context.network).config
        transform = sample_transforms(*self._spatial(context), context_slices=int(config.get("context_slices", 0)),
                                      guidance=bool(config.get("guidance_channels", 0)),  # simulated clicks
                                      views=self.model_info.views)
        transform.set_random_state(seed=1000 * context.local_rank + int(context.start_ts) % 1000)
        dataset = RandomSampleDataset(volumes, transform, context.request["samples_per_epoch"])
        world = context.world_size if context.multi_gpu else 1
        logger.info("%d - %d volume(s), %d samples per epoch", context.local_rank, len(volumes), len(dataset))
        return make_loader(dataset, context.train_batch_size, True, context.local_rank, world)

    def val_data_loader(self, context: Context, num_workers=0):
        volumes = cache_volumes(context.val_datalist, self.val_pre_transforms(context))
        world = context.world_size if context.multi_gpu else 1
        return make_loader(volumes, 1, False, context.local_rank, world)

    # ------------------------------------------------------------------ engines
    def train_inferer(self, context: Context):
        return DiffusionInferer(context.scheduler)

    def val_inferer(self, context: Context):
        sampler = EnsembleSampler(
            context.diffusion,
            "ddim",
            num_inference_steps=context.request["val_num_inference_steps"],
            num_ensemble=context.request["val_num_ensemble"],
        )
        inferer = MedSegDiffInferer(sampler, seed=0, slice_axis=self.model_info.slice_axis, views=self.model_info.views)
        return SamplingValidationInferer(inferer)

    def val_key_metric(self, context: Context):
        return {self.VAL_METRIC_MEAN_DICE: MeanDice(output_transform=from_engine(["pred", "label"]), include_background=False)}

    def train_handlers(self, context: Context):
        handlers: list = []
        if context.local_rank == 0:
            handlers += [
                StatsHandler(tag_name="train_loss", output_transform=_loss_value),
                TensorBoardStatsHandler(log_dir=context.events_dir, tag_name="train_loss", output_transform=_loss_value),
            ]
        context.lr_scheduler = None
        if context.request["lr_schedule"] == "cosine":
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
                context.optimizer, T_max=context.max_epochs, eta_min=0.01 * context.request["learning_rate"]
            )
            saved = (context.training_state or {}).get("lr_scheduler")
            if context.resume_epoch and saved:
                cosine.load_state_dict(saved)
                for group, lr in zip(context.optimizer.param_groups, cosine.get_last_lr()):
                    group["lr"] = lr  # the constructor reset it to the start of the cycle
            context.lr_scheduler = cosine
            handlers.append(LrScheduleHandler(cosine, print_lr=False, epoch_level=True))
        if context.evaluator:
            handlers.append(ValidationHandler(self._val_interval, validator=context.evaluator, epoch_level=True))
        return handlers

    def _create_evaluator(self, context: Context):
        if not context.val_datalist:
            return None
        return SupervisedEvaluator(
            device=context.device,
            val_data_loader=self.val_data_loader(context),
            network=context.network,
            inferer=self.val_inferer(context),
            postprocessing=Compose(self.val_post_transforms(context)),
            key_val_metric=self.val_key_metric(context),
            val_handlers=self.val_handlers(context),
        )

    def _create_trainer(self, context: Context):
        network = unwrap(context.network)
        prepare_batch = SegDiffusionPrepareBatch(
            context.scheduler, network.num_classes, context.diffusion.prediction_type,
            background=network.config["background_channel"], mask_scale=context.diffusion.mask_scale,
        )
        if network.config.get("guidance_channels"):  # half the samples click on the network's own error
            prepare_batch = ErrorClicksPrepareBatch(ErrorClicks(network, context.diffusion), prepare_batch)
        return SupervisedTrainer(
            device=context.device,
            max_epochs=context.max_epochs,
            train_data_loader=self.train_data_loader(context),
            network=context.network,
            optimizer=context.optimizer,
            loss_function=self.loss_function(context),
            inferer=self.train_inferer(context),
            prepare_batch=prepare_batch,
            amp=self._amp,
            decollate=False,
            train_handlers=self.train_handlers(context),
            # the epoch's mean loss in engine.state.metrics (TensorBoardStatsHandler writes it once per epoch); MONAI
            # attaches train metrics only as a key metric, whose best is here the lowest
            key_train_metric={TRAIN_EPOCH_LOSS: Average(output_transform=_loss_value)},
            metric_cmp_fn=operator.lt,
        )

    def finalize(self, context: Context) -> None:
        super().finalize(context)  # train_stats.json (rank 0), early stopping
        run = {
            "id": context.run_id,
            "train_images": len(context.train_datalist),
            "val_images": 0 if context.validated_on_training_images else len(context.val_datalist),
            "validated_on_training_images": context.validated_on_training_images,
            "started_from": str(context.start_checkpoint) if context.start_checkpoint else None,
            "backend": context.request.get("distributed_backend", "nccl") if context.multi_gpu else None,
            "world_size": context.world_size if context.multi_gpu else 1,
            "lr_schedule": context.request["lr_schedule"],
        }
        served = self.files.current()
        publisher = CheckpointPublisher(
            self.files, context.network, context.diffusion, context.start_metadata, run,
            key_metric=self.VAL_METRIC_MEAN_DICE, rank=context.local_rank,
            optimizer=context.optimizer, lr_scheduler=context.lr_scheduler,
            served=served if served.is_file() else None, resume_epoch=context.resume_epoch,
        )
        publisher.attach(context.trainer, context.evaluator)
