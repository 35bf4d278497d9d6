"""A MedSegDiff checkpoint as a MONAI bundle, run by ``monai.bundle`` with the infer task's own pipeline.

Export::

    python -m medsegdiff.bundle export monailabel_app/model/medsegdiff_brain_2d.pt bundles/medsegdiff_brain

writes ``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt`` (the checkpoint itself: weights,
network and diffusion configuration, labels, spacing) and ``docs/README.md``. Run, from the bundle folder::

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir IMAGES --output_dir OUT

segments every NIfTI in ``IMAGES`` into ``OUT/<name>_seg.nii.gz`` (uint8, on the image's own grid). The config
uses the same pieces as the MONAI Label app's infer task (:func:`medsegdiff.transforms.inference_transforms`,
:class:`medsegdiff.inferer.MedSegDiffInferer`, :class:`medsegdiff.transforms.ToOriginalGridd`, the same slice
batches), so the same parameters and seed give the same label as the server. ``--num_inference_steps``,
``--num_ensemble``, ``--seed``, ``--sampler``, ``--fusion`` override the defaults. The app serves a bundle
folder as a model with ``--conf <model>_checkpoint <bundle folder>`` (:func:`bundle_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from .atomic import atomic_copy, atomic_write_bytes
from .checkpoint import read_checkpoint, slice_views
from .inferer import MedSegDiffInferer
from .transforms import min_volume_size

__all__ = ["ProbabilityInferer", "bundle_checkpoint", "export_bundle", "inference_config", "main"]

CHECKPOINT = Path("models") / "model.pt"
INFERENCE_CONFIG = Path("configs") / "inference.json"
DEFAULTS = {
    "num_inference_steps": 2, "num_ensemble": 6, "seed": 0, "sampler": "ddim", "fusion": "mean", "largest_component": True,
}
"""The infer task's defaults (``monailabel_app/lib/params.py``). ``largest_component`` is fixed at export: the
post-processing keeps each label's largest connected piece, as the infer task does by default."""


class ProbabilityInferer(Inferer):
    """The fused probabilities ``(B, C, *spatial)`` of a :class:`MedSegDiffInferer` (MONAI engines want a tensor)."""

    def __init__(self, inferer: MedSegDiffInferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inferer(inputs, network)["probs"]


def bundle_checkpoint(folder: str | Path) -> Path:
    """The checkpoint of a bundle folder written by :func:`export_bundle`; raises ``FileNotFoundError`` otherwise."""
    folder = Path(folder)
    checkpoint = folder / CHECKPOINT
    if not (folder / INFERENCE_CONFIG).is_file() or not checkpoint.is_file():
        raise FileNotFoundError(f"{folder} is not a MedSegDiff bundle: it needs {INFERENCE_CONFIG} and {CHECKPOINT}")
    return checkpoint


def _model_settings(payload: dict[str, Any]) -> dict[str, Any]:
    """Spacing, slice axis, views and padding of a checkpoint (the app's defaults where its metadata has none)."""
    metadata = payload.get("metadata", {})
    spacing = metadata.get("spacing", [3.0, 3.0, 3.0])
    spacing = [float(spacing)] * 3 if isinstance(spacing, (int, float)) else [float(s) for s in spacing]
    slice_axis = int(metadata.get("slice_axis", 2))
    config = payload["network_config"]
    views = list(slice_views(metadata)) if config["spatial_dims"] == 2 else [slice_axis]
    pad = min_volume_size(config["spatial_size"], config["spatial_dims"], slice_axis, views)
    return {"spacing": spacing, "slice_axis": slice_axis, "views": views, "pad_size": pad}


def _label_values(payload: dict[str, Any]) -> list[int]:
    labels = payload.get("metadata", {}).get("labels", {"brain": 1})
    return sorted(labels.values()) if isinstance(labels, dict) else list(range(1, len(labels) + 1))


def inference_config(payload: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``configs/inference.json`` of a checkpoint; ``defaults`` replace :data:`DEFAULTS`."""
    settings = {**DEFAULTS, **defaults}
    largest = [{"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": _label_values(payload),
                "is_onehot": False}] if settings.pop("largest_component") else []
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "checkpoint": f"$os.path.join(@bundle_root, '{CHECKPOINT.as_posix()}')",
        "dataset_dir": "$os.path.join(@bundle_root, 'data')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        **settings,
        **_model_settings(payload),
        # as the infer task: members in autocast on a GPU
        "amp": "$torch.cuda.is_available()",
        "loaded": {"_target_": "medsegdiff.checkpoint.load_checkpoint", "path": "@checkpoint", "device": "@device"},
        "network": "$@loaded[0]",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))]",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": {
                "_target_": "medsegdiff.transforms.inference_transforms", "spacing": "@spacing", "pad_size": "@pad_size"
            },
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
        "ensemble": {
            "_target_": "medsegdiff.sampling.EnsembleSampler",
            "diffusion": "$@loaded[1]",
            "sampler": "@sampler",
            "num_inference_steps": "@num_inference_steps",
            "num_ensemble": "@num_ensemble",
            "fusion": "@fusion",
            "amp": "@amp",
        },
        "inferer": {
            "_target_": "medsegdiff.bundle.ProbabilityInferer",
            "inferer": {
                "_target_": "medsegdiff.inferer.MedSegDiffInferer",
                "sampler": "@ensemble",
                "seed": "@seed",
                "slice_axis": "@slice_axis",
                "views": "@views",
            },
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "medsegdiff.transforms.ToOriginalGridd", "keys": "pred", "ref_key": "image"},
                {"_target_": "medsegdiff.transforms.ProbabilitiesToLabelsd", "keys": "pred"},
                *largest,
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                    "writer": "NibabelWriter",
                    "print_log": False,
                },
            ],
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
        },
        "run": ["$@evaluator.run()"],
    }


def _metadata(payload: dict[str, Any], name: str) -> dict[str, Any]:
    metadata = payload.get("metadata", {})
    labels = metadata.get("labels", {"brain": 1})
    labels = labels if isinstance(labels, dict) else {str(n): i for i, n in enumerate(labels, start=1)}
    config = payload["network_config"]
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported from {name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"medsegdiff": "0.1.0", "nibabel": _version("nibabel")},
        "name": "MedSegDiff segmentation",
        "task": "Diffusion-ensemble segmentation with uncertainty (MedSegDiff, arXiv 2211.00611)",
        "description": "MedSegDiff network sampled by an ensemble of diffusion chains; the fused probabilities are "
        "resampled onto the input's grid and turned into a label map.",
        "authors": "MedSegDiff Label",
        "copyright": "see the MedSegDiff Label project",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": int(config["in_channels"]),
                    "spatial_shape": [-1, -1, -1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image, percentile-normalised"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 1,
                    "spatial_shape": [-1, -1, -1],
                    "dtype": "uint8",
                    "value_range": [0, max(labels.values())],
                    "is_patch_data": False,
                    "channel_def": {"0": ", ".join(f"{v}: {k}" for k, v in {"background": 0, **labels}.items())},
                }
            },
        },
        "labels": labels,
        "medsegdiff": {"network_config": config, "spatial_dims": int(config["spatial_dims"])},
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _readme(name: str, settings: dict[str, Any]) -> str:
    spacing = "x".join(f"{s:g}" for s in settings["spacing"])
    return f"""# MedSegDiff bundle (from `{name}`)

Diffusion-ensemble segmentation (MedSegDiff). `models/model.pt` is the MedSegDiff checkpoint (weights, network and
diffusion configuration, labels); the images are oriented to RAS, normalised, resampled to {spacing} mm and
segmented slice by slice along axis {settings["slice_axis"]} (2D network) or by sliding windows (3D), and the label
is resampled back onto each input's grid.

Needs the `medsegdiff` package (`pip install -e .` in the MedSegDiff Label repository) next to MONAI.

```bash
cd <this folder>
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/niftis --output_dir out
# fewer steps / members, another seed
python -m monai.bundle run --config_file configs/inference.json --dataset_dir in --output_dir out \\
    --num_inference_steps 2 --num_ensemble 3 --seed 7
```

Every `*.nii` / `*.nii.gz` of the dataset folder gives `out/<name>_seg.nii.gz` (uint8, 0 = background). With the
same parameters and seed the label is the one the MedSegDiff Label server returns. Serve this bundle from the
MONAI Label app with `--conf medsegdiff_checkpoint <this folder>`.
"""


def export_bundle(checkpoint: str | Path, folder: str | Path, **defaults: Any) -> Path:
    """Write the MONAI bundle of ``checkpoint`` into ``folder``; ``defaults`` replace the sampling :data:`DEFAULTS`."""
    checkpoint, folder = Path(checkpoint), Path(folder)
    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown bundle defaults {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    payload = read_checkpoint(checkpoint)
    for sub in ("configs", "models", "docs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    atomic_copy(checkpoint, folder / CHECKPOINT)
    config = inference_config(payload, **defaults)
    atomic_write_bytes(folder / INFERENCE_CONFIG, (json.dumps(config, indent=4) + "\n").encode())
    metadata = _metadata(payload, checkpoint.name)
    atomic_write_bytes(folder / "configs" / "metadata.json", (json.dumps(metadata, indent=4) + "\n").encode())
    atomic_write_bytes(folder / "docs" / "README.md", _readme(checkpoint.name, _model_settings(payload)).encode())
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medsegdiff.bundle", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the MONAI bundle of a checkpoint")
    export.add_argument("checkpoint", help="MedSegDiff checkpoint (.pt)")
    export.add_argument("folder", help="bundle folder to write")
    for key, value in DEFAULTS.items():
        if isinstance(value, bool):
            export.add_argument(f"--no-{key.replace('_', '-')}", dest=key, action="store_false", help=f"default {key} {value}")
        else:
            export.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    folder = export_bundle(args.checkpoint, args.folder, **{k: getattr(args, k) for k in DEFAULTS})
    print(f"MONAI bundle written to {folder}")


if __name__ == "__main__":
    main()
