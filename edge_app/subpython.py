"""Ask another Python: run a snippet there and read its answer, the JSON it prints after "@@" on one
stdout line. For what cannot run in this process: another runtime's venv (tflite-runtime 2.14 needs
numpy<2), a tool that cannot share TensorFlow's environment, or a runtime that may abort on a bad model."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

MARK = "@@"


@dataclass(frozen=True)
class Reply:
    answer: Any  # the parsed JSON, or None when the snippet printed none
    returncode: int | None  # None: it did not run or did not finish
    why: str = ""  # the last words (stderr, else stdout) when there is no answer

    @property
    def ok(self) -> bool:
        return self.answer is not None and self.returncode == 0


def ask(python: str | os.PathLike, code: str, args=(), *, timeout: float = 600, env: dict | None = None) -> Reply:
    """Run ``python -c code args``; never raises for a Python that is missing, not runnable or too slow."""
    try:
        p = subprocess.run(
            [str(python), "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
    except subprocess.TimeoutExpired:
        return Reply(None, None, f"no answer within {timeout:g} s")
    except OSError as exc:
        return Reply(None, None, f"cannot run it ({exc.strerror or exc})")
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is not None:
        return Reply(json.loads(line[len(MARK) :]), p.returncode)
    last = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
    return Reply(None, p.returncode, " ".join(last.split())[-300:])
