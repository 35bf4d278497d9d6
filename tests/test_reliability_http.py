"""The HTTP pieces without a server (fast): the upload size limit, the inference gate (503 when full) and the
train parameters."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, UploadFile
from starlette.testclient import TestClient

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
sys.path.insert(0, str(APP_DIR))
from lib.capacity import InferenceGate, InferenceGateMiddleware, ServerBusy  # noqa: E402
from lib.validation import UploadSizeLimitMiddleware, install_asgi_middleware  # noqa: E402


# ---------------------------------------------------------------------------------------------- HTTP pieces
def _upload_app(limit: int) -> FastAPI:
    app = FastAPI()

    @app.put("/datastore/image")
    async def upload(file: UploadFile):
        return {"size": len(await file.read())}

    @app.get("/info/")
    async def info():
        return {"ok": True}

    client = TestClient(app)
    assert client.get("/info/").status_code == 200  # started: add_middleware would now raise
    assert install_asgi_middleware(app, UploadSizeLimitMiddleware, max_bytes=limit)
    assert not install_asgi_middleware(app, UploadSizeLimitMiddleware, max_bytes=limit)  # idempotent
    return app


def test_upload_size_limit_middleware():
    client = TestClient(_upload_app(limit=4096))
    assert client.put("/datastore/image", files={"file": ("a.nii.gz", b"x" * 1000)}).json() == {"size": 1000}
    response = client.put("/datastore/image", files={"file": ("a.nii.gz", b"x" * 10000)})
    assert response.status_code == 413 and "MEDSEGDIFF_MAX_UPLOAD_MB" in response.json()["detail"]

    body = (
        b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.nii.gz\"\r\n\r\n"
        + b"y" * 10000
        + b"\r\n--b0undary--\r\n"
    )

    def chunked():  # no Content-Length: the middleware counts the bytes as the app reads them
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = client.put(
        "/datastore/image", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status_code == 413
    assert client.get("/info/").status_code == 200


def test_inference_gate_counts_slots():
    gate = InferenceGate(max_concurrent=2, retry_after_s=7)
    with gate.slot(), gate.slot():
        assert gate.in_flight == 2
        with pytest.raises(ServerBusy) as info:
            with gate.slot():
                pass
        assert info.value.status_code == 503 and info.value.headers["Retry-After"] == "7"
        assert "2 of 2" in info.value.detail
    assert gate.in_flight == 0
    with pytest.raises(ValueError, match="max_concurrent"):
        InferenceGate(0)


def test_inference_gate_admits_exactly_its_slots_under_contention():
    gate, admitted, start = InferenceGate(3), [], threading.Barrier(12)

    def worker():
        start.wait()
        if gate.try_acquire():
            admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and gate.in_flight == 3


def test_gate_middleware_refuses_with_503_and_keeps_the_server_responsive():
    """Like MONAI Label's infer endpoint, ``/infer/slow`` blocks its event loop; the middleware runs it off the loop."""
    app = FastAPI()

    @app.post("/infer/slow")
    async def slow():
        time.sleep(1.0)  # synchronous work inside an async endpoint, as in monailabel.endpoints.infer
        return {"done": True}

    @app.post("/infer/fast")
    async def fast():
        return {"done": True}

    @app.get("/info/")
    async def info():
        return {"ok": True}

    app.add_middleware(InferenceGateMiddleware, gate=InferenceGate(1))
    results = {}
    with TestClient(app) as client:
        first = threading.Thread(target=lambda: results.update(first=client.post("/infer/slow")))
        first.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        busy = client.post("/infer/slow")
        info_response = client.get("/info/")
        elapsed = time.perf_counter() - t0
        first.join()
        after = client.post("/infer/slow")
        back_to_back = [client.post("/infer/fast").status_code for _ in range(30)]  # the slot is free on answer
    assert results["first"].json() == {"done": True}
    assert busy.status_code == 503 and "server busy" in busy.json()["detail"] and busy.headers["retry-after"]
    assert info_response.status_code == 200
    assert elapsed < 0.5, f"the server was blocked for {elapsed:.2f} s during an inference"
    assert after.status_code == 200
    assert back_to_back == [200] * 30


# ---------------------------------------------------------------------------------------------- train parameters
def test_train_parameters_default_and_refuse_unknown_schedules():
    from lib.params import TRAIN_PARAMS, InvalidParameter, parse

    assert parse({}, TRAIN_PARAMS)["lr_schedule"] == "cosine"
    assert parse({"lr_schedule": "constant"}, TRAIN_PARAMS)["lr_schedule"] == "constant"
    with pytest.raises(InvalidParameter, match="lr_schedule must be one of"):
        parse({"lr_schedule": "step"}, TRAIN_PARAMS)
