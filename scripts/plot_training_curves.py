"""Training curves from the TensorBoard event files of a train run, as a PNG.

    .venv/bin/python scripts/plot_training_curves.py <model folder or events_* folder> --output curves.png

Reads the scalars the train task writes (``train_loss`` per iteration, ``train_epoch_loss`` and ``val_mean_dice``
per epoch) with TensorBoard's ``EventAccumulator``; a model folder means its newest run (``*/events_*``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def newest_run(folder: Path) -> Path:
    """``folder`` itself if it holds event files, else its newest ``events_*`` run below it."""
    if list(folder.glob("events.out.tfevents.*")):
        return folder
    runs = sorted(folder.glob("**/events_*"), key=lambda p: p.name)
    if not runs:
        raise FileNotFoundError(f"no TensorBoard event files under {folder}")
    return runs[-1]


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run → [(step, value), ...]."""
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def plot(scalars: dict[str, list[tuple[int, float]]], output: Path, title: str) -> None:
    figure, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    iterations = scalars.get("train_loss", [])
    epochs = scalars.get("train_epoch_loss", [])
    if iterations and epochs:
        per_epoch = len(iterations) / len(epochs)
        loss_ax.plot([s / per_epoch for s, _ in iterations], [v for _, v in iterations], color="0.75", lw=0.8,
                     label="per iteration")  # fmt: skip
    loss_ax.plot([s for s, _ in epochs], [v for _, v in epochs], "o-", color="C0", ms=3, label="epoch mean")
    loss_ax.set(xlabel="epoch", ylabel="diffusion loss (MSE)", yscale="log", title="train_loss")
    loss_ax.legend(fontsize=8)
    dice = scalars.get("val_mean_dice", [])
    dice_ax.plot([s for s, _ in dice], [v for _, v in dice], "o-", color="C2", ms=3)
    dice_ax.set(xlabel="epoch", ylabel="Dice", ylim=(0, 1), title="val_mean_dice")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="model folder or events_* folder")
    parser.add_argument("--output", type=Path, default=Path("bench/results/training_curves.png"))
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    run = newest_run(args.folder)
    plot(read_scalars(run), args.output, args.title or run.name)
    print(f"{args.output} from {run}")


if __name__ == "__main__":
    main()
