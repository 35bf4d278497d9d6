"""A strict, quiet API (issue 15): misspelt parameters are refused with a suggestion, unread keys are reported,
no answer names a server folder.

Unit tests for the suggestion rule, then the real server of tests/conftest.py (``monailabel_server``): typos in
infer / train / scoring requests → 422 "did you mean"; an infer request built like the stock MONAILabel Slicer
plugin's (plugins/slicer/MONAILabel/MONAILabel.py: the ``/info`` config with each list replaced by its first
item, plus ``result_extension`` ".nrrd" and ``result_dtype`` "uint8", sent by ``MONAILabelClient`` with the
plugin's default ``client_id`` "user-xyz") → 200 and the right label; ``eta``; and the raw text of every
``/info``, ``/infer``, ``/train``, ``/scoring`` and ``/activelearning`` answer checked for the server's checkout,
app, datastore and model folders.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from medsegdiff.metrics import dice_per_class
from monailabel.client import MONAILabelClient

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
sys.path.insert(0, str(APP_DIR))
from lib.params import INFER_PARAMS, UnknownParameter  # noqa: E402
from lib.request_keys import suggest, unread_keys  # noqa: E402

MODEL = "medsegdiff"
SCORING = f"{MODEL}_uncertainty"
FAST = {"num_inference_steps": 2, "num_ensemble": 2}
TIMEOUT = 300
INFER_NAMES = [p.name for p in INFER_PARAMS]


# ---------------------------------------------------------------------------------------------- suggestion rule
@pytest.mark.parametrize(
    "key, expected",
    [
        ("num_ensembles", "num_ensemble"),  # plural
        ("num_inference_step", "num_inference_steps"),  # singular
        ("num_ensmble", "num_ensemble"),  # deletion
        ("smapler", "sampler"),  # transposition
        ("fuson", "fusion"),
        ("SEED", "seed"),  # case
        ("Num_Ensemble", "num_ensemble"),
        ("et", "eta"),  # a short name: one edit
        ("num_inferences_steps", "num_inference_steps"),  # a plural inside the name
        ("t", None),  # two edits from "eta", but "eta" is short
        ("seed", None),  # declared: no near-miss of itself
        ("label_info", None),
        ("colour", None),
        ("num_inference", None),  # too far from num_inference_steps
    ],
)
def test_suggest_finds_near_misses_only(key, expected):
    assert suggest(key, INFER_NAMES) == expected


def test_suggest_two_edits_on_long_names():
    assert suggest("lerning_rat", ["learning_rate", "batch_size"]) == "learning_rate"
    assert suggest("lerning_rt", ["learning_rate", "batch_size"]) is None  # three edits


def test_suggest_plural_or_singular_beyond_two_edits():
    assert suggest("max_entries", ["max_entry", "seed"]) == "max_entry"  # 3 edits, the same words
    assert suggest("nums_inferences_step", INFER_NAMES) == "num_inference_steps"


def test_unread_keys_refuses_typos_and_reports_the_rest():
    with pytest.raises(UnknownParameter, match=r"unknown parameter `num_ensembles`; did you mean `num_ensemble`\?"):
        unread_keys({"num_ensembles": 20}, INFER_NAMES, "infer")
    request = {"seed": 1, "model": MODEL, "image": "x", "label_tag": "original", "client_id": "u", "foo_bar": 1}
    assert unread_keys(request, INFER_NAMES, "infer") == ["client_id", "foo_bar"]


def test_client_keys_are_never_taken_for_typos():
    # declared names one edit away from keys that MONAI Label or the Slicer plugin send
    declared = ["result_dtypes", "label_tags", "client_ids"]
    request = {"result_dtype": "uint8", "label_tag": "original", "client_id": "user-xyz"}
    assert unread_keys(request, declared, "infer") == ["client_id", "result_dtype"]


# ---------------------------------------------------------------------------------------------- server helpers
def _infer(server, image_id: str, params: dict, output: str = "json") -> requests.Response:
    return requests.post(
        f"{server.url}/infer/{MODEL}",
        params={"image": image_id, "output": output},
        files={"params": (None, json.dumps(params))},
        timeout=TIMEOUT,
    )


def _wait(url: str, what: str) -> requests.Response:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        response = requests.get(url, timeout=30)
        if response.json().get("status") in ("DONE", "ERROR", "STOPPED"):
            return response
        time.sleep(1)
    pytest.fail(f"{what} did not finish within {TIMEOUT} s")


def _server_paths(server) -> set[str]:
    folders = [REPO, APP_DIR, server.datastore, server.model_dir]
    return {str(p) for f in folders for p in (Path(f).absolute(), Path(f).resolve())}


def _leaks(text: str, server) -> list[str]:
    """The server folders ``text`` names (as whole path components: ``/a/b`` is not in ``/a/b-c``)."""
    return sorted(p for p in _server_paths(server) if re.search(re.escape(p) + r"(?![\w.-])", text))


# ---------------------------------------------------------------------------------------------- typos → 422
@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"num_ensembles": 20}, "unknown parameter `num_ensembles`; did you mean `num_ensemble`?"),
        ({"num_inference_step": 2}, "did you mean `num_inference_steps`?"),
        ({"Seed": 3}, "unknown parameter `Seed`; did you mean `seed`?"),
        ({"etta": 0.5}, "did you mean `eta`?"),
        ({"eta": 1.5}, "eta must be in [0.0, 1.0]"),
        ({"eta": -0.1}, "eta must be in [0.0, 1.0]"),
        ({"eta": "abc"}, "eta must be a number"),
        ({"eta": [0.5]}, "eta must be a number"),
        ({"eta": True}, "eta must be a number"),
        ({"eta": 0.5, "sampler": "ddpm"}, "eta applies to the ddim sampler only"),
    ],
)
def test_infer_typo_or_bad_eta_is_refused_naming_it(monailabel_server, params, fragment):
    response = _infer(monailabel_server, "robex_head", params)
    assert response.status_code == 422 and fragment in response.json()["detail"], response.text


@pytest.mark.parametrize(
    "kind, body, fragment",
    [
        ("train", {"max_epoch": 1}, "unknown parameter `max_epoch`; did you mean `max_epochs`?"),
        ("train", {"learning_rates": 1e-4}, "did you mean `learning_rate`?"),
        ("train", {"pretrain": False}, "did you mean `pretrained`?"),
        ("train", {"learning_rate": -1}, "learning_rate must be in"),
        ("train", {"max_epochs": "many"}, "max_epochs must be an integer"),
        ("train", {"name": "../../escape"}, "name must match"),
        ("train", {"pretrained": "maybe"}, "pretrained must be true or false"),
        ("train", {"gpus": "0;rm"}, "gpus must match"),
        ("scoring", {"num_ensembles": 3}, "unknown parameter `num_ensembles`; did you mean `num_ensemble`?"),
        ("scoring", {"forse": True}, "did you mean `force`?"),
        ("scoring", {"num_ensemble": 1}, "num_ensemble must be in [2, 32]"),
    ],
)
def test_task_typo_or_bad_value_is_refused_before_a_task_starts(monailabel_server, kind, body, fragment):
    name = MODEL if kind == "train" else SCORING
    status = f"{monailabel_server.url}/{kind}/"
    before = requests.get(status, params={"all": "true"}, timeout=30)
    response = requests.post(f"{monailabel_server.url}/{kind}/{name}", json=body, timeout=30)
    assert response.status_code == 422 and fragment in response.json()["detail"], response.text
    after = requests.get(status, params={"all": "true"}, timeout=30)
    assert after.text == before.text  # no task was submitted


# ---------------------------------------------------------------------------------------------- accepted requests
@pytest.fixture(scope="module")
def slicer_result(monailabel_server, tmp_path_factory):
    """An infer request as the stock Slicer plugin builds it (``getParamsFromConfig`` + ``logic.infer``)."""
    info = requests.get(f"{monailabel_server.url}/info/", timeout=30).json()
    params = {k: v[0] if isinstance(v, list) else v for k, v in info["models"][MODEL]["config"].items()}
    params.update(FAST)  # the annotator lowered steps and members in the plugin's options table (same types)
    params["result_extension"] = ".nrrd"
    params["result_dtype"] = "uint8"
    client = MONAILabelClient(monailabel_server.url, str(tmp_path_factory.mktemp("slicer")), "user-xyz")
    return client.infer(MODEL, "robex_head", params, None, None, None)


def test_slicer_plugin_request_segments_the_head(monailabel_server, slicer_result):
    label_path, result = slicer_result
    image = nib.load(str(monailabel_server.datastore / "robex_head.nii.gz"))
    label = np.asarray(nib.load(label_path).dataobj)
    assert label.shape == image.shape
    assert result["params"] == {**FAST, "sampler": "ddim", "seed": 0, "device": "auto", "fusion": "mean", "eta": 0.0,
                                "largest_component": True, "output_probability": False, "foreground": [], "background": [],
                                "click_radius": 2, "click_reach": 0, "click_spread": 3, "click_doubt": True, "uncertainty_margin": 1, "marked_class": 1}
    # the plugin's keys nobody here reads are reported, not refused (the label comes back as NIfTI uint8)
    assert result["ignored_parameters"] == ["client_id", "result_dtype", "result_extension"]
    if not monailabel_server.trained_checkpoint:
        pytest.skip("monailabel_app/model/medsegdiff_brain_2d.pt (the trained sample model) does not exist yet")
    reference = np.asarray(nib.load(str(monailabel_server.reference_dir / "robex_head_mask.nii.gz")).dataobj)
    assert dice_per_class(label > 0, reference > 0)[0] >= 0.9


@pytest.fixture(scope="module")
def eta_response(monailabel_server, slicer_result) -> requests.Response:
    """The Slicer request's settings with eta 1 and an undeclared key, as raw JSON."""
    response = _infer(monailabel_server, "robex_head", {**FAST, "eta": 1.0, "foo_bar": 1})
    assert response.status_code == 200, response.text
    return response


def test_undeclared_key_is_listed_and_logged_once(monailabel_server, eta_response):
    assert eta_response.json()["ignored_parameters"] == ["foo_bar"]
    again = _infer(monailabel_server, "robex_head_lowres", {"num_inference_steps": 1, "num_ensemble": 1, "foo_bar": 2})
    assert again.status_code == 200 and again.json()["ignored_parameters"] == ["foo_bar"], again.text
    log = monailabel_server.log_path.read_text(errors="replace")
    assert log.count("ignored request parameter(s) foo_bar") == 1


def test_eta_reaches_the_sampler(eta_response, slicer_result):
    result = eta_response.json()
    assert result["params"]["eta"] == 1.0
    # same seed, steps and members: only the DDIM noise differs, so the ensemble disagrees differently
    assert result["uncertainty"]["mean"] != pytest.approx(slicer_result[1]["uncertainty"]["mean"], abs=1e-7)


def test_checkpoint_is_described_without_its_path(monailabel_server, slicer_result):
    checkpoint = slicer_result[1]["checkpoint"]
    current = monailabel_server.model_dir / MODEL / "best.pt"
    current = current if current.is_file() else monailabel_server.checkpoint
    assert checkpoint["model"] == MODEL and checkpoint["file"] == current.name
    assert checkpoint["mtime"] == os.stat(current).st_mtime
    assert "path" not in checkpoint


# ---------------------------------------------------------------------------------------------- no server paths
@pytest.fixture(scope="module")
def scored(monailabel_server) -> dict[str, requests.Response]:
    url = monailabel_server.url
    started = requests.post(f"{url}/scoring/{SCORING}", json={"num_inference_steps": 1, "num_ensemble": 2}, timeout=60)
    assert started.status_code == 200, started.text
    done = _wait(f"{url}/scoring/", "scoring")
    assert done.json()["status"] == "DONE", done.text
    sample = requests.post(f"{url}/activelearning/uncertainty", json={"client_id": "user-xyz"}, timeout=60)
    assert sample.status_code == 200 and sample.json().get("id"), sample.text
    return {"POST /scoring": started, "GET /scoring": done, "POST /activelearning": sample}


@pytest.fixture(scope="module")
def trained(monailabel_server, scored) -> dict[str, requests.Response]:
    """The smallest training run (1 iteration, almost no learning rate: later inferences see the same model)."""
    body = {
        "max_epochs": 1, "samples_per_epoch": 1, "batch_size": 1, "learning_rate": 1e-8, "val_split": 0.0,
        "val_num_inference_steps": 1, "val_num_ensemble": 1, "client_id": "user-xyz",
    }  # fmt: skip
    started = requests.post(f"{monailabel_server.url}/train/{MODEL}", json=body, timeout=60)
    assert started.status_code == 200, started.text
    done = _wait(f"{monailabel_server.url}/train/", "training")
    assert done.json()["status"] == "DONE", done.text
    every = requests.get(f"{monailabel_server.url}/train/", params={"all": "true"}, timeout=30)
    return {"POST /train": started, "GET /train": done, "GET /train?all": every}


def test_train_answer_lists_ignored_keys_and_the_task_logs_them(monailabel_server, trained):
    assert trained["POST /train"].json()["ignored_parameters"] == ["client_id"]
    log = monailabel_server.log_path.read_text(errors="replace")
    assert f"train {MODEL}: ignored request parameter(s) client_id" in log


def test_no_answer_names_a_server_folder(monailabel_server, slicer_result, eta_response, scored, trained):
    url = monailabel_server.url
    answers = {
        "GET /info": requests.get(f"{url}/info/", timeout=30),
        "POST /infer": eta_response,
        "POST /infer typo": _infer(monailabel_server, "robex_head", {"num_ensembles": 2}),
        "POST /train typo": requests.post(f"{url}/train/{MODEL}", json={"max_epoch": 1}, timeout=30),
        **scored,
        **trained,
    }
    texts = {what: response.text for what, response in answers.items()}
    texts["infer result of the Slicer request"] = json.dumps(slicer_result[1])
    leaks = {what: _leaks(text, monailabel_server) for what, text in texts.items()}
    leaks = {what: (found, texts[what][:1500]) for what, found in leaks.items() if found}
    assert not leaks, f"answers name server folders: {leaks}"
    assert trained["GET /train"].json()["details"], "the task status carries its log lines (redacted)"
