"""One job of the agent: a :class:`~edge_app.agent.protocol.JobRequest` checked against the protocol
(its command, its options from protocol.OPTIONS with their types and values), the `edge-app` command
line it becomes, run as ``python -m edge_app <command> MODEL ... --json OUT`` in a child process of its
own session with a time limit, and the :class:`~edge_app.agent.protocol.JobReply` made of what it wrote.

The child, not the agent, loads the model: a model that crashes the runtime (a segfault), hangs it or
fills its memory costs that one job. On the limit the child's whole process group is killed. Nothing
from the network becomes a path or a flag: the model is named by its sha256, a labelled folder by an
alias the device's owner gave (``--data ALIAS=DIR``), and every value is checked before it is passed on.
Also here: who the device is (:func:`device_info`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app import health
from edge_app.agent.cache import MODEL_FILE
from edge_app.agent.protocol import COMMANDS, MODEL_PARTS, OPTIONS, SHA256, DeviceInfo, JobReply, JobRequest
from edge_app.contract.files import INT8_TFLITE, SIDECAR_NAME
from edge_app.errors import AgentError
from edge_app.frames.geometry import RESIZE_MODES
from edge_app.runtime import DELEGATES, RUNTIMES

ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")  # starts with a letter: never a camera number
CAMERA = re.compile(r"^[0-9]{1,2}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\.tflite$")
JOB_RUNTIMES = ("auto", *RUNTIMES)  # the device's TFLite runtimes; never TensorFlow's (the agent promises none)
EDGETPU_TARGET = "edgetpu"
RANGES = {"runs": (10, 1_000_000), "threads": (1, 256), "limit": (1, 10**9), "frames": (1, 1000)}
FOUND_A_PROBLEM = 3  # check-target / check-input: the check ran and found that it will not work; the verdict is the result
USAGE = 2  # click's exit status for options it refuses
TOKEN_ENV = "EDGE_APP_AGENT_TOKEN"  # `edge-app agent --token`'s variable
_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _bad(message: str, hint: str = "") -> AgentError:
    return AgentError("bad request", message, hint)


def _check_value(command: str, key: str, value: Any, aliases: Mapping[str, Path]) -> None:
    want = OPTIONS[command][key]
    if isinstance(value, bool):  # JSON's true is no number
        ok = want is bool
    else:
        ok = isinstance(value, (int, float)) if want is float else isinstance(value, want)
    if not ok:
        raise _bad(f"option {key!r} of {command} wants {_WORDS.get(want, want.__name__)}, not {json.dumps(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"option {key!r} of {command} is not a finite number")
    if key in RANGES:
        lo, hi = RANGES[key]
        if not lo <= value <= hi:
            raise _bad(f"option {key!r} of {command} must be {lo} to {hi}, not {value}")
    elif key == "runtime" and command == "check-target":
        from edge_app.checks.targets import runtime_spec, table_runtimes

        if value not in (*RUNTIMES, EDGETPU_TARGET) and runtime_spec(value) not in table_runtimes():
            raise _bad(f"no target runtime {value!r}", f"choose one of {', '.join((*RUNTIMES, EDGETPU_TARGET, *table_runtimes()))}")
    elif key == "runtime" and value not in JOB_RUNTIMES:
        raise _bad(f"no runtime {value!r} on this agent", f"choose one of {', '.join(JOB_RUNTIMES)}")
    elif key == "delegate" and value not in DELEGATES:
        raise _bad(f"no delegate {value!r}", f"choose one of {', '.join(DELEGATES)}")
    elif key == "resize" and value not in RESIZE_MODES:
        raise _bad(f"no resize mode {value!r}", f"choose one of {', '.join(RESIZE_MODES)}")
    elif key == "data" and value not in aliases:
        raise _bad(f"this device offers no labelled folder {value!r}", _offered(aliases))
    elif key == "source" and value not in aliases and not CAMERA.match(value):
        raise _bad(f"source {value!r} is neither a camera number nor a folder this device offers", _offered(aliases))


def _offered(aliases: Mapping[str, Path]) -> str:
    if not aliases:
        return "it offers none: its owner adds them with `edge-app agent --data ALIAS=DIR`"
    return f"it offers: {', '.join(sorted(aliases))}"


def parse_job(body: bytes, aliases: Mapping[str, Path], limit_s: float) -> JobRequest:
    """The JobRequest in ``body`` (JSON), every part checked; an AgentError ("bad request") says what is wrong."""
    try:
        d = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"the job is not JSON ({exc})", 'send {"command": ..., "model": SHA256, "options": {...}}') from None
    if not isinstance(d, dict):
        raise _bad("the job is not a JSON object")
    unknown = sorted(set(d) - {"command", "model", "options", "timeout_s"})
    if unknown:
        raise _bad(f"unknown field(s) in the job: {', '.join(map(str, unknown))}", "a job has command, model, options and timeout_s")
    command, model, options, timeout = d.get("command"), d.get("model"), d.get("options", {}), d.get("timeout_s")
    if command not in COMMANDS:
        raise _bad(f"no command {command!r}", f"the agent runs {', '.join(COMMANDS)}")
    if not isinstance(model, str) or not SHA256.match(model):
        raise _bad("the job's model is not a sha256 (64 lowercase hex digits)", "name a model uploaded with PUT /v1/models/<sha256>")
    if not isinstance(options, dict):
        raise _bad("the job's options are not a JSON object")
    for key, value in options.items():
        if key not in OPTIONS[command]:
            raise _bad(f"{command} takes no option {key!r}", f"it takes {', '.join(OPTIONS[command]) or 'none'}")
        _check_value(command, key, value, aliases)
    if command == "eval" and "data" not in options:
        raise _bad("eval needs a labelled folder: the option data", _offered(aliases))
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf):
        raise _bad("timeout_s must be a number of seconds over 0")
    if timeout is not None and timeout > limit_s:
        raise _bad(
            f"timeout_s {timeout:g} is over this agent's limit of {limit_s:g} s", "ask for less, or start the agent with a larger --job-timeout"
        )
    return JobRequest(command=command, model=model, options=dict(options), timeout_s=timeout)


def model_name(folder: Path, sha: str) -> str:
    """The name the uploaded model.json gives the file of this sha256 (its checksum is checked by name), else
    model_int8.tflite. The sidecar came from the network too: only a plain .tflite file name is taken."""
    try:
        files = json.loads((folder / SIDECAR_NAME).read_text(encoding="utf-8")).get("files", {})
        names = [n for n, v in files.items() if v == sha and isinstance(n, str) and MODEL_NAME.match(n)] if isinstance(files, dict) else []
    except (OSError, ValueError, AttributeError):
        names = []
    return sorted(names)[0] if names else INT8_TFLITE


def command_line(req: JobRequest, model: Path, out: Path, workdir: Path, aliases: Mapping[str, Path]) -> list[str]:
    """``python -m edge_app <command> MODEL --<option> VALUE ... --json OUT``, of checked values only."""
    cmd = [sys.executable, "-m", "edge_app", req.command, str(model)]
    for key, value in sorted(req.options.items()):
        if key == "data":
            cmd += ["--source", str(aliases[value])]
        elif key == "source":
            cmd += ["--source", str(aliases[value]) if value in aliases else value]
        else:
            cmd += [f"--{key}", str(value)]
    if req.command == "check-input":
        cmd += ["--out", str(workdir / "check-input")]  # its pictures: in the job's folder, gone with it
    return [*cmd, "--json", str(out)]


@dataclass(frozen=True)
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False


class Runner:
    """Runs the child of one job at a time; :meth:`stop` ends it from another thread (the agent shutting down)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._mutex = threading.Lock()

    def run(self, cmd: list[str], timeout: float, cwd: Path) -> Outcome:
        from edge_app.subpython import _kill_group  # one way to end a child's whole group, as run_bounded does

        t0 = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # a job has no use for the agent's token
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", cwd=cwd, env=env, start_new_session=True
        ) as p:
            with self._mutex:
                self._proc = p
            try:
                out, err = p.communicate(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(p)
                out, err = p.communicate()  # what it said before it was stopped
                timed_out = True
            except BaseException:
                _kill_group(p)
                raise
            finally:
                with self._mutex:
                    self._proc = None
        return Outcome(p.returncode, out, err, time.monotonic() - t0, timed_out)

    def stop(self) -> None:
        from edge_app.subpython import _kill_group

        with self._mutex:
            p = self._proc
        if p is not None:
            _kill_group(p)


def _last_words(o: Outcome) -> str:
    lines = [ln.strip() for ln in o.stderr.splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if ln.startswith("Error: ")), None)
    text = error[len("Error: ") :] if error else (lines or [ln.strip() for ln in o.stdout.splitlines() if ln.strip()] or ["no output"])[-1]
    return " ".join(text.split())[:400]


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_job(req: JobRequest, folder: Path, jobs_dir: Path, aliases: Mapping[str, Path], limit_s: float, runner: Runner) -> JobReply:
    """Run ``req`` on the model in ``folder`` (the cache's; the job gets its own folder with links to it, so
    that nothing it writes lands in the cache). An AgentError for a job that failed, timed out or refused
    its options, with the reply (what it wrote, who the device is) in ``reply``."""
    workdir = Path(tempfile.mkdtemp(prefix="job-", dir=jobs_dir))
    try:
        model = workdir / model_name(folder, req.model)
        _link(folder / MODEL_FILE, model)
        for part in MODEL_PARTS:
            if (folder / part).is_file():
                _link(folder / part, workdir / part)
        out = workdir / "result.json"
        timeout = min(req.timeout_s or limit_s, limit_s)
        o = runner.run(command_line(req, model, out, workdir, aliases), timeout, workdir)
        try:
            result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
        except (OSError, ValueError):
            result = {}
        result = result if isinstance(result, dict) else {"value": result}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # a check that ran and found a problem (exit 3) answered the question: its verdict is the result
    ran = o.returncode == 0 or (o.returncode == FOUND_A_PROBLEM and bool(result) and req.command in ("check-target", "check-input"))
    reply = JobReply(ok=ran, command=req.command, model=req.model, result=result, device=device_info(aliases), seconds=round(o.seconds, 3))
    if ran:
        return reply
    said = _last_words(o)
    if o.timed_out:
        raise AgentError(
            "timeout",
            f"the {req.command} job passed its time limit of {timeout:g} s and was stopped, with every process it started ({said})",
            "ask for less work (runs, limit), or a larger timeout_s up to the agent's --job-timeout",
            reply.to_json(),
        )
    if o.returncode == USAGE:
        raise AgentError("bad request", f"edge-app {req.command} refused the job's options: {said}", "change the options", reply.to_json())
    died = f" (its process died of {_signal_name(o.returncode)})" if o.returncode is not None and o.returncode < 0 else ""
    raise AgentError(
        "job failed",
        f"the {req.command} job failed{died}: {said}",
        "the agent goes on; upload a model this runtime loads and runs (with its model.json), or change the options",
        reply.to_json(),
    )


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # the same file: no copy, and an eviction meanwhile cannot take it from the job
    except OSError:
        shutil.copyfile(src, dest)


def _read_first(*paths: str) -> str | None:
    for p in paths:
        try:
            text = Path(p).read_bytes().replace(b"\0", b"").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _os_name() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip("\"'") or None
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _fixed() -> dict[str, Any]:
    """What does not change while the agent runs."""
    system = f"{platform.system()} {platform.release()}".strip()
    pretty = _os_name()
    return {
        "hostname": socket.gethostname(),
        "board": _read_first("/proc/device-tree/model", "/sys/class/dmi/id/product_name"),
        "machine": platform.machine(),
        "system": f"{system} ({pretty})" if pretty else system,
        "python": platform.python_version(),
    }


def runtime_versions() -> dict[str, str]:
    """The TFLite runtimes installed, by their distributions' metadata: none of them is imported."""
    from importlib import metadata

    found = {}
    for name in RUNTIMES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device_info(aliases: Mapping[str, Path]) -> DeviceInfo:
    """Who this device is, and its temperature and throttling now."""
    now = health.read()
    return DeviceInfo(
        **_fixed(), runtimes=runtime_versions(), soc_temp_c=now.get("soc_temp_c"), throttled=now.get("throttled"), data=tuple(sorted(aliases))
    )
