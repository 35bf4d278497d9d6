"""Which request keys a task reads: typos of declared parameters are refused, other unread keys are reported.

A request reaching a MedSegDiff task holds four kinds of keys:

1. the task's declared parameters (validated by :mod:`lib.params`);
2. keys MONAI Label itself puts into the request or reads (``model``, ``image``, ``label_tag``, …): accepted;
3. keys stock clients send that nothing here reads (the MONAILabel Slicer plugin's ``result_extension``,
   ``result_dtype``, ``client_id``; deepgrow clicks; MONAI's sliding-window options …): accepted and reported;
4. anything else: a near-miss of a declared parameter (see :func:`suggest`) is refused with
   :class:`~lib.params.UnknownParameter` ("did you mean …?"), the rest is reported like 3.

Kinds 2 and 3 are checked before any suggestion is made, so a key a stock client sends is never taken for a typo.
Reported keys are logged once per task and key by :func:`log_ignored`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from monai.utils import damerau_levenshtein_distance

from .params import UnknownParameter

__all__ = ["MONAILABEL_KEYS", "CLIENT_KEYS", "suggest", "unread_keys", "log_ignored"]

logger = logging.getLogger(__name__)

MAX_DISTANCE = 2
"""Edit distance (insertions, deletions, substitutions, transpositions; case-insensitive) of a near-miss."""

# what MONAI Label 0.8.5 (endpoints, MONAILabelApp, BasicInferTask/BasicTrainTask, async tasks, batch infer) puts
# into a request or reads from it ("label": the path of an uploaded label_in)
_MONAILABEL_INFER = {
    "model", "image", "session", "description", "save_label", "label_tag", "timeout", "logging", "skip_writer",
    "image_path", "images", "multi_gpu", "gpus", "max_workers", "label",
}
_MONAILABEL_TRAIN = {
    "model", "gpus", "bundle_path", "run_id", "local_rank", "distributed_backend", "distributed_url", "train_ds",
    "val_ds",
}
_MONAILABEL_SCORING = {"method", "gpus", "bundle_path"}

MONAILABEL_KEYS: dict[str, frozenset[str]] = {
    "infer": frozenset(_MONAILABEL_INFER),
    "train": frozenset(_MONAILABEL_TRAIN),
    "scoring": frozenset(_MONAILABEL_SCORING),
}
"""Per task kind: keys MONAI Label itself adds or reads (accepted, not reported)."""

# what stock clients send that no MedSegDiff task reads: MONAILabelClient adds client_id to every request; the
# MONAILabel Slicer plugin adds result_extension/result_dtype to every infer and sends label_info, roi and slice for
# interactive models (its clicks, foreground/background, are parameters of the infer task here); MONAI Label's
# writer and sample apps read the result_*/restore_label_idx/sliding-window/cache keys, which this app's writer and
# inferer do not use
_CLIENT_COMMON = {"client_id"}
_CLIENT_INFER = {
    "result_extension", "result_dtype", "result_compress", "result_write_to_file", "label_info", "restore_label_idx",
    "labels", "roi", "slice", "reset_state", "selected_label_name",
    "roi_size", "sw_batch_size", "sw_overlap", "model_filename", "largest_cc", "cache_transforms",
    "cache_transforms_in_memory", "cache_transforms_ttl", "location", "size", "level", "tile_size",
    "min_poly_area", "output",
}
_CLIENT_TRAIN = {"train_batch_size", "val_batch_size", "dataset", "dataloader"}  # fixed by the MedSegDiff train task

CLIENT_KEYS: dict[str, frozenset[str]] = {
    "infer": frozenset(_CLIENT_COMMON | _CLIENT_INFER),
    "train": frozenset(_CLIENT_COMMON | _CLIENT_TRAIN),
    "scoring": frozenset(_CLIENT_COMMON),
}
"""Per task kind: keys stock clients send that nothing here reads (accepted, reported as ignored)."""

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def _singular(word: str) -> str:
    for plural, singular in (("ies", "y"), ("ses", "s"), ("s", "")):
        if word.endswith(plural) and len(word) > len(plural) + 1:
            return word[: -len(plural)] + singular
    return word


def _stem(key: str) -> str:
    return "_".join(_singular(part) for part in key.lower().split("_"))


def suggest(key: str, declared: Iterable[str]) -> str | None:
    """The declared name ``key`` most likely misspells, or None.

    A near-miss is, case-insensitively, within :data:`MAX_DISTANCE` edits of a declared name (1 edit for names of
    up to 3 characters, where 2 edits reach almost any short word), or the same name with a word in the plural
    or singular (``num_ensembles``, ``num_inference_step``). The exact declared name is no near-miss of itself.

    Args:
        key: a request key.
        declared: the task's declared parameter names.
    """
    lowered, best, best_distance = key.lower(), None, None
    for name in declared:
        if name == key:
            return None
        limit = MAX_DISTANCE if len(name) > 3 else 1
        distance = damerau_levenshtein_distance(lowered, name.lower())
        if distance > limit and _stem(key) != _stem(name):
            continue
        if best_distance is None or distance < best_distance:
            best, best_distance = name, distance
    return best


def unread_keys(request: Mapping[str, Any], declared: Iterable[str], kind: str) -> list[str]:
    """The keys of ``request`` that nobody reads (sorted).

    Args:
        request: the request (parameters and MONAI Label's own keys).
        declared: the task's declared parameter names.
        kind: ``infer``, ``train`` or ``scoring``.

    Raises:
        UnknownParameter: a key is a near-miss of a declared parameter.
    """
    declared = set(declared)
    ignored = []
    for key in request:
        if key in declared or key in MONAILABEL_KEYS[kind]:
            continue
        if key not in CLIENT_KEYS[kind]:
            suggestion = suggest(key, declared)
            if suggestion is not None:
                raise UnknownParameter(key, suggestion)
        ignored.append(key)
    return sorted(ignored)


def log_ignored(task: str, keys: Iterable[str]) -> None:
    """Log each ignored key once per task and process."""
    with _logged_lock:
        new = [k for k in keys if (task, k) not in _logged]
        _logged.update((task, k) for k in new)
    if new:
        logger.warning("%s: ignored request parameter(s) %s: no task reads them", task, ", ".join(new))
