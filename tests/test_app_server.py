"""The MedSegDiff MONAI Label app end to end, through the official ``MONAILabelClient`` and a real server.

Flow: /info → uncertainty scoring → next sample (``uncertainty``) → infer robex_head → infer the LAS copy
robex_head_flipped → fetch its uncertainty volume → save a corrected final label → train 1 epoch → infer with
the new checkpoint → the final label is byte-for-byte unchanged. Bad parameters are answered with 4xx naming
the parameter. Requests use 1-2 sampling steps and 2 members to stay fast on a CPU. Each stage is a
module-scoped fixture, so a single test can run on its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from medsegdiff.checkpoint import load_checkpoint
from medsegdiff.metrics import dice_per_class
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
FAST = {"num_inference_steps": 2, "num_ensemble": 2}
POLL_TIMEOUT_S = 300


def _needs_trained(server) -> None:
    if not server.trained_checkpoint:
        pytest.skip("monailabel_app/model/medsegdiff_brain_2d.pt (the trained sample model) does not exist yet")
    if (server.model_dir / MODEL / "best.pt").exists():
        pytest.skip("the model was already retrained in this session: the sample model's Dice is measured before")


def _wait(url: str, what: str, timeout: float = POLL_TIMEOUT_S) -> dict:
    """Poll ``GET url`` (a MONAI Label task status) until the task ends; returns the final task."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = requests.get(url, timeout=30).json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(1)
    pytest.fail(f"{what} did not finish within {timeout} s")


def _image(server, image_id: str) -> nib.Nifti1Image:
    return nib.load(str(server.datastore / f"{image_id}.nii.gz"))


def _reference(server, image_id: str) -> np.ndarray:
    return np.asarray(nib.load(str(server.reference_dir / f"{image_id}_mask.nii.gz")).dataobj)


def _label_file(path: str) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine, img.get_data_dtype()


# ---------------------------------------------------------------------------------------------- stages
@pytest.fixture(scope="module")
def client(monailabel_server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


@pytest.fixture(scope="module")
def scoring(monailabel_server) -> dict:
    url = f"{monailabel_server.url}/scoring/{MODEL}_uncertainty"
    started = requests.post(url, json={"num_inference_steps": 1, "num_ensemble": 2}, timeout=60)
    assert started.status_code == 200, started.text
    task = _wait(f"{monailabel_server.url}/scoring/", "scoring")
    assert task["status"] == "DONE", f"scoring ended {task['status']}: {task.get('details')}\n{monailabel_server.log()}"
    # what the scoring process stored, read from the datastore's own file (the server reloads it asynchronously)
    return json.loads((monailabel_server.datastore / "datastore_v2.json").read_text())


@pytest.fixture(scope="module")
def robex(client) -> tuple[str, dict]:
    return client.infer(MODEL, "robex_head", dict(FAST))


@pytest.fixture(scope="module")
def flipped(client) -> tuple[str, dict]:
    return client.infer(MODEL, "robex_head_flipped", dict(FAST))


@pytest.fixture(scope="module")
def corrected_label(monailabel_server, client, flipped, tmp_path_factory) -> bytes:
    """An annotator's correction of robex_head_flipped, saved as its final label; returns the bytes sent."""
    image = _image(monailabel_server, "robex_head_flipped")
    mask = _reference(monailabel_server, "robex_head_flipped").astype(np.uint8)
    path = tmp_path_factory.mktemp("corrected") / "robex_head_flipped.nii.gz"
    nib.save(nib.Nifti1Image(mask, image.affine), str(path))
    client.save_label("robex_head_flipped", str(path), tag="final")
    return path.read_bytes()


@pytest.fixture(scope="module")
def trained(monailabel_server, client, corrected_label) -> dict:
    params = {
        "max_epochs": 2,
        "samples_per_epoch": 8,
        "batch_size": 4,
        "val_split": 0.5,
        "val_num_inference_steps": 1,
        "val_num_ensemble": 2,
    }
    log_before = monailabel_server.log_path.stat().st_size
    client.train_start(MODEL, params)
    task = _wait(f"{monailabel_server.url}/train/", "training")
    assert task["status"] == "DONE", f"training ended {task['status']}: {task.get('details')}\n{monailabel_server.log()}"
    return {**task, "log": monailabel_server.log_path.read_bytes()[log_before:].decode(errors="replace")}


# ---------------------------------------------------------------------------------------------- tests
def test_info_lists_model_trainer_strategies_and_scoring(client) -> None:
    info = client.info()
    model = info["models"][MODEL]
    assert model["labels"] == {"brain": 1} and info["labels"] == ["brain"]
    assert model["config"]["num_inference_steps"] == 2 and model["config"]["num_ensemble"] == 6
    assert model["config"]["sampler"] == ["ddim", "ddpm"] and model["config"]["fusion"] == ["mean", "vote", "staple"]
    assert model["config"]["device"] == ["auto", "cpu", "cuda"]
    assert model["parameters"]["num_inference_steps"]["max"] == 1000
    colors = model["label_colors"]["brain"]
    assert len(colors) == 3 and all(0.0 <= c <= 1.0 for c in colors)
    assert MODEL in info["trainers"]
    assert {"max_epochs", "val_split", "learning_rate", "batch_size"} <= set(info["trainers"][MODEL]["config"])
    assert {"uncertainty", "random"} <= set(info["strategies"])
    assert f"{MODEL}_uncertainty" in info["scoring"]


def test_scoring_stores_a_score_per_unlabelled_image(scoring) -> None:
    unlabelled = {k: v for k, v in scoring["objects"].items() if "final" not in v["labels"]}
    assert {"robex_head_flipped", "robex_head_lowres", "mni152_head"} <= set(unlabelled)
    for image_id, entry in unlabelled.items():
        score = entry["image"]["info"].get(f"{MODEL}_uncertainty")
        assert isinstance(score, float) and 0.0 <= score <= 1.0, (image_id, entry["image"]["info"])
    assert f"{MODEL}_uncertainty" not in scoring["objects"]["robex_head"]["image"]["info"]


def test_next_sample_is_the_most_uncertain_unlabelled_image(client, scoring) -> None:
    scores = {
        k: v["image"]["info"][f"{MODEL}_uncertainty"]
        for k, v in scoring["objects"].items()
        if "final" not in v["labels"]
    }
    sample = client.next_sample("uncertainty", {})
    assert sample["id"] == max(scores, key=scores.get)
    assert sample[f"{MODEL}_uncertainty"] == pytest.approx(max(scores.values()))


def test_infer_returns_label_on_the_image_grid_and_echoes_parameters(monailabel_server, client, robex) -> None:
    label_path, result = robex
    label, affine, dtype = _label_file(label_path)
    image = _image(monailabel_server, "robex_head")
    assert label.shape == image.shape and dtype == np.uint8
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    assert set(np.unique(label)) <= {0, 1}
    assert result["params"] == {
        **FAST, "sampler": "ddim", "seed": 0, "device": "auto", "fusion": "mean", "eta": 0.0, "largest_component": True,
        "output_probability": False, "foreground": [], "background": [], "click_radius": 2, "click_reach": 0, "click_spread": 3, "click_doubt": True,
        "uncertainty_margin": 1, "marked_class": 1,
    }
    # a seed no other test asks for, so the server samples instead of returning a cached result of this image
    _, fresh = client.infer(MODEL, "robex_head", {**FAST, "seed": 4711})
    assert fresh["nfe"] > 0 and fresh["latencies"]["infer"] > 0 and fresh["latencies"]["total"] > 0
    summary = result["uncertainty"]
    assert 0.0 <= summary["mean"] <= summary["max"] <= 1.0 and 0.0 <= summary["uncertain_fraction"] <= 1.0
    assert summary["label_tag"] == "uncertainty"
    assert result["checkpoint"]["file"] == monailabel_server.checkpoint.name
    assert result["checkpoint"]["mtime"] == monailabel_server.checkpoint.stat().st_mtime


def test_infer_robex_head_dice_against_reference(monailabel_server, robex) -> None:
    _needs_trained(monailabel_server)
    label, _, _ = _label_file(robex[0])
    assert dice_per_class(label > 0, _reference(monailabel_server, "robex_head") > 0)[0] >= 0.9


def test_infer_on_las_image_matches_the_ras_result_flipped(monailabel_server, robex, flipped) -> None:
    label, affine, _ = _label_file(flipped[0])
    image = _image(monailabel_server, "robex_head_flipped")
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
    assert label.shape == image.shape
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    # the same head stored LAS: the same voxels after reorientation, so the label is the RAS one flipped back
    ras_label, _, _ = _label_file(robex[0])
    assert 0.0 < ras_label.mean() < 1.0, "a constant label would match any orientation"
    assert np.mean(label == ras_label[::-1]) > 0.999


def test_infer_on_las_image_dice_against_flipped_reference(monailabel_server, flipped) -> None:
    _needs_trained(monailabel_server)
    label, _, _ = _label_file(flipped[0])
    assert dice_per_class(label > 0, _reference(monailabel_server, "robex_head_flipped") > 0)[0] >= 0.9


def test_uncertainty_volume_is_stored_in_the_datastore(monailabel_server, client, flipped) -> None:
    path = client.download_label("robex_head_flipped", "uncertainty")
    uncertainty, affine, dtype = _label_file(path)
    image = _image(monailabel_server, "robex_head_flipped")
    assert uncertainty.shape == image.shape and dtype == np.float32
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1.0
    assert float(uncertainty.mean()) == pytest.approx(flipped[1]["uncertainty"]["mean"], abs=1e-4)


def test_training_publishes_only_a_checkpoint_that_beats_the_served_model(monailabel_server, client, trained) -> None:
    from medsegdiff.checkpoint import read_checkpoint

    folder = monailabel_server.model_dir / MODEL
    best = folder / "best.pt"
    publish = read_checkpoint(folder / "last.pt")["metadata"]["publish"]
    details = trained["log"]  # the train task's log (GET /train/ shows its tail)
    assert "the served model scores val Dice" in details, details[-3000:]
    assert isinstance(publish["served_val_dice"], float)  # the served model was scored on the same images
    epoch_dice = [float(d) for d in __import__("re").findall(r"val Dice ([0-9.]+)(?: beats| does not beat)", details)]
    assert len(epoch_dice) == 2, details[-3000:]  # both epochs say whether they were published, and why
    # best.pt exists exactly when an epoch beat the served model's Dice (the log gives 4 decimals)
    served_dice = round(publish["served_val_dice"], 4)
    assert (max(epoch_dice) >= served_dice) if best.is_file() else (max(epoch_dice) <= served_dice), (epoch_dice, publish)
    label_path, result = client.infer(MODEL, "robex_head_lowres", {"num_inference_steps": 1, "num_ensemble": 2})
    served = best if best.is_file() else monailabel_server.checkpoint
    assert result["checkpoint"]["file"] == served.name and result["checkpoint"]["mtime"] == served.stat().st_mtime
    label, affine, _ = _label_file(label_path)
    image = _image(monailabel_server, "robex_head_lowres")
    assert label.shape == image.shape
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    stats = client.info()["train_stats"][MODEL]
    assert stats["epoch"] == 2
    # the reported best metric is this run's best epoch, not the served model's score taken before epoch 1
    assert stats["best_metric"] == pytest.approx(max(epoch_dice), abs=1e-4)


def test_training_anneals_the_learning_rate_over_the_run(monailabel_server, trained) -> None:
    from medsegdiff.checkpoint import read_checkpoint

    metadata = read_checkpoint(monailabel_server.model_dir / MODEL / "last.pt")["metadata"]
    assert metadata["run"]["lr_schedule"] == "cosine"  # the default
    # epoch 2 of 2 under cosine annealing from 2e-4 (default) towards 1 % of it: half-way, 0.505 x 2e-4
    assert metadata["learning_rate"] == pytest.approx(2e-4 * (0.01 + 0.99 * 0.5), rel=1e-6)


def test_final_labels_are_unchanged_after_inference_and_training(monailabel_server, client, corrected_label, trained) -> None:
    assert Path(client.download_label("robex_head_flipped", "final")).read_bytes() == corrected_label
    from medsegdiff.sample_data import read_manifest

    expected = read_manifest(monailabel_server.datastore)["items"]["robex_head"]["label_sha256"]
    sample_label = Path(client.download_label("robex_head", "final")).read_bytes()
    assert hashlib.sha256(sample_label).hexdigest() == expected


@pytest.mark.parametrize(
    "params, name",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_ensemble": 100}, "num_ensemble"),
        ({"sampler": "foo"}, "sampler"),
        ({"seed": "abc"}, "seed"),
        ({"num_inference_steps": "abc"}, "num_inference_steps"),
        ({"fusion": "max"}, "fusion"),
        ({"device": "tpu"}, "device"),
        pytest.param(
            {"device": "cuda"}, "device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: 'cuda' is valid here"),
        ),
    ],
)
def test_bad_parameters_get_4xx_naming_the_parameter(client, params: dict, name: str) -> None:
    with pytest.raises(MONAILabelClientException) as error:
        client.infer(MODEL, "robex_head", params)
    message = error.value.msg
    assert message.startswith("Status: 422;") and name in message, message
    assert MODEL in client.info()["models"]  # the server keeps serving


def test_training_writes_tensorboard_curves(monailabel_server, trained) -> None:
    """Loss per iteration and per epoch, validation Dice per epoch, as TensorBoard event files in the model folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((monailabel_server.model_dir / MODEL).glob("*/events_*"), key=lambda p: p.name)  # <train task>/
    assert runs and list(runs[-1].glob("events.out.tfevents.*")), f"no event files in {monailabel_server.model_dir}"
    events = EventAccumulator(str(runs[-1]))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # the `trained` run: 2 epochs of 8 samples in batches of 4
    assert [step for step, _ in scalars["train_epoch_loss"]] == [1, 2]
    assert len(scalars["train_loss"]) == 4
    per_epoch = [np.mean([v for _, v in scalars["train_loss"][i : i + 2]]) for i in (0, 2)]
    np.testing.assert_allclose([v for _, v in scalars["train_epoch_loss"]], per_epoch, rtol=1e-5)
    # the served model is scored first (logged at step 1 too), then each epoch of the run
    assert [step for step, _ in scalars["val_mean_dice"]] == [1, 1, 2]
    stats = json.loads((monailabel_server.model_dir / MODEL / "train_stats.json").read_text())
    assert max(v for _, v in scalars["val_mean_dice"][1:]) == pytest.approx(stats["best_metric"], abs=1e-6)


# --------------------------------------------------------------------- a fine-tune worse than the served model
def _optimizer_steps(path: Path) -> int:
    from medsegdiff.checkpoint import read_checkpoint

    state = read_checkpoint(path)["training_state"]["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


@pytest.fixture(scope="module")
def wrecked(monailabel_server, client, trained):
    """A run with learning rate 1.0 (it wrecks the weights) after ``trained``; last.pt is put back afterwards."""
    folder = monailabel_server.model_dir / MODEL
    best, last = folder / "best.pt", folder / "last.pt"
    before = {"best": best.read_bytes() if best.is_file() else None, "last": last.read_bytes(), "steps": _optimizer_steps(last)}
    params = {"max_epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "learning_rate": 1.0, "val_split": 0.5,
              "val_num_inference_steps": 1, "val_num_ensemble": 2}  # fmt: skip
    client.train_start(MODEL, params)
    task = _wait(f"{monailabel_server.url}/train/", "training")
    assert task["status"] == "DONE", f"training ended {task['status']}: {task.get('details')}"
    yield before, task  # GET /train/'s details: the tail of the run's log, where the last epoch's decision is
    tmp = last.with_suffix(".restore")
    tmp.write_bytes(before["last"])
    tmp.replace(last)  # later tests resume from the good weights


def test_a_run_worse_than_the_served_model_does_not_replace_it(monailabel_server, client, wrecked) -> None:
    from medsegdiff.checkpoint import read_checkpoint

    before, task = wrecked
    best = monailabel_server.model_dir / MODEL / "best.pt"
    assert (best.read_bytes() if best.is_file() else None) == before["best"]  # best.pt untouched (or still absent)
    publish = read_checkpoint(monailabel_server.model_dir / MODEL / "last.pt")["metadata"]["publish"]
    assert publish["published"] is False and "does not beat the served model" in publish["reason"], publish
    assert "not published: val Dice" in "\n".join(task.get("details") or [])
    _, result = client.infer(MODEL, "robex_head_lowres", {"num_inference_steps": 1, "num_ensemble": 1})
    served = best if best.is_file() else monailabel_server.checkpoint
    assert result["checkpoint"]["file"] == served.name and result["checkpoint"]["mtime"] == served.stat().st_mtime


def test_the_next_run_restores_the_optimizer_state(monailabel_server, wrecked) -> None:
    before, _ = wrecked
    # 1 epoch of 8 samples at batch 4: Adam's step count goes on from the previous run's
    assert _optimizer_steps(monailabel_server.model_dir / MODEL / "last.pt") == before["steps"] + 2
