"""The model server's limits, tried as a hostile client would: each refusal is cheap (a
4xx or a 503 with one line, before the work and without the memory), and a client's
mistake or departure never counts as a server error.

Most tests run a real server (uvicorn, as `lepton serve` runs it, with a stand-in model
and no registry) in a subprocess on a free port of 127.0.0.1, and talk to it through
raw sockets: the limits live in the HTTP layer, and the memory measured is the
server's own (its peak resident set, /proc/PID/status VmHWM, reset before each try)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton_core.params import ServeParams
from lepton_core.predictor import BasePredictor, Preprocessing
from tests.platform.test_serve_app import BEARER, TOKEN, _client, _post, _server
from tests.platform.test_serve_app import _sample as _sample_of

ROOT = Path(__file__).resolve().parents[2]
MB = 2**20
GOOD = json.dumps({"instances": [[[1, 2], [3, 4]]]}).encode()


# ------------------------------------------------------------ the server under test
class _Slow(BasePredictor):
    """Three classes over 2x2 uint8 images (logit k = k x the pixel sum); each forward
    pass sleeps `delay` seconds (a busy model)."""

    preprocessing = Preprocessing(
        kind="image", input_shape=(1, 2, 2), dtype="uint8", scale=1 / 255, classes=("a", "b", "c")
    )

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def to_input(self, x):
        return torch.from_numpy(np.ascontiguousarray(self.check(x))).float() * self.preprocessing.scale

    def log_input(self, t):
        return t.numpy()

    def forward(self, t):
        time.sleep(self.delay)
        s = t.flatten(1).sum(1, keepdim=True)  # (N, 1)
        return (s * torch.arange(3.0)).numpy().astype(np.float32)  # (N, 3)


def _stub_main() -> None:
    """The subprocess: the real app and uvicorn options with the stand-in model
    (argv: port, ServeParams as JSON, forward delay, token)."""
    import uvicorn

    from effects.runtime.settings import get_settings
    from lepton.serving.app import create_app
    from lepton.serving.core import Loaded
    from lepton.serving.http_limits import uvicorn_options
    from lepton.serving.server import ModelServer

    port, params, delay, token = int(sys.argv[1]), ServeParams.model_validate_json(sys.argv[2]), *sys.argv[3:5]

    class Stand(ModelServer):
        def refresh(self) -> bool:
            self.current = Loaded("3", "run-3", "data-3", _Slow(float(delay)))
            return True

    server = Stand("m", "champion", params, get_settings(), token or None, get_settings().home / "predictions")
    uvicorn.run(create_app(server), host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(params))


class Server:
    """The stand-in server in a subprocess; stopped by its PID on exit."""

    def __init__(self, home: Path, delay: float = 0.0, token: str = "", **params):
        from effects.runtime.procs import free_port

        self.port = free_port()
        self.params = ServeParams(poll_seconds=60, **params)
        self.cmd = [sys.executable, "-c", "from tests.platform.test_serve_limits import _stub_main; _stub_main()"]
        self.cmd += [str(self.port), self.params.model_dump_json(), str(delay), token]
        self.env = {**os.environ, "LEPTON_PROJECT_DIR": str(home), "LEPTON_HOME": str(home / "home")}
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        self.stderr = home / f"serve-{self.port}.stderr"
        self.token = token

    def __enter__(self) -> Server:
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=err, stderr=err)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr.read_text()
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise AssertionError(f"the server did not get ready: {self.stderr.read_text()}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # -------------------------------------------------------- talking to it
    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 10
    ) -> tuple[int, dict, bytes]:
        """One request on its own connection -> status, headers (lower-case names), body."""
        head = {"Host": "t", "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
        if self.token and "Authorization" not in head:
            head["Authorization"] = f"Bearer {self.token}"
        with self.connect(timeout) as s:
            s.sendall(_head(method, path, head) + body)
            return _response(_read_all(s))

    def predict(self, body: bytes = GOOD, timeout: float = 10) -> tuple[int, dict, bytes]:
        return self.request("POST", "/v1/predict", body, {"Content-Type": "application/json"}, timeout)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2].decode()

    # -------------------------------------------------------- its memory
    def reset_peak(self) -> int:
        """Resets the server's peak resident set (Linux: clear_refs 5); its resident set now."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self._status_kb("VmRSS") * 1024

    def peak(self) -> int:
        return self._status_kb("VmHWM") * 1024

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.proc.pid}/status")


def _head(method: str, path: str, headers: dict) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def _error_of(body: bytes) -> str:
    doc = json.loads(body)
    assert set(doc) == {"error"} and "\n" not in doc["error"], doc
    return doc["error"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One server for the tests of limits that leave it as it was: an 8 MB body cap, 1 s
    for the headers and 1 s for the body, and room for 100,000 instances (so that the
    type checks, not the count, refuse a hostile body)."""
    home = tmp_path_factory.mktemp("serve")
    with Server(home, max_body_mb=8, header_timeout_s=1.0, body_timeout_s=1.0, max_instances=100_000) as server:
        yield server


# ------------------------------------------------------------ bodies over the cap
def test_a_declared_body_over_the_cap_is_refused_from_its_content_length(srv):
    rest = srv.reset_peak()
    with srv.connect() as s:  # 2 GB declared, none of it sent: the answer comes before the body
        s.sendall(_head("POST", "/v1/predict", {"Host": "t", "Content-Length": str(2 * 1024 * MB)}))
        status, headers, body = _response(_read_all(s))
    assert status == 413 and headers["connection"] == "close"
    assert "body of 2147483648 bytes is over the 8 MB cap" in _error_of(body)
    assert srv.peak() - rest < 4 * MB
    assert srv.predict()[0] == 200  # and the server goes on


def _send_until_answered(s: socket.socket, pieces) -> tuple[int, bytes]:
    """Sends `pieces` (bytes) one after another, stopping once the server answers or
    closes (looking before each send: a server that closes on unread data resets the
    connection, and the reset would discard an answer not yet read); -> the bytes
    sent, and the answer."""
    sent, answer = 0, b""
    for piece in pieces:
        s.settimeout(0)
        try:
            answer = s.recv(65536)  # the server answered (and is closing)
            break
        except BlockingIOError:
            pass
        except OSError:
            break
        try:
            s.settimeout(5)
            s.sendall(piece)
        except OSError:  # the server closed: its answer may still be waiting
            break
        sent += len(piece)
    s.settimeout(10)
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except OSError:
        pass
    return sent, answer


def _stream_chunked(srv: Server, path: str, total: int, chunk: int = MB) -> tuple[int, tuple[int, dict, bytes]]:
    """Sends up to `total` bytes as a chunked body, stopping once the server answers or
    closes; -> the bytes sent, and the answer."""
    piece = f"{chunk:x}\r\n".encode() + b"7" * chunk + b"\r\n"
    with srv.connect(timeout=30) as s:
        s.sendall(
            _head("POST", path, {"Host": "t", "Transfer-Encoding": "chunked", "Content-Type": "application/json"})
        )
        sent, answer = _send_until_answered(s, (piece for _ in range(total // chunk)))
    return sent, _response(answer)


def test_a_2_gb_chunked_body_is_cut_off_at_the_cap_without_the_memory(srv):
    """No Content-Length: the server counts as it reads and answers 413 once the bytes
    pass the cap; its peak memory grows by less than the cap, not by the body."""
    rest = srv.reset_peak()
    sent, (status, headers, body) = _stream_chunked(srv, "/v1/predict", 2 * 1024 * MB)
    grown = srv.peak() - rest
    assert status == 413 and headers["connection"] == "close", body
    assert "body over the 8 MB cap" in _error_of(body)
    assert sent < 64 * MB  # cut off near the cap, not read to the end
    assert grown < 8 * MB + 4 * MB, f"the server grew by {grown / MB:.1f} MB reading a body capped at 8 MB"
    assert srv.predict()[0] == 200


def test_the_feedback_body_has_the_same_cap(srv):
    status, _, body = srv.request("POST", "/v1/feedback", b"", {"Content-Length": str(60 * MB)})
    assert status == 413 and "over the 8 MB cap" in _error_of(body)
    rest = srv.reset_peak()
    sent, (status, _, body) = _stream_chunked(srv, "/v1/feedback", 256 * MB)
    assert status == 413 and "over the 8 MB cap" in _error_of(body)
    assert sent < 32 * MB  # cut off near the cap (plus what the socket buffers took), not read to the end
    assert srv.peak() - rest < 8 * MB + 4 * MB


# ------------------------------------------------------------ slow clients
def test_slow_headers_slow_bodies_and_silent_connections_are_timed_out(srv):
    """A client that sends its headers a byte at a time gets 408 once
    serve.header_timeout_s has passed, however it keeps sending; one that sends nothing
    is closed; a body that trickles gets 408 after serve.body_timeout_s; and the
    server answers everyone else meanwhile."""
    timed_out = _sample(srv.metrics(), "lepton_requests_total", code="408", default=0)
    slow, silent = srv.connect(), srv.connect()
    t0 = time.monotonic()
    slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\n")
    answer, latencies = b"", []
    slow.settimeout(0.2)
    while time.monotonic() - t0 < 5:
        try:
            slow.sendall(b"X-Drip: 1\r\n")  # a header every 0.2 s, never the blank line
            chunk = slow.recv(65536)
        except TimeoutError:
            t = time.monotonic()
            assert srv.predict()[0] == 200
            latencies.append(time.monotonic() - t)
            continue
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    took = time.monotonic() - t0
    status, headers, body = _response(answer)
    assert status == 408 and headers["connection"] == "close"
    assert "the request headers took over 1 s" in _error_of(body)
    assert 0.9 < took < 3, took
    assert max(latencies) < 0.5, latencies
    silent.settimeout(5)
    assert _response(_read_all(silent))[0] == 408
    silent.close()

    with srv.connect() as s:
        s.sendall(_head("POST", "/v1/predict", {"Host": "t", "Content-Length": "100"}) + b'{"inst')
        t0 = time.monotonic()
        status, headers, body = _response(_read_all(s))
    assert status == 408 and "the body took over 1 s" in _error_of(body)
    assert time.monotonic() - t0 < 3
    # the body's 408 (the app's); slow headers never reach the app
    assert _sample(srv.metrics(), "lepton_requests_total", code="408") == timed_out + 1


def test_headers_over_64_kb_are_refused(srv):
    """Headers that never end (about 100 MB offered, no blank line) get a 431 once they
    pass 64 KB. What the client manages to send before it sees the answer includes what
    the two kernels' socket buffers took meanwhile (a few MB on a busy machine), so the
    bound is far below what was offered rather than near the cap; the server's memory
    shows it read no more than the cap."""
    rest = srv.reset_peak()
    with srv.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        sent, answer = _send_until_answered(s, (b"X-Big: " + b"b" * 1000 + b"\r\n" for _ in range(100_000)))
        status, _, body = _response(answer)
        assert status == 431 and _error_of(body) == "request headers over 64 KB"
        assert sent < 16 * MB  # cut off near the cap, not read to the end
        assert srv.peak() - rest < 4 * MB
        assert srv.request("GET", "/healthz")[0] == 200


def test_headers_over_64_kb_in_one_read_are_refused(srv):
    """All the headers at once (one read): the cap holds as it does for a trickle."""
    big = "".join(f"X-Big-{i}: {'b' * 1000}\r\n" for i in range(100)).encode()
    with srv.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + big + b"\r\n")
        status, _, body = _response(_read_all(s))
    assert status == 431 and _error_of(body) == "request headers over 64 KB"
    small = "".join(f"X-Ok-{i}: {'b' * 1000}\r\n" for i in range(50)).encode()  # 50 KB: under the cap
    with srv.connect() as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + small + b"\r\n")
        assert _response(_read_all(s))[0] == 200


@pytest.mark.parametrize(
    "path, headers, status",
    [
        ("/v2/models/nope/infer", {}, 404),  # refused before its body is read
        ("/v1/predict", {"Authorization": "Bearer wrong"}, 401),
        ("/invocations", {"Authorization": "Bearer wrong"}, 401),
    ],
)
def test_a_big_body_refused_unread_does_not_count_as_the_next_requests_headers(home, path, headers, status):
    """On one kept-alive connection, a 600 KB body answered before it is read (uvicorn
    drains it afterwards), then a good request: the good request is answered, not 431."""
    with Server(home, token=TOKEN) as srv:
        big = b" " * 600_000 + GOOD
        head = {"Host": "t", "Content-Type": "application/json", "Content-Length": str(len(big)), **BEARER}
        good = {"Host": "t", "Content-Type": "application/json", "Content-Length": str(len(GOOD)), **BEARER}
        with srv.connect(timeout=20) as s:
            s.sendall(_head("POST", path, {**head, **headers}) + big)
            s.sendall(_head("POST", "/v1/predict", {**good, "Connection": "close"}) + GOOD)
            raw = _read_all(s)
        first, _, rest = raw.partition(b"HTTP/1.1 ")[2].partition(b"HTTP/1.1 ")
        assert int(first.split()[0]) == status, raw[:300]
        assert rest, f"the connection closed after the refusal: {raw[:300]!r}"
        second, _, body = _response(b"HTTP/1.1 " + rest)
        assert second == 200, body
        assert json.loads(body)["labels"] == [2]


# ------------------------------------------------------------ overload
def test_an_overload_beyond_max_queue_gets_503_with_retry_after_not_timeouts(home):
    with Server(home, delay=0.3, max_batch=1, max_queue=2) as srv:
        answers: list = []

        def one() -> None:
            t = time.monotonic()
            status, headers, body = srv.predict(timeout=30)
            answers.append((status, headers, time.monotonic() - t))

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 24  # every request answered: none hung or timed out
        shed = [a for a in answers if a[0] == 503]
        assert {a[0] for a in answers} == {200, 503} and len(shed) >= 12, [a[0] for a in answers]
        assert all(a[1]["retry-after"] == "1" for a in shed)
        assert max(a[2] for a in shed) < 2.0  # refused at once, not after waiting its turn
        assert _sample(srv.metrics(), "lepton_requests_shed_total") == len(shed)


# ------------------------------------------------------------ hostile bodies
def test_string_instances_are_refused_cheaply_and_do_not_stall_other_requests(srv, home):
    """The body that drove the server to 4.4 GB: 343 KB of JSON strings. Refused with a
    400 (or a 413 on the count) within a few tens of MB of the server's resting memory,
    while a concurrent request is answered in normal time."""
    hostile = json.dumps({"instances": ["a" * 15000] + ["a"] * 65535}).encode()
    assert srv.predict()[0] == 200
    normal = []
    for _ in range(20):
        t = time.monotonic()
        assert srv.predict()[0] == 200
        normal.append(time.monotonic() - t)
    rest = srv.reset_peak()
    stop, latencies = threading.Event(), []

    def meanwhile() -> None:
        while not stop.is_set():
            t = time.monotonic()
            assert srv.predict()[0] == 200
            latencies.append(time.monotonic() - t)

    beside = threading.Thread(target=meanwhile)
    beside.start()
    try:
        for _ in range(5):
            status, _, body = srv.predict(hostile)
            assert status == 400 and _error_of(body) == "instances hold strings: send numbers"
    finally:
        stop.set()
        beside.join(30)
    grown = srv.peak() - rest
    assert grown < 16 * MB, f"the server grew by {grown / MB:.0f} MB on a {len(hostile) / MB:.2f} MB body"
    assert latencies and max(latencies) < max(0.5, 20 * float(np.median(normal))), (latencies, normal)
    with _client(_server(home)) as c:  # a count limit refuses it before the types are looked at
        r = _post(c, "/v1/predict", hostile)
        assert (r.status_code, r.json()) == (413, {"error": "65536 instances is over the limit of 4"})


HOSTILE_JSON = [
    ("100,000 nested brackets", b"[" * 100_000, "malformed JSON"),
    ("100,000 nested brackets in instances", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed"),
    ("strings", {"instances": [["a", "b"]]}, "instances hold strings: send numbers"),
    ("booleans", {"instances": [[[True, False], [True, True]]]}, "instances hold true/false: send numbers"),
    ("nulls", {"instances": [[[None, 1], [2, 3]]]}, "instances hold null: send numbers"),
    ("objects", {"instances": [{"a": 1}]}, "instances hold objects: send numbers"),
    ("ragged", {"instances": [[[1, 2], [3]]]}, "instances are ragged"),
    ("ragged deeper", {"instances": [[[1, 2], [3, [4]]]]}, "instances are ragged"),
    ("a list where a number goes", {"instances": [[1, 2], [3, 4], 5]}, "instances are ragged"),
    ("nested 40 deep", {"instances": json.loads("[" * 40 + "1" + "]" * 40)}, "nested over 32 levels deep"),
]


@pytest.mark.parametrize("body, words", [h[1:] for h in HOSTILE_JSON], ids=[h[0] for h in HOSTILE_JSON])
def test_hostile_json_gets_a_one_line_400(home, body, words):
    with _client(_server(home), raise_server_exceptions=False) as c:
        r = _post(c, "/v1/predict", body)
        assert r.status_code == 400 and words in r.json()["error"] and "\n" not in r.json()["error"], r.text
        r = _post(
            c, "/v1/feedback", b"[" * 60_000
        )  # deep enough to overflow a recursive parser, under the feedback cap
        assert (r.status_code, r.json()) == (400, {"error": "malformed JSON"})
        assert _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}).status_code == 200
        assert 'lepton_requests_total{code="500"}' not in c.get("/metrics").text


def test_numbers_keep_their_types(home):
    """What the checks let through is what np.asarray made before: ints stay ints (a
    uint8 model takes them), floats are floats (and it refuses those)."""
    from lepton.serving.bodies import instances_array

    x = instances_array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], 4)
    assert x.dtype == np.int64 and x.shape == (2, 2, 2) and x[1, 1, 0] == 7
    assert instances_array([[0.5, 1], [2, 3]], 4).dtype == np.float64
    assert instances_array([], 4).shape == (0,)
    with _client(_server(home)) as c:
        r = _post(c, "/v1/predict", {"instances": [[[1.0, 2], [3, 4]]]})
        assert r.status_code == 400 and "uint8" in r.json()["error"]


def _npy(shape: str, descr: str = "|u1", data: bytes = b"", version: int = 1) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    size = len(header).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + data


BAD_NPY = [
    ("a shape whose product overflows int64", _npy("(4611686018427387904, 4611686018427387904, 4)"), "declares shape"),
    ("a shape that lies", _npy("(9, 1, 2, 2)", data=bytes(4)), "declares shape (9, 1, 2, 2) (36 bytes)"),
    ("a negative dimension", _npy("(-1, 1, 2, 2)", data=bytes(4)), "declares shape (-1, 1, 2, 2)"),
    ("a zero-width dtype", _npy("(1000000000000,)", descr="|V0"), "declares shape"),
    ("a truncated header", _npy("(1, 1, 2, 2)")[:30], "not a .npy array"),
    ("only the magic", b"\x93NUMPY\x01\x00", "not a .npy array"),
    ("a header that is no dict", b"\x93NUMPY\x01\x00\x10\x00{'a': (\n" + b" " * 7, "not a .npy array"),
    ("a float dimension", _npy("(1.5, 2, 2)"), "not a .npy array"),
    ("an object array", _npy("(1,)", descr="|O"), "object arrays are refused"),
    ("not .npy at all", b"hello", "not a .npy array"),
]


@pytest.mark.parametrize("body, words", [b[1:] for b in BAD_NPY], ids=[b[0] for b in BAD_NPY])
def test_bad_npy_headers_get_a_one_line_400(home, body, words):
    with _client(_server(home), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", content=body, headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 400 and words in r.json()["error"] and "\n" not in r.json()["error"], r.text
        good = _npy("(1, 1, 2, 2)", data=bytes([1, 2, 3, 4]))
        r = c.post("/v1/predict", content=good, headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 200 and r.json()["labels"] == [2]


def test_a_client_that_leaves_mid_body_is_counted_as_aborted_not_as_a_500(srv):
    before = srv.metrics()
    aborted = _sample(before, "lepton_requests_aborted_total")
    gone = _sample(before, "lepton_http_request_seconds_count", route="/v1/predict", code="499", default=0)
    for path in ("/v1/predict", "/v1/feedback"):
        with srv.connect() as s:
            s.sendall(_head("POST", path, {"Host": "t", "Content-Length": "1000"}) + b'{"instances": [')
            time.sleep(0.2)
    deadline = time.monotonic() + 5
    while _sample(srv.metrics(), "lepton_requests_aborted_total") < aborted + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    text = srv.metrics()
    assert _sample(text, "lepton_requests_aborted_total") == aborted + 2
    assert not [c for c in _codes(text) if c.startswith("5")], _codes(text)
    assert _sample(text, "lepton_http_request_seconds_count", route="/v1/predict", code="499") == gone + 1


def _sample(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """One sample's value from a /metrics text; `default` when the series is not there yet."""
    try:
        return _sample_of(text, name, **labels)
    except AssertionError:
        if default is None:
            raise
        return default


def _codes(text: str) -> set[str]:
    """Every HTTP status a /metrics text names."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["code"] for f in text_string_to_metric_families(text) for s in f.samples if "code" in s.labels}


# ------------------------------------------------------------ the token
def test_the_bearer_scheme_is_case_insensitive_and_metrics_stay_open_by_default(home):
    with _client(_server(home, token=TOKEN)) as c:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            r = _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}, {"Authorization": f"{scheme} {TOKEN}"})
            assert r.status_code == 200, scheme
        for wrong in (f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN}x", TOKEN, "bearer"):
            r = _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}, {"Authorization": wrong})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", wrong
        assert c.get("/metrics").status_code == 200


def test_metrics_auth_puts_metrics_behind_the_token(home):
    from effects.runtime.settings import get_settings
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    class Stand(ModelServer):
        def refresh(self) -> bool:
            self.current = Loaded("3", "run-3", "data-3", _Slow())
            return True

    params = ServeParams(poll_seconds=60, metrics_auth=True)
    with _client(Stand("m", "champion", params, get_settings(), TOKEN, home / "predictions")) as c:
        assert (c.get("/metrics").status_code, c.get("/metrics").json()) == (
            401,
            {"error": "missing or wrong bearer token"},
        )
        assert "lepton_requests_total" in c.get("/metrics", headers=BEARER).text
        assert c.get("/readyz").status_code == 200  # the probes stay open


# ------------------------------------------------------------ `lepton serve`'s options
def _lepton(home: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "LEPTON_SERVE_TOKEN"}
    full.update({"LEPTON_PROJECT_DIR": str(home), "LEPTON_HOME": str(home / "home"), **(env or {})})
    cmd = [sys.executable, "-c", "from lepton.cli import main; main()", *args]
    return subprocess.Popen(cmd, env=full, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serving_beyond_loopback_without_a_token_is_refused_in_one_line(home):
    from effects.runtime.procs import free_port

    for host in ("0.0.0.0",):
        p = _lepton(home, "serve", "--host", host, "--port", str(free_port()))
        out, err = p.communicate(timeout=60)
        assert p.returncode != 0 and len(err.strip().splitlines()) == 1, err
        assert f"--host {host} is reachable beyond this machine" in err and "--no-auth" in err
    p = _lepton(home, "serve", "--no-auth", "--token", "t")
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and len(err.strip().splitlines()) == 1 and "--no-auth" in err


def test_the_token_help_names_every_route_it_guards():
    out = subprocess.run(
        [sys.executable, "-c", "from lepton.cli import main; main()", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "300", "PYTHONPATH": str(ROOT)},
    ).stdout
    token_help = " ".join(out.split()).partition("--token ")[2]
    assert "/v1/*, /v2/* and /invocations" in token_help[:300], token_help[:300]


def test_the_token_rules_of_lepton_serve(tmp_path):
    from lepton.cli.serving import _bearer_token
    from lepton_core.errors import ParamsError

    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert _bearer_token(None, f, "from-env", "0.0.0.0", False) == "from-file"
    assert _bearer_token("from-flag", None, "from-env", "0.0.0.0", False) == "from-flag"
    assert _bearer_token(None, None, "from-env", "0.0.0.0", False) == "from-env"
    assert _bearer_token(None, None, None, "127.0.0.1", False) is None  # loopback may serve open
    assert _bearer_token(None, None, None, "::1", False) is None
    assert _bearer_token(None, None, None, "localhost", False) is None
    assert _bearer_token(None, None, "from-env", "0.0.0.0", True) is None  # --no-auth says so explicitly
    for host in ("0.0.0.0", "::", "192.0.2.7", "[2001:db8::1]", "myhost.example"):  # beyond loopback
        with pytest.raises(ParamsError, match=re.escape(f"--host {host} is reachable beyond this machine")):
            _bearer_token(None, None, None, host, False)
    (tmp_path / "empty").write_text("\n")
    for args, words in (
        ((None, None, None, "0.0.0.0", False), "no token is set"),
        (("a", f, None, "127.0.0.1", False), "not both"),
        ((None, tmp_path / "empty", None, "127.0.0.1", False), "is empty"),
        ((None, tmp_path / "missing", None, "127.0.0.1", False), "cannot read --token-file"),
    ):
        with pytest.raises(ParamsError, match=words):
            _bearer_token(*args)


def test_token_file_guards_the_server_and_stays_off_the_command_line(home):
    """`lepton serve --token-file` end to end (no registry: the server answers, without
    a model): the token from the file guards /v1/*, any case of "bearer" passes it, and
    the process list shows the file's name, not the token."""
    from effects.runtime.procs import free_port

    (home / "token").write_text("file-s3cret\n")
    port = free_port()
    p = _lepton(home, "serve", "--token-file", str(home / "token"), "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert p.poll() is None, p.communicate()[1]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        import urllib.error
        import urllib.request

        def status(auth: str | None) -> int:
            req = urllib.request.Request(url + "/v1/model", headers={"Authorization": auth} if auth else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status(None) == 401 and status("Bearer wrong") == 401
        assert status("bearer file-s3cret") == 503  # past the token: no model in this empty registry
        assert "file-s3cret" not in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode()
    finally:
        p.terminate()
        p.communicate(timeout=30)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2.5, -3e-7]]}',
        b'{"a": "\\u00e9", "b": [true, null]}',
        b"[[[0]]]",
    ],
)
def test_json_bodies_read_as_pythons_json_reads_them(body):
    """The prediction routes parse with orjson, falling back on Python's json for what
    only it takes (NaN, Infinity) and for its reasons on a malformed body. (An integer
    beyond 64 bits reads as the float of its value: a model reads floats anyway.)"""
    import json

    from lepton.serving.bodies import loads_json
    from lepton.serving.core import BadRequest

    assert loads_json(body) == json.loads(body)
    assert loads_json(b"[12345678901234567890123]") == [float(12345678901234567890123)]
    nan = loads_json(b"[NaN, Infinity]")
    assert nan[0] != nan[0] and nan[1] == float("inf")
    for bad, reason in ((b'{"a": ', "malformed JSON: Expecting value"), (b"[" * 100_000, "nested too deeply")):
        with pytest.raises(BadRequest, match=reason) as e:
            loads_json(bad)
        assert e.value.status == 400


class _WholeBody:
    """A request cycle as uvicorn's holds one once the body has arrived whole: its
    receive() answers without waiting (the event set, no more body to come)."""

    def __init__(self, body: bytes, *, disconnected: bool = False) -> None:
        import asyncio

        self.body, self.more_body, self.disconnected = body, False, disconnected
        self.waiting_for_100_continue = False
        self.message_event = asyncio.Event()
        self.message_event.set()

    async def receive(self) -> dict:
        if self.disconnected:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.body, "more_body": False}


def _read(receive, headers: dict[str, str], **params) -> bytes:
    import asyncio

    from starlette.requests import Request

    from lepton.serving.bodies import read_body

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/predict",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return asyncio.run(read_body(Request(scope, receive), ServeParams(**params)))


def test_a_body_that_arrived_whole_is_read_within_the_same_limits():
    """The body uvicorn already holds whole is taken as it is, without a timer: under the
    cap it is the body; a chunked one (no Content-Length to refuse it from) over the cap
    is a 413 all the same; a client gone before it was read is `ClientGone`, as on the
    path that streams the body."""
    from lepton.serving.core import BadRequest, ClientGone

    body = b'{"instances": [[1, 2, 3]]}'
    assert _read(_WholeBody(body).receive, {"Content-Length": str(len(body))}) == body
    big = b"7" * 20_000  # over a cap of 0.01 MB (10,485 bytes)
    with pytest.raises(BadRequest, match="body over the 0.01 MB cap") as e:
        _read(_WholeBody(big).receive, {"Transfer-Encoding": "chunked"}, max_body_mb=0.01)
    assert e.value.status == 413 and e.value.headers == {"Connection": "close"}
    with pytest.raises(ClientGone):
        _read(_WholeBody(body, disconnected=True).receive, {})

    # any other ASGI server's receive: streamed, under the body's timer, to the same ends
    messages = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.request", "body": body[5:]},
    ]

    async def receive() -> dict:
        return messages.pop(0)

    assert _read(receive, {}) == body
