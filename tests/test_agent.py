"""`edge-app agent`: the device agent as a real process on loopback, with every TensorFlow import refused
in it and in every process it starts (a sitecustomize on PYTHONPATH), driven over HTTP: the jobs of the
protocol on the edge model, then hostile clients, each followed by a /v1/info that shows it still serves.
Every request has its own time limit; the agent is stopped when the module ends."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST_CLASSES, REPO, png_bytes
from test_cli import BLOCK_TF
from test_package import _extract, bundle  # noqa: F401  (the bundle fixture, built once)

from edge_app.agent import protocol
from edge_app.agent.cache import ModelCache, read_exactly
from edge_app.agent.jobs import command_line, model_name, parse_job
from edge_app.errors import AgentError

TOKEN = "agent-test-token-0123456789"
WAIT = 120  # seconds: the limit of any one request or wait here
MARK = "AGENT_TEST_MARK"
# every Python the agent starts (the jobs, their runtime probes) imports this first: TensorFlow and the
# training side are refused, and each process notes that it ran with the block in place
SITE = BLOCK_TF + f"import os\nwith open(os.environ['{MARK}'], 'a') as _f:\n    _f.write(str(os.getpid()) + '\\n')\n"


class Agent:
    def __init__(self, proc: subprocess.Popen, port: int, root: Path) -> None:
        self.proc, self.port, self.root = proc, port, root

    def request(self, method, path, body=None, token=TOKEN, headers=None, timeout=WAIT):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            conn.request(method, path, body=body, headers={**sent, **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return resp.status, (json.loads(data) if data else None)

    def job(self, command, model, options=None, timeout_s=None):
        body = {"command": command, "model": model, "options": options or {}, **({"timeout_s": timeout_s} if timeout_s else {})}
        return self.request("POST", "/v1/jobs", json.dumps(body).encode())

    def upload(self, data: bytes, parts: dict[str, bytes] | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        assert self.request("PUT", f"/v1/models/{sha}", data)[0] == 200
        for part, body in (parts or {}).items():
            assert self.request("PUT", f"/v1/models/{sha}/{part}", body)[0] == 200
        return sha

    def serving(self) -> None:
        """The agent answers, as it did before whatever the test just did."""
        assert self.proc.poll() is None, "the agent died"
        status, info = self.request("GET", "/v1/info", timeout=30)
        assert status == 200 and info["agent"] == protocol.API

    def raw(self, data: bytes, *, close_write: bool = False, timeout: float = 30) -> tuple[int, dict | None]:
        """Send bytes as they are (a hostile client), and read the answer to the end of the connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
            return _answer(_read_all(s))


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def _answer(data: bytes) -> tuple[int, dict | None]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), (json.loads(body) if body.strip() else None)


def _put_head(path: str, length: int, *, token: str = TOKEN, extra: str = "") -> bytes:
    return (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


@pytest.fixture(scope="module")
def pics(tmp_path_factory) -> Path:
    """A labelled folder on the device: two of the model's classes, two images each."""
    root = tmp_path_factory.mktemp("pics")
    rng = np.random.default_rng(0)
    for cls in FAST_CLASSES[:2]:
        (root / cls).mkdir()
        for i in range(2):
            (root / cls / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    return root


def start_agent(root: Path, *args: str) -> Agent:
    """`python -m edge_app agent` on a free loopback port, TensorFlow blocked; the port read from its first line."""
    site = root / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), MARK: str(root / "pythons.txt")}
    log = open(root / "agent.log", "w")  # noqa: SIM115  (the agent writes it while the tests run)
    cmd = [sys.executable, "-m", "edge_app", "agent", "--listen", "127.0.0.1:0", "--cache-dir", str(root / "cache"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)/v1/", (root / "agent.log").read_text())
        if m:
            return Agent(proc, int(m.group(1)), root)
        time.sleep(0.1)
    stop_agent(proc)
    raise AssertionError(f"the agent did not start: {(root / 'agent.log').read_text()[-2000:]}")


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def agent(tmp_path_factory, pics, request):
    a = start_agent(
        tmp_path_factory.mktemp("agent"),
        "--token", TOKEN, "--data", f"pics={pics}", "--max-model-mb", "1", "--cache-mb", "4", "--client-timeout", "2",
    )  # fmt: skip
    request.addfinalizer(lambda: stop_agent(a.proc))
    return a


@pytest.fixture(scope="module")
def model(agent, edge_model) -> str:
    """The edge model on the agent, with its model.json and labels.txt."""
    parts = {p: (edge_model / p).read_bytes() for p in protocol.MODEL_PARTS}
    sha = hashlib.sha256((edge_model / "model_int8.tflite").read_bytes()).hexdigest()
    assert agent.request("HEAD", f"/v1/models/{sha}")[0] == 404
    assert agent.upload((edge_model / "model_int8.tflite").read_bytes(), parts) == sha
    assert agent.request("HEAD", f"/v1/models/{sha}")[0] == 200
    return sha


def _children(agent: Agent, command: str) -> list[int]:
    """The pids of the agent's `python -m edge_app <command>` jobs now running."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"edge_app" in argv and command.encode() in argv and any(str(agent.root).encode() in a for a in argv):
            found.append(int(p.name))
    return found


def test_the_jobs_run_on_the_device_without_tensorflow(agent, model, pics):
    status, info = agent.request("GET", "/v1/info")
    assert status == 200
    device = protocol.DeviceInfo.from_json(info)
    assert device.hostname == socket.gethostname() and device.data == ("pics",) and "ai-edge-litert" in device.runtimes
    assert device.python == ".".join(map(str, sys.version_info[:3]))

    status, bench = agent.job("bench", model, {"runs": 10, "threads": 1})
    assert status == 200, bench
    reply = protocol.JobReply.from_json(bench)
    assert reply.ok and reply.command == "bench" and reply.model == model and reply.seconds > 0
    assert reply.result["runs"] == 10 and reply.result["model_sha256"] == model and reply.result["invoke_ms"]["median"] > 0
    assert reply.device.hostname == device.hostname

    status, ev = agent.job("eval", model, {"data": "pics", "threads": 1})
    assert status == 200, ev
    assert ev["result"]["images"] == 4 and 0 <= ev["result"]["top1"] <= 1 and set(ev["result"]["classes_found"]) == set(FAST_CLASSES[:2])

    status, inf = agent.job("info", model)
    assert status == 200, inf
    assert inf["result"]["inputs"][0]["shape"] == [1, 32, 32, 3] and inf["result"]["placement"]["exposed"] in (True, False)

    status, target = agent.job("check-target", model)
    assert status == 200, target
    assert target["ok"] and any(t["loads"] for t in target["result"]["targets"])

    status, ci = agent.job("check-input", model, {"source": "pics", "frames": 2})
    assert status == 200, ci
    assert ci["result"]["frames"] == 2

    # the agent and its jobs ran with TensorFlow refused: the agent's own pid and its jobs' are on the list
    pythons = (agent.root / "pythons.txt").read_text().split()
    assert str(agent.proc.pid) in pythons and len(set(pythons)) >= 6
    assert "blocked:" not in (agent.root / "agent.log").read_text()
    assert os.listdir(agent.root / "cache" / "jobs") == []  # each job's folder goes with it


def test_tokens_and_hosts_are_checked_before_anything_else(agent):
    assert agent.request("GET", "/v1/info", token=None)[0] == 401
    agent.serving()
    assert agent.request("GET", "/v1/info", token=TOKEN[:-1] + "x")[0] == 401
    agent.serving()
    status, body = agent.request("GET", "/v1/info", token="short")
    assert status == 401 and body["ok"] is False and "token" in body["error"]
    agent.serving()
    # a DNS-rebinding page reaches loopback with its own name in Host
    status, body = agent.request("GET", "/v1/info", headers={"Host": "evil.example.com"})
    assert status == 403 and "this machine" in body["error"]
    agent.serving()
    assert agent.request("GET", "/v1/info", headers={"Host": f"localhost:{agent.port}"})[0] == 200
    assert agent.request("DELETE", f"/v1/models/{'0' * 64}")[0] == 405
    agent.serving()


def test_uploads_that_are_too_large_cut_short_stalled_or_altered_leave_nothing(agent, edge_model):
    data = (edge_model / "model_int8.tflite").read_bytes()
    sha = hashlib.sha256(data + b"x").hexdigest()  # a model not held yet
    models = agent.root / "cache" / "models"

    # over the cap (1 MB): refused from its Content-Length alone; not one byte of the body is sent
    status, body = agent.raw(_put_head(f"/v1/models/{sha}", 2 << 20))
    assert status == 413 and "cap" in body["error"]
    status, _ = agent.raw(_put_head(f"/v1/models/{sha}", 2 << 20, extra="Expect: 100-continue\r\n"))
    assert status == 413
    agent.serving()

    # half of it, then the client closes
    status, body = agent.raw(_put_head(f"/v1/models/{sha}", len(data) + 1) + data[: len(data) // 2], close_write=True)
    assert status == 400 and "ended after" in body["error"]
    assert agent.request("HEAD", f"/v1/models/{sha}")[0] == 404
    agent.serving()

    # half of it, then the client stalls: it times out (--client-timeout 2) while others are served
    with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as s:
        s.sendall(_put_head(f"/v1/models/{sha}", len(data) + 1) + data[: len(data) // 2])
        agent.serving()  # meanwhile
        status, body = _answer(_read_all(s))
    assert status == 400 and "stopped after" in body["error"]
    assert agent.request("HEAD", f"/v1/models/{sha}")[0] == 404
    agent.serving()

    # a body that is not what its name says (a byte changed on the way)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    status, body = agent.request("PUT", f"/v1/models/{hashlib.sha256(data).hexdigest()[:63]}0", bytes(flipped))
    assert status == 400
    good = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(bytes(flipped)).hexdigest()
    status, body = agent.request("PUT", f"/v1/models/{wrong}", data)
    assert status == 400 and "sha256" in body["error"]
    assert agent.request("HEAD", f"/v1/models/{wrong}")[0] == 404
    agent.serving()

    # no Content-Length, or chunked
    assert agent.raw(f"PUT /v1/models/{sha} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())[0] == 400
    chunked = f"PUT /v1/models/{sha} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert agent.raw(chunked.encode())[0] == 400
    agent.serving()

    # nothing half-written is left in the cache
    assert not [p.name for p in models.iterdir() if p.name.startswith(".")]
    assert good not in [p.name for p in models.iterdir()] or (models / good / "model.tflite").read_bytes() == data


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/models/../../etc/passwd", 404),
        ("/v1/models/..%2F..%2Fetc%2Fpasswd", 400),
        ("/v1/models/..", 400),
        (f"/v1/models/{'A' * 64}", 400),  # upper case: not the protocol's name of a sha256
        (f"/v1/models/{'0' * 63}", 400),
        (f"/v1/models/{'0' * 64}/../../x", 404),
        (f"/v1/models/{'0' * 64}/evil.txt", 404),
        (f"/v1/models/{'0' * 64}/model.json", 404),  # a part of a model not held
        ("/v1/elsewhere", 404),
    ],
)
def test_names_that_are_no_sha256_never_become_paths(agent, path, status):
    got, body = agent.request("PUT", path, b"{}")
    assert got == status and body["ok"] is False
    assert not (agent.root / "etc").exists() and not (agent.root / "cache" / "x").exists()
    agent.serving()


@pytest.mark.parametrize(
    "job, needle",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"command": "rm", "model": "0" * 64}).encode(), "no command"),
        (json.dumps({"command": "bench", "model": "../model"}).encode(), "sha256"),
        (json.dumps({"command": "bench", "model": "0" * 64, "extra": 1}).encode(), "unknown field"),
        (json.dumps({"command": "bench", "model": "MODEL", "options": {"delegate-lib": "/tmp/evil.so"}}).encode(), "takes no option"),
        (json.dumps({"command": "bench", "model": "MODEL", "options": {"runs": "10"}}).encode(), "wants an integer"),
        (json.dumps({"command": "bench", "model": "MODEL", "options": {"runs": True}}).encode(), "wants an integer"),
        (json.dumps({"command": "bench", "model": "MODEL", "options": {"runs": 5}}).encode(), "must be 10"),
        (json.dumps({"command": "bench", "model": "MODEL", "options": {"runtime": "tensorflow"}}).encode(), "no runtime"),
        (json.dumps({"command": "bench", "model": "MODEL", "options": {"delegate": "--json"}}).encode(), "no delegate"),
        (json.dumps({"command": "eval", "model": "MODEL", "options": {"data": "/etc"}}).encode(), "offers no labelled folder"),
        (json.dumps({"command": "eval", "model": "MODEL"}).encode(), "needs a labelled folder"),
        (json.dumps({"command": "check-input", "model": "MODEL", "options": {"source": "/dev/video0"}}).encode(), "neither a camera"),
        (json.dumps({"command": "check-target", "model": "MODEL", "options": {"runtime": "tensorflow"}}).encode(), "no target runtime"),
        (json.dumps({"command": "bench", "model": "MODEL", "timeout_s": 10**6}).encode(), "over this agent's limit"),
        (b'{"command": "bench", "model": "MODEL", "timeout_s": NaN}', "timeout_s"),
    ],
)
def test_malformed_jobs_are_refused_with_400(agent, model, job, needle):
    status, body = agent.request("POST", "/v1/jobs", job.replace(b"MODEL", model.encode()))
    assert status == 400 and needle in body["error"], body
    agent.serving()


def test_jobs_for_models_not_held_oversized_or_with_bad_parts(agent, model):
    assert agent.job("bench", "0" * 64)[0] == 404
    status, body = agent.request("POST", "/v1/jobs", b" " * (100 << 10))
    assert status == 413
    assert agent.request("PUT", f"/v1/models/{model}/model.json", b"\xff\xfe not json")[0] == 400
    assert agent.request("PUT", f"/v1/models/{model}/labels.txt", b"\xff\xfe")[0] == 400
    agent.serving()


def test_a_model_the_runtime_cannot_run_costs_one_job(agent, model, edge_model):
    data = (edge_model / "model_int8.tflite").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    # uploaded under its own sha256, beside the run's model.json: the checksum there gives it away
    bad = agent.upload(bytes(flipped), {"model.json": (edge_model / "model.json").read_bytes()})
    status, body = agent.job("bench", bad, {"runs": 10})
    assert status == 422 and body["ok"] is False and "sha256" in body["error"], body
    assert body["reply"]["ok"] is False and body["reply"]["device"]["hostname"] == socket.gethostname()
    agent.serving()
    # no sidecar, and not a TFLite file at all: the runtime refuses it
    damaged = agent.upload(b"TFL3" + bytes(flipped[8:200]))
    status, body = agent.job("info", damaged)
    assert status == 422 and "not a TFLite model" in body["error"], body
    agent.serving()
    assert agent.job("bench", model, {"runs": 10, "threads": 1})[0] == 200


def test_a_crashed_or_hung_job_costs_one_job_and_a_second_is_busy(agent, model):
    got: dict = {}
    long_job = threading.Thread(target=lambda: got.update(r=agent.job("bench", model, {"runs": 1_000_000, "threads": 1}, timeout_s=90)))
    long_job.start()
    try:
        deadline = time.monotonic() + WAIT
        while not _children(agent, "bench") and time.monotonic() < deadline:
            time.sleep(0.1)
        (pid,) = _children(agent, "bench")
        status, body = agent.job("info", model)
        assert status == 409 and "one at a time" in body["error"]
        agent.serving()
        os.kill(pid, signal.SIGSEGV)  # as a runtime that crashes on a model
    finally:
        long_job.join(WAIT)
    status, body = got["r"]
    assert status == 422 and "SIGSEGV" in body["error"], body
    agent.serving()

    # hung: stopped at its time limit, with what it started
    status, body = agent.job("bench", model, {"runs": 1_000_000, "threads": 1}, timeout_s=3)
    assert status == 504 and "time limit of 3 s" in body["error"], body
    assert _children(agent, "bench") == []
    agent.serving()
    assert agent.job("bench", model, {"runs": 10, "threads": 1})[0] == 200


# ------------------------------------------------------------------ without a server


def test_the_cache_evicts_the_least_recently_used_but_never_a_model_in_use(tmp_path):
    cache = ModelCache(tmp_path, cap=250, max_model=200)
    blobs = [bytes([i]) * 100 for i in range(4)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]

    def put(i):
        chunks = iter([blobs[i]])
        cache.store_model(shas[i], 100, lambda n: next(chunks, b""))

    put(0)
    time.sleep(0.01)
    put(1)
    time.sleep(0.01)
    assert cache.has(shas[0])  # used now: 1 is the least recently used
    time.sleep(0.01)
    put(2)
    assert cache.held() == sorted([shas[0], shas[2]])
    with cache.pinned(shas[0]):
        time.sleep(0.01)
        put(3)  # 0 is older than 2, but in use
        assert cache.held() == sorted([shas[0], shas[3]])
    with pytest.raises(AgentError, match="over this agent's cap"):
        cache.store_model(shas[1], 201, lambda n: b"")
    with pytest.raises(AgentError, match="sha256"):
        cache.store_model(shas[1], 100, lambda n: blobs[2])
    with pytest.raises(AgentError, match="named by its sha256") as refused:
        cache.has("../../etc")
    assert refused.value.kind == "bad request"
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".")] == []


def test_read_exactly_refuses_a_short_or_stalled_body():
    with pytest.raises(AgentError, match="ended after 3 of 10"):
        chunks = iter([b"abc", b""])
        read_exactly(lambda n: next(chunks), 10, lambda c: None)

    def stalls(n):
        raise TimeoutError("timed out")

    with pytest.raises(AgentError, match="stopped after 0 of 10"):
        read_exactly(stalls, 10, lambda c: None)


def test_a_job_becomes_a_command_line_of_checked_values_only(tmp_path):
    aliases = {"pics": tmp_path}
    req = parse_job(json.dumps({"command": "eval", "model": "a" * 64, "options": {"data": "pics", "limit": 5}}).encode(), aliases, 600)
    cmd = command_line(req, tmp_path / "m.tflite", tmp_path / "out.json", tmp_path, aliases)
    assert cmd[:5] == [sys.executable, "-m", "edge_app", "eval", str(tmp_path / "m.tflite")]
    assert cmd[5:] == ["--source", str(tmp_path), "--limit", "5", "--json", str(tmp_path / "out.json")]
    req = parse_job(json.dumps({"command": "check-input", "model": "a" * 64, "options": {"source": "0"}}).encode(), aliases, 600)
    assert "--out" in command_line(req, tmp_path / "m", tmp_path / "o", tmp_path, aliases)
    # the name the uploaded model.json gives the model, if it is a plain file name
    (tmp_path / "model.json").write_text(json.dumps({"files": {"../../evil.tflite": "a" * 64, "model_float32.tflite": "b" * 64}}))
    assert model_name(tmp_path, "a" * 64) == "model_int8.tflite"
    assert model_name(tmp_path, "b" * 64) == "model_float32.tflite"


def test_off_loopback_a_token_is_made_up_and_a_bad_one_refused(tmp_path, monkeypatch):
    from edge_app.cli.main import cli

    short = CliRunner().invoke(cli, ["agent", "--listen", "0.0.0.0:0", "--token", "short", "--cache-dir", str(tmp_path)])
    assert short.exit_code == 2 and "at least 16" in short.output
    (tmp_path / "t").write_text("tiny\n")
    res = CliRunner().invoke(cli, ["agent", "--token-file", str(tmp_path / "t"), "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "at least 16" in res.output and "tiny" not in res.output
    res = CliRunner().invoke(cli, ["agent", "--data", f"pics={tmp_path / 'none'}", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no such folder" in res.output
    res = CliRunner().invoke(cli, ["agent", "--data", f"0={tmp_path}", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "a letter" in res.output
    from edge_app.agent import server
    from edge_app.errors import ServeError

    with pytest.raises(ServeError, match="anyone who can reach"):  # refused before anything is bound
        server.Agent(server.AgentConfig(listen="0.0.0.0:0", token=None, cache_dir=tmp_path))
    seen = []

    class Unbound:  # no socket off loopback in a test: what the command would serve with is enough
        url = "http://0.0.0.0:0/v1/"

        def __init__(self, config):
            seen.append(config)

        def serve_forever(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(server, "Agent", Unbound)
    res = CliRunner().invoke(cli, ["agent", "--listen", "0.0.0.0:8765", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    made = re.search(r"wants this token \(give it to the host\): (\S+)", res.output)
    assert made and seen[0].token == made.group(1) and len(made.group(1)) >= 16
    res = CliRunner().invoke(cli, ["agent", "--listen", "8765", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0 and seen[1].token is None and "wants this token" not in res.output  # loopback: none unless given


def test_sigterm_stops_the_agent_cleanly(tmp_path):
    a = start_agent(tmp_path)
    a.serving()  # no token on loopback: open to this machine only
    stop_agent(a.proc)
    assert a.proc.returncode == 0 and "edge-app agent: stopped" in (tmp_path / "agent.log").read_text()


def test_info_and_check_input_write_json_but_never_over_their_inputs(edge_model_copy, pics, tmp_path):
    from edge_app.cli.main import cli

    out = tmp_path / "info.json"
    res = CliRunner().invoke(cli, ["info", str(edge_model_copy), "--json", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["inputs"][0]["dtype"] == "int8" and d["lines"][0].startswith("model: ") and "placement" in d
    res = CliRunner().invoke(cli, ["info", str(edge_model_copy), "--json", str(edge_model_copy / "model_int8.tflite")])
    assert res.exit_code == 1 and "would overwrite the model" in res.output
    res = CliRunner().invoke(cli, ["check-input", str(edge_model_copy), "--source", str(pics), "--frames", "2", "--json", str(out)])
    assert res.exit_code in (0, 3), res.output
    assert json.loads(out.read_text())["frames"] == 2
    res = CliRunner().invoke(cli, ["check-input", str(edge_model_copy), "--source", str(pics), "--json", str(edge_model_copy / "labels.txt")])
    assert res.exit_code == 1 and "would overwrite" in res.output


STUB_PYTHON = r"""#!/bin/sh
# a python3 for install.sh: makes the venv (itself), skips pip, and runs `-c` with the real Python
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  for d in "$@"; do :; done
  mkdir -p "$d/bin" && cp "$0" "$d/bin/python" && exit 0
fi
if [ "$1" = "-c" ]; then exec "$REAL_PYTHON" "$@"; fi
exit 0
"""


def test_the_bundle_ships_the_agent_unit_and_install_sh_agent_makes_its_token(bundle, tmp_path):  # noqa: F811
    top = _extract(bundle, tmp_path)
    unit_in = (top / "nin-edge-agent.service.in").read_text()
    assert "edge-app agent --listen ${NIN_AGENT_LISTEN} --token-file @DIR@/agent.token" in unit_in
    assert "install.sh --agent" in (top / "README.md").read_text() and "NIN_AGENT_LISTEN=" in (top / "edge-app.env").read_text()
    manifest = json.loads((top / "MANIFEST.json").read_text())
    assert "nin-edge-agent.service.in" in manifest["files"]
    stub = tmp_path / "python3"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "REAL_PYTHON": sys.executable}
    res = subprocess.run(["sh", str(top / "install.sh"), "--agent"], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    token = top / "agent.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 16
    assert "systemctl enable --now nin-edge-agent" in res.stdout
    unit = (top / "nin-edge-agent.service").read_text()
    assert f"--token-file {top}/agent.token" in unit and "@DIR@" not in unit and "@USER@" not in unit
    first = token.read_text()
    assert subprocess.run(["sh", str(top / "install.sh"), "--agent"], capture_output=True, timeout=60, env=env).returncode == 0
    assert token.read_text() == first  # a second install keeps the token the host has
    plain = tmp_path / "plain"
    top2 = _extract(bundle, plain)
    assert subprocess.run(["sh", str(top2 / "install.sh")], capture_output=True, timeout=60, env=env).returncode == 0
    assert not (top2 / "agent.token").exists() and (top2 / "nin-edge-agent.service").is_file()
