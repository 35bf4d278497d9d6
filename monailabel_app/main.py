"""MONAI Label app serving MedSegDiff (diffusion segmentation with uncertainty, arXiv 2211.00611).

Start::

    monailabel start_server --app monailabel_app --studies data/sample_datastore --conf models medsegdiff

Conf keys (``--conf KEY VALUE``):
    models: comma-separated names from ``CONFIGS`` (default ``medsegdiff``).
    model_dir: writable folder for trained checkpoints (default ``<studies>/model``; ``<app>/model/trained``
        for a remote datastore).
    <model>_checkpoint: initial checkpoint of a model instead of the committed ``model/<file>``, or a MONAI
        bundle folder written by ``python -m medsegdiff.bundle export`` (the app serves its ``models/model.pt``).
    preload: ``true`` loads the networks at start-up.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import lib.configs
from lib.activelearning import MostUncertain
from lib.auth import install_token_decoder
from lib.capacity import InferenceGate, InferenceGateMiddleware
from lib.infers import PROBABILITY_FILE_KEY, UNCERTAINTY_FILE_KEY
from lib.pacs.datastore import pacs_datastore
from lib.safe_datastore import SafeLocalDatastore
from lib.task_requests import PathRedactor, TaskRequestMiddleware
from lib.validation import (
    UploadSizeLimitMiddleware,
    ValidationError,
    install_asgi_middleware,
    to_http_exception,
    validate_infer_image,
)

from monailabel.config import settings

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random

logger = logging.getLogger(__name__)

CONFIGS: dict[str, type[TaskConfig]] = {
    "medsegdiff": lib.configs.MedSegDiff2D,
    "medsegdiff_3d": lib.configs.MedSegDiff3D,
}
"""Model name (``--conf models``) → task config class."""

UNCERTAINTY_TAG = "uncertainty"
"""Datastore label tag of the per-voxel uncertainty volumes."""
PROBABILITY_TAG = "probability"
"""Datastore label tag of the fused class probabilities (infer parameter ``output_probability``)."""
MAP_OUTPUTS = {UNCERTAINTY_FILE_KEY: UNCERTAINTY_TAG, PROBABILITY_FILE_KEY: PROBABILITY_TAG}
"""Result-JSON key of a map file the infer task wrote → the datastore tag it is kept under (and its JSON section)."""


def _selected_models(conf: dict[str, str]) -> list[str]:
    names = [n.strip() for n in conf.get("models", "medsegdiff").split(",") if n.strip()]
    if names == ["all"]:
        return list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise MONAILabelException(
            MONAILabelError.APP_INIT_ERROR,
            f"--conf models {conf.get('models')!r}: unknown model(s) {unknown}; available: all, {', '.join(CONFIGS)}",
        )
    return names


def _model_dir(app_dir: str, studies: str, conf: dict[str, str]) -> Path:
    if conf.get("model_dir"):
        return Path(conf["model_dir"]).expanduser().resolve()
    if studies.startswith(("http://", "https://")):
        return Path(app_dir) / "model" / "trained"
    return Path(studies).resolve() / "model"


class MedSegDiffApp(MONAILabelApp):
    """MedSegDiff models, their trainers, uncertainty scoring and the ``uncertainty`` / ``random`` strategies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        install_token_decoder()
        conf = dict(conf or {})
        names = _selected_models(conf)
        model_dir = _model_dir(app_dir, studies, conf)
        self.models: dict[str, TaskConfig] = {}
        for name in names:
            config = CONFIGS[name]()
            config.init(name, str(model_dir), conf, None, pretrained_dir=os.path.join(app_dir, "model"))
            self.models[name] = config
        logger.info("+++ Models: %s; trained checkpoints under %s", names, model_dir)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MedSegDiff Label",
            description="Diffusion-model segmentation (MedSegDiff) with per-voxel uncertainty and active learning",
            version="0.1.0",
        )
        server = sys.modules.get("monailabel.app")  # absent in `monailabel.interfaces.utils.app` subprocesses
        if server is not None:
            install_asgi_middleware(server.app, UploadSizeLimitMiddleware)
            install_asgi_middleware(server.app, InferenceGateMiddleware, gate=InferenceGate.from_env())
            redact = PathRedactor.for_server(app_dir, studies, str(model_dir))
            install_asgi_middleware(server.app, TaskRequestMiddleware, check=self.check_task_request, redact=redact)

    def check_task_request(self, kind: str, name: str, request: dict[str, Any]) -> list[str] | None:
        """Check the body of ``POST /train/<name>`` or ``/scoring/<name>`` before MONAI Label starts the task.

        Returns:
            the keys nobody reads, or None when no task of this app has that name (MONAI Label answers).

        Raises:
            InvalidParameter: a bad value or a near-miss of a declared parameter (the middleware answers 422).
        """
        task = (self._trainers if kind == "train" else self._scoring_methods).get(name)
        check = getattr(task, "check_request", None)
        return check(request) if check else None

    def init_datastore(self) -> Datastore:
        """Local and DICOMweb (PACS) datastores validate every upload and write atomically.

        ``--studies http(s)://<pacs>/dicom-web`` → ``lib.pacs.datastore`` (final labels stored there as DICOM SEG);
        ``MONAI_LABEL_DATASTORE=xnat|dsa`` → MONAI Label's own; a folder → ``lib.safe_datastore``.
        """
        labels: dict[str, int] = {}
        for config in self.models.values():
            labels.update(config.labels)
        if self.studies.startswith(("http://", "https://")):
            if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
                return super().init_datastore()
            return pacs_datastore(self.studies, labels, map_tags=(UNCERTAINTY_TAG,))
        return SafeLocalDatastore(
            self.studies,
            label_values=labels,
            map_tags=tuple(MAP_OUTPUTS.values()),
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {name: config.trainer() for name, config in self.models.items()}

    def init_strategies(self) -> dict[str, Strategy]:
        primary = next(iter(self.models))
        return {"uncertainty": MostUncertain(key=f"{primary}_uncertainty"), "random": Random()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods: dict[str, ScoringMethod] = {}
        for config in self.models.values():
            methods.update(config.scoring_method())
        return methods

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """The strategy's choice, without the server ``path`` MONAI Label adds (clients download by id)."""
        sample = super().next_sample(request)
        sample.pop("path", None)
        return sample

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run inference; keep the uncertainty (and, on request, probability) volume of a datastore image as its
        ``uncertainty`` (``probability``) label."""
        try:  # only a datastore id or the file uploaded with the request, never a server path
            validate_infer_image(request.get("image"), (datastore or self.datastore()).list_images())
        except ValidationError as e:
            raise to_http_exception(e) from e
        result = super().infer(request, datastore)
        params = result.get("params") or {}
        files = {tag: params.pop(key) for key, tag in MAP_OUTPUTS.items() if params.get(key)}
        try:
            image_id = request.get("image")
            datastore = datastore or self.datastore()
            stored = isinstance(image_id, str) and not os.path.exists(image_id) and image_id in datastore.list_images()
            for tag, path in files.items():
                if stored:
                    info = {"model": request.get("model"), "params": params.get("params"), "summary": params.get(tag)}
                    datastore.save_label(image_id, path, tag, info)
                params.setdefault(tag, {})["label_tag"] = tag if stored else None
        finally:
            for path in files.values():
                os.unlink(path)
        return result
