"""Hostile inputs (issue 28, third pass): the loopback preview and DNS rebinding, weak preview tokens,
tiny frames in the preview, a Python that never answers, symlinks out of an image tree, an idx header
that lies, and seeds out of range. Sockets on 127.0.0.1 only; every wait is bounded."""

import gzip
import http.client
import json
import os
import signal
import socket
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST_CLASSES, make_image_tree

from edge_app.camera.serve import PAGE, PreviewServer

cv2 = pytest.importorskip("cv2")


# --------------------------------------------------------------------------- the preview: Host header


def _get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Set-Cookie") or ""
    finally:
        conn.close()


@pytest.fixture
def server():
    s = PreviewServer("127.0.0.1:0")
    yield s
    s.close()


def test_on_loopback_only_requests_for_this_machine_are_answered(server):
    """A page whose name was made to resolve to 127.0.0.1 (DNS rebinding) still sends its own name as
    Host: it gets 403, and the server goes on serving everyone else."""
    port = server.port
    for evil in ("evil.example.com", f"evil.example.com:{port}", "127.0.0.1.evil.example.com", "localhost.evil.example.com", "[::2]:80"):
        status, body, _ = _get(port, "/status", {"Host": evil})
        assert status == 403, evil
        assert b"this machine" in body and b"frame" not in body
    for path in ("/", "/frame.jpg", "/stream.mjpg"):
        assert _get(port, path, {"Host": "evil.example.com"})[0] == 403
    for good in (f"127.0.0.1:{port}", "127.0.0.1", "127.5.6.7:1", "localhost", f"LOCALHOST:{port}", "[::1]:8080", "[::1]", socket.gethostname()):
        assert _get(port, "/status", {"Host": good})[0] == 200, good
    assert _get(port, "/status")[0] == 200  # http.client's own Host: 127.0.0.1:port


def test_the_host_check_also_holds_with_a_token():
    token = "t" * 24
    s = PreviewServer("127.0.0.1:0", token=token)
    try:
        assert _get(s.port, f"/status?token={token}", {"Host": "evil.example.com"})[0] == 403
        assert _get(s.port, f"/status?token={token}")[0] == 200
    finally:
        s.close()


def test_host_names_loopback():
    from edge_app.camera.serve import host_names_loopback

    for ok in ("127.0.0.1", "127.0.0.1:80", "127.255.0.9:65535", "localhost", "localhost.", "[::1]:1", "[::ffff:127.0.0.1]:8", "box", "box.lan"):
        assert host_names_loopback(ok, "box.lan"), ok
    for bad in ("", ":80", "[]", "evil.example.com", "10.0.0.1", "0.0.0.0", "[::]", "box.evil.com", "127.0.0.1.nip.io", "[::1"):
        assert not host_names_loopback(bad, "box.lan"), bad


# --------------------------------------------------------------------------- the preview: tokens


@pytest.mark.parametrize(
    "token", ["a", " ", "                    ", "correct horse battery staple", "short-but-15chr", "tab\tin\tthe\tmiddle!!"]
)
def test_weak_serve_tokens_are_refused_at_the_command_line(token, tmp_path):
    from edge_app.cli.main import cli

    res = CliRunner().invoke(cli, ["run", "--model", str(tmp_path), "--serve", "127.0.0.1:0", "--serve-token", token])
    assert res.exit_code == 2, res.output
    assert "at least 16 characters" in res.output and "secrets.token_urlsafe(24)" in res.output
    if len(token.strip()) > 3:
        assert token not in res.output  # a secret is not repeated on the screen


def test_a_weak_token_from_the_environment_is_refused_too(tmp_path):
    from edge_app.cli.main import cli

    res = CliRunner().invoke(cli, ["run", "--model", str(tmp_path), "--serve", "127.0.0.1:0"], env={"EDGE_APP_SERVE_TOKEN": "x"})
    assert res.exit_code == 2 and "secrets.token_urlsafe(24)" in res.output


def test_a_token_with_url_characters_works_through_the_cookie():
    """The cookie is set URL-quoted; it is read back unquoted (a token with / or + was refused by it)."""
    from edge_app.cli.params import TOKEN

    token = TOKEN.convert("ab/cd+ef=gh;ij,kl", None, None)
    s = PreviewServer("127.0.0.1:0", token=token)
    try:
        status, _, cookie = _get(s.port, s.url.split(f":{s.port}", 1)[1])
        assert status == 200 and cookie
        assert _get(s.port, "/status", {"Cookie": cookie.split(";")[0]})[0] == 200
        assert _get(s.port, "/status", {"Cookie": "edge_app_token=wrong"})[0] == 401
    finally:
        s.close()


# --------------------------------------------------------------------------- the preview: tiny frames


def test_a_tiny_frame_is_served_large_enough_to_read(server):
    from edge_app.camera.draw import render

    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    server.preview.publish(partial(render, rgb, [{"label": "cat", "score": 0.5}], 1.0, 30.0), {"frame": 0})
    status, body, _ = _get(server.port, "/frame.jpg")
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and img.shape[1] >= 256 and img.shape[0] == img.shape[1]
    # enlarged by a whole factor, nearest-neighbour: a source pixel away from the text is a flat block
    k = img.shape[1] // 32
    block = img[20 * k + 2 : 21 * k - 2, 20 * k + 2 : 21 * k - 2].astype(int)
    assert block.std(axis=(0, 1)).max() < 8
    assert render(np.zeros((480, 640, 3), np.uint8), [], 1.0, 1.0).shape == (480, 640, 3)  # camera frames as they are


def test_the_page_scales_the_picture_to_fit():
    css = PAGE.split("<style>")[1].split("</style>")[0]
    rule = next(line for line in css.splitlines() if line.startswith("main > img"))
    assert "width: 100%" in rule and "height: auto" in rule


# --------------------------------------------------------------------------- a Python that never answers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead; only its parent's wait is missing


@pytest.fixture
def hung_python(tmp_path):
    """A "python" that never exits: a shell script whose child sleeps (and holds the output pipes)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see the processes")
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\necho $$ > "{tmp_path}/shell.pid"\nsleep 300 &\necho $! > "{tmp_path}/child.pid"\nwait\n')
    exe.chmod(0o755)
    yield exe
    for name in ("shell.pid", "child.pid"):
        try:
            os.kill(int((tmp_path / name).read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _bounded(fn, limit=60):
    """fn() in a thread, given ``limit`` seconds (a hang fails the test instead of blocking it)."""
    out = {}

    def go():
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "still waiting for a child that never answers"
    return out


def _gone(folder: Path) -> None:
    pids = [int((folder / n).read_text()) for n in ("shell.pid", "child.pid")]
    deadline = time.monotonic() + 10  # the orphaned sleep is reaped by init: a moment, bounded here
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, pids)), pids


def test_ask_kills_a_hung_python_and_everything_it_started(hung_python):
    from edge_app.subpython import ask

    reply = _bounded(lambda: ask(hung_python, "print(1)", timeout=1))["value"]
    assert not reply.ok and reply.timed_out and reply.returncode is None
    assert str(hung_python) in reply.why and "within 1 s" in reply.why
    _gone(hung_python.parent)


def test_check_target_with_a_hung_python_reports_it_and_leaves_nothing_running(hung_python, tmp_path):
    from edge_app.checks.targets import load_with

    rows = _bounded(lambda: load_with(hung_python, tmp_path / "m.tflite", timeout=1))["value"]
    assert rows[0]["loads"] is None and "within 1 s" in rows[0]["error"]
    _gone(hung_python.parent)


def test_clients_gives_up_on_a_hung_writer_python(hung_python, tmp_path, monkeypatch):
    from pipeline.errors import ClientsError
    from pipeline.report import clients

    got = _bounded(lambda: clients._run(str(hung_python), clients._WRITE, ["a", "b", "c"], "writing the metadata", timeout=1))
    assert isinstance(got.get("error"), ClientsError)
    assert str(hung_python) in str(got["error"]) and "within 1 s" in str(got["error"])
    _gone(hung_python.parent)
    monkeypatch.setattr(clients, "PROBE_S", 1)
    (tmp_path / "libs").mkdir()
    assert _bounded(lambda: clients._libusb_dir(str(hung_python), tmp_path / "libs"))["value"] is None


# --------------------------------------------------------------------------- links out of an image tree


@pytest.fixture
def linked_tree(tmp_path):
    """An image tree with one image linked from outside it, one class folder linked from outside, and
    a link that stays inside (fine)."""
    tree = make_image_tree(tmp_path / "tree", classes=("cat", "dog"))
    elsewhere = make_image_tree(tmp_path / "elsewhere", classes=("cat", "dog"))
    outside = sorted((elsewhere / "train" / "cat").iterdir())[0]
    (tree / "train" / "cat" / "from-outside.png").symlink_to(outside)
    inside = sorted((tree / "train" / "dog").iterdir())[0]
    (tree / "train" / "dog" / "again.png").symlink_to(inside)
    return tree, outside


def test_a_tree_with_a_link_out_is_refused_naming_it(linked_tree, monkeypatch):
    from pipeline.data.tree import list_tree
    from pipeline.errors import DataError

    monkeypatch.delenv("NIN_FOLLOW_LINKS", raising=False)
    tree, outside = linked_tree
    with pytest.raises(DataError) as err:
        list_tree(tree)
    msg = str(err.value)
    assert "from-outside.png" in msg and str(outside) in msg and "--follow-links" in msg and "again.png" not in msg


def test_follow_links_reads_them_and_says_so(linked_tree, caplog):
    from pipeline.data.tree import list_tree

    tree, outside = linked_tree
    listing = list_tree(tree, follow_links=True)
    assert any(n.endswith("from-outside.png") for n in listing.names) and any(n.endswith("again.png") for n in listing.names)
    assert "following 1 link(s) out of the tree" in caplog.text and str(outside) in caplog.text


def test_a_class_folder_linked_from_outside_is_one_link(tmp_path, monkeypatch):
    from pipeline.data.tree import list_tree
    from pipeline.errors import DataError

    monkeypatch.delenv("NIN_FOLLOW_LINKS", raising=False)
    tree = make_image_tree(tmp_path / "tree", classes=("cat", "dog"))
    other = make_image_tree(tmp_path / "other", classes=("fox", "owl"))
    (tree / "train" / "fox").symlink_to(other / "train" / "fox")
    (tree / "test" / "fox").mkdir()
    with pytest.raises(DataError, match=r"1 link\(s\) lead out of the image tree: .*train/fox -> "):
        list_tree(tree)


def test_build_refuses_a_link_out_and_follow_links_lets_it_through(linked_tree, tmp_path, monkeypatch):
    from pipeline.cli.main import cli

    tree, _ = linked_tree
    monkeypatch.setenv("NIN_FOLLOW_LINKS", "0")  # restored after the test: the flag sets it for the process
    args = ["build", "--dataset", "folder", "--data-dir", str(tree), "--epochs", "1", "--limit-train", "4"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "lead out of the image tree" in res.output and "--follow-links" in res.output
    assert "Traceback" not in res.output

    seen = {}

    def fake_build(cfg, out, **kw):
        from pipeline.data.tree import list_tree

        seen["names"] = list_tree(Path(cfg.data.data_dir)).names
        raise SystemExit(0)

    monkeypatch.setattr("pipeline.stages.orchestrator.build", fake_build)
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run2"), "--follow-links"])
    assert res.exit_code == 0, res.output
    assert any(n.endswith("from-outside.png") for n in seen["names"])


def test_edge_app_eval_refuses_a_link_out_unless_asked(edge_model, tmp_path):
    from edge_app.cli.main import cli
    from edge_app.errors import SourceError
    from edge_app.measure.evaluate import labelled_images

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for d in (data / FAST_CLASSES[0], data / FAST_CLASSES[1], elsewhere):
        d.mkdir(parents=True)
    img = np.full((32, 32, 3), 120, np.uint8)
    cv2.imwrite(str(data / FAST_CLASSES[0] / "a.png"), img)
    cv2.imwrite(str(elsewhere / "b.png"), img)
    (data / FAST_CLASSES[1] / "b.png").symlink_to(elsewhere / "b.png")
    (data / FAST_CLASSES[1] / "a-again.png").symlink_to(data / FAST_CLASSES[0] / "a.png")  # inside: fine
    with pytest.raises(SourceError, match=r"1 link\(s\) lead out of the folder: .*b.png -> .*elsewhere/b.png.*--follow-links"):
        labelled_images(data, list(FAST_CLASSES))
    assert len(labelled_images(data, list(FAST_CLASSES), follow_links=True)[0]) == 3
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(data), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 1 and "lead out of the folder" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(data), "--json", str(tmp_path / "e.json"), "--follow-links"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["images"] == 3


# --------------------------------------------------------------------------- an idx header that lies


def _idx(path: Path, dims, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(bytes([0, 0, 8, len(dims)]) + b"".join(int(n).to_bytes(4, "big") for n in dims) + payload))
    return path


def test_an_idx_header_claiming_2_31_items_is_refused_naming_the_file(tmp_path):
    from pipeline.data.formats import load_raw
    from pipeline.errors import DataError

    d = tmp_path / "fashion-mnist"
    d.mkdir()
    _idx(d / "train-labels-idx1-ubyte.gz", [2**31], bytes(12))
    _idx(d / "train-images-idx3-ubyte.gz", [12, 28, 28], bytes(12 * 784))
    _idx(d / "t10k-labels-idx1-ubyte.gz", [4], bytes(4))
    _idx(d / "t10k-images-idx3-ubyte.gz", [4, 28, 28], bytes(4 * 784))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: its header claims 2147483648 items"):
        load_raw("fashion_mnist", tmp_path)


@pytest.mark.parametrize(
    "dims, payload, needle",
    [
        ([10], bytes(4), "says 10 = 10 bytes, the file holds 4"),  # short
        ([4], bytes(10), "the file holds more"),  # longer than it says
        ([60000, 28, 28], bytes(100), "more than the file can hold"),  # a cheap lie, caught before reading
    ],
)
def test_an_idx_file_whose_size_differs_from_its_header_is_refused(tmp_path, dims, payload, needle):
    from pipeline.data.formats import _read_idx
    from pipeline.errors import DataError

    with pytest.raises(DataError, match=needle):
        _read_idx(_idx(tmp_path / "x-idx1-ubyte.gz", dims, payload))
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)))  # float idx: not what the reader reads
    with pytest.raises(DataError, match="not an idx file of unsigned bytes"):
        _read_idx(bad)


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("command", [["build"], ["sweep", "--out", "x"]])
@pytest.mark.parametrize("seed", ["-1", str(2**70), str(2**32 - 1)])
def test_seeds_numpy_and_tensorflow_cannot_take_are_refused(command, seed):
    from pipeline.cli.main import cli

    res = CliRunner().invoke(cli, [*command, "--seed", seed])
    assert res.exit_code == 2 and "--seed" in res.output and "Traceback" not in res.output


def test_the_largest_seed_works_where_it_is_used():
    from pipeline.cli.params import SEED

    top = SEED.convert(str(2**32 - 2), None, None)
    np.random.RandomState(top + 1)  # what np.random.seed takes (< 2**32); QAT's seed is the build's + 1
    np.random.default_rng(top)
