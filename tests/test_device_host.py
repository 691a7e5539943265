"""The host's side of the device agent: edge_app.agent.client and `--device` on sweep, compare, evaluate and
check-target, against a FAKE agent written here (an http.server on 127.0.0.1 speaking edge_app.agent.protocol
with canned replies built from its dataclasses), so nothing here needs a device or the real server. No training:
the sweep's candidates are made by a stand-in for the build (finished run folders with a report)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_image_tree

from edge_app.agent.client import AgentClient, parse_url
from edge_app.agent.protocol import API, OPTIONS, STATUS, DeviceInfo, JobReply, JobRequest
from edge_app.contract.files import DEVICE_BENCH_JSON, DEVICE_TARGET_JSON, EVAL_JSON, INT8_TFLITE, REPORT_JSON, TARGET_JSON
from edge_app.errors import AgentError, AgentUnreachable

from pipeline.cli.main import cli

TOKEN = "a-token-of-twenty-chars"
NAMES = ("nin-cifar-w0.25-s24", "nin-cifar-w0.25-s32", "nin-cifar-w0.5-s24", "nin-cifar-w0.5-s32")
HOST_MS = dict(zip(NAMES, (0.2, 0.3, 0.4, 0.5)))  # this host: the widest is fast enough for any budget
DEVICE_MS = dict(zip(NAMES, (3.0, 0.9, 1.5, 4.0)))  # the device: another order
ACCURACY = dict(zip(NAMES, (0.60, 0.62, 0.64, 0.66)))
DEVICE_TOP1 = dict(zip(NAMES, (0.58, 0.61, 0.63, 0.65)))


def _named(model: bytes) -> str:
    """The candidate a stand-in model is (its bytes say it; a real one would be looked up by sha256)."""
    return next((n for n in NAMES if n.encode() in model), "model")


class FakeAgent:
    """`edge-app agent` as the protocol says it answers: info, HEAD/PUT models, jobs with canned results.
    ``gone_after``: after that many jobs the device is gone (every connection closed unanswered) until :meth:`back`."""

    def __init__(self, token=None, hostname="fakepi", gone_after: int | None = None, data=("cifar-test",), cannot_run=()) -> None:
        self.token, self.hostname, self.gone_after, self.data = token, hostname, gone_after, tuple(data)
        self.cannot_run = set(cannot_run)  # candidates whose jobs fail on this device (a runtime that cannot load them)
        self.models: dict[str, bytes] = {}
        self.parts: dict[tuple[str, str], bytes] = {}
        self.jobs: list[tuple[str, str, dict]] = []
        self.uploads: list[str] = []
        self.gone = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.agent = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def back(self, gone_after: int | None = None) -> None:
        self.gone, self.gone_after = False, gone_after

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            hostname=self.hostname,
            board="Raspberry Pi 5 Model B Rev 1.0",
            machine="aarch64",
            system="Linux 6.6.31+rpt-rpi-2712",
            python="3.11.2",
            runtimes={"ai-edge-litert": "1.2.0"},
            soc_temp_c=51.0,
            throttled="0x0",
            data=self.data,
        )

    def result(self, command: str, sha: str, options: dict) -> dict:
        model = self.models[sha]
        measured_on = {
            "model": INT8_TFLITE,
            "model_sha256": sha,
            "device": {"hostname": self.hostname, "machine": "aarch64", "cpu": "Cortex-A76", "cores": 4},
            "runtime": "ai-edge-litert",
            "delegate": "cpu",
            "threads": options.get("threads", 4),
        }
        if command == "bench":
            ms = DEVICE_MS.get(_named(model), 1.0)
            stage = {"frames": 300, "fps": 1000 / ms, "ms": {"invoke": {"median": ms, "p95": ms}}}
            return {
                **measured_on,
                "runs": options.get("runs", 300),
                "frame": "640x480",
                "invoke_ms": {"median": ms, "p95": 1.2 * ms, "fps": 1000 / ms, "runs": options.get("runs", 300)},
                "loop": stage,
                "loop_no_prefetch": stage,
                "loop_over_invoke_fps": 0.9,
                "loop_no_prefetch_over_invoke_fps": 0.8,
            }
        if command == "eval":
            top1 = DEVICE_TOP1.get(_named(model), 0.5)
            return {**measured_on, "source": options["data"], "images": 50, "top1": top1, "top5": 0.9, "skipped": 0}
        if command == "check-target":  # the real check, of the model it was sent (what `edge-app check-target --json` writes)
            import tempfile

            from edge_app.checks.edgetpu import with_edgetpu
            from edge_app.checks.targets import check_target

            with tempfile.TemporaryDirectory() as d:
                (Path(d) / INT8_TFLITE).write_bytes(model)
                r = check_target(Path(d) / INT8_TFLITE)
                with_edgetpu(r, Path(d) / INT8_TFLITE)
                return r
        raise AssertionError(command)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    @property
    def agent(self) -> FakeAgent:
        return self.server.agent  # type: ignore[attr-defined]

    def _send(self, status: int, body: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refuse(self, kind: str, error: str, hint: str = "") -> None:
        self._send(STATUS[kind], {"ok": False, "error": error, "hint": hint})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _admitted(self) -> bool:
        if self.agent.gone:  # the device went away: the connection closes with no answer
            self.close_connection = True
            return False
        if self.agent.token and self.headers.get("Authorization") != f"Bearer {self.agent.token}":
            self._body()
            self._refuse("unauthorized", "no token, or not the agent's", "start the agent with --token, or use the one it printed")
            return False
        return True

    def do_GET(self) -> None:
        if not self._admitted():
            return
        if self.path != f"/{API}/info":
            return self._refuse("bad request", "no such route")
        self._send(200, self.agent.info().to_json())

    def do_HEAD(self) -> None:
        if self._admitted():
            self._send(200 if self.path.rsplit("/", 1)[-1] in self.agent.models else 404)

    def do_PUT(self) -> None:
        if not self._admitted():
            return
        body = self._body()
        parts = self.path.split("/")  # "", v1, models, sha[, part]
        if len(parts) == 4:
            if hashlib.sha256(body).hexdigest() != parts[3]:
                return self._refuse("bad request", "the body's sha256 is not its name")
            self.agent.models[parts[3]] = body
            self.agent.uploads.append(parts[3])
        elif parts[3] in self.agent.models:
            self.agent.parts[(parts[3], parts[4])] = body
        else:
            return self._refuse("no such model", "upload the model first")
        self._send(201, {"ok": True})

    def do_POST(self) -> None:
        if not self._admitted():
            return
        a = self.agent
        if a.gone_after is not None and len(a.jobs) >= a.gone_after:
            a.gone = True
            self.close_connection = True
            return
        req = JobRequest(**json.loads(self._body()))
        if set(req.options) - set(OPTIONS[req.command]):
            return self._refuse("bad request", f"unknown options {sorted(set(req.options) - set(OPTIONS[req.command]))}")
        if req.model not in a.models:
            return self._refuse("no such model", "upload it first")
        if req.command == "eval" and req.options.get("data") not in a.data:
            return self._refuse("bad request", f"no data alias {req.options.get('data')!r}")
        a.jobs.append((req.command, req.model, dict(req.options)))
        if _named(a.models[req.model]) in a.cannot_run:
            failed = JobReply(ok=False, command=req.command, model=req.model, result={}, device=a.info(), seconds=0.1)
            body = {"ok": False, "error": f"the {req.command} job failed: the runtime cannot load it", "hint": "the agent goes on"}
            return self._send(STATUS["job failed"], {**body, "reply": failed.to_json()})
        reply = JobReply(
            ok=True, command=req.command, model=req.model, result=a.result(req.command, req.model, req.options), device=a.info(), seconds=0.1
        )
        self._send(200, reply.to_json())


@pytest.fixture(autouse=True)
def _no_token_around(monkeypatch):
    monkeypatch.delenv("NIN_DEVICE_TOKEN", raising=False)


@pytest.fixture
def agent():
    a = FakeAgent(token=TOKEN)
    yield a
    a.close()


# --------------------------------------------------------------------------- stand-in candidates


def _fake_build(calls: list[str]):
    """What `build` leaves, without training: a finished run folder (every stage marked done, a report)
    whose model bytes name the candidate."""

    def build(cfg, out, **kw):
        from pipeline.runs.folder import STAGE_OUTPUTS, STAGES, RunFolder

        calls.append(out.name)
        run = RunFolder.create(out, cfg)
        for name in {n for s in STAGES for n in STAGE_OUTPUTS[s]} - {REPORT_JSON}:
            run.write_bytes(name, b"\0\0\0\0TFL3" + f"{name} of {out.name}".encode())  # a TFLite identifier, then who it is
        acc, ms = ACCURACY.get(out.name, 0.5), HOST_MS.get(out.name, 1.0)
        q = {"top1": acc, "bytes": int(100_000 * cfg.model.width), "params": 1000, "macs": 10**6, "agreement_with_float": 0.99}
        q["latency_ms"] = {"1_thread": {"median": ms}, "4_threads": {"median": ms / 2}}
        variants = {"float_keras": {"top1": acc + 0.01, "bytes": 1}, "qat_int8": q, "ptq_int8": {"top1": acc - 0.01, "bytes": 1}}
        run.write_json(REPORT_JSON, {"arch": cfg.model.arch, "width": cfg.model.width, "test_images": 100, "variants": variants})
        for s in STAGES:
            run.mark(s)
        return run

    return build


@pytest.fixture
def sweep_args(tmp_path, monkeypatch):
    import pipeline.stages.orchestrator as orchestrator

    calls: list[str] = []
    monkeypatch.setattr(orchestrator, "build", _fake_build(calls))
    tree = make_image_tree(tmp_path / "tree")
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--widths", "0.25,0.5", "--input-sizes", "24,32", "--dataset", "folder", "--data-dir", str(tree)]
    return out, args, calls


def _invoke(args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def _one_line_error(res, *said):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(line) == 1, res.output
    for s in said:
        assert s in line[0], line[0]
    return line[0]


# --------------------------------------------------------------------------- the client


def test_the_fake_answers_in_the_shape_edge_app_bench_writes(edge_model):
    """The canned bench result has every key the real `edge-app bench --json` writes (so the fake stays honest)."""
    from edge_app.measure.bench import bench
    from edge_app.model import open_model

    real = bench(open_model(edge_model), runs=10)
    fake = FakeAgent()
    try:
        sha = AgentClient(fake.url).upload(edge_model / INT8_TFLITE)
        canned = fake.result("bench", sha, {})
    finally:
        fake.close()
    assert set(real) <= set(canned) and set(real["device"]) <= set(canned["device"]) and set(real["invoke_ms"]) <= set(canned["invoke_ms"])


def test_addresses_tokens_uploads_and_refusals(agent, edge_model, tmp_path, monkeypatch):
    assert parse_url("http://pi.local:9000") == ("pi.local", 9000) and parse_url("10.0.0.7:8765") == ("10.0.0.7", 8765)
    assert parse_url("pi") == ("pi", 8765) and parse_url("[::1]:9000") == ("::1", 9000)
    for bad in ("https://pi:8765", "usb:0", "pi:notaport", "http://pi:8765/v1/info", ""):
        with pytest.raises(AgentError) as e:
            parse_url(bad)
        assert e.value.kind == "bad address" and "HOST:PORT" in str(e.value)

    monkeypatch.setenv("NIN_DEVICE_TOKEN", TOKEN)  # the token from the environment when none is given
    client = AgentClient(agent.url.removeprefix("http://"))
    assert client.info().hostname == "fakepi" and TOKEN not in repr(client)
    sha = client.upload(edge_model / INT8_TFLITE, edge_model / "model.json", edge_model / "labels.txt")
    assert client.has_model(sha) and client.upload(edge_model / INT8_TFLITE) == sha
    assert agent.uploads == [sha] and (sha, "labels.txt") in agent.parts  # the model went once
    reply = client.job(JobRequest("bench", sha))
    assert reply.ok and reply.result["model_sha256"] == sha and reply.device.hostname == "fakepi"
    with pytest.raises(AgentError) as e:  # the agent's own refusal, with its words
        client.job(JobRequest("bench", sha, {"nope": 1}))
    assert e.value.kind == "bad request" and "unknown options" in str(e.value) and agent.url in str(e.value)

    with pytest.raises(AgentError) as e:
        AgentClient(agent.url, token="not-the-agents-token-at-all").info()
    assert e.value.kind == "unauthorized" and "NIN_DEVICE_TOKEN" in e.value.hint and "not-the-agents" not in str(e.value)
    monkeypatch.delenv("NIN_DEVICE_TOKEN")
    with pytest.raises(AgentError, match="no token was given"):
        AgentClient(agent.url).info()

    closed = FakeAgent()
    url = closed.url
    closed.close()  # nothing listens there any more
    with pytest.raises(AgentUnreachable) as e:
        AgentClient(url, timeout=5).info()
    assert url in str(e.value) and "edge-app agent" in e.value.hint

    class NotAnAgent(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"<html>")

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), NotAnAgent)
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(AgentError) as e:
            AgentClient(f"127.0.0.1:{other.server_address[1]}", timeout=5).info()
        assert e.value.kind == "bad reply" and "edge-app agent" in str(e.value)
    finally:
        other.shutdown()
        other.server_close()


# --------------------------------------------------------------------------- sweep --device


def test_a_sweep_measures_every_candidate_on_the_device(agent, sweep_args):
    out, args, calls = sweep_args
    res = _invoke([*args, "--device", agent.url, "--device-token", TOKEN, "--device-eval", "cifar-test", "--latency-budget", "2"])
    assert res.exit_code == 0, res.output
    for i, name in enumerate(NAMES, 1):  # a progress line each
        assert (
            f"measuring {name} on fakepi ({i}/4) ... {DEVICE_MS[name]:.2f} ms, top-1 {100 * DEVICE_TOP1[name]:.2f}% on cifar-test" in res.output
        )
    data = json.loads((out / "sweep.json").read_text())
    got = {c["run"]: c for c in data["candidates"]}
    assert {n: got[n]["int8_ms_1_thread"] for n in NAMES} == DEVICE_MS  # the device's figures, the host's beside them
    assert {n: got[n]["host_int8_ms_1_thread"] for n in NAMES} == HOST_MS
    assert {n: got[n]["device_top1"] for n in NAMES} == DEVICE_TOP1
    assert data["pareto"] == ["nin-cifar-w0.25-s32", "nin-cifar-w0.5-s24", "nin-cifar-w0.5-s32"]
    assert data["pick"]["winner"] == "nin-cifar-w0.5-s24" and "4.00 ms > 2 ms" in data["pick"]["why"]  # on this host the widest would fit
    assert data["settings"]["device"]["hostname"] == "fakepi" and data["settings"]["device_eval"] == "cifar-test"
    md = (out / "sweep.md").read_text()
    assert "int8 ms on fakepi" in md and "host int8 ms 1 thread / all" in md and "device int8 top-1" in md
    assert "latency from fakepi" in res.output

    stored = json.loads((out / NAMES[0] / DEVICE_BENCH_JSON).read_text())  # what the candidate keeps: who measured which model
    assert stored["model_sha256"] == hashlib.sha256((out / NAMES[0] / INT8_TFLITE).read_bytes()).hexdigest()
    assert stored["agent"]["device"]["hostname"] == "fakepi" and stored["agent"]["url"] == agent.url
    assert json.loads((out / NAMES[0] / EVAL_JSON).read_text())["agent"]["options"] == {"data": "cifar-test"}

    jobs = len(agent.jobs)
    assert jobs == 8
    res = _invoke([*args, "--device", agent.url, "--device-token", TOKEN, "--device-eval", "cifar-test"])  # again: nothing measured again
    assert res.exit_code == 0, res.output
    assert len(agent.jobs) == jobs and res.output.count("(measured before)") == 4 and calls == list(NAMES)


def test_a_device_that_goes_away_mid_sweep_keeps_what_it_measured_and_the_rerun_resumes(sweep_args):
    out, args, _ = sweep_args
    agent = FakeAgent(token=TOKEN, gone_after=2)
    try:
        res = _invoke([*args, "--device", agent.url], env={"NIN_DEVICE_TOKEN": TOKEN})
        line = _one_line_error(res, "fakepi", agent.url, "went away while measuring nin-cifar-w0.5-s24", "2 of 4", "run the same command")
        assert "measuring nin-cifar-w0.5-s24 on fakepi (3/4) ... the device went away" in res.output, line
        assert [(out / n / DEVICE_BENCH_JSON).is_file() for n in NAMES] == [True, True, False, False]
        assert not (out / "sweep.json").exists()

        agent.back()  # the device is back (its agent restarted: the same command goes on)
        res = _invoke([*args, "--device", agent.url], env={"NIN_DEVICE_TOKEN": TOKEN})
        assert res.exit_code == 0, res.output
        assert [j[0] for j in agent.jobs] == ["bench"] * 4  # 2 before it went, the other 2 now
        assert res.output.count("(measured before)") == 2
        data = json.loads((out / "sweep.json").read_text())
        assert {c["run"]: c["int8_ms_1_thread"] for c in data["candidates"]} == DEVICE_MS
    finally:
        agent.close()


def test_a_wrong_token_or_a_missing_device_is_one_line_before_anything_is_built(agent, sweep_args):
    out, args, calls = sweep_args
    res = _invoke([*args, "--device", agent.url, "--device-token", "not-the-agents-token-at-all"])
    _one_line_error(res, agent.url, "refused", "--device-token or NIN_DEVICE_TOKEN")
    assert calls == []  # asked before hours of building
    res = _invoke([*args, "--device", agent.url, "--device-token", TOKEN, "--device-eval", "imagenet"])
    _one_line_error(res, "no labelled folder 'imagenet'", "cifar-test", "--data ALIAS=DIR")
    res = _invoke([*args, "--device", "https://pi:8765"])
    assert res.exit_code == 2 and "SSH tunnel" in res.output
    res = _invoke([*args, "--device-eval", "cifar-test"])
    assert res.exit_code == 2 and "--device-eval goes with --device" in res.output
    assert calls == []


def test_a_candidate_the_device_cannot_run_is_said_and_left_out(sweep_args):
    out, args, _ = sweep_args
    agent = FakeAgent(cannot_run={NAMES[3]})
    try:
        res = _invoke([*args, "--device", agent.url])
    finally:
        agent.close()
    assert res.exit_code == 0, res.output
    assert (
        f"measuring {NAMES[3]} on fakepi (4/4) ... failed: the agent at {agent.url}: the bench job failed: the runtime cannot load it"
        in res.output
    )
    assert f"not measured on fakepi, left out of the table, the front and the pick: {NAMES[3]}" in res.output
    data = json.loads((out / "sweep.json").read_text())
    assert [c["run"] for c in data["candidates"]] == list(NAMES[:3]) and not (out / NAMES[3] / DEVICE_BENCH_JSON).exists()


# --------------------------------------------------------------------------- compare, evaluate, check-target


def test_compare_shows_the_device_and_this_host_side_by_side(agent, tmp_path):
    from pipeline.runs.config import BuildRequest

    runs = []
    for name, width in ((NAMES[0], 0.25), (NAMES[2], 0.5)):
        cfg = BuildRequest(dataset="folder", data_dir=tmp_path, overrides={"width": width}).config()
        runs.append(_fake_build([])(cfg, tmp_path / name).root)
    res = _invoke(["compare", *runs, "--device", agent.url, "--device-token", TOKEN, "--json", tmp_path / "c.json"])
    assert res.exit_code == 0, res.output
    assert "measuring nin-cifar-w0.5-s24 on fakepi (2/2) ... 1.50 ms" in res.output and "fakepi" in res.output
    recs = {r["run"]: r for r in json.loads((tmp_path / "c.json").read_text())["runs"]}
    assert recs[NAMES[2]]["int8_ms_1_thread"] == 1.5 and recs[NAMES[2]]["host_int8_ms_1_thread"] == HOST_MS[NAMES[2]]
    assert (runs[0] / DEVICE_BENCH_JSON).is_file()
    res = _invoke(["compare", *runs, "--device", agent.url, "--device-token", TOKEN])  # the stored figures, for the same models
    assert res.exit_code == 0 and len(agent.jobs) == 2 and res.output.count("(measured before)") == 2
    rebuilt = runs[1] / INT8_TFLITE  # another model in the folder (rebuilt since): measured again
    rebuilt.write_bytes(rebuilt.read_bytes() + b" again")
    res = _invoke(["compare", *runs, "--device", agent.url, "--device-token", TOKEN])
    assert res.exit_code == 0 and res.output.count("(measured before)") == 1
    assert len(agent.jobs) == 3 and agent.jobs[-1][1] == hashlib.sha256(rebuilt.read_bytes()).hexdigest()
    res = _invoke(["compare", *runs, "--json", runs[0] / DEVICE_BENCH_JSON])
    _one_line_error(res, "the run folder's own device_bench.json")


def test_evaluate_on_the_device(agent, edge_model_copy, tmp_path):
    res = _invoke(
        [
            "evaluate",
            edge_model_copy,
            "--device",
            agent.url,
            "--device-token",
            TOKEN,
            "--device-eval",
            "cifar-test",
            "--json",
            tmp_path / "e.json",
        ]
    )
    assert res.exit_code == 0, res.output
    assert "fakepi (Raspberry Pi 5 Model B Rev 1.0" in res.output and "top-1 50.00%" in res.output and "of its folder cifar-test" in res.output
    kept = json.loads((edge_model_copy / EVAL_JSON).read_text())  # compare's device column reads it
    assert kept["model_sha256"] == hashlib.sha256((edge_model_copy / INT8_TFLITE).read_bytes()).hexdigest()
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == 0.5 and agent.jobs[-1][2] == {"data": "cifar-test"}
    res = _invoke(["evaluate", edge_model_copy, "--device", agent.url])
    assert res.exit_code == 2 and "go together" in res.output
    (tmp_path / "m.keras").write_bytes(b"PK\3\4 a Keras file")  # only TFLite models go to the device
    res = _invoke(["evaluate", tmp_path / "m.keras", "--device", agent.url, "--device-eval", "cifar-test", "--device-token", TOKEN])
    _one_line_error(res, "is not a TFLite model")
    res = _invoke(["evaluate", edge_model_copy, "--device", agent.url, "--device-eval", "nope"], env={"NIN_DEVICE_TOKEN": TOKEN})
    _one_line_error(res, "no labelled folder 'nope'", "it offers cifar-test")


def test_check_target_asks_the_device(agent, edge_model_copy, tmp_path):
    from edge_app.cli.main import cli as edge_cli

    res = _invoke(["check-target", edge_model_copy, "--device", agent.url, "--device-token", TOKEN, "--json", tmp_path / "t.json"])
    assert res.exit_code in (0, 3), res.output
    assert "on fakepi (Raspberry Pi 5 Model B Rev 1.0" in res.output and "Edge TPU (Coral's rules, no compiler)" in res.output
    kept = json.loads((edge_model_copy / DEVICE_TARGET_JSON).read_text())
    assert kept["agent"]["device"]["hostname"] == "fakepi" and kept["targets"] and json.loads((tmp_path / "t.json").read_text()) == kept
    assert not (edge_model_copy / TARGET_JSON).exists()  # this host's own check is another file
    assert agent.jobs[-1][0] == "check-target" and agent.jobs[-1][2] == {}
    res = CliRunner().invoke(
        edge_cli, ["check-target", str(edge_model_copy), "--device", agent.url, "--runtime", "ai-edge-litert"], env={"NIN_DEVICE_TOKEN": TOKEN}
    )
    assert res.exit_code in (0, 3), res.output
    assert agent.jobs[-1][2] == {"runtime": "ai-edge-litert"}
    res = CliRunner().invoke(edge_cli, ["check-target", str(edge_model_copy), "--device", "usb:0"])
    assert res.exit_code == 2 and "not an agent's address" in res.output
    res = CliRunner().invoke(edge_cli, ["check-target", str(edge_model_copy), "--device", agent.url])
    _one_line_error(res, "no token was given", "NIN_DEVICE_TOKEN")
