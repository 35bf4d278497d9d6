"""HTTP client for the MONAI Label 0.8.5 REST API served by the MedSegDiff app.

Pure Python (``requests`` ships with 3D Slicer): no ``slicer``, ``qt``, ``vtk`` or ``ctk`` import, so the
client is tested outside Slicer against a real server.
"""

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import requests

__all__ = ["InferResult", "MedSegDiffClient", "ServerError", "parse_multipart"]

CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 60.0
# Diffusion inference runs num_inference_steps x num_ensemble network passes: allow it time.
INFER_READ_TIMEOUT_S = 3600.0


class ServerError(RuntimeError):
    """A request to the MONAI Label server failed; the message says why and what to check.

    Attributes:
        status: HTTP status code, or None when no HTTP response came back (server down, bad URL).
        detail: the server's own error text (FastAPI ``detail``), when it sent one.
        url: the request URL.
    """

    def __init__(self, message, status=None, detail=None, url=None):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.url = url


@dataclass
class InferResult:
    """What ``MedSegDiffClient.infer`` returns.

    Attributes:
        label_path: local file holding the label image the server returned (NIfTI for the MedSegDiff app).
        result: the result JSON of the inference task (``params`` part of the response).
    """

    label_path: str
    result: dict = field(default_factory=dict)

    def __iter__(self):
        """Unpacks like the stock client's answer: ``label_path, result = client.infer(...)``."""
        return iter((self.label_path, self.result))


def _detail_text(response):
    """The human-readable error text of a response: FastAPI ``detail`` or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        text = (response.text or "").strip()
        return text[:500] if text else response.reason or ""
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):  # FastAPI request validation: [{"loc": [...], "msg": ...}, ...]
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(x) for x in item.get("loc", []))
                    parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return detail if isinstance(detail, str) else json.dumps(detail)
    return json.dumps(body)[:500]


def _filename_from_disposition(disposition, fallback):
    """File name from a Content-Disposition header (RFC 6266 ``filename*=`` or ``filename=``)."""
    if disposition:
        match = re.search(r"filename\*\s*=\s*([^;]+)", disposition, flags=re.IGNORECASE)
        if match:
            value = match.group(1).strip().strip('"')
            if "''" in value:
                value = value.split("''", 1)[1]
            return os.path.basename(unquote(value))
        match = re.search(r'filename\s*=\s*"?([^";]+)"?', disposition, flags=re.IGNORECASE)
        if match:
            return os.path.basename(match.group(1).strip())
    return fallback


def _extension(filename):
    """``.nii.gz`` for ``x.nii.gz``, ``.nrrd`` for ``x.nrrd``, ``""`` without one."""
    name = os.path.basename(filename)
    for double in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(double):
            return name[-len(double):]
    return os.path.splitext(name)[1]


def _safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def parse_multipart(body, content_type):
    """Split a ``multipart/form-data`` response body into its parts.

    The stock client uses ``cgi.FieldStorage``, which Python 3.13 removed; this parser has no such dependency.

    Args:
        body: the raw response bytes.
        content_type: the response's Content-Type header, which carries the boundary.

    Returns:
        A list of dicts with keys ``name``, ``filename`` (None for plain fields), ``headers`` and ``data`` (bytes).
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not match:
        raise ValueError(f"Content-Type {content_type!r} has no multipart boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts = []
    for section in body.split(delimiter)[1:]:
        if section.startswith(b"--"):  # closing delimiter
            break
        if section.startswith(b"\r\n"):
            section = section[2:]
        if section.endswith(b"\r\n"):
            section = section[:-2]
        raw_headers, _, data = section.partition(b"\r\n\r\n")
        headers = {}
        for line in raw_headers.decode("utf-8", errors="replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        parts.append(
            {
                "name": name.group(1) if name else None,
                "filename": filename.group(1) if filename else None,
                "headers": headers,
                "data": data,
            }
        )
    return parts


class MedSegDiffClient:
    """Client for the MONAI Label REST API (the endpoints that the MedSegDiff Slicer module uses).

    Every method raises ``ServerError`` with a message an annotator can act on.

    Args:
        server_url: server root, e.g. ``http://127.0.0.1:8000``.
        token: optional bearer token (MONAI Label started with ``MONAI_LABEL_AUTH_ENABLE=true``).
        timeout: read timeout in seconds for short requests.
    """

    def __init__(self, server_url, token=None, timeout=DEFAULT_READ_TIMEOUT_S):
        url = (server_url or "").strip().rstrip("/")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ServerError(
                f"'{server_url}' is not a valid server URL: use the form http://HOST:PORT, "
                "for example http://127.0.0.1:8000",
                url=server_url,
            )
        self.server_url = url
        self.token = token or None
        self.timeout = timeout
        self._session = requests.Session()

    # -- plumbing -------------------------------------------------------------------------------------

    def _headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method, path, *, read_timeout=None, expect_json=True, **kwargs):
        url = self.server_url + path
        timeout = (CONNECT_TIMEOUT_S, read_timeout or self.timeout)
        try:
            response = self._session.request(method, url, headers=self._headers(), timeout=timeout, **kwargs)
        except requests.exceptions.ConnectTimeout as e:
            raise ServerError(
                f"Cannot reach the MONAI Label server at {self.server_url}: no answer within "
                f"{CONNECT_TIMEOUT_S:.0f} s. Check the host name, port and firewall.",
                url=url,
            ) from e
        except requests.exceptions.ConnectionError as e:
            raise ServerError(
                f"Cannot connect to the MONAI Label server at {self.server_url}: connection refused or host "
                "unreachable. Is the server running (monailabel start_server ...) and is the URL right?",
                url=url,
            ) from e
        except requests.exceptions.Timeout as e:
            raise ServerError(
                f"The MONAI Label server at {self.server_url} did not answer {method} {path} within "
                f"{timeout[1]:.0f} s.",
                url=url,
            ) from e
        except requests.exceptions.RequestException as e:
            raise ServerError(f"Request {method} {url} failed: {e}", url=url) from e

        if response.status_code >= 400:
            raise self._error(method, path, response)
        if expect_json:
            try:
                return response.json()
            except ValueError as e:
                raise ServerError(
                    f"{self.server_url} answered {method} {path} with something that is not JSON: it does not "
                    "look like a MONAI Label server. Check the URL (the server root, e.g. http://127.0.0.1:8000).",
                    status=response.status_code,
                    url=url,
                ) from e
        return response

    def _error(self, method, path, response):
        status = response.status_code
        detail = _detail_text(response)
        url = self.server_url + path
        if status in (401, 403):
            message = (
                f"The MONAI Label server refused {method} {path} (HTTP {status}: {detail}). "
                "The server requires authentication: enter a valid access token."
            )
        elif status == 404 and detail in ("Not Found", ""):  # FastAPI's answer for an unknown route
            message = self._wrong_url_message(url)
        elif status < 500:
            message = f"The MONAI Label server rejected {method} {path} (HTTP {status}): {detail}"
        else:
            message = (
                f"The MONAI Label server failed on {method} {path} (HTTP {status}): {detail}. "
                "See the server log for details."
            )
        return ServerError(message, status=status, detail=detail, url=url)

    def _wrong_url_message(self, url):
        return (
            f"{url} was not found (HTTP 404): {self.server_url} is not the root of a MONAI Label server. "
            "Check the URL: it should look like http://127.0.0.1:8000, without a path."
        )

    def _save(self, response, dest_dir, fallback_name, stem=None):
        """Write the body to ``dest_dir``; the server's file name, or ``stem`` + its extension when given."""
        dest_dir = dest_dir or tempfile.mkdtemp(prefix="medsegdiff-")
        os.makedirs(dest_dir, exist_ok=True)
        name = _filename_from_disposition(response.headers.get("content-disposition"), fallback_name)
        if stem is not None:
            name = stem + _extension(name)
        path = os.path.join(dest_dir, name)
        with open(path, "wb") as f:
            f.write(response.content)
        return path

    # -- API ------------------------------------------------------------------------------------------

    def info(self):
        """``GET /info/``: app name, version, labels, models (with declared ``config``), trainers, strategies."""
        try:
            info = self._request("GET", "/info/")
        except ServerError as e:
            if e.status == 404:  # whatever answers there, it is not a MONAI Label server root
                raise ServerError(self._wrong_url_message(e.url), status=404, detail=e.detail, url=e.url) from e
            raise
        if not isinstance(info, dict) or "models" not in info:
            raise ServerError(
                f"{self.server_url}/info/ did not return MONAI Label app information: check the URL.",
                url=self.server_url + "/info/",
            )
        return info

    def next_sample(self, strategy="uncertainty", params=None):
        """``POST /activelearning/{strategy}``: the next image to annotate.

        Returns:
            The sample dict (``id``, ``path``, image info), or None when the strategy has nothing left to label.
        """
        sample = self._request("POST", f"/activelearning/{quote(strategy, safe='')}", json=params or {})
        return sample if sample else None

    def upload_image(self, path, image_id=None, params=None):
        """``PUT /datastore/image``: add an image file to the datastore; returns the image id the server kept."""
        query = {"image": image_id} if image_id else {}
        with open(path, "rb") as f:
            files = {
                "file": (os.path.basename(path), f, "application/octet-stream"),
                "params": (None, json.dumps(params or {})),
            }
            result = self._request("PUT", "/datastore/image", params=query, files=files, read_timeout=600)
        return result["image"]

    def remove_image(self, image_id):
        """``DELETE /datastore/image?id=<id>``: remove an image and its labels from the datastore."""
        return self._request("DELETE", "/datastore/image", params={"id": image_id})

    def download_image(self, image_id, dest_dir=None):
        """``GET /datastore/image``: download an image of the datastore; returns the local file path."""
        response = self._request(
            "GET", "/datastore/image", params={"image": image_id}, expect_json=False, read_timeout=600
        )
        return self._save(response, dest_dir, f"{image_id}.nii.gz")

    def infer(self, model, image_id, params=None, dest_dir=None, label_in=None):
        """``POST /infer/{model}?image=<id>&output=all``: run the model on a datastore image.

        Args:
            model: model name as listed in ``info()["models"]``.
            image_id: datastore image id.
            params: inference parameters (sent as the ``params`` form field).
            dest_dir: folder for the returned label file (a new temporary folder when None).
            label_in: path of a scribble volume on the image's grid (sent as the ``label`` file), or None.

        Returns: InferResult with the local label path and the result JSON.
        """
        files = {"params": (None, json.dumps(params or {}))}
        files.update({"label": (os.path.basename(label_in), Path(label_in).read_bytes())} if label_in else {})
        response = self._request("POST", f"/infer/{quote(model, safe='')}", params={"image": image_id, "output": "all"},
                                 files=files, expect_json=False, read_timeout=INFER_READ_TIMEOUT_S)
        content_type = response.headers.get("content-type", "")
        if "multipart" not in content_type:
            raise ServerError(
                f"Inference of '{model}' on '{image_id}' returned no label image (Content-Type {content_type!r}): "
                f"{response.text[:300]}",
                status=response.status_code,
                url=response.url,
            )
        result, label_path = {}, None
        dest_dir = dest_dir or tempfile.mkdtemp(prefix="medsegdiff-")
        os.makedirs(dest_dir, exist_ok=True)
        for part in parse_multipart(response.content, content_type):
            if part["filename"]:
                label_path = os.path.join(dest_dir, os.path.basename(part["filename"]))
                with open(label_path, "wb") as f:
                    f.write(part["data"])
            elif part["name"] == "params":
                result = json.loads(part["data"].decode("utf-8") or "{}")
        if label_path is None:
            raise ServerError(f"Inference of '{model}' on '{image_id}' returned no label image.", url=response.url)
        return InferResult(label_path=label_path, result=result or {})

    def download_label(self, image_id, tag, dest_dir=None):
        """``GET /datastore/label?label=<image id>&tag=<tag>``: download a stored label; returns the local path."""
        try:
            response = self._request(
                "GET", "/datastore/label", params={"label": image_id, "tag": tag}, expect_json=False
            )
        except ServerError as e:
            if e.status == 404 and e.detail not in (None, "", "Not Found"):
                raise ServerError(
                    f"The server has no label with tag '{tag}' for image '{image_id}' ({e.detail}).",
                    status=404,
                    detail=e.detail,
                    url=e.url,
                ) from e
            raise
        # The server names a label file like its image: give it the tag so it never overwrites the image.
        return self._save(response, dest_dir, f"{image_id}.nii.gz", stem=f"{_safe_name(image_id)}_{_safe_name(tag)}")

    def save_label(self, image_id, label_path, tag="final", params=None):
        """``PUT /datastore/label?image=<id>&tag=<tag>``: store a label (``final`` = reviewed ground truth)."""
        with open(label_path, "rb") as f:
            files = {
                "label": (os.path.basename(label_path), f, "application/octet-stream"),
                "params": (None, json.dumps(params or {})),
            }
            return self._request(
                "PUT", "/datastore/label", params={"image": image_id, "tag": tag}, files=files, read_timeout=600
            )

    def train_start(self, model, params=None):
        """``POST /train/{model}``: start training in the background; returns the task dict."""
        return self._request("POST", f"/train/{quote(model, safe='')}", json=params or {})

    def train_stop(self):
        """``DELETE /train/``: stop the running training; returns the stopped task, or None if none ran."""
        return self._request("DELETE", "/train/")

    def train_status(self, check_if_running=False):
        """``GET /train/``: the latest training task (``status``: SUBMITTED, RUNNING, DONE, ERROR, STOPPED).

        Returns:
            The task dict, or None when no training task exists (or, with ``check_if_running``, none is running).
        """
        try:
            return self._request(
                "GET", "/train/", params={"check_if_running": "true" if check_if_running else "false"}
            )
        except ServerError as e:
            if e.status == 404 and e.detail not in (None, "", "Not Found"):
                return None
            raise
