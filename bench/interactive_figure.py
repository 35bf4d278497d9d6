"""The interaction loop in one picture: before, the clicks, after, and the uncertainty after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_interaction"]


def plot_interaction(head: dict[str, Any], path: Path, title: str) -> str:
    """Four panels on the axial slice with the most clicks; returns the file name."""
    import matplotlib.pyplot as plt

    clicks = head["clicks"]
    z = int(np.bincount([c["voxel"][2] for c in clicks]).argmax()) if clicks else head["image"].shape[2] // 2
    panels = [("automatic label", head["auto"]), ("clicks", head["auto"]), ("after the clicks", head["model"]),
              ("uncertainty after", None)]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, (name, label) in zip(axes, panels):
        ax.imshow(head["image"][:, :, z].T, cmap="gray", origin="lower")
        if label is None:
            ax.imshow(head["entropy"][:, :, z].T, cmap="magma", alpha=0.75, origin="lower", vmin=0, vmax=1)
        else:
            ax.contour(head["reference"][:, :, z].T, levels=[0.5], colors="lime", linewidths=0.8)
            ax.contour(label[:, :, z].T, levels=[0.5], colors="red", linewidths=0.8)
        if name == "clicks":
            for c in clicks:
                if c["voxel"][2] == z:
                    ax.plot(c["voxel"][0], c["voxel"][1], "o", color="cyan" if c["foreground"] else "yellow", ms=6)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title} (green: reference, red: label; cyan / yellow: foreground / background clicks)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name
