"""The app on a real PACS: Orthanc with DICOMweb (``--studies <orthanc>/dicom-web``), no mock.

Flow, with the official ``MONAILabelClient``: /info lists the PACS series → next sample → infer a sample head
converted to DICOM (label on the series' geometry, same label as inferring its NIfTI) and its uncertainty →
save the label (a DICOM SEG in Orthanc, read back with pydicom-seg: segment ``brain``, the source series
referenced, the same voxels and geometry) → bad input answered 4xx with nothing stored → a fresh cache gets
the labels back from the PACS → train on them → Orthanc stopped: 503 naming it while /info answers, and after
its restart everything saved is there. Inference uses 1 step and 2 members.
"""

from __future__ import annotations

import os
import re
import time

import nibabel as nib
import numpy as np
import pydicom_seg
import pytest
import requests
import SimpleITK as sitk
from dicomweb_client import DICOMwebClient
from pacs_fixtures import orthanc, pacs_server  # noqa: F401 (fixtures)

from medsegdiff.metrics import dice_per_class
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
FAST = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 3}
HEAD = "robex_head_lowres"


def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def _status(error: MONAILabelClientException) -> int | None:
    """The HTTP status of a client error (``infer`` leaves ``status_code`` unset, its message starts with it)."""
    if error.status_code is not None:
        return error.status_code
    match = re.match(r"Status: (\d+)", str(error.msg))
    return int(match.group(1)) if match else None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(dice_per_class(a.astype(np.uint8), b.astype(np.uint8), num_classes=1)[0])


def _segs(orthanc) -> list:
    """The DICOM SEG instances in Orthanc, read over DICOMweb."""
    client = DICOMwebClient(orthanc.server.dicomweb_url)
    instances = []
    for found in client.search_for_series(search_filters={"Modality": "SEG"}):
        study, series = found["0020000D"]["Value"][0], found["0020000E"]["Value"][0]
        instances += client.retrieve_series(study, series)
    return instances


def _seg_as_nifti(ds, tmp_path) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    result = pydicom_seg.MultiClassReader().read(ds)
    path = str(tmp_path / f"seg_{ds.SeriesInstanceUID}.nii.gz")
    sitk.WriteImage(result.image, path)
    data, affine = _load(path)
    return data, affine, {number: str(info.SegmentLabel) for number, info in result.segment_infos.items()}


# ---------------------------------------------------------------------------------------------- stages
@pytest.fixture(scope="module")
def client(pacs_server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(pacs_server.url, tmpdir=str(tmp_path_factory.mktemp("pacs_client")))


@pytest.fixture(scope="module")
def inferred(client, orthanc) -> dict:
    """Infer the head through the PACS and from its NIfTI file, same seed."""
    uid = orthanc.series[HEAD]
    pacs_file, pacs_params = client.infer(MODEL, uid, FAST)
    nifti_file, _ = client.infer(MODEL, "", FAST, file=str(orthanc.sample_datastore / f"{HEAD}.nii.gz"))
    return {"uid": uid, "file": pacs_file, "params": pacs_params, "nifti_file": nifti_file}


@pytest.fixture(scope="module")
def saved(client, orthanc, inferred) -> dict:
    """The inferred labels of both heads saved as final labels."""
    flipped_file, _ = client.infer(MODEL, orthanc.series["robex_head_flipped"], FAST)
    answers = {
        HEAD: client.save_label(inferred["uid"], inferred["file"], tag="final"),
        "robex_head_flipped": client.save_label(orthanc.series["robex_head_flipped"], flipped_file, tag="final"),
    }
    return {"answers": answers, "files": {HEAD: inferred["file"], "robex_head_flipped": flipped_file}}


# ---------------------------------------------------------------------------------------------- tests
def test_info_lists_the_pacs_series_and_names_orthanc(client, orthanc) -> None:
    datastore = client.info()["datastore"]
    assert datastore["total"] == 3  # the MR series: two heads and the radial pydicom series (not the CT)
    assert "Orthanc" in datastore["pacs"] and "available" in datastore["pacs"]


def test_next_sample_is_an_unlabelled_pacs_volume(client, orthanc) -> None:
    heads = {orthanc.series[name] for name in ("robex_head_lowres", "robex_head_flipped")}
    # never the radial series (not a volume); 2 calls: MONAI Label's random strategy fails (weights 0) when every
    # candidate was already handed out within the same second
    for _ in range(2):
        assert client.next_sample("random", {})["id"] in heads


def test_infer_gives_the_label_on_the_series_geometry_and_as_for_its_nifti(inferred, orthanc) -> None:
    label, affine = _load(inferred["file"])
    source = nib.load(str(orthanc.sample_datastore / f"{HEAD}.nii.gz"))
    assert label.shape == source.shape
    np.testing.assert_allclose(affine, source.affine, atol=1e-3)
    nifti_label, nifti_affine = _load(inferred["nifti_file"])
    np.testing.assert_allclose(nifti_affine, affine, atol=1e-3)
    assert label.sum() > 1000, "the sample model finds a brain in the head"
    # the series holds the head as int16 DICOM (rounded intensities): the 0.80 M sample model's 1-step labels of
    # the two agree to Dice 0.990 (measured); a wrong geometry or orientation gives far less
    assert _dice(label, nifti_label) >= 0.98


def test_infer_keeps_the_uncertainty_map_of_the_series(client, inferred) -> None:
    assert inferred["params"]["uncertainty"]["label_tag"] == "uncertainty"
    path = client.download_label(inferred["uid"], "uncertainty")
    data, affine = _load(path)
    label, label_affine = _load(inferred["file"])
    assert data.shape == label.shape and np.isfinite(data).all() and data.max() > 0
    np.testing.assert_allclose(affine, label_affine, atol=1e-3)


def test_saved_label_is_a_dicom_seg_in_orthanc_referencing_the_series(saved, orthanc, tmp_path) -> None:
    by_source = {str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID): ds for ds in _segs(orthanc)}
    assert set(by_source) == {orthanc.series[HEAD], orthanc.series["robex_head_flipped"]}
    for name, label_file in saved["files"].items():
        seg = by_source[orthanc.series[name]]
        assert seg.Modality == "SEG"
        data, affine, segments = _seg_as_nifti(seg, tmp_path)
        label, label_affine = _load(label_file)
        assert segments == {1: "brain"}
        assert data.shape == label.shape
        np.testing.assert_allclose(affine, label_affine, atol=1e-3)
        assert _dice(data, label) >= 0.99


def test_a_series_that_is_not_a_volume_is_refused_with_422(client, orthanc) -> None:
    with pytest.raises(MONAILabelClientException) as e:
        client.infer(MODEL, orthanc.series["pydicom_mr700"], FAST)
    assert _status(e.value) == 422 and "not a volume" in str(e.value.msg)


def test_labelled_series_leave_the_next_sample_pool(client, orthanc, saved) -> None:
    datastore = client.info()["datastore"]
    assert datastore["completed"] == 2
    assert client.next_sample("random", {}) == {}  # both heads labelled; the radial series is no volume


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("unknown series", 404, "not in the PACS"),
        ("wrong grid", 422, ""),
        ("unknown label value", 422, ""),
        ("empty label", 422, "empty"),
        ("image upload", 405, "PACS"),
    ],
)
def test_bad_input_on_the_pacs_path_is_refused_and_stores_nothing(
    client, orthanc, saved, tmp_path, case: str, status: int, words: str
) -> None:
    before = len(_segs(orthanc))
    head = orthanc.sample_datastore / f"{HEAD}.nii.gz"
    source = nib.load(str(head))
    path = str(tmp_path / "label.nii.gz")
    data = np.zeros(source.shape, np.uint8)
    data[10:20, 10:20, 10:20] = 1
    if case == "wrong grid":
        data = data[:-1]
    if case == "unknown label value":
        data[data == 1] = 7
    if case == "empty label":
        data[:] = 0
    nib.save(nib.Nifti1Image(data, source.affine), path)
    with pytest.raises(MONAILabelClientException) as e:
        if case == "image upload":
            client.upload_image(str(head), "new_head")
        else:
            client.save_label("1.2.3.4" if case == "unknown series" else orthanc.series[HEAD], path, tag="final")
    assert _status(e.value) == status, e.value.msg
    assert words in str(e.value.msg)
    assert len(_segs(orthanc)) == before


def test_a_fresh_cache_gets_the_labels_back_from_the_pacs(orthanc, saved, tmp_path) -> None:
    from monailabel_app.lib.pacs.datastore import SafeDICOMwebDatastore, make_client

    store = SafeDICOMwebDatastore(make_client(orthanc.server.dicomweb_url), {"Modality": "MR"}, str(tmp_path), {"brain": 1})
    items = {os.path.realpath(item["image"]): item["label"] for item in store.datalist()}
    assert len(items) == 2
    for name, label_file in saved["files"].items():
        image_path = os.path.realpath(store.get_image_uri(orthanc.series[name]))
        data, affine = _load(items[image_path])
        label, label_affine = _load(label_file)
        np.testing.assert_allclose(affine, label_affine, atol=1e-3)
        assert _dice(data, label) >= 0.99


def test_training_on_the_pacs_labels_publishes_a_checkpoint(client, pacs_server, saved) -> None:
    params = {"max_epochs": 1, "samples_per_epoch": 4, "batch_size": 2, "val_split": 0.5,
              "val_num_inference_steps": 1, "val_num_ensemble": 2}  # fmt: skip
    client.train_start(MODEL, params)
    deadline = time.monotonic() + 600
    while (task := requests.get(f"{pacs_server.url}/train/", timeout=30).json()).get("status") not in ("DONE", "ERROR"):
        assert time.monotonic() < deadline, "training did not finish in 600 s"
        time.sleep(1)
    assert task["status"] == "DONE", f"{task.get('details')}\n{pacs_server.log()}"
    assert (pacs_server.model_dir / MODEL / "last.pt").is_file()


def test_orthanc_down_gives_503_naming_it_and_loses_nothing(client, pacs_server, orthanc, saved, inferred) -> None:
    seg_uids = sorted(str(ds.SeriesInstanceUID) for ds in _segs(orthanc))
    orthanc.stop()
    try:
        info = client.info()  # the server keeps serving
        assert "Orthanc" in info["datastore"]["pacs"] and "not reachable" in info["datastore"]["pacs"]
        calls = {
            "next sample": lambda: client.next_sample("random", {}),
            "infer": lambda: client.infer(MODEL, inferred["uid"], FAST),
            "save label": lambda: client.save_label(inferred["uid"], inferred["file"], tag="final"),
        }
        for what, call in calls.items():
            with pytest.raises(MONAILabelClientException) as e:
                call()
            assert _status(e.value) == 503, f"{what}: {e.value.msg}"
            assert "Orthanc" in str(e.value.msg), what
        assert client.info()["name"] == "MedSegDiff Label"
    finally:
        orthanc.restart()
    assert sorted(str(ds.SeriesInstanceUID) for ds in _segs(orthanc)) == seg_uids
    assert client.info()["datastore"]["completed"] == 2
