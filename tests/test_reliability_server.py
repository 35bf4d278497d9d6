"""Bad uploads, bad ids and absurd parameters against a real MONAI Label server: 4xx naming the problem,
the server still answering, and the datastore unchanged.

Uses the session fixture ``monailabel_server`` of tests/conftest.py (``.url``, ``.datastore``).
The datastore and upload-limit checks need ``SafeLocalDatastore`` and the middlewares wired into
``monailabel_app/main.py`` (README, "Reliability"); they are skipped, saying so, on a server without them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import sys
from pathlib import Path
from urllib.parse import urlparse

import nibabel as nib
import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_volumes import BAD_IMAGES, PNG_BYTES, make_bad_image  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
LABELLED = "robex_head"  # has a final label in the sample datastore
UNKNOWN = "no_such_image_xyz"
TIMEOUT = 60
IGNORED = {"datastore_v2.json", ".lock"}  # MONAI Label's own bookkeeping (timestamps, scores)


# ---------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def server(monailabel_server):
    return monailabel_server


@pytest.fixture(scope="module")
def safe_server(server):
    """``server``, if its datastore is ``SafeLocalDatastore`` (probe: deleting an unknown label is a 404)."""
    response = requests.delete(
        f"{server.url}/datastore/label", params={"id": UNKNOWN, "tag": "final"}, timeout=TIMEOUT
    )
    if response.status_code != 404:
        pytest.skip(
            f"the server's datastore is not SafeLocalDatastore (DELETE of an unknown label gave "
            f"{response.status_code}): wire it in monailabel_app/main.py init_datastore"
        )
    return server


def snapshot(datastore) -> dict[str, str]:
    """sha256 of every image and label file (plus the ids the datastore json lists), bookkeeping ignored."""
    root = Path(datastore)
    files = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in IGNORED
    }
    config = root / "datastore_v2.json"
    if config.is_file():
        objects = json.loads(config.read_text()).get("objects", {})
        files["<ids>"] = json.dumps(
            {k: [v["image"]["ext"], sorted(v.get("labels", {}))] for k, v in objects.items()}, sort_keys=True
        )
    return files


@pytest.fixture(scope="module")
def baseline(safe_server):
    return snapshot(safe_server.datastore)


@pytest.fixture
def unchanged(safe_server):
    """Asserts that the test leaves the datastore's files as they were."""
    before = snapshot(safe_server.datastore)
    yield
    after = snapshot(safe_server.datastore)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a refused request changed the datastore: {changed}"


def _detail(response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text


def _put_image(url, image_id, path, route="/datastore/"):
    with open(path, "rb") as f:
        return requests.put(
            f"{url}{route}", params={"image": image_id}, files={"file": (Path(path).name, f)}, timeout=TIMEOUT
        )


def _put_label(url, image_id, path, tag="final"):
    with open(path, "rb") as f:
        return requests.put(
            f"{url}/datastore/label",
            params={"image": image_id, "tag": tag},
            files={"label": (Path(path).name, f)},
            timeout=TIMEOUT,
        )


# ---------------------------------------------------------------------------------------------- uploads
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_upload_is_refused(case, safe_server, baseline, unchanged, tmp_path):
    path, fragment, status = make_bad_image(case, tmp_path)
    response = _put_image(safe_server.url, f"reliability_{case}", path)
    assert response.status_code == status, f"{case}: {response.status_code} {_detail(response)}"
    assert fragment in _detail(response)


def test_current_upload_route_is_checked_too(safe_server, baseline, unchanged, tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(PNG_BYTES)
    response = _put_image(safe_server.url, "reliability_png", path, "/datastore/image")
    assert response.status_code == 422 and "PNG image" in _detail(response)


def _labels_for_image(image_path: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad labels for a real datastore image: (file, expected message fragment)."""
    image = nib.load(str(image_path))
    good = (np.asanyarray(image.dataobj) > np.percentile(np.asanyarray(image.dataobj), 70)).astype(np.uint8)
    shifted = image.affine.copy()
    shifted[0, 3] += 3.0

    def nifti(name, data, affine=image.affine):
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        return path

    nan = good.astype(np.float32)
    nan[0, 0, 0] = np.nan
    truncated = folder / "cut.nii.gz"
    truncated.write_bytes(gzip.compress(nib.Nifti1Image(good, image.affine).to_bytes())[:2000])
    text = folder / "text.nii.gz"
    text.write_bytes(b"my label\n" * 20)
    return {
        "shape_mismatch": (nifti("crop", good[:, :, :-3]), "does not match the image shape"),
        "affine_mismatch": (nifti("shift", good, shifted), "affine does not match"),
        "value_outside": (nifti("two", good * 2), "outside the declared labels"),
        "nan": (nifti("nan", nan), "NaN"),
        "non_integer": (nifti("half", good.astype(np.float32) * 0.5), "non-integer"),
        "four_d": (nifti("four_d", np.stack([good, good], -1)), "4D volume"),
        "truncated": (truncated, "truncated"),
        "text": (text, "text file"),
    }


@pytest.mark.parametrize(
    "case", ["shape_mismatch", "affine_mismatch", "value_outside", "nan", "non_integer", "four_d", "truncated", "text"]
)
def test_bad_final_label_is_refused_and_the_old_one_kept(case, safe_server, baseline, unchanged, tmp_path):
    image_path = next(Path(safe_server.datastore).glob(f"{LABELLED}.nii*"))
    path, fragment = _labels_for_image(image_path, tmp_path)[case]
    response = _put_label(safe_server.url, LABELLED, path)
    assert response.status_code == 422, f"{case}: {response.status_code} {_detail(response)}"
    assert fragment in _detail(response)


def test_reuploading_a_labelled_id_with_another_image_is_a_conflict(safe_server, baseline, unchanged):
    other = next(p for p in Path(safe_server.datastore).glob("*.nii.gz") if not p.name.startswith(LABELLED))
    response = _put_image(safe_server.url, LABELLED, other, "/datastore/image")
    assert response.status_code == 409 and "already exists with labels" in _detail(response)


# ---------------------------------------------------------------------------------------------- ids
@pytest.mark.parametrize(
    "method, route, params, status, fragment",
    [
        ("PUT", "/datastore/image", {"image": "../escape"}, 400, "'..'"),
        ("PUT", "/datastore/image", {"image": "/tmp/escape"}, 400, "absolute path"),
        ("PUT", "/datastore/label", {"image": UNKNOWN, "tag": "final"}, 404, "not in the datastore"),
        ("PUT", "/datastore/label", {"image": LABELLED, "tag": "../../escape"}, 400, "'..'"),
        ("PUT", "/datastore/label", {"image": "../" + LABELLED, "tag": "final"}, 400, "'..'"),
        ("DELETE", "/datastore/image", {"id": UNKNOWN}, 404, "not in the datastore"),
        ("DELETE", "/datastore/image", {"id": "../" + LABELLED}, 400, "'..'"),
        ("DELETE", "/datastore/label", {"id": UNKNOWN, "tag": "final"}, 404, "not in the datastore"),
        ("PUT", "/datastore/image/info", {"image": UNKNOWN}, 404, "not in the datastore"),
        ("GET", "/datastore/image", {"image": "../../../etc/passwd"}, 404, "Not Found"),
        ("GET", "/datastore/label", {"label": UNKNOWN, "tag": "final"}, 404, "Not Found"),
        ("POST", f"/infer/{MODEL}", {"image": "/etc/passwd", "output": "json"}, 400, "not a server path"),
        ("POST", f"/infer/{MODEL}", {"image": UNKNOWN, "output": "json"}, 404, "not in the datastore"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unknown_and_unsafe_ids_get_4xx(method, route, params, status, fragment, safe_server, baseline, unchanged):
    image_path = next(Path(safe_server.datastore).glob(f"{LABELLED}.nii*"))
    label_path = next(Path(safe_server.datastore, "labels", "final").glob(f"{LABELLED}.nii*"))
    files = None
    if method == "PUT" and route == "/datastore/image":
        files = {"file": (image_path.name, image_path.read_bytes())}
    elif method == "PUT" and route == "/datastore/label":
        files = {"label": (label_path.name, label_path.read_bytes())}
    elif method == "PUT":
        files = {"info": (None, "{}")}
    response = requests.request(method, f"{safe_server.url}{route}", params=params, files=files, timeout=TIMEOUT)
    assert response.status_code == status, f"{response.status_code} {_detail(response)}"
    assert fragment.lower() in _detail(response).lower()
    parent = Path(safe_server.datastore).parent
    assert not list(parent.glob("escape*")) and not list(Path("/tmp").glob("escape.nii*"))


# ---------------------------------------------------------------------------------------------- infer
@pytest.mark.parametrize(
    "name, value",
    [
        ("num_inference_steps", 0),
        ("num_inference_steps", -1),
        ("num_inference_steps", 1000000),
        ("num_inference_steps", "abc"),
        ("num_ensemble", 0),
        ("num_ensemble", 10000),
        ("sampler", "euler_magic"),
    ],
)
def test_absurd_infer_parameters_are_refused_naming_the_parameter(name, value, server):
    response = requests.post(
        f"{server.url}/infer/{MODEL}",
        params={"image": LABELLED, "output": "json"},
        files={"params": (None, json.dumps({name: value}))},
        timeout=300,
    )
    assert 400 <= response.status_code < 500, f"{name}={value!r}: {response.status_code} {_detail(response)}"
    assert name in _detail(response)


# ---------------------------------------------------------------------------------------------- limits
def test_request_body_over_the_limit_is_refused_before_it_is_read(safe_server):
    """A Content-Length above MEDSEGDIFF_MAX_UPLOAD_MB is answered 413 at once, with no body sent."""
    target = urlparse(safe_server.url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=20)
    try:
        connection.putrequest("PUT", "/datastore/image?image=reliability_huge")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(100 * 1024**3))
        connection.endheaders()
        try:
            response = connection.getresponse()
        except TimeoutError:
            pytest.fail("no answer to a 100 GiB Content-Length: UploadSizeLimitMiddleware is not installed")
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413 and "MEDSEGDIFF_MAX_UPLOAD_MB" in body["detail"]


# ---------------------------------------------------------------------------------------------- afterwards
def test_server_still_answers_and_the_datastore_is_unchanged(safe_server, baseline):
    assert requests.get(f"{safe_server.url}/info/", timeout=TIMEOUT).status_code == 200
    after = snapshot(safe_server.datastore)
    changed = sorted(k for k in baseline.keys() | after.keys() if baseline.get(k) != after.get(k))
    assert not changed, f"the datastore changed during the reliability tests: {changed}"
    assert not [p for p in Path(safe_server.datastore).parent.rglob("*escape*")], "a traversal id wrote a file"
