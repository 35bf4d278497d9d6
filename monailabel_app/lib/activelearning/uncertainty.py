"""Active-learning strategy: the unlabelled image the model is least sure about."""

from __future__ import annotations

import logging
import random
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

__all__ = ["MostUncertain"]

logger = logging.getLogger(__name__)


class MostUncertain(Strategy):
    """The unlabelled image with the highest score under ``key`` (a random one while none is scored).

    Args:
        key: image-info key written by the scoring method (``<model>_uncertainty``).
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"Unlabelled image with the highest '{key}' score (random until images are scored)")
        self.key = key

    def info(self) -> dict[str, Any]:
        return {**super().info(), "key": self.key}

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any] | None:
        # scores are written by the scoring subprocess; the server's file watcher picks them up asynchronously
        # (and has been seen to miss them), so read the datastore file again before choosing
        datastore.refresh()
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scores = {}
        for image_id in images:
            score = datastore.get_image_info(image_id).get(self.key)
            if isinstance(score, (int, float)):
                scores[image_id] = float(score)
        if not scores:
            image_id = random.choice(images)
            logger.info("%s: no image scored yet, picked %s at random", self.key, image_id)
            return {"id": image_id, self.key: None}
        image_id = max(scores, key=scores.__getitem__)
        logger.info("%s: picked %s (score %.4f of %d scored)", self.key, image_id, scores[image_id], len(scores))
        return {"id": image_id, self.key: scores[image_id]}
