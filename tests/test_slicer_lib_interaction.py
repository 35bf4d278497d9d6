"""MedSegDiffLib builds the interactive-correction request the real server accepts (clicks, undo, scribbles)."""

import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_ext" / "MedSegDiff"
sys.path.insert(0, str(MODULE_DIR))
import MedSegDiffLib as lib  # noqa: E402

MODEL = "medsegdiff"
IMAGE = "robex_head_lowres"
FAST = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 5}


def test_ijk_point_rounds_and_refuses_outside():
    assert lib.ijk_point([1.4, 2.6, 0.0], (3, 4, 5)) == [1, 3, 0]
    with pytest.raises(ValueError, match="outside"):
        lib.ijk_point([4.6, 0, 0], (3, 4, 5))  # i runs over the last array axis (5)
    with pytest.raises(ValueError, match="3 coordinates"):
        lib.ijk_point([1, 2], (3, 4, 5))


def test_history_undo_and_label_in():
    history = lib.InteractionHistory((2, 3, 4))
    history.add_clicks(True, [[0, 0, 0]])
    history.add_clicks(False, [[3, 2, 1]])
    fg = np.zeros((2, 3, 4), bool)
    fg[1, 1, 1] = True
    history.add_scribble(foreground=fg)
    assert history.request({"seed": 1}) == {"seed": 1, "foreground": [[0, 0, 0]], "background": [[3, 2, 1]]}
    assert history.label_in()[1, 1, 1] == 1 and history.label_in().sum() == 1
    history.undo()
    assert history.label_in() is None
    history.undo()
    assert history.request()["background"] == []
    with pytest.raises(ValueError, match="scribble of shape"):
        history.add_scribble(background=np.zeros((3, 3, 3), bool))


def test_one_interaction_holds_clicks_and_scribbles_and_is_undone_whole():
    history = lib.InteractionHistory((2, 3, 4))
    history.add_clicks(True, [[0, 0, 0]])
    fg, bg = np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool)
    fg[0, 1, 1], bg[1, 2, 3] = True, True
    candidate = history.copy()
    added = candidate.add(positive=[[1.2, 0.4, 1.0]], negative=[[3, 2, 1]], foreground=fg, background=bg, tag=["P-2"])
    assert added.tag == ["P-2"] and len(candidate.interactions) == 2 and len(history.interactions) == 1
    assert candidate.request()["foreground"] == [[0, 0, 0], [1, 0, 1]] and candidate.request()["background"] == [[3, 2, 1]]
    assert candidate.scribbled("foreground")[0, 1, 1] and candidate.scribbled("foreground").sum() == 1
    assert candidate.label_in()[1, 2, 3] == 2
    assert candidate.add(foreground=np.zeros((2, 3, 4), bool)) is None and len(candidate.interactions) == 2
    assert candidate.undo() is added  # clicks and scribbles of the interaction go together
    assert candidate.request() == history.request() and candidate.label_in() is None
    with pytest.raises(ValueError, match="outside"):
        candidate.add(positive=[[0, 0, 0]], negative=[[9, 0, 0]])
    assert len(candidate.interactions) == 1, "a refused interaction adds nothing"


@pytest.fixture(scope="module")
def served(monailabel_server, tmp_path_factory):
    client = lib.MedSegDiffClient(monailabel_server.url)
    image_file = Path(monailabel_server.datastore) / f"{IMAGE}.nii.gz"
    shape, ijk_to_lps = lib.read_geometry(image_file)
    plain = client.infer(MODEL, IMAGE, FAST, dest_dir=str(tmp_path_factory.mktemp("plain")))
    return client, shape, ijk_to_lps, lib.read_image(plain.label_path)[0], tmp_path_factory


def test_lib_request_is_accepted_and_respected(served):
    client, shape, ijk_to_lps, plain, tmp = served
    values = lib.label_in_values(client.info()["models"][MODEL])
    history = lib.InteractionHistory(shape)
    k = shape[0] // 2
    misses, hits = np.argwhere(plain[k] == 0), np.argwhere(plain[k] == 1)
    positive = [[float(i), float(j), float(k)] for j, i in misses[:: max(1, len(misses) // 3)][:3]]
    negative = [[float(i), float(j), float(k)] for j, i in hits[:: max(1, len(hits) // 3)][:3]]
    history.add_clicks(True, positive)
    history.add_clicks(False, negative)
    history.add_clicks(True, [[0.0, 0.0, 0.0]])
    history.undo()  # the last click is not sent
    scribble = np.zeros(shape, bool)
    scribble[k // 2, shape[1] // 2, :] = True
    history.add_scribble(foreground=scribble & (plain == 0), background=scribble & (plain == 1))
    label_in = history.write_label_in(ijk_to_lps, tmp.mktemp("scribble") / "label_in.nii.gz", values)
    params = history.request(FAST)
    result = client.infer(MODEL, IMAGE, params, dest_dir=str(tmp.mktemp("out")), label_in=label_in)
    assert result.result["params"]["foreground"] == params["foreground"] == [[int(c) for c in p] for p in positive]
    assert result.result["params"]["background"] == params["background"]
    assert result.result["ignored_parameters"] == []
    counts = result.result["interaction"]["marked_voxels"]
    assert counts["scribble_foreground"] == int((scribble & (plain == 0)).sum())
    assert counts["scribble_background"] == int((scribble & (plain == 1)).sum())
    corrected = lib.read_image(result.label_path)[0]
    assert all(corrected[int(p[2]), int(p[1]), int(p[0])] == 1 for p in positive)
    assert all(corrected[int(p[2]), int(p[1]), int(p[0])] == 0 for p in negative)
    assert np.all(corrected[scribble & (plain == 0)] == 1) and np.all(corrected[scribble & (plain == 1)] == 0)
