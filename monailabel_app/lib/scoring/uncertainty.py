"""Scoring method: how much the diffusion ensemble disagrees on each unlabelled image.

The score is the mean predictive entropy inside the bounding box of the predicted foreground (see
``lib.uncertainty.region_score``), from a quick few-step, few-member run of the model's infer task. It is stored
in the image's datastore info under ``<model>_uncertainty``, with the checkpoint it came from under
``<model>_uncertainty_info``; images already scored with the current checkpoint are skipped. The checkpoint is
recorded by model, file name and modification time, not by path (image info reaches clients).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ..infers.medsegdiff import MedSegDiffInfer
from ..params import SCORING_PARAMS, declare, parse
from ..request_keys import log_ignored, unread_keys
from ..uncertainty import region_score

__all__ = ["UncertaintyScoring"]

logger = logging.getLogger(__name__)


class UncertaintyScoring(ScoringMethod):
    """Scores unlabelled images by ensemble disagreement.

    Args:
        task: the model's infer task (same pre-processing, sampler and checkpoint as inference).
        key: image-info key of the score (``<model>_uncertainty``).
    """

    def __init__(self, task: MedSegDiffInfer, key: str) -> None:
        super().__init__(f"Ensemble disagreement of '{task.files.name}' inside the predicted foreground region")
        self.task = task
        self.key = key

    def info(self) -> dict[str, Any]:
        return {**super().info(), "key": self.key, "config": declare(SCORING_PARAMS)}

    def check_request(self, request: dict) -> list[str]:
        """Validate a scoring request; returns the keys nobody reads.

        Raises:
            InvalidParameter: a bad value, or a near-miss of a declared parameter.
        """
        ignored = unread_keys(request, [p.name for p in SCORING_PARAMS], "scoring")
        parse(request, SCORING_PARAMS)
        return ignored

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        ignored = self.check_request(request)
        log_ignored(f"scoring {self.key}", ignored)
        values = parse(request, SCORING_PARAMS)
        current = self.task.files.describe_current()
        version = {k: current[k] for k in ("model", "file", "mtime")}
        settings = {k: values[k] for k in ("num_inference_steps", "num_ensemble", "seed")}
        scored: dict[str, Any] = {}
        images = datastore.get_unlabeled_images()
        for image_id in images:
            previous = datastore.get_image_info(image_id).get(f"{self.key}_info", {})
            if not values["force"] and previous.get("model") == version and previous.get("settings") == settings:
                continue
            start = time.perf_counter()
            request = {
                "image": datastore.get_image_uri(image_id),
                **settings,
                "device": values["device"],
                "sampler": "ddim",
                "fusion": "mean",
                "skip_writer": True,
            }
            _, data = self.task(request)
            label = data["pred"][0].cpu().numpy()
            entropy = data["uncertainty"][0].cpu().numpy()
            score = region_score(entropy, label)
            info = {"model": version, "settings": settings, "ts": int(time.time())}
            datastore.update_image_info(image_id, {self.key: score, f"{self.key}_info": info})
            scored[image_id] = score
            logger.info("%s: %s scored %.4f in %.1f s", self.key, image_id, score, time.perf_counter() - start)
        logger.info("%s: %d of %d unlabelled image(s) scored", self.key, len(scored), len(images))
        return {"scored": scored, "skipped": len(images) - len(scored), "ignored_parameters": ignored}
