"""The safe datastore without a server (fast): a refused or crashed write leaves it byte-identical, valid writes
leave no temporary files, reopening removes only stale ones."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi import HTTPException

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
sys.path.insert(0, str(APP_DIR))
from lib.safe_datastore import SafeLocalDatastore  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_volumes import (  # noqa: E402
    BAD_IMAGES, BAD_LABELS, SHAPE, SPACING, affine_for, head_phantom, label_for, make_bad_image, rotation,
    write_nifti, write_nrrd,
)


# ---------------------------------------------------------------------------------------------- datastore
def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones included) except the lock file."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def store(tmp_path):
    """A datastore with ``img_a`` (final label) and ``img_b`` (unlabelled), as MONAI Label lays it out."""
    root = tmp_path / "datastore"
    (root / "labels" / "final").mkdir(parents=True)
    write_nifti(root / "img_a.nii.gz", head_phantom())
    write_nifti(root / "img_b.nii.gz", head_phantom()[::-1].copy())
    write_nifti(root / "labels" / "final" / "img_a.nii.gz", label_for(head_phantom()))
    return SafeLocalDatastore(str(root), label_values={"brain": 1})


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
@pytest.mark.parametrize("image_id", ["new_case", "img_a"])
def test_rejected_image_upload_leaves_the_datastore_identical(case, image_id, store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    path, fragment, status = make_bad_image(case, tmp_path)
    with pytest.raises(HTTPException) as info:
        store.add_image(image_id, str(path), {})
    assert info.value.status_code == status
    assert fragment in info.value.detail
    assert snapshot(root) == before
    assert image_id not in store.list_images() or image_id == "img_a"


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_rejected_label_keeps_the_final_label(case, store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    build, fragment = BAD_LABELS[case]
    folder = tmp_path / "upload"
    folder.mkdir()
    with pytest.raises(HTTPException) as info:
        store.save_label("img_a", str(build(folder)), "final", {})
    assert info.value.status_code == 422 and fragment in info.value.detail
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "call, status, fragment",
    [
        (lambda s, f: s.add_image("../evil", f, {}), 400, "'..'"),
        (lambda s, f: s.add_image("/tmp/evil", f, {}), 400, "absolute path"),
        (lambda s, f: s.save_label("img_b", f, "../../escape", {}), 400, "'..'"),
        (lambda s, f: s.save_label("no_such", f, "final", {}), 404, "'no_such' is not in the datastore"),
        (lambda s, f: s.remove_image("no_such"), 404, "not in the datastore"),
        (lambda s, f: s.remove_image("../img_a"), 400, "'..'"),
        (lambda s, f: s.remove_label("img_b", "final"), 404, "no label with tag 'final'"),
        (lambda s, f: s.update_image_info("no_such", {"x": 1}), 404, "not in the datastore"),
        (lambda s, f: s.update_label_info("img_b", "final", {"x": 1}), 404, "no label"),
        (lambda s, f: s.add_image("img_a", f, {}), 409, "already exists with labels"),
    ],
    ids=["traversal_id", "absolute_id", "traversal_tag", "unknown_image", "remove_unknown", "remove_traversal",
         "remove_unknown_label", "info_unknown", "label_info_unknown", "overwrite_labelled_image"],
)
def test_bad_requests_get_4xx_and_change_nothing(call, status, fragment, store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    valid = write_nifti(tmp_path / "valid.nii.gz", head_phantom() * 2)  # valid, and not img_a's voxels
    with pytest.raises(HTTPException) as info:
        call(store, str(valid))
    assert info.value.status_code == status and fragment in info.value.detail
    assert snapshot(root) == before
    assert not list(tmp_path.parent.glob("escape*")) and not (tmp_path / "evil.nii.gz").exists()


def test_reuploading_the_same_volume_writes_nothing(store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    reexported = write_nifti(tmp_path / "again.nii", head_phantom())  # other bytes, same voxels and grid
    assert store.add_image("img_a", str(reexported), {}) == "img_a"
    assert snapshot(root) == before


def test_valid_writes_are_stored_without_temporary_files(store, tmp_path):
    root = Path(store._datastore_path)
    new_image = write_nifti(tmp_path / "c.nii.gz", head_phantom())
    assert store.add_image("img_c", str(new_image), {"user": "ann"}) == "img_c"
    new_label = write_nifti(tmp_path / "l.nii.gz", 1 - label_for(head_phantom()))
    assert store.save_label("img_a", str(new_label), "final", {}) == "img_a"
    uncertainty = write_nifti(tmp_path / "u.nii.gz", np.random.default_rng(1).random(SHAPE).astype(np.float32))
    store.save_label("img_a", str(uncertainty), "uncertainty", {})
    stored = nib.load(str(root / "labels" / "final" / "img_a.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), 1 - label_for(head_phantom()))
    assert store.get_image_info("img_c")["user"] == "ann"
    assert not [p for p in root.rglob(".*") if p.name != ".lock"], "temporary files left behind"
    reopened = SafeLocalDatastore(str(root))
    assert set(reopened.list_images()) == {"img_a", "img_b", "img_c"}
    assert set(reopened.get_labels_by_image_id("img_a")) == {"final", "uncertainty"}


def test_probability_maps_of_a_multi_class_model_are_stored(store, tmp_path):
    """A 'probability' map holds one channel per foreground class; a 'final' label of that shape is refused."""
    root = Path(store._datastore_path)
    tissue = SafeLocalDatastore(str(root), label_values={"csf": 1, "gm": 2, "wm": 3})
    probs = np.random.default_rng(3).random((*SHAPE, 3)).astype(np.float32)
    tissue.save_label("img_b", str(write_nifti(tmp_path / "p.nii.gz", probs)), "probability", {})
    stored = nib.load(str(root / "labels" / "probability" / "img_b.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), probs)
    before = snapshot(root)
    with pytest.raises(HTTPException, match="4D volume"):
        tissue.save_label("img_b", str(tmp_path / "p.nii.gz"), "final", {})
    assert snapshot(root) == before


def test_nrrd_uploads_are_stored_as_nifti(store, tmp_path):
    root = Path(store._datastore_path)
    affine = affine_for(SPACING, rotation(15, 0))
    store.add_image("from_slicer", str(write_nrrd(tmp_path / "s.nrrd", head_phantom(), affine)), {})
    stored = nib.load(str(root / "from_slicer.nii.gz"))
    np.testing.assert_allclose(stored.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), head_phantom())
    label = write_nrrd(tmp_path / "l.nrrd", label_for(head_phantom()), affine)
    store.save_label("from_slicer", str(label), "final", {})
    assert (root / "labels" / "final" / "from_slicer.nii.gz").is_file()
    assert not list(root.rglob("*.nrrd"))


def test_a_crash_while_writing_leaves_the_old_label(store, tmp_path, monkeypatch):
    root = Path(store._datastore_path)
    before = snapshot(root)
    new_label = write_nifti(tmp_path / "l.nii.gz", 1 - label_for(head_phantom()))

    def killed(*args):
        raise OSError("killed between write and rename")

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(OSError, match="killed"):
        store.save_label("img_a", str(new_label), "final", {})
    monkeypatch.undo()
    assert snapshot(root) == before  # old label, old datastore json, no half-written temporary file


def test_reopening_removes_only_stale_temporary_files(store):
    root = Path(store._datastore_path)
    stale = root / "labels" / "final" / ".img_a.nii.gz.0123456789ab.part"  # what a killed write leaves
    fresh = root / ".img_b.nii.gz.ba9876543210.part"  # a write that may still be going on elsewhere
    others = [root / ".keep", root / "notes.part", root / "labels" / "final" / ".img_a.nii.gz.part"]
    for path in [stale, fresh, *others]:
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for path in [stale, *others]:
        os.utime(path, (hours_ago, hours_ago))
    before = snapshot(root)

    reopened = SafeLocalDatastore(str(root))

    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in others)
    assert set(reopened.list_images()) == {"img_a", "img_b"}
    assert snapshot(root) == {k: v for k, v in before.items() if k != str(stale.relative_to(root))}
