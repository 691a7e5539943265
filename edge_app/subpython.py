"""Ask another Python: run a snippet there and read its answer, the JSON it prints after "@@" on one
stdout line. For what cannot run in this process: another runtime's venv (tflite-runtime 2.14 needs
numpy<2), a tool that cannot share TensorFlow's environment, or a runtime that may abort on a bad model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

MARK = "@@"


@dataclass(frozen=True)
class Reply:
    answer: Any  # the parsed JSON, or None when the snippet printed none
    returncode: int | None  # None: it did not run or did not finish
    why: str = ""  # the last words (stderr, else stdout) when there is no answer
    timed_out: bool = False  # no answer within the time limit (it was killed, with what it started)

    @property
    def ok(self) -> bool:
        return self.answer is not None and self.returncode == 0


def _kill_group(p: subprocess.Popen) -> None:
    """End the child and everything it started (its own session: a wrapper script's children too). The
    child must not be reaped yet: until then its pid, the group's id, cannot be another process's."""
    if p.returncode is not None:  # reaped already: its id may be another's now
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(p.pid, signal.SIGKILL)
        else:  # no process groups (Windows): the child alone
            p.kill()
    except (ProcessLookupError, PermissionError):
        pass  # gone already
    p.wait()


def run_bounded(cmd: list[str], *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)``, but the command runs in its
    own session, and on the time limit (or Ctrl-C) its whole process group is killed and waited for before
    TimeoutExpired is raised. subprocess.run kills only the child, then waits for its output to end,
    which a grandchild (a wrapper script's python, a build backend) keeps open: for ever."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, errors="replace"
    ) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException:  # the limit, or Ctrl-C (which the child, in its own session, does not get)
            _kill_group(p)
            raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def ask(python: str | os.PathLike, code: str, args=(), *, timeout: float = 600, env: dict | None = None) -> Reply:
    """Run ``python -c code args``; never raises for a Python that is missing, not runnable or too slow
    (past ``timeout`` seconds it is killed with everything it started, and ``why`` says so)."""
    try:
        p = run_bounded([str(python), "-c", code, *map(str, args)], timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return Reply(None, None, f"{python} gave no answer within {timeout:g} s (stopped, with what it started)", timed_out=True)
    except OSError as exc:
        return Reply(None, None, f"cannot run it ({exc.strerror or exc})")
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is not None:
        return Reply(json.loads(line[len(MARK) :]), p.returncode)
    last = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
    return Reply(None, p.returncode, " ".join(last.split())[-300:])
