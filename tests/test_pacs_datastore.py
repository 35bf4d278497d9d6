"""The PACS pieces without the app server: DICOM series geometry through a real Orthanc, DICOM SEG written and
read back, and an unreachable PACS named in a 503. Fast (seconds) once the ``orthanc`` fixture is up."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pacs_fixtures import orthanc  # noqa: F401 (fixture)

from monailabel_app.lib.pacs.datastore import PacsUnavailableError, SafeDICOMwebDatastore, make_client
from monailabel_app.lib.pacs.orthanc import PYDICOM_VOLUME, free_port, upload_volume
from monailabel_app.lib.pacs.series import SeriesInfo, volume_to_mr_series


def _store(orthanc, tmp_path) -> SafeDICOMwebDatastore:
    return SafeDICOMwebDatastore(make_client(orthanc.server.dicomweb_url), {"Modality": "MR"}, str(tmp_path), {"brain": 1})


def _world(affine: np.ndarray, shape) -> np.ndarray:
    """World (RAS) positions of the 8 corner voxels, as a set independent of the axis order."""
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return np.array(sorted(map(tuple, np.round((affine @ corners.T).T[:, :3], 2))))


def test_an_oblique_las_volume_comes_back_from_orthanc_on_its_grid(orthanc, tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(9, 7, 5)).astype(np.int16)
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 2.0, 3.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    uid = upload_volume(orthanc.server.url, data, affine, SeriesInfo("oblique", "oblique LAS test volume"))
    back = nib.load(_store(orthanc, tmp_path).get_image_uri(uid))
    assert back.shape == data.shape
    np.testing.assert_allclose(_world(back.affine, back.shape), _world(affine, data.shape), atol=0.01)
    # every voxel at its world position: map back's voxel grid onto the original one
    index = np.rint(np.linalg.inv(affine) @ back.affine).astype(int)
    ii, jj, kk = np.meshgrid(*map(np.arange, back.shape), indexing="ij")
    src = index[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), kk.ravel()]) + index[:3, 3:4]
    np.testing.assert_array_equal(np.asarray(back.dataobj).ravel(), data[src[0], src[1], src[2]])


def test_a_real_pydicom_ct_volume_converts_with_the_geometry_its_headers_give(orthanc, tmp_path) -> None:
    store = SafeDICOMwebDatastore(make_client(orthanc.server.dicomweb_url), {"Modality": "CT"}, str(tmp_path), {"brain": 1})
    assert store.list_images() == [orthanc.series["pydicom_ct5n"]]
    img = nib.load(store.get_image_uri(orthanc.series["pydicom_ct5n"]))
    folder = Path(pydicom.data.__file__).parent / "test_files" / PYDICOM_VOLUME
    slices = [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]
    assert img.shape == (int(slices[0].Columns), int(slices[0].Rows), len(slices))
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    positions = sorted(tuple(np.round(np.asarray(d.ImagePositionPatient, float) * lps_to_ras, 2)) for d in slices)
    voxel_positions = sorted(tuple(np.round(img.affine @ [0, 0, k, 1], 2)[:3]) for k in range(len(slices)))
    assert voxel_positions == positions
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:2]), [float(v) for v in slices[0].PixelSpacing], atol=1e-4)
    stored = {tuple(np.round(np.asarray(d.ImagePositionPatient, float) * lps_to_ras, 2)): d for d in slices}
    for k in range(len(slices)):
        d = stored[tuple(np.round(img.affine @ [0, 0, k, 1], 2)[:3])]
        expected = d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_allclose(np.asarray(img.dataobj)[:, :, k], expected)


def test_radial_slices_are_refused_as_not_a_volume(orthanc, tmp_path) -> None:
    from fastapi import HTTPException

    store = _store(orthanc, tmp_path)
    radial = orthanc.series["pydicom_mr700"]
    assert "not a volume" in store.volume_problem(radial)
    assert radial in store.list_images() and radial not in store.get_unlabeled_images()
    with pytest.raises(HTTPException) as e:
        store.get_image_uri(radial)
    assert e.value.status_code == 422 and "not a volume" in e.value.detail


def test_final_label_is_one_dicom_seg_with_the_label_names(orthanc, tmp_path) -> None:
    data = np.zeros((12, 10, 6), np.int16)
    data[2:8, 3:7, 1:5] = 500
    uid = upload_volume(orthanc.server.url, data, np.diag([2.0, 2.0, 3.0, 1.0]), SeriesInfo("seg", "SEG test volume"))
    store = _store(orthanc, tmp_path / "cache")
    image = nib.load(store.get_image_uri(uid))
    label_path = str(tmp_path / "label.nii.gz")
    label = (np.asarray(image.dataobj) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, image.affine), label_path)
    store.save_label(uid, label_path, "final", {})
    assert uid in store.get_labeled_images() and uid not in store.get_unlabeled_images()
    fresh = _store(orthanc, tmp_path / "fresh")  # another cache: the label comes from the SEG in the PACS
    items = {os.path.realpath(i["image"]): i["label"] for i in fresh.datalist()}
    back = nib.load(items[fresh.get_image_uri(uid)])
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-3)
    seg_uid = store.get_label_info(uid, "final")["SeriesInstanceUID"]
    (found,) = fresh._client.search_for_series(search_filters={"Modality": "SEG", "SeriesInstanceUID": seg_uid})
    (seg,) = fresh._client.retrieve_series(found["0020000D"]["Value"][0], seg_uid)
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == uid
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["brain"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1]


def test_an_unreachable_pacs_is_a_503_naming_it_and_status_still_answers(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    client = make_client(url)
    with pytest.raises(PacsUnavailableError) as e:
        client.search_for_series()
    assert e.value.status_code == 503 and url in e.value.detail and "not reachable" in e.value.detail
    status = SafeDICOMwebDatastore(client, {"Modality": "MR"}, str(tmp_path), {"brain": 1}).status()
    assert "not reachable" in status["pacs"] and status["completed"] is None


class _Busy(http.server.BaseHTTPRequestHandler):
    """A PACS that answers every request 503 and counts them."""

    requests = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_refusing_pacs_is_asked_twice_then_a_503_naming_it() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        with pytest.raises(PacsUnavailableError) as e:
            make_client(url).search_for_series()
        assert e.value.status_code == 503 and url in e.value.detail and "answered 503" in e.value.detail
        assert _Busy.requests == 1 + 2  # the identification, then the search tried twice (not five times)
    finally:
        server.shutdown()


def test_series_writer_refuses_what_dicom_cannot_hold() -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthogonal"):
        next(volume_to_mr_series(np.zeros((4, 4, 4)), sheared, SeriesInfo("x", "x")))
    with pytest.raises(ValueError, match="NaN"):
        next(volume_to_mr_series(np.full((4, 4, 4), np.nan), np.eye(4), SeriesInfo("x", "x")))
