"""Load: inference requests beyond capacity wait in a bounded FIFO queue, then get 503; never a crash.

Fast tests check :class:`lib.capacity.InferenceGate` with threads and coroutines, and its middleware on a small
FastAPI app. The slow test starts its own server (``MEDSEGDIFF_MAX_CONCURRENT_INFER=1``,
``MEDSEGDIFF_INFER_QUEUE=7``: 8 requests fit, the 9th does not), starts a training run, then sends 8 inference
requests at once from threads: all 8 answer with a label on their image's grid (Dice against the reference mask
>= 0.85 for the robex heads), a 9th sent meanwhile gets 503 with ``Retry-After`` at once, ``/info/`` keeps
answering, and the peak RSS of the server and its children (the training process) stays under 8 GB.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from fastapi import FastAPI
from starlette.testclient import TestClient

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
sys.path.insert(0, str(APP_DIR))
from lib.capacity import MAX_CONCURRENT_ENV, QUEUE_ENV, InferenceGate, InferenceGateMiddleware, ServerBusy  # noqa: E402

MEMORY_LIMIT_BYTES = 8 * 1024**3


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the gate"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------- gate
def test_gate_runs_its_slots_queues_in_fifo_order_and_refuses_beyond_the_queue():
    gate = InferenceGate(2, max_queue=3, retry_after_s=7)
    lock, order, running, peak = threading.Lock(), [], [0], [0]
    done = [threading.Event() for _ in range(5)]

    def worker(i: int) -> None:
        gate.acquire()
        with lock:
            order.append(i)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        done[i].wait(10)
        with lock:
            running[0] -= 1
        gate.release()

    threads = []
    for i in range(5):  # one at a time, so that the arrival order is 0, 1, 2, 3, 4
        threads.append(threading.Thread(target=worker, args=(i,), daemon=True))
        threads[-1].start()
        _wait_until(lambda: gate.in_flight + gate.waiting == i + 1)
    assert (gate.in_flight, gate.waiting, order) == (2, 3, [0, 1])

    with pytest.raises(ServerBusy) as refused:
        gate.acquire()
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "7"
    assert "2 of 2" in refused.value.detail and "3 of 3 queue" in refused.value.detail
    assert not gate.try_acquire()  # never ahead of the queue

    for finished, admitted in [(0, 2), (1, 3), (3, 4)]:  # a freed slot goes to the longest-waiting thread
        done[finished].set()
        _wait_until(lambda: admitted in order)
        assert order[-1] == admitted and gate.in_flight == 2
    for event in done:
        event.set()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4] and peak[0] == 2
    assert (gate.in_flight, gate.waiting) == (0, 0)


def test_gate_without_a_queue_refuses_at_once():
    gate = InferenceGate(1, max_queue=0)
    with gate.slot():
        t0 = time.perf_counter()
        with pytest.raises(ServerBusy):
            gate.acquire()
        assert time.perf_counter() - t0 < 0.5
    assert gate.try_acquire()
    gate.release()


def test_a_waiter_that_gives_up_leaves_the_queue():
    gate = InferenceGate(1, max_queue=1)
    gate.acquire()
    with pytest.raises(ServerBusy, match="within 0.05 s"):
        gate.acquire(timeout=0.05)
    assert gate.waiting == 0

    async def cancelled_waiters() -> None:
        waiter = asyncio.create_task(gate.acquire_async())
        await asyncio.sleep(0.01)
        assert gate.waiting == 1
        waiter.cancel()  # e.g. the server shuts down while the request waits
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting == 0 and gate.in_flight == 1

        waiter = asyncio.create_task(gate.acquire_async())
        await asyncio.sleep(0.01)
        gate.release()  # hands the slot to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs: the slot must not leak
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting == 0 and gate.in_flight == 0

    asyncio.run(cancelled_waiters())
    assert gate.try_acquire()


def test_gate_from_environment():
    gate = InferenceGate.from_env({})
    assert (gate.max_concurrent, gate.max_queue) == (1, 16)
    gate = InferenceGate.from_env({MAX_CONCURRENT_ENV: "2", QUEUE_ENV: "0"})
    assert (gate.max_concurrent, gate.max_queue) == (2, 0)
    for env, name in [
        ({MAX_CONCURRENT_ENV: "0"}, MAX_CONCURRENT_ENV),
        ({QUEUE_ENV: "-1"}, QUEUE_ENV),
        ({QUEUE_ENV: "many"}, QUEUE_ENV),
    ]:
        with pytest.raises(ValueError, match=name):
            InferenceGate.from_env(env)
    with pytest.raises(ValueError, match="max_queue"):
        InferenceGate(1, max_queue=-1)


def test_gate_middleware_queues_in_arrival_order_then_refuses_with_503():
    """MONAI Label's infer endpoint blocks its event loop; the middleware queues off the loop and runs in order."""
    app, ran = FastAPI(), []

    @app.post("/infer/slow")
    async def slow(i: int):
        ran.append(i)
        time.sleep(0.4)  # synchronous work inside an async endpoint, as in monailabel.endpoints.infer
        return {"i": i}

    @app.get("/info/")
    async def info():
        return {"ok": True}

    gate = InferenceGate(1, max_queue=2, retry_after_s=3)
    app.add_middleware(InferenceGateMiddleware, gate=gate)
    answers = {}
    with TestClient(app) as client:
        threads = []
        for i in range(3):
            threads.append(threading.Thread(target=lambda i=i: answers.update({i: client.post(f"/infer/slow?i={i}")})))
            threads[-1].start()
            _wait_until(lambda: gate.in_flight + gate.waiting == i + 1)
        t0 = time.perf_counter()
        refused = client.post("/infer/slow?i=3")
        info_answer = client.get("/info/")
        elapsed = time.perf_counter() - t0
        for t in threads:
            t.join(30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert "server busy" in refused.json()["detail"]
    assert info_answer.status_code == 200 and elapsed < 0.3, f"refusal and /info/ took {elapsed:.2f} s"
    assert [answers[i].json() for i in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert ran == [0, 1, 2] and (gate.in_flight, gate.waiting) == (0, 0)


# ---------------------------------------------------------------------------------------------- server
class MemoryMonitor(threading.Thread):
    """Samples the RSS of a process and its children; keeps the peak of their sum and each one's ``VmHWM``."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.peak_total = 0
        self.peaks: dict[int, tuple[str, int]] = {}  # pid → (role, peak RSS)

    @staticmethod
    def _high_water_mark(process: psutil.Process) -> int:
        """Peak RSS the kernel saw (``VmHWM``), or the current RSS where /proc has no such line."""
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return process.memory_info().rss

    def sample(self) -> None:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                rss = process.memory_info().rss
                peak = max(rss, self._high_water_mark(process))
                role = "training" if "train" in process.cmdline() else "server" if process == self.root else "child"
            except psutil.Error:
                continue
            total += rss
            self.peaks[process.pid] = (role, max(peak, self.peaks.get(process.pid, ("", 0))[1]))
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def report(self) -> str:
        parts = [f"{role} {peak / 2**20:.0f} MiB" for role, peak in sorted(self.peaks.values())]
        return f"peak RSS of server + children together {self.peak_total / 2**20:.0f} MiB (per process: {', '.join(parts)})"


@pytest.mark.slow
@pytest.mark.skipif(
    not (APP_DIR / "model" / "medsegdiff_brain_2d.pt").is_file(),
    reason="the Dice floor needs the committed trained sample model (an untrained dev network segments nothing)",
)
def test_eight_concurrent_infers_during_training_all_complete_and_the_ninth_is_refused(tmp_path, capsys):
    from medsegdiff.metrics import dice_per_class
    from conftest import make_datastore, start_server, stop_server
    from test_reliability_crash import MODEL, start_training, train_status, wait_for_training

    server = start_server(tmp_path, make_datastore(tmp_path), env={MAX_CONCURRENT_ENV: "1", QUEUE_ENV: "7"})
    images = ["robex_head", "robex_head_lowres", "robex_head_flipped", "robex_head"] * 2
    fast = json.dumps({"num_inference_steps": 1, "num_ensemble": 1})
    answers: dict[int, tuple[requests.Response, float, float]] = {}
    monitor = MemoryMonitor(server.process.pid)
    monitor.start()
    try:
        # 1. a training run (tiny learning rate: it republishes best.pt every epoch without changing the model much)
        start_training(server, max_epochs=200, learning_rate=1e-7)
        deadline = time.monotonic() + 120
        while "training starts from" not in server.log(20000):
            assert time.monotonic() < deadline, f"training did not start:\n{server.log()}"
            time.sleep(0.5)

        # 2. 8 inference requests at once (the first alone, so that a full-size head runs first)
        def infer(i: int) -> None:
            sent = time.monotonic()
            response = requests.post(
                f"{server.url}/infer/{MODEL}",
                params={"image": images[i], "output": "image"},
                data={"params": fast},
                timeout=600,
            )
            answers[i] = (response, sent, time.monotonic())

        t0 = time.monotonic()
        threads = [threading.Thread(target=infer, args=(i,), daemon=True) for i in range(len(images))]
        threads[0].start()
        time.sleep(0.3)
        for t in threads[1:]:
            t.start()
        time.sleep(1.0)

        # 3. one more is refused at once; the server still answers other requests
        sent = time.monotonic()
        refused = requests.post(
            f"{server.url}/infer/{MODEL}", params={"image": "robex_head_lowres"}, data={"params": fast}, timeout=600
        )
        refused_after = time.monotonic() - sent
        info_started = time.monotonic()
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
        info_s = time.monotonic() - info_started
        for t in threads:
            t.join(900)
        wall_s = time.monotonic() - t0
        training = train_status(server)
        requests.delete(f"{server.url}/train/", timeout=60)
        stopped = wait_for_training(server)
        monitor.sample()
    finally:
        monitor.stop.set()
        monitor.join(10)

        alive = server.process.poll() is None
        stop_server(server)

    assert alive, f"the server died:\n{server.log()}"
    first_done = min(done for _, _, done in answers.values())
    assert refused.status_code == 503, f"the 9th request got {refused.status_code}: {refused.text[:300]}"
    assert int(refused.headers["Retry-After"]) > 0 and refused_after < 5
    assert sent < first_done, "the 9th request was sent after an inference had ended: its 503 proves nothing"
    assert info_s < 5, f"/info/ took {info_s:.1f} s while inferences ran"
    assert training.get("status") == "RUNNING" and stopped["status"] == "STOPPED", "training did not overlap the load"

    assert sorted(answers) == list(range(len(images)))
    dice = {}
    for i, (response, _, _) in sorted(answers.items()):
        assert response.status_code == 200, f"request {i} ({images[i]}): {response.status_code} {response.text[:300]}"
        path = tmp_path / f"label_{i}.nii.gz"
        path.write_bytes(response.content)
        label = np.asarray(nib.load(str(path)).dataobj)
        assert label.shape == nib.load(str(server.datastore / f"{images[i]}.nii.gz")).shape, images[i]
        if images[i] != "robex_head_lowres":
            reference = np.asarray(nib.load(str(server.reference_dir / f"{images[i]}_mask.nii.gz")).dataobj)
            dice[i] = float(dice_per_class(label > 0, reference > 0)[0])
    assert server.trained_checkpoint, "the server did not start from the committed sample model"
    assert min(dice.values()) >= 0.85, dice
    assert monitor.peak_total < MEMORY_LIMIT_BYTES, monitor.report()
    assert sum(peak for _, peak in monitor.peaks.values()) < MEMORY_LIMIT_BYTES, monitor.report()

    latencies = sorted(done - start for _, start, done in answers.values())
    with capsys.disabled():
        print(
            f"\n[load] 8 concurrent infers during training in {wall_s:.1f} s (latency {latencies[0]:.1f}-"
            f"{latencies[-1]:.1f} s), 9th refused with 503 in {refused_after:.2f} s, /info/ {info_s:.2f} s; "
            f"Dice {min(dice.values()):.3f}-{max(dice.values()):.3f}; {monitor.report()}"
        )
