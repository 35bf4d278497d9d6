"""Inference task: a diffusion ensemble segments a volume and reports its own uncertainty.

Pipeline (``BasicInferTask``): pre-transforms (RAS, model spacing, ``normalize_intensity``, padding) →
``MedSegDiffInferer`` (2D network slice by slice, 3D network by sliding window) → fused probabilities and
predictive entropy resampled onto the grid of the image that was sent → label (uint8) and uncertainty
(float32) NIfTI files. Bad request parameters, and near-misses of declared ones (``num_ensembles``), are
answered with HTTP 422 naming the parameter; keys nobody reads are listed in the result's ``ignored_parameters``.

Interactive correction (:mod:`lib.interaction`): ``foreground`` / ``background`` clicks and a ``label_in``
scribble volume condition the sampler; only what the changed marks touch since the cached result of the same image,
checkpoint, seed and sampler settings is re-sampled: along each view, the slices holding a change (2D network; each
view's outputs are cached) or the sliding windows overlapping the box of the changed voxels (3D network).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.inferers import Inferer
from monai.transforms import CopyItemsd, DeleteItemsd, KeepLargestConnectedComponentd

from medsegdiff.device import select_device
from medsegdiff.inferer import RESULT_KEYS, MedSegDiffInferer, output_keys
from medsegdiff.fusion import probabilities_to_labels
from medsegdiff.boundary_spread import doubt_like_corrected, spread_along_boundary
from medsegdiff.partial_resample import paint_model_voxels
from medsegdiff.interaction import UNKNOWN, KnownRegion, keep_changes_near_marks
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.transforms import ProbabilitiesToLabelsd, ToOriginalGridd, inference_transforms, min_volume_size
from medsegdiff.uncertainty import shown_uncertainty, widen_mask
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.cache import CacheTransformDatad

from ..interaction import (
    CachedResult,
    MarksOnImageGrid,
    ResultCache,
    changed_hints,
    changed_marks,
    interaction_info,
    model_hints,
    model_labels,
    read_marks,
)
from ..model_files import CheckpointCache, LoadedModel, ModelFiles, ModelInfo
from ..params import INFER_PARAMS, ChoiceParam, FloatParam, IntParam, InvalidParameter, PointsParam, declare, parse
from ..request_keys import log_ignored, unread_keys
from ..result_files import probability_volume, save_result_nifti
from ..uncertainty import summarize

__all__ = ["MedSegDiffInfer", "PROBABILITY_FILE_KEY", "UNCERTAINTY_FILE_KEY"]

logger = logging.getLogger(__name__)

PREPROCESSED_KEY = "_preprocessed_as"
"""Request-data key naming the image file, its modification time and the model grid: the pre-processing cache's key."""
UNCERTAINTY_FILE_KEY = "_uncertainty_file"
"""Result-JSON key of the temporary uncertainty NIfTI; the app moves the file into the datastore and drops the key."""
PROBABILITY_FILE_KEY = "_probability_file"
"""Result-JSON key of the temporary probability NIfTI (``output_probability``); handled like the uncertainty."""


def _split_outputs(data: dict) -> dict:
    """The inferer's dict → ``pred`` (fused probabilities, C channels) and ``uncertainty`` (entropy, 1 channel)."""
    d = dict(data)
    outputs = d["pred"]
    d["pred"], d["uncertainty"] = outputs["probs"], outputs["entropy"]
    return d


class MedSegDiffInfer(BasicInferTask):
    """Ensemble diffusion segmentation with uncertainty (MedSegDiff, arXiv 2211.00611).

    Args:
        files: the model's checkpoints (inference uses ``files.current()``, reloaded when it changes).
        model_info: labels, colours, spacing and slice axis of the model (from the checkpoint metadata).
        title: name of the model family in the description shown in ``/info``.
        progress: print a tqdm bar on the server while sampling.
    """

    def __init__(self, files: ModelFiles, model_info: ModelInfo, title: str, progress: bool = True) -> None:
        super().__init__(
            path=files.infer_paths,
            network=None,
            type=InferType.SEGMENTATION,
            labels=model_info.labels,
            dimension=3,
            description=title,
            # clients show config() lists as choices (the stock Slicer plugin sends the first item): the click
            # lists are declared in info()["parameters"] only
            config=declare([p for p in INFER_PARAMS if not isinstance(p, PointsParam)]),
        )
        self.files = files
        self.model_info = model_info
        self.title = title
        self.description = self._describe()
        self.progress = progress
        self.cache = CheckpointCache(files)
        self.results = ResultCache()  # the last results per image, for interactions that re-sample a part
        self._request = threading.local()  # the model and parameters of the request this thread is serving

    # ------------------------------------------------------------------ info
    def _describe(self) -> str:
        trained = self.model_info.trained or self.files.best.is_file()
        spacing = "x".join(f"{s:g}" for s in self.model_info.spacing)
        state = "" if trained else f" - UNTRAINED, train it first (POST /train/{self.files.name})"
        return f"{self.title}: diffusion ensemble with uncertainty, {spacing} mm{state}"

    def info(self) -> dict[str, Any]:
        self.description = self._describe()  # a first training removes the UNTRAINED warning
        info = super().info()
        info["label_colors"] = self.model_info.label_colors
        info["parameters"] = {p.name: _parameter_spec(p) for p in INFER_PARAMS}
        info["checkpoint"] = {**self.files.describe_current(), "spatial_dims": self.model_info.spatial_dims,
                              "views": list(self.model_info.views)}
        default = {name: spec["default"] for name, spec in info["parameters"].items()}
        info["interaction"] = interaction_info(default["click_radius"], default["click_reach"], default["click_spread"],
                                               default["click_doubt"])
        return info

    # ------------------------------------------------------------------ request
    def __call__(self, request: dict, callbacks=None):
        """Validate the parameters (HTTP 422 naming the bad one), load the current checkpoint, run the pipeline."""
        try:
            ignored = unread_keys(request, [p.name for p in INFER_PARAMS], "infer")
            values = parse(request, INFER_PARAMS)
            if values["eta"] and values["sampler"] != "ddim":
                raise InvalidParameter("eta", f"eta applies to the ddim sampler only, got eta {values['eta']} with "
                                       f"sampler {values['sampler']!r}")
            device = select_device(values["device"])
        except (InvalidParameter, ValueError) as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        log_ignored(f"infer {self.files.name}", ignored)
        loaded = self.cache.get(device)
        num_train = loaded.diffusion.num_train_timesteps
        if values["num_inference_steps"] > num_train:
            raise HTTPException(
                status_code=422,
                detail=f"num_inference_steps must be in [1, {num_train}] for this model (trained with "
                f"{num_train} diffusion steps), got {values['num_inference_steps']}",
            )
        self._request.loaded, self._request.values, self._request.device = loaded, values, device.type
        if values["marked_class"] > loaded.network.num_classes:
            raise HTTPException(
                status_code=422,
                detail=f"marked_class must be in [1, {loaded.network.num_classes}] for this model, got {values['marked_class']}",
            )
        self._request.ignored = ignored
        label_in = request.get("label")  # MONAI Label stores an uploaded label_in here
        self._request.label_in = label_in if isinstance(label_in, str) and os.path.isfile(label_in) else None
        image = request.get("image")
        self._request.image_key = (image, os.path.getmtime(image)) if isinstance(image, str) and os.path.exists(image) else image
        request = {**request, **values, "device": device.type}
        logger.info("%s: %s on %s with %s", self.files.name, request.get("image"), device, values)
        return super().__call__(request, callbacks)

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        config = self._request.loaded.network.config
        pad = min_volume_size(config["spatial_size"], config["spatial_dims"], self.model_info.slice_axis, self.model_info.views)
        transforms = [
            # MONAI's Spacingd treats every "image_*" key as a metadata dict: drop MONAI Label's "image_path"
            DeleteItemsd(keys="image_path"),
            *inference_transforms(self.model_info.spacing, pad),
        ]
        if data is not None and isinstance(self._request.image_key, tuple):
            # an interaction sends the same file again: MONAI Label's cache gives back its pre-processed image
            # (in memory, 10 min), keyed by the file, its modification time and the model grid
            data[PREPROCESSED_KEY] = json.dumps([*self._request.image_key, list(self.model_info.spacing), list(pad)])
            transforms.append(CacheTransformDatad(keys="image", hash_key=PREPROCESSED_KEY))
        return transforms

    def inferer(self, data=None) -> Inferer:
        loaded, values = self._request.loaded, self._request.values
        device = next(loaded.network.parameters()).device
        sampler = EnsembleSampler(
            loaded.diffusion,
            sampler=values["sampler"],
            num_inference_steps=values["num_inference_steps"],
            num_ensemble=values["num_ensemble"],
            fusion=values["fusion"],
            eta=values["eta"],
            amp=device.type == "cuda",
        )
        inferer = MedSegDiffInferer(
            sampler,
            seed=values["seed"],
            slice_axis=self.model_info.slice_axis,
            progress=self.progress,
            views=self.model_info.views,
        )
        self._request.inferer = inferer
        return self._bind_marks(inferer, data["image"])

    def _bind_marks(self, inferer: MedSegDiffInferer, image) -> Callable:
        """The inferer with the request's marks on the model grid and the cached result of this image, if any:
        a 2D network then re-samples the slices, a 3D network the windows around the marks that changed."""
        values, network = self._request.values, self._request.loaded.network
        try:
            marks = read_marks(values, self._request.label_in, image.meta["spatial_shape"])
        except InvalidParameter as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        self._request.marks = marks
        two_d = network.spatial_dims == 2
        labels = model_labels(  # a click is a ball on the model grid, for a 2D network too: it marks the slices it crosses
            marks, image.meta["original_affine"], image.affine, image.shape[1:], values["click_radius"], values["marked_class"]
        )
        self._request.result_key = self._result_key(tuple(image.shape[1:]))
        hints = None
        clicks = len(marks.foreground) + len(marks.background)
        if two_d and network.config.get("guidance_channels") and values["click_reach"] and clicks:
            # the clicks also reach the slices beyond their balls, along the errors of the automatic label
            hints = model_hints(marks, image.meta["original_affine"], image.affine, image.shape[1:], values["click_radius"],
                                values["click_reach"], self.model_info.slice_axis, values["marked_class"],
                                self._automatic_label(inferer, image, labels))
        known = None if marks.is_empty() else KnownRegion(labels, hints)
        self._request.labels = labels.to(torch.int16)
        self._request.hints = None if hints is None else hints.to(torch.int16)
        self._request.click_settings = 0 if marks.is_empty() else (values["click_spread"], values["click_doubt"])
        # marks served before (an undo, a redo) give that result back; other marks start from the latest result
        cached = self.results.get(self._request.result_key, self._request.labels, self._request.hints,
                                  self._request.click_settings)
        self._request.local = None
        self._request.cached = cached
        if cached is None:
            return functools.partial(inferer, known=known)
        changed = changed_marks(cached.marks, self._request.labels)
        if not two_d:
            self._request.local = (cached.outputs, self._request.labels, changed)
            return functools.partial(inferer, known=known, previous=cached.outputs, region=changed)
        resample, hints = changed, changed_hints(cached.hints, self._request.hints)
        if hints is not None:  # slices whose hints changed are re-sampled; a hint taken away reverts like a mark
            resample, changed = changed | hints[0], changed | hints[1]
        # the label changes only as the changed marks ask and where they reach
        self._request.local = (cached.outputs, self._request.labels, changed)
        # along each view of the network, the slices holding a changed mark or hint
        return functools.partial(inferer, known=known, previous=cached.outputs, region=resample)

    def _automatic_label(self, inferer: MedSegDiffInferer, image, labels: torch.Tensor) -> torch.Tensor:
        """The model-grid label (*spatial) of this image without marks (same checkpoint, seed and sampler): the
        cached one, else sampled now and cached (a request that clicks before any automatic result pays for it once)."""
        blank = torch.full_like(labels, UNKNOWN).to(torch.int16)
        plain = self.results.exact(self._request.result_key, blank)
        if plain is None:
            network = self._request.loaded.network
            device = next(network.parameters()).device
            outputs = inferer(torch.as_tensor(image)[None].to(device), network)
            plain = CachedResult({k: outputs[k].detach().cpu() for k in output_keys(outputs)}, blank)
            self.results.put(self._request.result_key, plain)
        return probabilities_to_labels(plain.outputs["probs"])[0, 0]

    def _result_key(self, model_shape: tuple[int, ...]) -> tuple:
        """What a cached result must share with this request: image, checkpoint, grid, seed and sampler settings."""
        values = self._request.values
        sampler = tuple(values[k] for k in ("seed", "sampler", "num_inference_steps", "num_ensemble", "fusion", "eta"))
        checkpoint = json.dumps(self._request.loaded.describe(self.files.name), sort_keys=True, default=str)
        return (json.dumps(self._request.image_key, default=str), checkpoint, model_shape, sampler, self._request.device)

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """Run the inferer; of a re-sampling, keep the changes the changed marks reach (the rest is the previous
        result); the model-grid result is cached with its marks for the next interaction on this image."""
        data = super().run_inferer(data, convert_to_batch, device)
        outputs = {k: torch.as_tensor(data["pred"][k])[None].detach().cpu() for k in output_keys(data["pred"])}
        unflagged, self._request.flagged = outputs, None
        if self._request.local is not None:
            outputs = keep_changes_near_marks(outputs, *self._request.local)
            image = torch.as_tensor(data["image"])[None].detach().cpu()  # the model-grid image that was sampled
            spread, doubt = self._request.click_settings or (0, False)
            outputs = unflagged = spread_along_boundary(outputs, *self._request.local, spread, image)
            if doubt:
                outputs = doubt_like_corrected(outputs, *self._request.local, image)
                flagged = (outputs["entropy"] != unflagged["entropy"])[0, 0]
                self._request.flagged = flagged.numpy() if flagged.any() else None
            data["pred"] = {**data["pred"], **{k: v[0].to(data["pred"][k].device) for k, v in outputs.items()}}
        cached, margin = self._request.cached, self._request.values["uncertainty_margin"]
        # where this result differs from the one it started from: the image grid is resampled there only (the
        # voxels the click flagged all over the head are painted onto it instead, _paint_flags); the uncertainty
        # shown has the boundary shifted by the margin, so a change reaches that far (the cache keeps the ensemble's)
        self._request.model_changed = None if cached is None else widen_mask(torch.stack(
            [(unflagged[k] != cached.outputs[k]).any(dim=1)[0] for k in RESULT_KEYS]).any(dim=0), margin)
        shown = shown_uncertainty(outputs["probs"], outputs["entropy"], margin)[0]
        data["pred"] = {**data["pred"], "entropy": shown.to(data["pred"]["entropy"].device)}
        self._request.entry = CachedResult(outputs, self._request.labels, hints=self._request.hints,
                                           click_settings=self._request.click_settings)
        self.results.put(self._request.result_key, self._request.entry)
        return data

    def _paint_flags(self, data: dict[str, Any]) -> dict[str, Any]:
        """Post-transform right after :class:`ToOriginalGridd`: the maximum uncertainty on the image voxels inside
        the model voxels this click flagged (``click_doubt``), which lie all over the head: painting them costs
        little, resampling the whole head would cost 0.4 s on a 1 mm head."""
        flagged = self._request.flagged
        if flagged is not None:
            ref = data["image"]
            paint_model_voxels(data["uncertainty"].as_tensor(), flagged, ref.affine.cpu().numpy(),
                               np.asarray(ref.meta["original_affine"]), 1.0)
        return data

    def _remember_image_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Post-transform right after :class:`ToOriginalGridd`: keep this result's image-grid outputs for the next
        interaction (the uncertainty copied: :class:`MarksOnImageGrid` paints the marks into it; the probabilities
        are replaced, not changed, by the labels)."""
        pred, uncertainty = (data[k].as_tensor().detach().cpu() for k in ("pred", "uncertainty"))
        self._request.entry.image_outputs = {"pred": pred, "uncertainty": uncertainty.clone()}
        self._request.entry.image_margin = self._request.values["uncertainty_margin"]
        return data

    def _get_network(self, device, data):
        return self._request.loaded.network

    def post_transforms(self, data=None) -> Sequence[Callable]:
        cached, changed = self._request.cached, self._request.model_changed
        if cached is None or changed is None or cached.image_margin != self._request.values["uncertainty_margin"]:
            cached = changed = None  # no image-grid outputs to start from: resample all
        previous = None if cached is None else cached.image_outputs
        self._request.to_image_grid = ToOriginalGridd(
            keys=["pred", "uncertainty"], ref_key="image", mode="bilinear",
            previous=previous, changed=None if previous is None else changed,
        )
        transforms = [
            _split_outputs,
            self._request.to_image_grid,
            self._paint_flags,
            self._remember_image_outputs,
        ]
        if self._request.values["output_probability"]:
            transforms.append(CopyItemsd(keys="pred", names="probability"))  # on the image's grid
        transforms.append(ProbabilitiesToLabelsd(keys="pred"))
        if self._request.values["largest_component"]:
            # leave-one-head-out bench: the same labels after this step (``dice_lcc`` / ``hd95_lcc_mm``)
            labels = sorted(self.model_info.labels.values())
            transforms.append(KeepLargestConnectedComponentd(keys="pred", applied_labels=labels, is_onehot=False))
        # last: a marked voxel keeps its class even where it lies outside the largest component
        transforms.append(MarksOnImageGrid(self._request.marks, self._request.values["marked_class"]))
        return transforms

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[Any, Any]:
        """Label (uint8) and uncertainty (float32) NIfTI on the image's own grid, and the result JSON."""
        loaded: LoadedModel = self._request.loaded
        label = data["pred"][0].cpu().numpy().astype(np.uint8)
        uncertainty = data["uncertainty"][0].cpu().numpy().astype(np.float32)
        affine = data["pred"].affine.cpu().numpy()
        label_file = save_result_nifti(label, affine, np.uint8)
        result = {
            "model": self.files.name,
            "checkpoint": loaded.describe(self.files.name),
            "params": dict(self._request.values),
            "device": self._request.device,
            "nfe": self._request.inferer.nfe,
            "uncertainty": summarize(uncertainty, label),
            "shape": list(label.shape),
            "ignored_parameters": self._request.ignored,
            "interaction": {"marked_voxels": self._request.marks.count(), **self._resampled(),
                            "image_grid_box": self._request.to_image_grid.resampled_box},
            UNCERTAINTY_FILE_KEY: save_result_nifti(uncertainty, affine, np.float32),
        }
        if self._request.values["output_probability"]:
            probs = data["probability"].cpu().numpy()
            result["probability"] = {"classes": list(self.model_info.labels), "channels": int(probs.shape[0])}
            result[PROBABILITY_FILE_KEY] = save_result_nifti(probability_volume(probs), affine, np.float32)
        return label_file, result

    def _resampled(self) -> dict[str, Any]:
        """What this request re-sampled: slices of a 2D network, the box and windows of a 3D network."""
        windows = self._request.inferer.resampled
        if windows is not None:
            return windows.describe()
        slices = self._request.inferer.resampled_slices
        return {"resampled_slices": "all" if slices is None else {str(axis): s for axis, s in slices.items()}}

    def clear(self) -> None:
        super().clear()
        self.cache.clear()
        self.results.clear()


def _parameter_spec(param) -> dict[str, Any]:
    """Default, range or choices, and help of a parameter, for clients that show them."""
    if isinstance(param, ChoiceParam):
        return {"default": param.choices[0], "choices": list(param.choices), "help": param.help}
    described = {"default": param.declared(), "help": param.help}
    if isinstance(param, (IntParam, FloatParam)):
        described.update(min=param.low, max=param.high)
    return described
