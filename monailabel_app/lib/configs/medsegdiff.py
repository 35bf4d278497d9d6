"""Task configs: one MedSegDiff model = its checkpoints + infer task + train task + uncertainty scoring.

``MedSegDiff2D`` (``--conf models medsegdiff``) segments slice by slice with a 2D network; ``MedSegDiff3D``
(``medsegdiff_3d``) runs the same code with a 3D network on sliding-window patches. Both read the architecture
from their checkpoint; the class only chooses the default checkpoint and the fresh network written when no
checkpoint exists yet.

Conf keys (``--conf KEY VALUE``): ``<model>_checkpoint`` (initial checkpoint instead of the committed one),
``preload`` (load the network at start-up).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medsegdiff.device import select_device
from medsegdiff.sample_model import SAMPLE_MODEL_2D
from monailabel.interfaces.config import TaskConfig
from monailabel.utils.others.generic import strtobool

from ..infers.medsegdiff import MedSegDiffInfer
from ..model_files import ModelFiles, ModelInfo
from ..scoring.uncertainty import UncertaintyScoring
from ..trainers.medsegdiff import MedSegDiffTrain

__all__ = ["MedSegDiff2D", "MedSegDiff3D"]

logger = logging.getLogger(__name__)


class MedSegDiff2D(TaskConfig):
    """Brain segmentation, 2D network over axial slices at 3 mm (the committed sample model)."""

    checkpoint_name = "medsegdiff_brain_2d.pt"
    fresh_network: dict[str, Any] = SAMPLE_MODEL_2D
    title = "MedSegDiff 2D (slice by slice)"

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any = None, **kwargs: Any) -> None:
        """``model_dir``: writable training folder of all models; ``kwargs["pretrained_dir"]``: committed checkpoints."""
        super().init(name, model_dir, conf, planner, **kwargs)
        self.files = ModelFiles.resolve(
            name,
            default_initial=Path(kwargs["pretrained_dir"]) / self.checkpoint_name,
            output_dir=Path(model_dir) / name,
            configured=conf.get(f"{name}_checkpoint"),
            fresh_network=self.fresh_network,
        )
        self.model_info = ModelInfo.read(self.files.current())
        self.labels = self.model_info.labels
        self.label_colors = self.model_info.label_colors
        self.path = self.files.infer_paths
        self._infer: MedSegDiffInfer | None = None
        logger.info("+++ %s: %s (%s)", name, self.files.current(), "trained" if self.model_info.trained else "UNTRAINED")

    def infer(self) -> MedSegDiffInfer:
        if self._infer is None:
            self._infer = MedSegDiffInfer(self.files, self.model_info, self.title)
            if strtobool(self.conf.get("preload", "false")):
                self._infer.cache.get(select_device("auto"))
        return self._infer

    def trainer(self) -> MedSegDiffTrain:
        return MedSegDiffTrain(self.files, self.model_info, f"Train {self.title} on the final labels")

    def scoring_method(self) -> dict[str, UncertaintyScoring]:
        key = f"{self.name}_uncertainty"
        return {key: UncertaintyScoring(self.infer(), key)}


class MedSegDiff3D(MedSegDiff2D):
    """The same model family with a 3D network on 48³ patches at 3 mm (untrained until the train task runs)."""

    checkpoint_name = "medsegdiff_brain_3d.pt"
    fresh_network = {
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 1,
        "spatial_size": (48, 48, 48),
        "channels": (8, 16, 32, 64),
        "attention_levels": (False, False, False, True),
    }
    title = "MedSegDiff 3D (sliding window)"
