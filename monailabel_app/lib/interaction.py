"""Interactive correction on the server: annotator marks on the image grid → known voxels on the model grid.

A request of the ``medsegdiff`` infer task may carry DeepEdit-style clicks (``foreground`` / ``background``:
``[i, j, k]`` voxels of the image that was sent) and a scribble volume ``label_in`` on the image grid (MONAI
Label's uploaded ``label`` file) with the values of :data:`LABEL_IN_VALUES`. The marks become a
:class:`~medsegdiff.interaction.KnownRegion` on the model grid (clicks: balls of ``click_radius`` model voxels;
scribbles: their voxels), which the sampler keeps (RePaint-style conditioning). On the image grid
the result then gets the marked class on exactly the marked voxels.

Results are cached (:class:`ResultCache`) per image, checkpoint, seed and sampler settings together with their
marks, so that the next request for that image re-samples only around the marks that changed
(:func:`changed_marks`) and keeps the rest (marks already served, as after an undo, give that result back): a 2D network the slices holding a change (:func:`medsegdiff.interaction.slices_holding`), a
3D network the sliding windows overlapping the box of the changed voxels.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImage

from medsegdiff.interaction import UNKNOWN, click_reach_hints, marks_to_labels

from .params import InvalidParameter

__all__ = [
    "LABEL_IN_VALUES",
    "ImageMarks",
    "read_marks",
    "model_labels",
    "model_hints",
    "changed_marks",
    "changed_hints",
    "CachedResult",
    "ResultCache",
    "MarksOnImageGrid",
    "interaction_info",
]

LABEL_IN_VALUES = {"unknown": 0, "foreground": 1, "background": 2}
"""Values of a ``label_in`` scribble volume."""


@dataclass
class ImageMarks:
    """Marks as (N, 3) integer voxel indices of the image that was sent."""

    foreground: np.ndarray
    background: np.ndarray
    scribble_foreground: np.ndarray
    scribble_background: np.ndarray

    def count(self) -> dict[str, int]:
        """Marked voxels of each kind."""
        kinds = ("foreground", "background", "scribble_foreground", "scribble_background")
        return {k: len(getattr(self, k)) for k in kinds}

    def is_empty(self) -> bool:
        return not any(self.count().values())


def _voxels(points: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(points, dtype=np.int64).reshape(-1, 3)


def read_marks(values: Mapping[str, Any], label_in: str | None, spatial_shape: Sequence[int]) -> ImageMarks:
    """Check the parsed clicks against the image's shape and read the ``label_in`` scribbles.

    Args:
        values: the parsed request (``foreground``, ``background``: lists of [i, j, k]).
        label_in: path of the uploaded scribble volume, or None.
        spatial_shape: the shape of the image that was sent.

    Raises:
        InvalidParameter: a point outside the image, or a ``label_in`` of another shape or with other values.
    """
    shape = [int(s) for s in spatial_shape]
    for name in ("foreground", "background"):
        for n, point in enumerate(values[name]):
            if any(not 0 <= c < s for c, s in zip(point, shape)):
                raise InvalidParameter(name, f"{name}[{n}] = {point} lies outside the image of shape {shape}")
    scribble_fg = scribble_bg = _voxels([])
    if label_in is not None:
        scribbles = np.asarray(LoadImage(image_only=True)(label_in))
        scribbles = scribbles[..., 0] if scribbles.ndim == 4 and scribbles.shape[-1] == 1 else scribbles
        if list(scribbles.shape) != shape:
            raise InvalidParameter("label_in", f"label_in has shape {list(scribbles.shape)}, the image {shape}")
        found = sorted(int(v) for v in np.unique(scribbles))
        allowed = sorted(LABEL_IN_VALUES.values())
        if not set(found) <= set(allowed):
            raise InvalidParameter(
                "label_in", f"label_in values must be {LABEL_IN_VALUES} (allowed {allowed}), found {found}"
            )
        scribble_fg = np.argwhere(scribbles == LABEL_IN_VALUES["foreground"])
        scribble_bg = np.argwhere(scribbles == LABEL_IN_VALUES["background"])
    return ImageMarks(_voxels(values["foreground"]), _voxels(values["background"]), scribble_fg, scribble_bg)


def _to_model_voxels(voxels: np.ndarray, image_to_model: np.ndarray, model_shape: Sequence[int]) -> np.ndarray:
    """Image voxel indices → the nearest model-grid voxels (clipped to the grid)."""
    if not len(voxels):
        return voxels
    homogeneous = np.concatenate([voxels, np.ones((len(voxels), 1))], axis=1).T
    mapped = np.rint((image_to_model @ homogeneous)[:3].T).astype(np.int64)
    return np.clip(mapped, 0, np.asarray(model_shape) - 1)


def _image_to_model(image_affine: np.ndarray, model_affine: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.asarray(model_affine, dtype=np.float64)) @ np.asarray(image_affine, np.float64)


def model_labels(
    marks: ImageMarks,
    image_affine: np.ndarray,
    model_affine: np.ndarray,
    model_shape: Sequence[int],
    radius: int,
    marked_class: int,
) -> torch.Tensor:
    """The marks as a (1, 1, *model_shape) label map on the model grid (:data:`UNKNOWN` where unmarked).

    Args:
        image_affine: voxel → world of the image that was sent.
        model_affine: voxel → world of the model grid.
        radius: click ball radius in model voxels (a 2D network re-samples the slices a ball crosses).
    """
    image_to_model = _image_to_model(image_affine, model_affine)
    grid = [int(s) for s in model_shape]

    def scribble(voxels: np.ndarray) -> torch.Tensor | None:
        if not len(voxels):
            return None
        mask = np.zeros(grid, dtype=bool)
        mask[tuple(_to_model_voxels(voxels, image_to_model, grid).T)] = True
        return torch.from_numpy(mask)

    labels = marks_to_labels(
        grid,
        foreground=_to_model_voxels(marks.foreground, image_to_model, grid).tolist(),
        background=_to_model_voxels(marks.background, image_to_model, grid).tolist(),
        radius=radius,
        scribble_foreground=scribble(marks.scribble_foreground),
        scribble_background=scribble(marks.scribble_background),
        foreground_class=marked_class,
    )
    return labels[None]


def model_hints(
    marks: ImageMarks,
    image_affine: np.ndarray,
    model_affine: np.ndarray,
    model_shape: Sequence[int],
    radius: int,
    reach: int,
    slice_axis: int,
    marked_class: int,
    label: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The clicks' hints for a guided 2D network, (1, 1, *model_shape) (:func:`click_reach_hints`, along the
    errors of ``label``; background clicks over foreground ones where they overlap, as for the marks); None without
    clicks or with ``reach`` 0."""
    if reach == 0 or not (len(marks.foreground) or len(marks.background)):
        return None
    image_to_model, grid = _image_to_model(image_affine, model_affine), [int(s) for s in model_shape]
    clicks = [(p, marked_class) for p in _to_model_voxels(marks.foreground, image_to_model, grid).tolist()]
    clicks += [(p, 0) for p in _to_model_voxels(marks.background, image_to_model, grid).tolist()]
    return click_reach_hints(grid, clicks, radius, reach, slice_axis, label)[None]


def changed_hints(old: torch.Tensor | None, new: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Between two hint maps (``None``: no hints): the voxels whose hint differs (their slices are re-sampled) and
    those whose hint was taken away or changed (the locality rule reverts what touches them, as for a mark taken
    away); None when neither has hints."""
    if old is None and new is None:
        return None
    blank = torch.full_like(new if new is not None else old, UNKNOWN)
    old, new = (blank if h is None else h for h in (old, new))
    differs = changed_marks(old, new)
    return differs, differs & (old != UNKNOWN)


def changed_marks(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The voxels whose mark (class or :data:`UNKNOWN`) differs between two mark maps of the same grid (bool)."""
    if old.shape != new.shape:
        raise ValueError(f"mark maps of shapes {list(old.shape)} and {list(new.shape)}")
    return old.to(new.dtype) != new


@dataclass
class CachedResult:
    """A result on the model grid (``probs``, ``entropy``, ``variance``: (1, ch, *shape), CPU), the marks it
    was sampled with ((1, 1, *shape) mark map, int16; its hints for a guided 2D network, if any) and, once
    post-processed, its probabilities and uncertainty on the image grid (``pred``, ``uncertainty``, before the
    marks are painted in), so that the next interaction resamples only what changed."""

    outputs: dict[str, torch.Tensor]
    marks: torch.Tensor
    image_outputs: dict[str, torch.Tensor] | None = None
    hints: torch.Tensor | None = None
    click_settings: Hashable = 0
    """How its clicks changed the result besides the marks (``(click_spread, click_doubt)``; 0: no marks)."""
    image_margin: int | None = None
    """The ``uncertainty_margin`` its image-grid uncertainty was widened by (another margin resamples it all)."""

    @property
    def nbytes(self) -> int:
        # what the image-grid tensors keep alive: a view of one resampling (the probabilities) holds all of it
        image = sum(v.untyped_storage().nbytes() for v in (self.image_outputs or {}).values())
        hints = 0 if self.hints is None else self.hints.nbytes
        return self.marks.nbytes + hints + image + sum(v.nbytes for v in self.outputs.values())


def _marks_digest(marks: torch.Tensor, hints: torch.Tensor | None = None, click_settings: Hashable = 0) -> tuple:
    digest = hashlib.sha1(marks.to(torch.int16).cpu().numpy().tobytes())
    if hints is not None:
        digest.update(b"hints" + hints.to(torch.int16).cpu().numpy().tobytes())
    if click_settings:  # the same marks with another click_spread or click_doubt are another result
        digest.update(f"settings{click_settings!r}".encode())
    return tuple(marks.shape), digest.hexdigest()


class ResultCache:
    """A thread-safe LRU of :class:`CachedResult` by request key (image, checkpoint, seed, sampler), each key with
    the results of its recent mark maps: an undo (or a redo) asks for marks already served and gets that result
    back exactly, without sampling.

    Args:
        max_keys: images (with their settings) kept.
        max_bytes: the most the results may hold together; the least recently used go first, the newest stays.
    """

    def __init__(self, max_keys: int = 4, max_bytes: int = 1 << 30) -> None:
        if max_keys < 1 or max_bytes < 1:
            raise ValueError(f"max_keys and max_bytes must be >= 1, got {max_keys} and {max_bytes}")
        self.max_keys, self.max_bytes = max_keys, max_bytes
        self._entries: OrderedDict[Hashable, OrderedDict[tuple, CachedResult]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, marks: torch.Tensor | None = None, hints: torch.Tensor | None = None,
            click_settings: Hashable = 0) -> CachedResult | None:
        """The result served with exactly ``marks`` (and ``hints``, ``click_settings``) for ``key`` if kept, else
        (or without ``marks``) the latest whose clicks had the same ``click_settings`` or that has no marks (else
        the latest)."""
        with self._lock:
            history = self._entries.get(key)
            if not history:
                return None
            self._entries.move_to_end(key)
            exact = history.get(_marks_digest(marks, hints, click_settings)) if marks is not None else None
            if exact is not None:
                return exact
            # a result whose clicks spread or flagged otherwise is no start for these: the latest alike or with no marks
            alike = (e for e in reversed(history.values())
                     if e.click_settings == click_settings or bool((e.marks == UNKNOWN).all()))
            return next(alike, next(reversed(history.values())))

    def exact(self, key: Hashable, marks: torch.Tensor, hints: torch.Tensor | None = None) -> CachedResult | None:
        """The result served with exactly ``marks`` (and ``hints``) for ``key``, or None when not kept."""
        with self._lock:
            return self._entries.get(key, {}).get(_marks_digest(marks, hints))

    def put(self, key: Hashable, entry: CachedResult) -> None:
        """Keep ``entry`` as the latest result of ``key``."""
        with self._lock:
            history = self._entries.setdefault(key, OrderedDict())
            digest = _marks_digest(entry.marks, entry.hints, entry.click_settings)
            history.pop(digest, None)
            history[digest] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
            while self._nbytes() > self.max_bytes and sum(map(len, self._entries.values())) > 1:
                oldest_key = next(iter(self._entries))
                oldest = self._entries[oldest_key]
                oldest.popitem(last=False)
                if not oldest:
                    del self._entries[oldest_key]

    def _nbytes(self) -> int:
        return sum(e.nbytes for history in self._entries.values() for e in history.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class MarksOnImageGrid:
    """Post-transform: on the image grid, every marked voxel gets the marked class, a one-hot probability (when
    the request asked for the probabilities) and zero uncertainty (the resampling from the model grid would
    otherwise blur a mark's edge)."""

    def __init__(self, marks: ImageMarks, marked_class: int) -> None:
        self.marks, self.marked_class = marks, marked_class

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for voxels, value in (
            (np.concatenate([self.marks.foreground, self.marks.scribble_foreground]), self.marked_class),
            (np.concatenate([self.marks.background, self.marks.scribble_background]), 0),
        ):
            if not len(voxels):
                continue
            index = (slice(None), *torch.as_tensor(voxels).T)
            d["pred"][index] = value
            d["uncertainty"][index] = 0.0
            if "probability" in d:  # asked for (output_probability)
                d["probability"][index] = 0.0
                if value:
                    d["probability"][(value - 1, *index[1:])] = 1.0
        return d


def interaction_info(radius_default: int, reach_default: int, spread_default: int, doubt_default: bool) -> dict[str, Any]:
    """What ``/info`` says about the interaction loop."""
    return {
        "points": "foreground / background: [[i, j, k], ...] voxels of the image that was sent",
        "label_in": {"values": dict(LABEL_IN_VALUES), "grid": "the image that was sent (same shape)"},
        "click_radius_default": radius_default,
        "click_reach_default": reach_default,
        "click_spread_default": spread_default,
        "click_doubt_default": doubt_default,
        "spread": "the boundary also moves one voxel towards a click's class within click_spread voxels of it, "
        "where the previous result's ensemble found that class at least as likely as at the voxels the click "
        "corrected and the image's intensity is within theirs (medsegdiff.boundary_spread)",
        "doubt": "with click_doubt, the uncertainty of an interaction's result is raised to its maximum on the "
        "voxels anywhere like the ones the click corrected: just outside the region of the clicked class, at least "
        "as likely of it in the previous result and as bright; the label does not change (medsegdiff.boundary_spread)",
        "hints": "a 2D network with guidance channels also reads each click's disc on click_reach slices each side "
        "beyond its ball, as guidance only (not forced); those slices are re-sampled too",
        "conditioning": "RePaint-style: marked voxels of every x_t are replaced by q(x_t | marked mask)",
        "resampled": "only around the marks that changed since the last request for this image, checkpoint, seed "
        "and sampler settings: 2D networks, along each of their views (checkpoint.views), the slices holding a "
        "change (resampled_slices, by axis), pooled with the kept slices of each view; 3D networks the sliding "
        "windows overlapping the box of the changed voxels (resampled_box, resampled_windows)",
    }
