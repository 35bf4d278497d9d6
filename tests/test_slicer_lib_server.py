"""MedSegDiffLib (the Slicer module's client side) against the real MONAI Label server.

Uses the session fixture ``monailabel_server`` of tests/conftest.py: ``.url`` of a running server with the
MedSegDiff app and ``.datastore``, a temporary copy of the sample datastore (``robex_head`` has a final
label; ``colin27_head``, ``mni152_head``, ... are unlabelled). The same flow is also driven with the stock
``monailabel.client.MONAILabelClient`` to show the server speaks the standard MONAI Label API.
"""

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_ext" / "MedSegDiff"
sys.path.insert(0, str(MODULE_DIR))
import MedSegDiffLib as lib  # noqa: E402

MODEL = "medsegdiff"
FAST_PARAMS = {"num_inference_steps": 2, "num_ensemble": 2, "seed": 0}
TRAIN_TIMEOUT_S = 1200


def _image_file(datastore, image_id):
    matches = sorted(Path(datastore).glob(f"{image_id}.*"))
    assert matches, f"image {image_id} is not in the datastore folder {datastore}"
    return matches[0]


def _final_label_ids(datastore):
    folder = Path(datastore) / "labels" / "final"
    return {p.name.split(".")[0] for p in folder.glob("*") if p.is_file()} if folder.is_dir() else set()


@pytest.fixture(scope="module")
def client(monailabel_server):
    return lib.MedSegDiffClient(monailabel_server.url)


@pytest.fixture(scope="module")
def server_info(client):
    return lib.ServerInfo.from_json(client.info())


@pytest.fixture(scope="module")
def inference(client, monailabel_server, tmp_path_factory):
    """next_sample("uncertainty") then MedSegDiff on that image: the annotator's first two clicks."""
    unlabelled_before = {
        p.name.split(".")[0] for p in Path(monailabel_server.datastore).glob("*.nii*")
    } - _final_label_ids(monailabel_server.datastore)
    sample = client.next_sample("uncertainty")
    folder = tmp_path_factory.mktemp("infer")
    result = client.infer(MODEL, sample["id"], FAST_PARAMS, dest_dir=str(folder))
    return {"sample": sample, "unlabelled_before": unlabelled_before, "result": result, "folder": folder}


# -- connect -------------------------------------------------------------------------------------------


def test_info_lists_medsegdiff_with_its_parameters(server_info):
    assert MODEL in server_info.models
    assert server_info.default_model() == MODEL
    assert server_info.labels(MODEL), "medsegdiff declares no labels"
    specs = server_info.parameters(MODEL)
    for name in ("num_inference_steps", "num_ensemble", "seed"):
        assert name in specs, f"medsegdiff does not declare {name}"
    defaults = lib.default_values(specs)
    assert lib.validate_params(defaults, specs) == defaults, "the server's defaults fail its own ranges"
    assert "uncertainty" in server_info.strategies
    assert MODEL in server_info.trainers
    colors = server_info.colors(MODEL)
    assert set(colors) == set(server_info.labels(MODEL))
    assert all(len(c) == 3 and all(0.0 <= v <= 1.0 for v in c) for c in colors.values())


# -- annotate ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_next_sample_is_an_unlabelled_datastore_image(inference):
    sample = inference["sample"]
    assert sample["id"] in inference["unlabelled_before"]
    assert sample["id"] != "robex_head"


@pytest.mark.slow
def test_infer_returns_a_label_on_the_image_grid(inference, monailabel_server, server_info):
    result = inference["result"]
    image, image_geometry = lib.read_image(_image_file(monailabel_server.datastore, inference["sample"]["id"]))
    label, label_geometry = lib.read_image(result.label_path)
    assert label.shape == image.shape
    np.testing.assert_allclose(label_geometry, image_geometry, atol=1e-3)
    values = set(np.unique(label).tolist())
    assert values <= {0} | set(server_info.labels(MODEL).values())
    assert values != {0}, "MedSegDiff segmented nothing"
    assert isinstance(result.result, dict)
    label_path, result_json = result
    assert (label_path, result_json) == (result.label_path, result.result)


@pytest.mark.slow
def test_uncertainty_map_is_stored_for_the_image(client, inference, tmp_path):
    image_id = inference["sample"]["id"]
    image_path = client.download_image(image_id, dest_dir=str(tmp_path))
    path = client.download_label(image_id, "uncertainty", dest_dir=str(tmp_path))  # same folder as the image
    assert path != image_path
    image, _ = lib.read_image(image_path)
    uncertainty, _ = lib.read_image(path)
    assert not np.array_equal(image, uncertainty), "the uncertainty download overwrote the image"
    label, _ = lib.read_image(inference["result"].label_path)
    assert uncertainty.shape == label.shape
    assert np.issubdtype(uncertainty.dtype, np.floating)
    assert np.isfinite(uncertainty).all() and uncertainty.min() >= 0.0
    assert 0 <= lib.most_uncertain_slice(uncertainty) < uncertainty.shape[0]


@pytest.mark.slow
def test_submit_final_label(client, inference, monailabel_server, tmp_path):
    image_id = inference["sample"]["id"]
    label, geometry = lib.read_image(inference["result"].label_path)
    edited = label.copy()
    edited[edited.shape[0] // 2] = 0  # an annotator's correction: clear one slice
    path = lib.write_image(edited, geometry, tmp_path / f"{image_id}_final.nii.gz")
    response = client.save_label(image_id, path, tag="final")
    assert response["image"] == image_id
    assert image_id in _final_label_ids(monailabel_server.datastore)
    stored, _ = lib.read_image(client.download_label(image_id, "final", dest_dir=str(tmp_path / "back")))
    np.testing.assert_array_equal(stored, edited)
    again = client.next_sample("uncertainty")
    assert again is None or again["id"] != image_id, "a submitted image is offered again for labelling"


def test_upload_then_download_then_remove_image(client, monailabel_server, tmp_path):
    image, geometry = lib.read_image(_image_file(monailabel_server.datastore, "robex_head"))
    crop = np.ascontiguousarray(image[40:56, 50:70, 50:74])
    path = lib.write_image(crop, geometry, tmp_path / "slicer_upload.nii.gz")
    image_id = client.upload_image(path, "slicer_upload_test")
    try:
        assert image_id == "slicer_upload_test"
        back, back_geometry = lib.read_image(client.download_image(image_id, dest_dir=str(tmp_path / "back")))
        np.testing.assert_array_equal(back, crop)
        np.testing.assert_allclose(back_geometry, geometry, atol=1e-4)
    finally:
        client.remove_image(image_id)
    with pytest.raises(lib.ServerError) as error:
        client.download_image(image_id, dest_dir=str(tmp_path / "gone"))
    assert error.value.status == 404


# -- train ----------------------------------------------------------------------------------------------


def _baseline(client):
    return ((client.info().get("train_stats") or {}).get(MODEL) or {}).get("start_ts")


@pytest.mark.slow
@pytest.mark.timeout(TRAIN_TIMEOUT_S + 60)
def test_train_one_epoch_and_poll_to_completion(client):
    baseline = _baseline(client)
    task = client.train_start(MODEL, {"max_epochs": 1})
    assert task.get("status") in ("SUBMITTED", "RUNNING")
    seen = []
    poller = lib.TrainingPoller(client, MODEL, callback=seen.append, interval=1.0, baseline_start_ts=baseline)
    final = poller.run(timeout=TRAIN_TIMEOUT_S)
    assert final.error is None
    assert final.status == "DONE", f"training ended {final.status}: {final.task.get('details')}"
    assert final.fraction == 1.0
    assert (final.epoch, final.total_epochs) == (1, 1)
    assert final.dice is None or 0.0 <= final.dice <= 1.0
    assert len(seen) >= 1 and seen[-1] is final
    assert client.train_stop() is None, "nothing runs after DONE, so there is nothing to stop"


@pytest.mark.slow
@pytest.mark.timeout(TRAIN_TIMEOUT_S)
def test_training_can_be_stopped(client):
    client.train_start(MODEL, {"max_epochs": 1000})
    running = threading.Event()

    def on_progress(progress):
        if progress.status == "RUNNING":
            running.set()

    stop = threading.Event()
    poller = lib.TrainingPoller(client, MODEL, callback=on_progress, interval=0.5, stop_event=stop)
    thread = poller.start()
    try:
        assert running.wait(300), "training never reached RUNNING"
        stopped = client.train_stop()
        assert stopped["status"] == "STOPPED"
        thread.join(60)
        assert not thread.is_alive()
        assert poller.latest.status == "STOPPED" and poller.latest.finished
    finally:
        stop.set()
        if client.train_status(check_if_running=True):
            client.train_stop()


# -- errors --------------------------------------------------------------------------------------------


def test_wrong_url_path_is_reported(monailabel_server):
    with pytest.raises(lib.ServerError) as error:
        lib.MedSegDiffClient(monailabel_server.url + "/nope").info()
    assert error.value.status == 404
    assert "not the root of a MONAI Label server" in str(error.value)


def test_bad_parameter_gives_4xx_naming_the_parameter(client, server_info):
    params = dict(FAST_PARAMS, num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        lib.validate_params(params, server_info.parameters(MODEL))  # the module checks before sending
    with pytest.raises(lib.ServerError) as error:
        client.infer(MODEL, "robex_head", params)  # and the server rejects it too
    assert 400 <= error.value.status < 500, f"expected a 4xx, got {error.value.status}: {error.value}"
    assert "num_inference_steps" in str(error.value)


def test_missing_label_tag_is_reported(client, tmp_path):
    with pytest.raises(lib.ServerError) as error:
        client.download_label("robex_head", "no_such_tag", dest_dir=str(tmp_path))
    assert error.value.status == 404
    assert "no_such_tag" in str(error.value)


# -- the stock MONAI Label client ------------------------------------------------------------------------


@pytest.mark.slow
def test_stock_monailabel_client_flow(monailabel_server, tmp_path):
    from monailabel.client import MONAILabelClient

    stock = MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path))
    info = stock.info()
    assert MODEL in info["models"]
    assert "num_inference_steps" in info["models"][MODEL]["config"]
    sample = stock.next_sample("uncertainty", {})
    image_id = sample["id"]
    assert image_id not in _final_label_ids(monailabel_server.datastore)
    label_path, result = stock.infer(MODEL, image_id, dict(FAST_PARAMS))
    assert isinstance(result, dict)
    label, _ = lib.read_image(label_path)
    image, _ = lib.read_image(_image_file(monailabel_server.datastore, image_id))
    assert label.shape == image.shape
    response = stock.save_label(image_id, label_path, tag="final")
    assert response["image"] == image_id
    assert image_id in _final_label_ids(monailabel_server.datastore)
