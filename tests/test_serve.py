"""`edge-app run --serve`: the preview server with a real HTTP client against a running loop."""

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_video

from edge_app.cli.main import cli
from edge_app.errors import ServeError
from edge_app.camera.loop import LoopOptions, run_loop
from edge_app.model import open_model
from edge_app.camera.serve import PAGE, PreviewServer, parse_address
from edge_app.frames.sources import SyntheticSource

cv2 = pytest.importorskip("cv2")


def test_parse_address():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("abc", "70000", ":80", "host:", "-1"):
        with pytest.raises(ServeError, match="give PORT or HOST:PORT"):
            parse_address(bad)


class _Stoppable:
    """Wraps a source so the test can end the loop, and counts the frames taken."""

    def __init__(self, src):
        self.src, self.label, self.skipped, self.taken = src, src.label, 0, 0
        self.stop = threading.Event()

    def frames(self):
        for f in self.src.frames():
            if self.stop.is_set():
                return
            self.taken += 1
            yield f

    def close(self):
        self.src.close()


def _serving(edge_model, src, max_fps=None):
    model = open_model(edge_model, threads=1)
    server = PreviewServer("127.0.0.1:0")
    source = _Stoppable(src)
    t = threading.Thread(target=run_loop, args=(model, source, LoopOptions(max_fps=max_fps)),
                         kwargs={"out": None, "preview": server.preview})
    t.start()
    deadline = time.time() + 30
    while server.preview.status()["frame"] is None and time.time() < deadline:
        time.sleep(0.05)
    return server, source, t


@pytest.fixture
def live_video(edge_model, long_video):
    """The loop on a video file at 50 FPS, serving its preview on an ephemeral port."""
    from edge_app.frames.sources import open_source

    server, source, t = _serving(edge_model, open_source(str(long_video)), max_fps=50)
    yield server
    source.stop.set()
    t.join(timeout=30)
    server.close()


@pytest.fixture
def live_fast(edge_model):
    """The loop as fast as it goes on in-memory 640x480 frames."""
    server, source, t = _serving(edge_model, SyntheticSource(640, 480, count=10**7))
    yield server, source
    source.stop.set()
    t.join(timeout=30)
    server.close()


def _get(server, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), body


def test_routes(live_video):
    server = live_video
    status, ctype, body = _get(server, "/")
    assert status == 200 and ctype.startswith("text/html") and b"/frame.jpg?after=" in body
    assert "http://" not in PAGE and "https://" not in PAGE  # nothing fetched from elsewhere
    status, ctype, body = _get(server, "/status")
    s = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert s["frame"] >= 0 and len(s["top"]) == 3 and set(s["ms"]) == {"capture", "pre", "invoke", "post"}
    assert s["runtime"] and s["delegate"] == "cpu" and s["fps"] > 0 and s["source"].endswith("long.avi")
    status, ctype, body = _get(server, "/frame.jpg")
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and ctype == "image/jpeg" and img.shape == (480, 640, 3)
    for path in ("/etc/passwd", "/../model.json", "/%2e%2e/%2e%2e/etc/passwd", "/static/app.js", "/stream.mjpg/.."):
        assert _get(server, path)[0] == 404, path
    assert _get(server, "/status", "POST")[0] == 405
    assert _get(server, "/status", "HEAD")[0] == 200


def _frame(server, query=""):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/frame.jpg" + query)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, int(r.getheader("X-Frame-Seq")), json.loads(r.getheader("X-Frame-Status")), body


def test_the_frame_carries_its_own_numbers_and_waits_for_a_newer_one(live_video):
    """The page shows /frame.jpg and the numbers in its X-Frame-Status: one frame, not two (the side
    panel used to poll /status once a second while the picture streamed on)."""
    server = live_video
    status, seq, numbers, body = _frame(server, "?page=tab1")
    assert status == 200 and numbers["frame"] >= 0 and len(numbers["top"]) == 3 and numbers["viewers"] == 1
    status2, seq2, numbers2, body2 = _frame(server, f"?after={seq}&page=tab1")
    assert seq2 > seq and numbers2["frame"] > numbers["frame"] and body2 != body
    assert server.preview.status()["viewers"] == 1  # the same page, seen twice
    for odd in ("%C2%B2", "9" * 5000, "-1", "x"):  # not a number it can wait for: the newest frame, no traceback
        assert _frame(server, f"?after={odd}")[0] == 200


def test_the_jpeg_and_the_status_it_comes_with_are_the_same_frame():
    """However the loop's publishes and the readers interleave, a JPEG is paired with its own status."""
    from edge_app.camera.serve import Preview

    preview = Preview()
    stop = threading.Event()

    def loop():
        k = 0
        while not stop.is_set():
            k = k % 20 + 1
            preview.publish(lambda k=k: np.full((16, 16, 3), 10 * k, np.uint8), {"frame": k})

    t = threading.Thread(target=loop)
    t.start()
    try:
        checked = 0
        while checked < 200:
            seq, data, numbers = preview.jpeg()
            if not data:
                continue
            pixel = int(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).mean())
            assert abs(pixel - 10 * numbers["frame"]) <= 3, (pixel, numbers)
            checked += 1
    finally:
        stop.set()
        t.join()


def test_mjpeg_stream_delivers_new_frames(live_video):
    server = live_video
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/stream.mjpg")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=nin-frame"
    frames = []
    for _ in range(3):
        assert r.fp.readline().strip() == b"--nin-frame"
        headers = {}
        while (line := r.fp.readline().strip()):
            k, _, v = line.decode().partition(":")
            headers[k.lower()] = v.strip()
        data = r.fp.read(int(headers["content-length"]))
        r.fp.readline()
        assert headers["content-type"] == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
        frames.append(data)
    assert len(set(frames)) == 3  # each part is a newer frame: the square moves
    assert server.preview.status()["viewers"] == 1
    conn.close()


def test_stalled_and_vanished_clients_never_stall_the_loop(live_fast):
    server, source = live_fast
    # a client that asks for the stream and never reads: its socket buffers fill, its thread blocks
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    # a client that reads a little and disappears
    gone = socket.create_connection(("127.0.0.1", server.port))
    gone.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    gone.recv(1000)
    gone.close()
    time.sleep(1.0)  # long enough for the stalled client's buffers to fill
    # a loop held up by the stalled client would never take 300 more frames; one that is not
    # takes them in well under a second (the deadline only bounds the test)
    before, deadline = source.taken, time.time() + 120
    while source.taken < before + 300 and time.time() < deadline:
        time.sleep(0.05)
    assert source.taken >= before + 300, source.taken - before
    assert _get(server, "/status")[0] == 200  # and other clients are still served
    stalled.close()


def test_server_stops_with_the_loop(edge_model, video_path):
    res = CliRunner().invoke(cli, ["run", "--model", str(edge_model), "--source", str(video_path), "--serve", "127.0.0.1:0",
                                   "--max-frames", "20"])
    assert res.exit_code == 0, res.output
    assert "preview: http://127.0.0.1:" in res.output and "summary: 20 frames" in res.output
    port = int(res.output.split("preview: http://127.0.0.1:")[1].split("/")[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_port_in_use_and_bad_address_are_clear_errors(edge_model, video_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        res = CliRunner().invoke(cli, ["run", "--model", str(edge_model), "--source", str(video_path), "--serve", str(port)])
        assert res.exit_code == 1 and f"cannot serve the preview on 127.0.0.1:{port}" in res.output
        assert "Traceback" not in res.output
    finally:
        taken.close()
    res = CliRunner().invoke(cli, ["run", "--model", str(edge_model), "--source", str(video_path), "--serve", "nope"])
    assert res.exit_code == 1 and "give PORT or HOST:PORT" in res.output


def test_max_fps_caps_the_rate(edge_model, video_path, tmp_path, monkeypatch):
    """Each frame waits out the rest of its 1/max-fps slot: checked on the waits asked for, not the clock."""
    import edge_app.camera.loop

    waits, real_sleep = [], time.sleep
    monkeypatch.setattr(edge_app.camera.loop.time, "sleep", lambda s: (waits.append(s), real_sleep(s)))
    res = CliRunner().invoke(cli, ["run", "--model", str(edge_model), "--source", str(video_path), "--max-fps", "20",
                                   "--max-frames", "10", "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert len(waits) == 10 and all(0.0 <= w <= 1 / 20 for w in waits) and max(waits) > 0, waits
    waits.clear()
    res = CliRunner().invoke(cli, ["run", "--model", str(edge_model), "--source", str(video_path), "--max-frames", "10",
                                   "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0 and waits == []  # no cap, no wait


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("serve") / "clip.avi", 60, step=4)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("serve") / "long.avi", 600, step=3)


def test_off_loopback_the_preview_wants_a_token(caplog):
    """The decision (no socket off loopback is opened in tests): loopback is open unless a token is
    given; any other address gets the given token or a made-up one; --serve-insecure none, with a warning."""
    from edge_app.camera.serve import access_token

    assert access_token("127.0.0.1", None, False) is None and access_token("::1", None, False) is None
    assert access_token("localhost", "abc", False) == "abc"
    made = access_token("0.0.0.0", None, False)
    assert made and len(made) >= 16 and made != access_token("0.0.0.0", None, False)
    assert access_token("192.168.1.5", "given", False) == "given"
    assert access_token("0.0.0.0", None, True) is None
    assert "reachable from other machines" in caplog.text and "without a token" in caplog.text


def test_every_route_checks_the_token_and_the_page_sets_a_cookie():
    server = PreviewServer("127.0.0.1:0", token="s3cret")
    try:
        assert server.url.endswith("/?token=s3cret")

        def get(path, headers=None):
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            body = r.read()
            c.close()
            return r.status, r.getheader("Set-Cookie") or "", body

        for path in ("/", "/status", "/frame.jpg", "/stream.mjpg", "/nope"):
            assert get(path)[0] == 401
            assert get(path + "?token=wrong")[0] == 401
        status, cookie, body = get("/?token=s3cret")
        assert status == 200 and b"edge-app preview" in body
        assert cookie.startswith("edge_app_token=s3cret") and "HttpOnly" in cookie
        assert get("/status", {"Cookie": "edge_app_token=s3cret"})[0] == 200
        assert get("/status", {"Authorization": "Bearer s3cret"})[0] == 200
        assert get("/status", {"Cookie": "edge_app_token=nope"})[0] == 401
    finally:
        server.close()
