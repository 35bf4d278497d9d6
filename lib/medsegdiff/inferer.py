"""Whole-volume inference: a MONAI ``Inferer`` that runs the diffusion ensemble over a 3D volume.

A 2D network runs slice by slice (slices batched, each slice's global index seeding its noise, neighbour
slices stacked as channels for a 2.5D network; a network trained on several views runs along each, its members shared
out over them); a 3D network runs on sliding windows of its training patch size
(MONAI ``SlidingWindowInferer``, Gaussian blending; each window's position seeds its noise). A result is
therefore the same for any slice batch size or member chunking. Both return the fused probabilities, the label
and the uncertainty of the whole volume.

Interactive correction: ``known`` (annotator marks on the model grid, :class:`~medsegdiff.interaction.KnownRegion`
of the whole batch) conditions the chains; with ``previous`` (an earlier result of the same volume, seed and
sampler) and ``slices`` a 2D network re-samples only those slices and keeps the rest of ``previous``; with
``previous`` and ``region`` (what changed) a 2D network re-samples the slices holding it along each of its views, a
3D network the windows around it (:mod:`medsegdiff.windows`).

A network of several views keeps each view's outputs under :data:`VIEW_OUTPUTS`: a view's slice that holds no mark
comes out of a re-sampling as before, so re-sampling along each view the slices the marks cross and pooling with the
kept outputs of the rest gives the result of a whole run with the marks (to float rounding), at the cost of those
slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_tensor
from torch import nn
from tqdm import tqdm

from .fusion import probabilities_to_labels
from .interaction import UNKNOWN, KnownRegion, slices_holding
from .sampling import EnsembleSampler
from .uncertainty import predictive_entropy
from .windows import Box, Resampled, WindowPlan, padding, region_box

__all__ = [
    "MedSegDiffInferer", "RESULT_KEYS", "VIEW_OUTPUTS", "member_shares", "output_keys", "slice_stack",
    "pool_views",
]

RESULT_KEYS = ("probs", "entropy", "variance")
"""The per-voxel outputs of a run (besides ``label``, derived from ``probs``): what a partial re-sampling keeps or
replaces, and what an interaction's cached result holds."""

RESAMPLE_BATCH_SIZE = 8
"""Slices per batch at least when re-sampling some slices (a click's ball crosses 5 at radius 2): one pass for
them all, several times faster on a CPU than passes of 2 slices."""

VIEW_OUTPUTS = "view_outputs"
"""Key of a result of several views holding each view's :data:`RESULT_KEYS` outputs before pooling, stacked on the
channel axis (B, V * (C + 2), *spatial), view by view in the order of ``views``: what re-sampling along each view
needs from a previous result."""


def member_shares(members: int, views: int) -> list[list[int]]:
    """The member indices each of ``views`` views runs: member m goes to view m % views (5 members over 3 views:
    [0, 3], [1, 4], [2]); a view may get none when there are fewer members than views."""
    if members < 1 or views < 1:
        raise ValueError(f"members and views must be >= 1, got {members} and {views}")
    return [list(range(v, members, views)) for v in range(views)]


def output_keys(outputs: dict[str, Any]) -> list[str]:
    """The keys of ``outputs`` a partial re-sampling keeps or replaces: :data:`RESULT_KEYS` and, for a result of
    several views, :data:`VIEW_OUTPUTS`."""
    return [*RESULT_KEYS, *([VIEW_OUTPUTS] if VIEW_OUTPUTS in outputs else [])]


def _stack_views(results: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([r[key] for r in results for key in RESULT_KEYS], dim=1)


def _split_views(stacked: torch.Tensor, count: int) -> list[dict[str, torch.Tensor]]:
    per_view = stacked.shape[1] // count
    if per_view * count != stacked.shape[1] or per_view < 3:
        raise ValueError(f"{VIEW_OUTPUTS} of {stacked.shape[1]} channels does not hold {count} views' outputs")
    views = stacked.split(per_view, dim=1)
    return [dict(zip(RESULT_KEYS, view.split([per_view - 2, 1, 1], dim=1))) for view in views]


def slice_stack(volume: torch.Tensor, indices: Sequence[int], context_slices: int) -> torch.Tensor:
    """Slices ``indices`` of ``volume`` (C, S, H, W) with ``context_slices`` neighbours per side as channels.

    Neighbours beyond the first/last slice repeat the edge slice. Returns (len(indices), C * (2k + 1), H, W),
    channels ordered slice-major (s − k … s + k), each slice's C channels together.
    """
    last = volume.shape[1] - 1
    offsets = range(-context_slices, context_slices + 1)
    picks = torch.tensor([[min(max(s + o, 0), last) for o in offsets] for s in indices], device=volume.device)
    stacked = volume[:, picks]  # (C, n, 2k+1, H, W)
    return stacked.permute(1, 2, 0, 3, 4).reshape(len(indices), -1, *volume.shape[2:])


def pool_views(results: Sequence[dict[str, torch.Tensor]], members: Sequence[int]) -> dict[str, torch.Tensor]:
    """One ensemble from the results of several views, view v with ``members[v]`` members: probabilities are the
    member-weighted mean (the soft mean of all members when each view fused by mean), the entropy is that of the
    pooled mean, the variance the pooled variance across all members (within-view variance plus the spread of the
    views' means, per class, then averaged over classes as :func:`~medsegdiff.uncertainty.member_variance` does)."""
    weights = torch.tensor(members, dtype=torch.float64) / sum(members)
    probs = sum(float(w) * r["probs"] for w, r in zip(weights, results))
    spread = sum(float(w) * (r["variance"] + (r["probs"] - probs).pow(2).mean(dim=1, keepdim=True))
                 for w, r in zip(weights, results))
    return {"probs": probs, "entropy": predictive_entropy(probs), "variance": spread}


class MedSegDiffInferer(Inferer):
    """Segments a (B, in_channels, H, W, D) volume with an ensemble of diffusion chains.

    Args:
        sampler: the ensemble sampler (steps, members, fusion).
        seed: the seed every chain's noise derives from (with its member index and slice or window position).
        slice_axis: spatial axis (0, 1 or 2) a 2D network slides over.
        views: a 2D network trained on slices along several axes runs along each of these (e.g. ``(2, 1, 0)``):
            member m samples along ``views[m % len(views)]`` (its noise from its own index m; fewer members than
            views use the first views), and the views' results are pooled as one ensemble (:func:`pool_views`),
            each view's kept under :data:`VIEW_OUTPUTS`. Marks condition every view; a partial re-sampling
            (``region``) runs each view on the slices holding a changed voxel and pools with the kept outputs of
            its other slices. ``None``: ``slice_axis`` alone.
        slice_batch_size: slices per batch for a 2D network (does not change the result). The default, 16, serves
            the CPU as well as a GPU: on 2 CPU cores a whole Colin27 head through the infer task took 7.9-9.1 s
            against 10.0-13.1 s in passes of 2 slices, at the same peak memory (fresh processes, alternated).
        roi_size: window size for a 3D network (defaults to the network's training size).
        overlap: sliding-window overlap for a 3D network.
        progress: show a tqdm bar.

    Returns from ``__call__`` a dict with ``probs`` (B, C, …), ``label`` (B, 1, …), ``entropy`` and
    ``variance`` (B, 1, …) and, along several views, :data:`VIEW_OUTPUTS`; ``nfe`` holds the network evaluations
    spent (batched forward passes, summed); after a partial re-sampling, ``resampled_slices`` the slices a 2D
    network re-sampled (by axis) and ``resampled`` the windows and voxels a 3D network sampled
    (:class:`~medsegdiff.windows.Resampled`).
    """

    def __init__(
        self,
        sampler: EnsembleSampler,
        seed: int = 0,
        slice_axis: int = 2,
        slice_batch_size: int = 16,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        progress: bool = False,
        views: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        views = (slice_axis,) if views is None else tuple(int(v) for v in views)
        if not views or len(set(views)) != len(views) or not set(views) <= {0, 1, 2}:
            raise ValueError(f"views must be distinct axes among 0, 1, 2, got {views}")
        if slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be >= 1, got {slice_batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.sampler = sampler
        self.seed = seed
        self.slice_axis = slice_axis
        self.views = views
        self.slice_batch_size = slice_batch_size
        self.roi_size = roi_size
        self.overlap = overlap
        self.progress = progress
        self.nfe = 0
        self.resampled: Resampled | None = None
        self.resampled_slices: dict[int, list[int]] | None = None

    def _sample(
        self, network: nn.Module, images: torch.Tensor, ids: Sequence[int], known: KnownRegion | None = None,
        members: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        result = self.sampler(network, images, seed=self.seed, sample_ids=ids, known=known, members=members)
        self.nfe += result.nfe
        return {key: getattr(result, key) for key in RESULT_KEYS}

    def _slices(
        self,
        volume: torch.Tensor,
        network: nn.Module,
        known: KnownRegion | None = None,
        previous: dict[str, torch.Tensor] | None = None,
        only: Sequence[int] | None = None,
        axis: int | None = None,
        members: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """2D network: the slices of every volume along ``axis`` (default ``slice_axis``), batched; slice s of
        volume b has sample id b * S + s; ``members``: the members to run (default all).

        ``only`` (with ``previous``): re-sample these slices (of every volume), in batches of at least
        :data:`RESAMPLE_BATCH_SIZE` slices; the rest come from ``previous``. Their noise is that of a full run, so
        they equal a full run's slices to float rounding (~1e-6; batching rounds the last bit differently).
        """
        axis = self.slice_axis if axis is None else axis
        slices = volume.movedim(2 + axis, 2)  # (B, C, S, h, w)
        marks = None if known is None else known.apply(lambda t: t.movedim(2 + axis, 2))  # (B, 1, S, h, w)
        count = slices.shape[2]
        context = int(network.config.get("context_slices", 0))
        jobs = [(b, s) for b in range(slices.shape[0]) for s in range(count)]
        size = self.slice_batch_size
        result = {}
        if only is not None:
            self.resampled_slices = {**(self.resampled_slices or {}), axis: sorted(set(only))}
            wanted = set(only)
            jobs = [(b, s) for b, s in jobs if s in wanted]
            size = max(size, RESAMPLE_BATCH_SIZE)
            result = {k: previous[k].to(volume.device).movedim(2 + axis, 2).clone() for k in RESULT_KEYS}
        batches = [jobs[first : first + size] for first in range(0, len(jobs), size)]
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in RESULT_KEYS}
        for batch in tqdm(batches, disable=not self.progress):
            images = torch.cat([slice_stack(slices[b], [s], context) for b, s in batch])
            batch_known = None if marks is None else marks.apply(lambda t: torch.stack([t[b, :, s] for b, s in batch]))
            out = self._sample(network, images, [b * count + s for b, s in batch], batch_known, members)
            for key in RESULT_KEYS:
                if only is None:
                    parts[key].append(out[key])
                else:
                    for (b, s), value in zip(batch, out[key]):
                        result[key][b, :, s] = value
        for key, chunks in parts.items():
            if only is None:
                flat = torch.cat(chunks)  # (B * S, ch, h, w)
                result[key] = flat.reshape(slices.shape[0], count, *flat.shape[1:]).movedim(1, 2)
        return {key: value.movedim(2, 2 + axis) for key, value in result.items()}

    def _views(
        self,
        volume: torch.Tensor,
        network: nn.Module,
        known: KnownRegion | None = None,
        previous: dict[str, torch.Tensor] | None = None,
        region: torch.Tensor | Box | None = None,
    ) -> dict[str, torch.Tensor]:
        """2D network along every axis of ``views``, each with its share of the members, pooled; with
        ``previous``, each view re-samples the slices holding a voxel of ``region`` (a mask or a box) and keeps
        the rest of its own previous outputs."""
        count = len(self.views)
        used = [(axis, share) for axis, share in zip(self.views, member_shares(self.sampler.num_ensemble, count)) if share]
        earlier: list[dict[str, torch.Tensor] | None] = [None] * len(used)
        if previous is not None:
            if VIEW_OUTPUTS not in previous:
                raise ValueError(f"re-sampling a network of {count} views needs previous[{VIEW_OUTPUTS!r}] (a result of "
                                 "several views)")
            earlier = _split_views(previous[VIEW_OUTPUTS].to(volume.device), len(used))
        results = []
        for (axis, share), before in zip(used, earlier):
            only = None if before is None else _slices_of(region, axis)
            results.append(self._slices(volume, network, known, before, only, axis=axis, members=share))
        return {**pool_views(results, [len(share) for _, share in used]), VIEW_OUTPUTS: _stack_views(results)}

    def _windows(
        self,
        volume: torch.Tensor,
        network: nn.Module,
        known: KnownRegion | None = None,
        previous: dict[str, torch.Tensor] | None = None,
        box: Box | None = None,
    ) -> dict[str, torch.Tensor]:
        """3D network: sliding windows; a window's start position (and volume index) is its sample id.

        With ``previous``: only the windows overlapping ``box`` (of every volume) are sampled, the others give
        zeros without a network call; the voxels that sampled windows alone cover replace those of ``previous``
        (:mod:`medsegdiff.windows`). ``self.resampled`` says what was sampled.
        """
        roi = tuple(int(r) for r in (self.roi_size or network.config["spatial_size"]))
        size = tuple(volume.shape[2:])
        window_inferer = SlidingWindowInferer(
            roi_size=roi, sw_batch_size=1, overlap=self.overlap, mode="gaussian", progress=self.progress, with_coord=True
        )
        labels = None
        if known is not None:  # on the padded grid the windows index (a volume smaller than a window is padded)
            pad = [(p, max(r - s, 0) - p) for p, s, r in zip(padding(size, roi), size, roi)]
            flat = [n for before_after in reversed(pad) for n in before_after]
            labels = known.apply(lambda t: F.pad(t, flat, value=UNKNOWN))
        box = box if previous is not None else None
        outputs, plans, exact = [], [], []
        for b in range(volume.shape[0]):
            plan = WindowPlan(box, size, roi)

            def predict(window: torch.Tensor, locations: Sequence[Sequence[slice]], b: int = b, plan=plan) -> dict:
                if not plan.wants(locations[0][-3:]):  # sw_batch_size 1: one window per call
                    zeros = torch.zeros(1, 1, *window.shape[2:], device=window.device)
                    return {"probs": zeros.repeat(1, network.num_classes, 1, 1, 1), "entropy": zeros, "variance": zeros}
                ids = [((b * size[0] + loc[-3].start) * size[1] + loc[-2].start) * size[2] + loc[-1].start for loc in locations]
                marks = None if labels is None else labels.apply(
                    lambda t: torch.stack([t[b][(slice(None), *loc[-3:])] for loc in locations]))
                return self._sample(network, window, ids, marks)

            out = window_inferer(volume[b : b + 1], predict)
            plans.append(plan)
            exact.append(plan.exact().to(volume.device))
            if previous is not None:
                out = {k: torch.where(exact[-1], out[k], previous[k][b : b + 1].to(out[k])) for k in RESULT_KEYS}
            outputs.append(out)
        windows = sum(p.resampled for p in plans), sum(p.windows for p in plans)
        self.resampled = Resampled(box, *windows, torch.stack(exact)[:, None].cpu())
        return {key: torch.cat([o[key] for o in outputs]) for key in RESULT_KEYS}

    def __call__(
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        *args,
        known: KnownRegion | None = None,
        previous: dict[str, torch.Tensor] | None = None,
        slices: Sequence[int] | None = None,
        region: torch.Tensor | Sequence[Any] | None = None,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        """Segment ``inputs`` (B, C, H, W, D).

        Args:
            known: marks on the grid of ``inputs`` (B, 1, H, W, D) the result must respect.
            previous: an earlier result of the same inputs, seed and sampler (``probs``, ``entropy``,
                ``variance``), kept outside what ``slices`` or ``region`` re-sample.
            slices: 2D network of one view: indices along the slice axis to re-sample (needs ``previous``).
            region: what to re-sample (needs ``previous``): a bool mask of the changed voxels ((B, 1, H, W, D) or
                (H, W, D), the union over the batch) or a box, one (start, stop) per spatial axis. A 2D network
                re-samples, along each of its views, the slices holding a voxel of the mask (of the box). A 3D
                network samples the windows overlapping the mask's bounding box; the voxels they alone cover, the
                box among them, are bit-identical to a full run (``resampled.mask``), the rest is ``previous``.
                An empty mask re-samples nothing.
        """
        if inputs.ndim != 5:
            raise ValueError(f"inputs must be a (B, C, H, W, D) volume, got shape {tuple(inputs.shape)}")
        box = self._check_partial(inputs, network, previous, slices, region)
        if known is not None and tuple(known.labels.shape[2:]) != tuple(inputs.shape[2:]):
            raise ValueError(f"marks of shape {list(known.labels.shape[2:])} for inputs of shape {list(inputs.shape[2:])}")
        self.nfe = 0
        self.resampled, self.resampled_slices = None, None
        # plain tensor: MetaTensor's __torch_function__ would slow down every op of every sampling step
        volume = convert_to_tensor(inputs, track_meta=False).float()
        with torch.no_grad():
            changed = region if isinstance(region, torch.Tensor) else box  # a 2D network's slices: of the mask
            if network.spatial_dims == 2 and self._several_views():
                out = self._views(volume, network, known, previous, changed)
            elif network.spatial_dims == 2:
                if region is not None:
                    slices = _slices_of(changed, self.slice_axis)
                whole = (known is None or known.is_empty()) and previous is None  # an automatic result
                out = self._slices(volume, network, known, previous, slices, axis=self.views[0] if whole else None)
            else:
                out = self._windows(volume, network, known, previous, box)
        out["label"] = probabilities_to_labels(out["probs"])
        return out

    def _several_views(self) -> bool:
        """A 2D network runs along several views (more than one member to share out over them)."""
        return len(self.views) > 1 and self.sampler.num_ensemble > 1

    def _check_partial(self, inputs: torch.Tensor, network: nn.Module, previous, slices, region) -> Box | None:
        """Check a partial re-sampling request; returns the box of ``region`` (``()`` when it is empty)."""
        two_d = network.spatial_dims == 2
        if not two_d and slices is not None:
            raise ValueError("re-sampling some slices needs a 2D network; a 3D network re-samples a region=")
        if slices is not None and region is not None:
            raise ValueError("slices and region both given: re-sample either some slices or a region")
        if two_d and slices is not None and self._several_views():
            raise ValueError(f"a network of {len(self.views)} views re-samples a region= (its slices along each view), "
                             "not slices= along one")
        if (previous is None) != (slices is None and region is None):
            raise ValueError("previous and slices or region go together: re-sample the slices or region of a previous result")
        if previous is None:
            return None
        for key in RESULT_KEYS:
            if key not in previous or tuple(previous[key].shape[2:]) != tuple(inputs.shape[2:]) or len(previous[key]) != len(inputs):
                got = list(previous[key].shape) if key in previous else "nothing"
                raise ValueError(f"previous[{key!r}] must be (B, ch, *spatial) of inputs {list(inputs.shape)}, got {got}")
        if region is None:
            return None
        box = region_box(region, inputs.shape[2:])
        return () if box is None else box


def _slices_of(region: torch.Tensor | Box, axis: int) -> list[int]:
    """The indices along ``axis`` of the slices holding a voxel of ``region``: a bool mask ((B, 1, *spatial), the
    union over the batch, or (*spatial)) or a box."""
    if isinstance(region, torch.Tensor):
        mask = region.bool()
        return slices_holding(mask.any(dim=0)[0] if mask.ndim == 5 else mask, axis)
    return list(range(region[axis].start, region[axis].stop)) if region else []
