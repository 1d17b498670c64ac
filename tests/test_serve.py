"""The server scenario with real parts: a real uvicorn server on loopback in its own process,
serving the repository's example ONNX detector through the harness's end-to-end stages; curl
and a script as clients; the bad-request set (each refused with a JSON error while the server
keeps serving); dynamic batching; the server dying with its parent; a closed-loop sweep and an
open-loop run through `bench`, read back from the report; `bench compare` at equal load; the
distribution-shift check against a baseline run; `bench serve` by hand. RF-DETR Nano with random
weights is `slow`; ONNX Runtime CUDA with batching on and off is `gpu`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.errors import UserError
from harness.plan.load import parse_plan

pytest.importorskip("starlette", reason="the `serve` extra (starlette, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "onnx" / "anchor-grid-320.onnx"
CURL = shutil.which("curl")


def plan_text(batch_sizes: str = "[1]", server: str = "", threshold: float = 0.03, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        name: serve-test
        device: cpu
        models:
          - name: anchor-grid-320
            source: onnx
            path: {EXAMPLE}
            weights: random
            resolutions: [320]
            preprocess: {{resize: letterbox, mean: [0.0, 0.0, 0.0], std: [1.0, 1.0, 1.0]}}
            decoder: {{kind: yolo_raw, score_threshold: {threshold}, top_k: 100, outputs: {{predictions: output0}}}}
        runtimes:
          - name: onnxruntime-cpu
            settings: {{intra_op_num_threads: 1}}
        batch_sizes: {batch_sizes}
        scenario: server
        dataset: {{sample: true, sample_images: 4}}
        cell_timeout_s: 300
        """) + server + extra


def load_cells(text: str, tmp_path: Path) -> list[Any]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    return parse_plan(text, str(plan), tmp_path).cells


def jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def http(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 request on its own connection (the script client)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# ----------------------------------------------------------------------------- plans


def test_a_server_plan_validates_and_names_its_cells(tmp_path: Path) -> None:
    cells = load_cells(plan_text("[1, 4]"), tmp_path)
    assert [c.cell_id for c in cells] == [
        "anchor-grid-320__onnxruntime-cpu__fp32__b1__r320__server",
        "anchor-grid-320__onnxruntime-cpu__fp32__b4__r320__server",
    ]
    assert all(c.scenario == "server" and c.scope == "end_to_end" and c.server is not None for c in cells)
    assert not any(c.run_accuracy for c in cells)


@pytest.mark.parametrize(("server", "field", "words"), [
    ("server:\n  closed_loop: {concurency: [1]}\n", "server.closed_loop.concurency", "unknown key"),
    ("server:\n  closed_loop: {concurrency: [0]}\n", "server.closed_loop.concurrency[0]", "greater than or equal to 1"),
    ("server:\n  closed_loop: {duration_s: 100000}\n", "server.closed_loop.duration_s", "less than or equal"),
    ("server:\n  open_loop: {duration_s: 2}\n", "server.open_loop", "needs `rates`"),
    ("server:\n  closed_loop: null\n  open_loop: {rates_of_peak: [0.5]}\n", "server", "needs `closed_loop`"),
    ("server:\n  slo: {}\n", "server.slo", "at least one of"),
    ("server:\n  closed_loop: {concurrency: [1, 2, 4, 8], duration_s: 100}\n", "server", "more than cell_timeout_s"),
    ("server:\n  monitoring: {baseline: no/such/run}\n", "server.monitoring.baseline", "does not exist"),
    ("scopes: [model]\n", "scopes", "serves images end to end"),
])
def test_bad_server_settings_are_refused_naming_the_field(tmp_path: Path, server: str, field: str, words: str) -> None:
    with pytest.raises(UserError) as err:
        load_cells(plan_text(server=server), tmp_path)
    assert f"{field}:" in str(err.value) and words in str(err.value), str(err.value)


def test_server_settings_need_the_server_scenario(tmp_path: Path) -> None:
    text = plan_text(server="server: {}\n").replace("scenario: server\n", "")
    with pytest.raises(UserError, match="`server:` settings are for `scenario: server`"):
        load_cells(text, tmp_path)


def test_bench_validate_exits_2_on_a_bad_server_plan(tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text(plan_text(server="server:\n  slo: {p99: 50}\n"))
    done = subprocess.run([sys.executable, "-m", "harness.cli", "validate", str(plan)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "server.slo.p99" in done.stderr


def test_bench_help_and_validate_do_not_import_the_server_stack() -> None:
    code = ("import sys\nfrom harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['validate', 'plans/onnx-server.yaml'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'starlette', 'python_multipart', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- pieces


def test_the_load_generator_sends_only_to_loopback() -> None:
    from harness.serve.loadgen import NotLoopback, Target

    assert Target("127.0.0.1", 8000).authority == "127.0.0.1:8000"
    assert Target("::1", 8000).authority == "[::1]:8000"
    for host in ("10.0.0.1", "192.168.1.10", "8.8.8.8", "example.org", "0.0.0.0"):
        with pytest.raises(NotLoopback):
            Target(host, 8000)


def test_quantile_intervals_bracket_the_quantile_and_psi_sees_a_shift() -> None:
    from harness.serve.stats import monitoring, psi, quantiles, shift_items

    values = np.random.default_rng(0).exponential(10.0, 5000)
    q = quantiles(values)
    assert q is not None and q.count == 5000
    for name in ("p50", "p95", "p99"):
        lo, hi = getattr(q, f"{name}_ci95")
        assert lo <= getattr(q, name) <= hi
    assert quantiles([1.0, 2.0]).p99_ci95 is None  # too few samples for an interval
    assert psi([10, 10, 10], [10, 10, 10]) == 0.0
    assert psi([100, 0, 0], [0, 0, 100]) > 1.0
    busy = monitoring([200] * 100, [3] * 100, [0.8] * 100, [640] * 100, [480] * 100)
    blind = monitoring([200] * 100, [0] * 90 + [3] * 10, [np.nan] * 90 + [0.8] * 10, [640] * 100, [480] * 100)
    assert blind.zero_detection_share == pytest.approx(0.9)
    items = {i.name: i for i in shift_items(busy, blind, 0.1, 0.25)}
    assert items["zero_detection_share"].flagged and items["detections_psi"].flagged
    assert not any(i.flagged for i in shift_items(busy, busy, 0.1, 0.25))


def test_bad_images_are_refused_before_decoding(tmp_path: Path) -> None:
    from PIL import Image

    from harness.serve.images import BadImage, decode, set_pillow_limits

    set_pillow_limits(40_000_000)
    good = jpeg()
    assert decode(good, 40_000_000).shape == (480, 640, 3)
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, "PNG")  # 100 megapixels in ~100 kB
    cases = {b"": (400, "empty_body"), b"GIF89a not really": (400, "not_an_image"),
             good[: len(good) // 2]: (400, "bad_image"), buffer.getvalue(): (413, "image_too_large")}
    for body, (status, code) in cases.items():
        with pytest.raises(BadImage) as err:
            decode(body, 40_000_000)
        assert (err.value.status, err.value.code) == (status, code)


def test_the_prometheus_text_is_well_formed() -> None:
    from harness.serve.metrics import Metrics

    m = Metrics('model "a"\nb', "rt")
    m.observe_request(200, 0.012)
    m.observe_request(503, 0.0001)
    m.observe_answer(0.001, 0.01, 0, float("nan"), 640, 480)
    m.observe_answer(0.002, 0.01, 7, 0.91, 1920, 1080)
    m.observe_batch(2)
    text = m.render(queue_depth=3, in_flight=1)
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? (NaN|[+-]Inf|-?[0-9.e+-]+)$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert 'model="model \\"a\\"\\nb"' in text
    assert re.search(r'detbench_detections_per_response_bucket\{[^}]*le="0"\} 1$', text, re.M)
    assert re.search(r'detbench_input_resolution_total\{[^}]*resolution="1920x1080"\} 1$', text, re.M)
    buckets = [int(x) for x in re.findall(r'detbench_max_score_bucket\{[^}]*\} (\d+)', text)]
    assert buckets == sorted(buckets) and buckets[-1] == 1


# ----------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The example detector's server in its own process, as a server cell starts it."""
    from harness.serve.scenario import start_server

    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "logs").mkdir()
    extra = "server:\n  limits: {max_queue: 4, max_body_bytes: 2000000, request_timeout_s: 2, max_pixels: 40000000}\n"
    cell = load_cells(plan_text(server=extra), tmp)[0]
    log = open(tmp / "logs" / "server.log", "a")  # noqa: SIM115
    handle = start_server(cell, tmp, log, 120)
    yield handle
    handle.stop()
    log.close()


def test_the_server_answers_the_lessons_json(server: Any) -> None:
    body = jpeg(634, 345)
    status, headers, raw = http(server.target.port, "POST", "/v1/detect", body, {"Content-Type": "image/jpeg"})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(raw)
    assert answer["model"] == "anchor-grid-320" and answer["runtime"] == "onnxruntime-cpu"
    assert answer["image"] == {"width": 634, "height": 345} and answer["batch_size"] == 1
    assert answer["latency_ms"] > 0 and answer["inference_ms"] > 0
    for det in answer["detections"]:
        assert set(det) == {"label", "class_id", "score", "bbox"} and det["score"] >= 0.03
        x1, y1, x2, y2 = det["bbox"]
        assert -1 <= x1 <= x2 <= 635 and -1 <= y1 <= y2 <= 346
    filtered = json.loads(http(server.target.port, "POST", "/v1/detect?min_score=0.99", body, {"Content-Type": "image/jpeg"})[2])
    assert filtered["detections"] == []


def test_the_server_gives_the_end_to_end_scopes_detections(server: Any, tmp_path: Path) -> None:
    """One implementation: the server's boxes are those of Runtime.predict on the same pixels."""
    from harness.accuracy.loader import decode_image
    from harness.models.registry import source_class
    from harness.runtimes.registry import runtime_class

    body = jpeg(500, 375, seed=3)
    cell = load_cells(plan_text(threshold=0.0), tmp_path)[0]
    served = json.loads(http(server.target.port, "POST", "/v1/detect", body, {"Content-Type": "image/jpeg"})[2])
    log = io.StringIO()
    source = source_class(cell.source)(cell, log)
    runtime = runtime_class(cell.runtime.name)(cell, source, log)
    runtime.prepare()
    expected = runtime.predict([decode_image(io.BytesIO(body))])[0]
    keep = expected.scores >= 0.03
    assert len(served["detections"]) == int(keep.sum())
    if keep.any():
        np.testing.assert_allclose([d["bbox"] for d in served["detections"]], np.round(expected.boxes_xyxy[keep], 1), atol=0.11)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_raw_body_and_multipart(server: Any, tmp_path: Path) -> None:
    image = tmp_path / "image.jpg"
    image.write_bytes(jpeg())
    url = f"http://{server.target.authority}/v1/detect"
    for args in (["-H", "Content-Type: image/jpeg", "--data-binary", f"@{image}"], ["-F", f"image=@{image}"]):
        done = subprocess.run([str(CURL), "-s", "-w", "\n%{http_code}", *args, url], capture_output=True, text=True, timeout=60)
        body, code = done.stdout.rsplit("\n", 1)
        assert code == "200", done.stdout
        assert "detections" in json.loads(body)
    health = subprocess.run([str(CURL), "-s", f"http://{server.target.authority}/healthz"], capture_output=True, text=True, timeout=30)
    assert json.loads(health.stdout)["status"] == "ok"
    metrics = subprocess.run([str(CURL), "-s", f"http://{server.target.authority}/metrics"], capture_output=True, text=True, timeout=30)
    assert 'detbench_requests_total{model="anchor-grid-320",runtime="onnxruntime-cpu",code="200"}' in metrics.stdout


def _big_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (10_000, 10_000), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(server: Any) -> None:
    port = server.target.port
    good = jpeg()
    cases = [
        ("not an image", b"this is not an image", {"Content-Type": "image/jpeg"}, 400, "not_an_image"),
        ("truncated JPEG", good[: len(good) // 3], {"Content-Type": "image/jpeg"}, 400, "bad_image"),
        ("100-megapixel image", _big_png(), {"Content-Type": "image/png"}, 413, "image_too_large"),
        ("empty body", b"", {"Content-Type": "image/jpeg"}, 400, "empty_body"),
        ("wrong content type", good, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("no content type", good, {}, 415, "unsupported_media_type"),
        ("body over the limit", b"\xff" * 2_500_000, {"Content-Type": "image/jpeg"}, 413, "body_too_large"),
        ("multipart without a file", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
         {"Content-Type": "multipart/form-data; boundary=x"}, 400, "empty_body"),
        ("broken multipart", b"garbage", {"Content-Type": "multipart/form-data"}, 400, "bad_multipart"),
    ]
    for name, body, headers, status, code in cases:
        got, got_headers, raw = http(port, "POST", "/v1/detect", body, headers)
        assert got == status, (name, raw[:300])
        assert got_headers["content-type"] == "application/json", name
        error = json.loads(raw)["error"]
        assert (error["status"], error["code"]) == (status, code), name
        assert http(port, "POST", "/v1/detect", good, {"Content-Type": "image/jpeg"})[0] == 200, f"after {name}"
    def counted(code: int) -> int:
        found = re.search(rf'^detbench_requests_total\{{[^}}]*code="{code}"\}} (\d+)$', http(port, "GET", "/metrics")[2].decode(), re.M)
        return int(found.group(1)) if found else 0

    for method, path, status in (("GET", "/nowhere", 404), ("GET", "/v1/detect", 405)):
        before = counted(status)
        got, _, raw = http(port, method, path)
        assert got == status and json.loads(raw)["error"]["status"] == status
        assert counted(status) == before + 1, f"{status} not counted in detbench_requests_total"
    assert json.loads(http(port, "GET", "/healthz")[2])["status"] == "ok"


def test_a_slow_body_times_out_with_408(server: Any) -> None:
    from http.client import HTTPResponse

    with socket.create_connection(("127.0.0.1", server.target.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\nabc")
        started = time.monotonic()
        # The headers and the body may come in separate segments: parse the whole answer.
        response = HTTPResponse(sock)
        response.begin()
        body = response.read()
    assert response.status == 408, body
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert time.monotonic() - started < 10
    assert http(server.target.port, "POST", "/v1/detect", jpeg(), {"Content-Type": "image/jpeg"})[0] == 200


def test_a_flood_past_the_queue_limit_gets_503_and_the_server_recovers(server: Any) -> None:
    from harness.serve.loadgen import Body, Connection, request_bytes

    target = server.target
    raw = request_bytes(target, "POST", "/v1/detect", Body(jpeg(), "image/jpeg"), None)

    async def flood() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(Connection(target).send(raw, keep_body=True) for _ in range(40)))

    answers = asyncio.run(flood())
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 20 and 200 in statuses
    refused = next(json.loads(b) for s, b in answers if s == 503)
    assert refused["error"]["code"] == "overloaded"
    assert http(target.port, "POST", "/v1/detect", jpeg(), {"Content-Type": "image/jpeg"})[0] == 200
    stats = json.loads(http(target.port, "GET", "/v1/stats")[2])
    assert stats["monitoring"]["status_codes"]["503"] >= 20


def test_a_flood_with_connection_close_gets_every_503_and_a_clean_close(server: Any) -> None:
    """Clients that send a whole body on `Connection: close` and read to the end of the
    connection: each gets its JSON answer, and the connection ends with FIN, not RST. A server
    that closes on a refused body it has not read makes the kernel reset the connection, which
    can erase the answer before the client reads it (RFC 9112 9.6); this one reads it first."""
    import threading
    from collections import Counter

    body = jpeg()
    raw = (f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body
    clients = 60
    start_together = threading.Barrier(clients)
    outcomes: list[Any] = []

    def client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", server.target.port), timeout=30) as sock:
                start_together.wait(30)
                sock.sendall(raw)
                received = b""
                while chunk := sock.recv(65536):  # to the end: a reset raises here
                    received += chunk
            head, _, answer = received.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            outcomes.append((status, json.loads(answer).get("error", {}).get("code")))
        except OSError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    counts = Counter(outcomes)
    assert sum(counts.values()) == clients and set(counts) <= {(200, None), (503, "overloaded")}, counts
    assert counts[(503, "overloaded")] > 0, counts
    assert http(server.target.port, "POST", "/v1/detect", jpeg(), {"Content-Type": "image/jpeg"})[0] == 200


def test_dynamic_batching_batches_concurrent_requests(tmp_path: Path) -> None:
    from harness.serve.loadgen import Body, Connection, request_bytes
    from harness.serve.scenario import start_server

    (tmp_path / "logs").mkdir()
    cell = load_cells(plan_text("[4]", server="server:\n  batching: {max_queue_delay_ms: 50}\n"), tmp_path)[0]
    with open(tmp_path / "logs" / "server.log", "a") as log:
        handle = start_server(cell, tmp_path, log, 120)
        try:
            raw = request_bytes(handle.target, "POST", "/v1/detect", Body(jpeg(), "image/jpeg"), "m:batch")

            async def together() -> list[tuple[int, bytes]]:
                return await asyncio.gather(*(Connection(handle.target).send(raw, keep_body=True) for _ in range(8)))

            answers = asyncio.run(together())
            assert all(s == 200 for s, _ in answers)
            sizes = [json.loads(b)["batch_size"] for _, b in answers]
            assert max(sizes) > 1 and max(sizes) <= 4
            stats = json.loads(http(handle.target.port, "GET", "/v1/stats?tag=m:batch")[2])["server"]
            assert sum(int(k) * v for k, v in stats["batch_sizes"].items()) == 8
            assert stats["mean_batch"] > 1 and set(stats["stages_ms"]) == {"preprocess", "h2d", "infer", "d2h", "postprocess"}
        finally:
            handle.stop()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text())
    parent = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from harness.plan.load import load_plan
        from harness.serve.scenario import start_server
        cell = load_plan({str(plan)!r}).cells[0]
        handle = start_server(cell, Path({str(tmp_path)!r}), sys.stderr, 120)
        print(handle.proc.pid, handle.target.port, flush=True)
        time.sleep(600)
        """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        pid, port = (int(x) for x in proc.stdout.readline().split())
        assert http(port, "GET", "/healthz")[0] == 200
        proc.kill()  # SIGKILL: no cleanup code of the parent runs
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid), "the server outlived the process that started it"
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_that_cannot_run_says_why(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has ONNX Runtime's CUDA provider")
    from harness.serve.scenario import ScenarioEnded, start_server

    (tmp_path / "logs").mkdir()
    text = plan_text().replace("device: cpu", "device: auto").replace(
        "- name: onnxruntime-cpu\n    settings: {intra_op_num_threads: 1}", "- name: onnxruntime-cuda")
    cell = load_cells(text, tmp_path)[0]
    with pytest.raises(ScenarioEnded) as end:
        start_server(cell, tmp_path, io.StringIO(), 60)
    assert end.value.status == "skipped" and "CUDAExecutionProvider" in end.value.reason
    assert not list((tmp_path / "logs").glob(".*")), "scratch files left behind"


def test_bench_serve_by_hand(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text())
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", str(plan), "--model", "anchor-grid-320",
                             "--runtime", "onnxruntime-cpu", "--port", "0", "--max-seconds", "120", "--log", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        port = None
        said: list[str] = []
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            said.append(line)
            if m := re.search(r"on http://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
        assert port, "bench serve did not say where it listens"
        # The terminal: what is served and where its runtime's log went; ORT's session log is in the file.
        assert len(said) == 2 and str(log) in said[0] and "batch up to 1, resolution 320" in said[0], said
        assert "onnxruntime" in log.read_text()
        status, _, raw = http(port, "POST", "/v1/detect", jpeg(), {"Content-Type": "image/jpeg"})
        assert status == 200 and json.loads(raw)["cell_id"].endswith("__server")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()


def test_bench_serve_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text())
    done = subprocess.run([sys.executable, "-m", "harness.cli", "serve", str(plan), "--model", "anchor-grid-320",
                           "--runtime", "onnxruntime-cpu", "--host", "0.0.0.0"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "loopback" in done.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_bench_serve_refuses_a_bad_port_naming_it(tmp_path: Path, port: str) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text())
    done = subprocess.run([sys.executable, "-m", "harness.cli", "serve", str(plan), "--model", "anchor-grid-320",
                           "--runtime", "onnxruntime-cpu", "--port", port], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "argument --port:" in done.stderr and "0-65535" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("option", "words"), [
    ({"batch": 3}, "--batch 3: model anchor-grid-320 on runtime onnxruntime-cpu has batch sizes [1, 4]"),
    ({"precision": "fp16"}, "--precision fp16: model anchor-grid-320 on runtime onnxruntime-cpu has precisions [fp32]"),
    ({"resolution": 640}, "--resolution 640: model anchor-grid-320 on runtime onnxruntime-cpu has resolutions [320]"),
    ({"batch": 4, "nms": "in_graph"}, "--nms in_graph: model anchor-grid-320 on runtime onnxruntime-cpu with --batch 4 "
                                      "has NMS placements [host, device]"),
])
def test_bench_serve_names_the_values_of_the_option_that_does_not_match(tmp_path: Path, option: dict[str, Any], words: str) -> None:
    from harness.serve.server import pick_cell

    cells = load_cells(plan_text("[1, 4]", extra="nms: [host, device]\n"), tmp_path)
    asked = {"precision": None, "batch": None, "resolution": None, "nms": None, **option}
    with pytest.raises(UserError) as err:
        pick_cell(cells, "anchor-grid-320", "onnxruntime-cpu", **asked)
    assert str(err.value) == words


def test_bench_serve_says_which_nms_placement_it_serves(tmp_path: Path) -> None:
    from harness.serve.server import describe_choice, pick_cell

    cells = load_cells(plan_text("[1, 4]", extra="nms: [host, device]\n"), tmp_path)
    first = pick_cell(cells, "anchor-grid-320", "onnxruntime-cpu", None, None, None)
    assert first.nms == "host"
    assert describe_choice(cells, first) == ("precision fp32, batch up to 1, resolution 320, NMS host; "
                                             "the plan also has --batch 4; --nms device")
    assert pick_cell(cells, "anchor-grid-320", "onnxruntime-cpu", None, 4, None, "device").cell_id == \
        "anchor-grid-320__onnxruntime-cpu__fp32__b4__r320__nms-device__server"


# ----------------------------------------------------------------------------- the scenario through bench


SWEEP = """\
server:
  closed_loop: {concurrency: [1, 4], duration_s: 1.5, warmup_s: 0.3}
  open_loop: {rates: [15], rates_of_peak: [0.5], duration_s: 1.5, warmup_s: 0.3, drain_s: 5}
  slo: {p99_ms: 200}
  batching: {max_queue_delay_ms: 2}
  client: {capacity_s: 0.5, capacity_concurrency: 8}
"""


def run_bench(plan: Path, out: Path) -> Path:
    # From the plan's folder: the artifacts cache (the sample dataset) is made under the working
    # folder, and the checkout may be read-only (the image's test service mounts it so).
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(plan), "--output", str(out)],
                          capture_output=True, text=True, cwd=plan.parent, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sorted(out.glob("*/*/results.json"))
    return runs[-1].parent


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    plan = tmp / "plan.yaml"
    plan.write_text(plan_text("[1, 4]", server=SWEEP))
    return run_bench(plan, tmp / "reports")


def test_a_closed_loop_sweep_and_an_open_loop_run_are_recorded(sweep_run: Path) -> None:
    from harness.results import read_run

    results = read_run(sweep_run).results
    assert len(results.cells) == 2
    for record in results.cells:
        assert record.status == "ok", record.reason
        assert record.identity.scenario == "server" and record.latency is None
        serve = record.serve
        assert serve is not None and serve.address.startswith("127.0.0.1:")
        assert serve.capacity is not None and serve.capacity.throughput_rps > 0
        modes = [(lv.mode, lv.concurrency, lv.rate_of_peak) for lv in serve.levels]
        assert modes[:2] == [("closed", 1, None), ("closed", 4, None)]
        assert [m[0] for m in modes[2:]] == ["open", "open"] and modes[3][2] == 0.5
        assert serve.levels[2].target_rps == 15
        for lv in serve.levels:
            assert lv.ok > 0 and lv.throughput_rps > 0 and lv.latency_ms is not None
            assert lv.latency_ms.p50 <= lv.latency_ms.p95 <= lv.latency_ms.p99
            assert lv.samples_total == lv.ok == len(lv.samples_ms)
            assert lv.server is not None and lv.server.requests >= lv.ok
            assert lv.server.queue_ms is not None and lv.server.inference_ms is not None
            # A batch may also hold a warm-up request of the level (sizes count model calls).
            in_batches = sum(int(k) * n for k, n in lv.server.batch_sizes.items())
            assert lv.server.requests <= in_batches <= lv.server.requests + 2 * (serve.max_batch - 1)
            assert lv.client_cpu_share is not None and lv.meets_slo is not None
        assert serve.levels[3].target_rps == pytest.approx(0.5 * serve.peak_throughput_rps)
        assert serve.slo is not None and serve.slo.p99_ms == 200
        mon = serve.monitoring
        assert mon is not None and mon.requests == sum(lv.server.requests for lv in serve.levels if lv.server)
        assert sum(mon.detections.counts) == mon.requests and set(mon.resolutions) and mon.zero_detection_share is not None
        assert sum(mon.max_score.counts) == round(mon.requests * (1 - mon.zero_detection_share))
        assert record.settings["providers"] == ["CPUExecutionProvider"]
    batched = results.cells[1].serve
    assert batched is not None and batched.max_batch == 4 and batched.max_queue_delay_ms == 2
    assert max(int(k) for lv in batched.levels if lv.server for k in lv.server.batch_sizes) > 1


def test_the_report_shows_the_server_figures(sweep_run: Path) -> None:
    html = (sweep_run / "report.html").read_text()
    assert 'id="server"' in html and 'id="chart-serve-curve"' in html and 'id="chart-serve-split"' in html
    assert "SLO p99 200 ms" in html and "Monitoring · anchor-grid-320" in html
    summary = (sweep_run / "summary.md").read_text()
    assert "## Server scenario" in summary and "| closed c=4 |" in summary and "highest open-loop rate within it" in summary
    rows = list(csv.DictReader(io.StringIO((sweep_run / "results.csv").read_text())))
    levels = [r for r in rows if r["scenario"] == "server"]
    assert len(levels) == 8 and {r["level"] for r in levels} >= {"c1", "c4", "15 rps"}
    assert all(float(r["level_throughput_rps"]) > 0 and float(r["level_p99_ms"]) > 0 for r in levels)


def test_bench_compare_compares_server_cells_at_equal_load(sweep_run: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(sweep_run), str(sweep_run), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "level by level at equal load" in done.stdout and "c4" in done.stdout and "15 rps" in done.stdout
    assert "no verdict" in done.stdout and "one server process a side" in done.stdout
    assert "server levels at equal load" in (tmp_path / "compare.md").read_text()
    html = (tmp_path / "compare.html").read_text()
    assert "server levels at equal load" in html
    # One process a side: nothing got a verdict, so the banner claims no pass, and it names the
    # test the comparison used (the terminal's words), not another.
    from markupsafe import escape as html_escape  # as the template escapes it

    from harness.report.compare import TEST_WORDS

    banner = html[html.index('id="gate"'):].split("</div></div>", 1)[0]
    assert "No verdict" in banner and "Pass" not in banner and "protocol.repeats" in banner, banner
    assert str(html_escape(TEST_WORDS)) in banner and "Mann-Whitney" not in html
    assert "**NO VERDICT**" in (tmp_path / "compare.md").read_text()


def test_compare_levels_finds_a_slower_level() -> None:
    from harness.report.serve import compare_levels
    from harness.results.serve import Level, ServeResult
    from harness.serve.stats import quantiles

    def level(samples: np.ndarray, concurrency: int) -> Level:
        return Level(mode="closed", concurrency=concurrency, warmup_s=0, duration_s=1, sent=len(samples), completed=len(samples),
                     ok=len(samples), errors=0, error_share=0, throughput_rps=100, latency_ms=quantiles(samples),
                     samples_ms=list(samples), samples_total=len(samples))

    rng = np.random.default_rng(0)
    base = rng.normal(10, 0.5, 500)

    def result(*levels: Level) -> ServeResult:
        return ServeResult(server="", endpoint="", address="", load_generator="", max_batch=1, images=1, image_source="", levels=list(levels))

    a, b = result(level(base, 1), level(base, 2)), result(level(base * 1.2, 1), level(base, 4))
    rows, unmatched = compare_levels(a, b, 5.0, 0.01)
    # one server process a side: the change is shown, the between-process variance is unknown
    assert [r.key for r in rows] == ["c1"] and rows[0].verdict == "no verdict" and rows[0].p50_change_pct == pytest.approx(20, abs=0.5)
    assert unmatched == ["A closed c=2", "B closed c=4"]
    # three server processes a side: each level's median per process is one value
    a_runs = [result(level(base * f, 1)) for f in (1.0, 1.01, 0.99)]
    b_runs = [result(level(base * 1.2 * f, 1)) for f in (1.0, 0.995, 1.008)]
    rows, _ = compare_levels(a, b, 5.0, 0.01, a_runs, b_runs)
    assert rows[0].verdict == "slower" and rows[0].p_value is not None and rows[0].p_value < 0.01


def test_a_shift_against_the_baseline_run_is_flagged(sweep_run: Path, tmp_path: Path) -> None:
    """The same cell, but every answer empty (a score threshold nothing reaches): the share of
    answers without a detection jumps, and the record, its flags and the report say so."""
    from harness.results import read_run

    server = f"server:\n  closed_loop: {{concurrency: [2], duration_s: 1, warmup_s: 0.2}}\n  client: {{capacity_s: 0}}\n  monitoring: {{baseline: {sweep_run}}}\n"
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(server=server, threshold=0.9))
    run = run_bench(plan, tmp_path / "reports")
    record = read_run(run).results.cells[0]
    shift = record.serve.shift if record.serve else None
    assert shift is not None and shift.reason is None and shift.baseline_cell_id == record.cell_id
    zero = next(i for i in shift.items if i.name == "zero_detection_share")
    assert zero.current == 1.0 and zero.flagged and shift.flagged
    assert "distribution_shift" in record.flags and "distribution shift" in (record.reason or "")
    assert "Distribution shift</strong>" in (run / "report.html").read_text()


# ----------------------------------------------------------------------------- other models, other devices


@pytest.mark.slow
def test_rfdetr_nano_served_under_load(tmp_path: Path) -> None:
    pytest.importorskip("rfdetr")
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        name: serve-rfdetr
        device: cpu
        models:
          - {name: rfdetr-nano, variant: nano, weights: random}
        runtimes: [torch]
        scenario: server
        server:
          closed_loop: {concurrency: [1, 2], duration_s: 3, warmup_s: 1}
          open_loop: {rates_of_peak: [0.5], duration_s: 3, warmup_s: 1}
          client: {capacity_s: 0.5}
        dataset: {sample: true, sample_images: 4}
        cell_timeout_s: 600
        """))
    from harness.results import read_run

    record = read_run(run_bench(plan, tmp_path / "reports")).results.cells[0]
    assert record.status == "ok", record.reason
    assert record.serve is not None and all(lv.ok > 0 for lv in record.serve.levels)
    assert record.serve.monitoring is not None and record.serve.monitoring.requests > 0


@pytest.mark.gpu
def test_onnxruntime_cuda_with_dynamic_batching_on_and_off(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text("[1, 8]", server=SWEEP).replace("device: cpu", "device: cuda:0")
                    .replace("- name: onnxruntime-cpu\n    settings: {intra_op_num_threads: 1}", "- name: onnxruntime-cuda"))
    from harness.results import read_run

    results = read_run(run_bench(plan, tmp_path / "reports")).results
    assert [c.status for c in results.cells] == ["ok", "ok"], [c.reason for c in results.cells]
    for record in results.cells:
        assert record.settings["providers"][0] == "CUDAExecutionProvider"
    batched = results.cells[1].serve
    assert batched is not None and batched.max_batch == 8



def test_the_slo_line_says_once_that_no_open_loop_rate_met_it() -> None:
    """The H200 server run's batched cell read "within it none of the rates tried; ... . no
    open-loop rate met the SLO.": the note repeated the line, in lower case."""
    from harness.report.serve import _slo_note

    assert _slo_note("no open-loop rate met the SLO", no_open_rate=True) == ""
    both = "no open-loop rate met the SLO; a level that met the SLO was limited by the load generator: the server may do more"
    assert _slo_note(both, no_open_rate=True) == (" A level that met the SLO was limited by the load generator: "
                                                  "the server may do more.")
    assert _slo_note(None, no_open_rate=False) == ""
