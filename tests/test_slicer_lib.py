"""Tests of the 3D Slicer extension's Lib (``MedSegDiffLib``: no slicer / qt / vtk / ctk) that need neither Slicer
nor a MONAI Label server: the buttons' states, the declared parameters and their validation, label files, the
client's errors against servers that are down or not MONAI Label, the background job. Against the real server:
``test_slicer_lib_server``."""

import http.server
import json
import socket
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slicer_ext_info import MEDSEGDIFF_INFO, buttonStates, lib  # noqa: E402


def test_refine_buttons_follow_the_result_and_the_history():
    info, idle, busy = lib.ServerInfo.from_json(MEDSEGDIFF_INFO), lib.BackgroundWork(), lib.BackgroundWork()
    busy.job = object()  # a request is running
    volume, segmentation = object(), object()
    names = ("addPositivePointButton", "addNegativePointButton", "paintScribblesButton", "refineButton", "undoButton")
    states = lambda *args, **kwargs: [buttonStates(*args, **kwargs)[n] for n in names]  # noqa: E731
    assert states(info, idle, True, volume, segmentation, "img", None, canUndo=True) == [True] * 5
    assert states(info, idle, True, volume, segmentation, "img", None) == [True, True, True, True, False]
    assert states(info, busy, True, volume, segmentation, "img", None, canUndo=True) == [True, True, True, False, False]
    assert states(info, idle, True, volume, None, "img", None) == [False, False, False, False, False]
    assert states(info, idle, True, volume, segmentation, None, None) == [False, False, True, False, False]
    assert states(None, idle, True, volume, segmentation, "img", None, canUndo=True)[3:] == [False, False]




# -- parameters --------------------------------------------------------------------------------------


SPECS = lib.declared_parameters(MEDSEGDIFF_INFO["models"]["medsegdiff"])


def test_declared_parameters_read_defaults_choices_and_ranges():
    assert lib.default_values(SPECS) == {
        "num_inference_steps": 10,
        "num_ensemble": 5,
        "sampler": "ddim",
        "seed": 0,
        "device": "cpu",
    }
    assert (SPECS["num_inference_steps"].minimum, SPECS["num_inference_steps"].maximum) == (1, 1000)
    assert (SPECS["num_ensemble"].minimum, SPECS["num_ensemble"].maximum) == (1, 32)
    assert SPECS["sampler"].choices == ("ddim", "ddpm")


def test_server_declared_range_wins_over_known_range():
    specs = lib.declared_parameters({"config": {"num_ensemble": {"default": 4, "min": 2, "max": 8}}})
    assert lib.validate_params({"num_ensemble": 8}, specs) == {"num_ensemble": 8}
    with pytest.raises(ValueError, match="num_ensemble=9"):
        lib.validate_params({"num_ensemble": 9}, specs)


def test_parameter_descriptions_of_the_server_give_ranges_choices_and_help():
    model = {
        "config": {"num_inference_steps": 10, "fusion": ["mean", "vote"]},
        "parameters": {
            "num_inference_steps": {"default": 10, "min": 1, "max": 50, "help": "reverse-diffusion steps"},
            "fusion": {"default": "mean", "choices": ["mean", "vote"], "help": "how members are fused"},
        },
    }
    specs = lib.declared_parameters(model)
    assert (specs["num_inference_steps"].maximum, specs["num_inference_steps"].help) == (50, "reverse-diffusion steps")
    assert specs["fusion"].choices == ("mean", "vote") and specs["fusion"].default == "mean"
    with pytest.raises(ValueError, match=r"num_inference_steps=51 is too large: allowed range is \[1, 50\]"):
        lib.validate_params({"num_inference_steps": 51}, specs)


def test_valid_params_pass_and_are_normalised():
    params = {"num_inference_steps": 2.0, "num_ensemble": 2, "seed": 0, "sampler": "ddpm", "device": "cpu"}
    assert lib.validate_params(params, SPECS) == {
        "num_inference_steps": 2,
        "num_ensemble": 2,
        "seed": 0,
        "sampler": "ddpm",
        "device": "cpu",
    }


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"num_inference_steps": 0}, r"num_inference_steps=0 is too small.*\[1, 1000\]"),
        ({"num_inference_steps": 1001}, r"num_inference_steps=1001 is too large"),
        ({"num_ensemble": 33}, r"num_ensemble=33 is too large.*\[1, 32\]"),
        ({"num_ensemble": 2.5}, r"num_ensemble=2.5 must be a whole number"),
        ({"num_ensemble": "5"}, r"num_ensemble='5' must be a whole number"),
        ({"seed": True}, r"seed=True must be a whole number"),
        ({"seed": -1}, r"seed=-1 is too small"),
        ({"sampler": "euler"}, r"sampler='euler' is not allowed.*ddim.*ddpm"),
        ({"device": "tpu"}, r"device='tpu' is not allowed"),
        ({"steps": 3}, r"unknown parameter steps=3"),
    ],
)
def test_invalid_params_raise_value_error_naming_the_value(params, expected):
    with pytest.raises(ValueError, match=expected):
        lib.validate_params(params, SPECS)


# -- server info ---------------------------------------------------------------------------------------


def test_server_info_summary_and_label_colors_fallback():
    info = lib.ServerInfo.from_json(MEDSEGDIFF_INFO)
    assert info.default_model() == "medsegdiff"
    assert info.default_strategy() == "uncertainty"
    assert info.labels("medsegdiff") == {"brain": 1}
    assert info.colors("medsegdiff") == {"brain": lib.DEFAULT_PALETTE[0]}  # no label_colors declared
    assert "medsegdiff" in info.summary() and "uncertainty" in info.summary()
    with pytest.raises(ValueError, match="'unet'"):
        info.model("unet")


def test_label_colors_from_server_in_0_1_or_0_255():
    assert lib.label_colors({"brain": 1, "csf": 2}, {"brain": [1.0, 0.5, 0.0], "csf": [0, 128, 255]}) == {
        "brain": (1.0, 0.5, 0.0),
        "csf": (0.0, 128 / 255, 1.0),
    }


# -- files: NIfTI ------------------------------------------------------------------------------

# An oblique, anisotropic grid: catches axis-order and direction mistakes.
IJK_TO_LPS = np.array(
    [[0.0, 0.0, -2.0, 10.0], [0.0, 1.5, 0.0, -20.0], [1.2, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, 1.0]]
)


def _label_array():
    array = np.zeros((6, 7, 8), np.uint8)  # [k, j, i]
    array[1:4, 2:5, 3:7] = 1
    array[4, 0, 0:2] = 2
    return array


def test_nifti_round_trip_keeps_voxels_and_geometry(tmp_path):
    path = lib.write_image(_label_array(), IJK_TO_LPS, tmp_path / "label.nii.gz")
    array, ijk_to_lps = lib.read_image(path)
    np.testing.assert_array_equal(array, _label_array())
    np.testing.assert_allclose(ijk_to_lps, IJK_TO_LPS, atol=1e-5)
    # Independent reader: nibabel's RAS affine, voxel order [i, j, k].
    nifti = nib.load(str(path))
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ nifti.affine, IJK_TO_LPS, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj).transpose(2, 1, 0), _label_array())


def test_remap_labels_maps_export_values_to_server_values():
    exported = np.array([[0, 1, 2, 3]])
    np.testing.assert_array_equal(lib.remap_labels(exported, {1: 5, 2: 1}), [[0, 5, 1, 0]])


def test_uncertainty_helpers():
    u = np.zeros((5, 4, 4))
    u[3, 1:3, 1:3] = 0.8
    u[1, 0, 0] = 1.0  # single hot voxel: less total uncertainty than slice 3
    assert lib.most_uncertain_slice(u) == 3
    assert lib.most_uncertain_slice(u, axis=2) in (1, 2)
    low, high = lib.uncertainty_display_range(u)
    assert low == 0.0 and 0.0 < high <= 1.0
    assert lib.uncertainty_display_range(np.zeros((2, 2, 2))) == (0.0, 1.0)


# -- client: errors and wire format ------------------------------------------------------------------------


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_gives_a_clear_message():
    url = f"http://127.0.0.1:{_closed_port()}"
    client = lib.MedSegDiffClient(url)
    with pytest.raises(lib.ServerError) as error:
        client.info()
    message = str(error.value)
    assert "Cannot connect" in message and url in message and "Is the server running" in message
    assert error.value.status is None


@pytest.mark.parametrize("url", ["", "127.0.0.1:8000", "ftp://host/x", "http://"])
def test_malformed_url_is_rejected(url):
    with pytest.raises(lib.ServerError, match="not a valid server URL"):
        lib.MedSegDiffClient(url)


class _NotMonaiLabel(http.server.BaseHTTPRequestHandler):
    """Some other web server: HTML 404 everywhere, and a FastAPI-style 422 on /infer/."""

    def do_GET(self):
        body = b"<html><body>404 here</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"detail": [{"loc": ["body", "params"], "msg": "num_ensemble must be >= 1"}]}).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_web_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMonaiLabel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_of_another_web_server_is_reported_as_wrong(other_web_server):
    with pytest.raises(lib.ServerError, match="not the root of a MONAI Label server") as error:
        lib.MedSegDiffClient(other_web_server).info()
    assert error.value.status == 404


def test_4xx_message_carries_the_server_detail(other_web_server):
    with pytest.raises(lib.ServerError) as error:
        lib.MedSegDiffClient(other_web_server).infer("medsegdiff", "img", {"num_ensemble": 0})
    assert error.value.status == 422
    assert "HTTP 422" in str(error.value) and "body.params: num_ensemble must be >= 1" in str(error.value)


def test_parse_multipart_reads_a_body_from_another_encoder():
    payload = bytes(range(256)) * 3 + b"\r\n--\r\n\r\n"  # binary with CRLFs and dashes
    body, content_type = urllib3.encode_multipart_formdata(
        {"params": json.dumps({"latencies": {"total": 1.5}}), "image": ("label.nii.gz", payload, "application/gzip")}
    )
    parts = {p["name"]: p for p in lib.parse_multipart(body, content_type)}
    assert json.loads(parts["params"]["data"]) == {"latencies": {"total": 1.5}}
    assert parts["params"]["filename"] is None
    assert parts["image"]["filename"] == "label.nii.gz"
    assert parts["image"]["data"] == payload


# -- background jobs and training progress --------------------------------------------------------------


def test_background_job_reports_progress_and_result():
    release = threading.Event()

    def work(report, x):
        report(0.5, "half way")
        release.wait(5)
        return x * 2

    job = lib.BackgroundJob(work, 21).start()
    for _ in range(100):
        if job.progress == (0.5, "half way"):
            break
        threading.Event().wait(0.01)
    assert job.progress == (0.5, "half way") and not job.done
    with pytest.raises(RuntimeError, match="before the job finished"):
        job.result()
    release.set()
    assert job.wait(5) and job.result() == 42


def test_background_job_hands_the_exception_to_the_caller():
    def fail(report):
        raise lib.ServerError("server down")

    job = lib.BackgroundJob(fail).start()
    assert job.wait(5)
    assert isinstance(job.error, lib.ServerError)
    with pytest.raises(lib.ServerError, match="server down"):
        job.result()


def test_training_progress_from_task_and_stats():
    task = {"id": "t", "status": "RUNNING", "request": {"max_epochs": 4}, "details": ["Epoch: 2/4"]}
    stats = {
        "start_ts": 200,
        "epoch": 2,
        "total_epochs": 4,
        "best_metric": 0.7,
        "eval": {"key_metric_name": "val_mean_dice", "metrics": {"val_mean_dice": 0.65}, "best_metric": 0.7},
    }
    progress = lib.training_progress(task, stats)
    assert (progress.epoch, progress.total_epochs, progress.fraction) == (2, 4, 0.5)
    assert (progress.dice, progress.best_dice, progress.message) == (0.65, 0.7, "Epoch: 2/4")
    assert not progress.finished
    stale = lib.training_progress(task, stats, baseline_start_ts=200)  # stats of the previous run
    assert (stale.epoch, stale.dice, stale.total_epochs) == (0, None, 4)
    done = lib.training_progress(dict(task, status="DONE"), stats)
    assert done.finished and done.fraction == 1.0
    assert lib.training_progress(None, {}).finished
