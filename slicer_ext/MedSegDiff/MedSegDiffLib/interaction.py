"""Interactive correction requests: the annotator's clicks and scribbles → what the server's infer task reads.

The server takes ``foreground`` / ``background`` lists of ``[i, j, k]`` voxels of the image it segments (as
DeepEdit sends them) and an optional ``label_in`` scribble volume on that image's grid whose values it declares
in ``/info`` (``models[<name>]["interaction"]["label_in"]["values"]``). Arrays here are indexed ``[k, j, i]``
like Slicer's and SimpleITK's. :class:`InteractionHistory` keeps every interaction, so the last one can be
undone: each request sends all marks still standing.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from .conversions import write_image

__all__ = ["DEFAULT_LABEL_IN_VALUES", "label_in_values", "ijk_point", "Interaction", "InteractionHistory"]

DEFAULT_LABEL_IN_VALUES = {"unknown": 0, "foreground": 1, "background": 2}
"""What the MedSegDiff server declares; a server's own ``/info`` wins (:func:`label_in_values`)."""


def label_in_values(model_info):
    """The ``label_in`` values a model entry of ``/info`` declares (the defaults when it declares none)."""
    declared = ((model_info or {}).get("interaction") or {}).get("label_in") or {}
    return dict(declared.get("values") or DEFAULT_LABEL_IN_VALUES)


def ijk_point(ijk, shape_kji):
    """A continuous IJK position (from RAS via the volume's RAS→IJK matrix) → the ``[i, j, k]`` voxel it lies in.

    Raises:
        ValueError: the position lies outside the image of shape ``shape_kji``.
    """
    if len(ijk) != 3:
        raise ValueError(f"a point needs 3 coordinates (i, j, k), got {list(ijk)}")
    voxel = [int(np.floor(float(c) + 0.5)) for c in ijk]
    size_ijk = list(reversed([int(s) for s in shape_kji]))
    if any(not 0 <= c < s for c, s in zip(voxel, size_ijk)):
        raise ValueError(f"point {voxel} (IJK) lies outside the image of size {size_ijk} (I, J, K)")
    return voxel


@dataclass
class Interaction:
    """One annotator action: clicks of either kind and scribbles (bool masks ``[k, j, i]``), any of them empty.

    ``tag`` is what the client remembers about it (e.g. the control points it came from, to remove on undo).
    """

    foreground_points: Sequence[Sequence[int]] = ()
    background_points: Sequence[Sequence[int]] = ()
    foreground: Optional[np.ndarray] = None
    background: Optional[np.ndarray] = None
    tag: Any = None


class InteractionHistory:
    """The interactions on one image, in order, with undo of the last.

    Args:
        shape_kji: the shape of the image the server segments (``[k, j, i]``).
    """

    def __init__(self, shape_kji):
        self.shape_kji = tuple(int(s) for s in shape_kji)
        self.interactions: List[Interaction] = []

    def copy(self):
        """A history with the same interactions (a candidate to change and keep once the server answered)."""
        other = InteractionHistory(self.shape_kji)
        other.interactions = list(self.interactions)
        return other

    def add(self, positive=(), negative=(), foreground=None, background=None, tag=None):
        """Clicks (continuous IJK positions) and scribbles (bool masks) as ONE interaction; undone together.

        Returns:
            The ``Interaction``, or None when it marks nothing (nothing is added then).

        Raises:
            ValueError: a point outside the image, or a mask of another shape than the image.
        """
        points = [[ijk_point(p, self.shape_kji) for p in points] for points in (positive, negative)]
        for name, mask in (("foreground", foreground), ("background", background)):
            if mask is not None and tuple(np.shape(mask)) != self.shape_kji:
                raise ValueError(f"{name} scribble of shape {list(np.shape(mask))}, the image has {list(self.shape_kji)}")
        masks = [None if m is None or not np.any(m) else np.asarray(m, dtype=bool) for m in (foreground, background)]
        if not (points[0] or points[1] or masks[0] is not None or masks[1] is not None):
            return None
        interaction = Interaction(points[0], points[1], masks[0], masks[1], tag)
        self.interactions.append(interaction)
        return interaction

    def add_clicks(self, positive, points_ijk):
        """Clicks (continuous IJK positions) that say "this is the segment" (positive) or "this is not"."""
        return self.add(positive=points_ijk) if positive else self.add(negative=points_ijk)

    def add_scribble(self, foreground=None, background=None):
        """Scribbled voxels (bool masks ``[k, j, i]`` of the image's shape) of the segment and of the background."""
        return self.add(foreground=foreground, background=background)

    def undo(self):
        """Drop the last interaction; returns it (None when there is none)."""
        return self.interactions.pop() if self.interactions else None

    def is_empty(self):
        return not self.interactions

    def points(self, kind):
        """The ``[i, j, k]`` clicks still standing of one kind (``foreground`` or ``background``)."""
        return [list(p) for i in self.interactions for p in getattr(i, f"{kind}_points")]

    def scribbled(self, kind):
        """Bool mask ``[k, j, i]`` of the voxels scribbled as ``kind`` (``foreground`` / ``background``) by any
        interaction still standing, before a later scribble of the other kind overwrites them."""
        mask = np.zeros(self.shape_kji, dtype=bool)
        for interaction in self.interactions:
            if getattr(interaction, kind) is not None:
                mask |= getattr(interaction, kind)
        return mask

    def label_in(self, values=None):
        """The scribbles as one ``label_in`` array ``[k, j, i]`` (a later scribble wins), or None without any."""
        scribbles = [i for i in self.interactions if i.foreground is not None or i.background is not None]
        if not scribbles:
            return None
        values = values or DEFAULT_LABEL_IN_VALUES
        array = np.full(self.shape_kji, values["unknown"], dtype=np.uint8)
        for scribble in scribbles:
            for name in ("foreground", "background"):
                mask = getattr(scribble, name)
                if mask is not None:
                    array[mask] = values[name]
        return array

    def request(self, params=None):
        """The infer parameters with the clicks still standing (``foreground`` / ``background``)."""
        return {**(params or {}), "foreground": self.points("foreground"), "background": self.points("background")}

    def write_label_in(self, ijk_to_lps, path, values=None):
        """Write the scribbles on the image's grid (``ijk_to_lps`` from ``read_geometry``); None without any."""
        array = self.label_in(values)
        return None if array is None else write_image(array, ijk_to_lps, path)
