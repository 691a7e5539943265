"""Coral Edge TPU: run ``edgetpu_compiler`` when it is installed (x86-64 Linux only) and read its
summary and operation log.

The check against the Edge TPU's documented rules needs no compiler and no TensorFlow, so it lives
on the device side, :mod:`edge_app.checks.edgetpu` (a Coral user runs it with `edge-app check-target`);
the compiler can refuse more than those rules say (e.g. operation versions, on-chip memory), so
``compile`` reports the compiler's own count next to the check's.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from edge_app.subpython import run_bounded

from pipeline.errors import EdgeTpuError

COMPILER = "edgetpu_compiler"
COMPILER_INSTALL = (
    "install it on an x86-64 Debian/Ubuntu host from Coral's apt repository (package edgetpu-compiler; "
    "https://coral.ai/docs/edgetpu/compiler/), or compile in Coral's Colab notebook, then copy "
    "model_int8_edgetpu.tflite into the run folder"
)


@dataclass
class CompileResult:
    model: str
    output: str
    compiler_version: str
    ops_on_tpu: int | None
    ops_total: int | None
    subgraphs: int | None
    seconds: float
    log: str  # the compiler's per-operation log (the .log file), if it wrote one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_compiler(compiler: str | None = None) -> str:
    exe = compiler or shutil.which(COMPILER)
    if exe and Path(exe).is_file() and os.access(exe, os.X_OK):
        return exe
    where = f"{compiler} is not an executable file" if compiler else f"{COMPILER} is not on PATH"
    host = f"{platform.system()} {platform.machine()}"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        where += f" (and it runs only on x86-64 Linux; this is {host})"
    raise EdgeTpuError(where, COMPILER_INSTALL)


class CompilerCounts(TypedDict):
    version: str
    on_tpu: int | None
    total: int | None
    subgraphs: int | None


def parse_compiler_output(stdout: str, log_text: str) -> CompilerCounts:
    """Counts from the compiler's summary and its operation log table
    (``Operator  Count  Status`` rows, status "Mapped to Edge TPU" or a reason)."""

    def num(pattern: str) -> int | None:
        m = re.search(pattern, stdout)
        return int(m.group(1)) if m else None

    version = re.search(r"Edge TPU Compiler version\s+(\S+)", stdout + "\n" + log_text)
    mapped = total_rows = 0
    for line in log_text.splitlines():
        m = re.match(r"^\s*([A-Z][A-Z0-9_]+)\s+(\d+)\s+(.+?)\s*$", line)
        if m and m.group(1) not in ("Operator",):
            total_rows += int(m.group(2))
            mapped += int(m.group(2)) if m.group(3).startswith("Mapped to Edge TPU") else 0
    total = num(r"Total number of operations:\s*(\d+)") or (total_rows or None)
    on_tpu = num(r"Number of operations that will run on Edge TPU:\s*(\d+)")
    if on_tpu is None and total_rows:
        on_tpu = mapped
    return {
        "version": version.group(1) if version else "",
        "on_tpu": on_tpu,
        "total": total,
        "subgraphs": num(r"Number of Edge TPU subgraphs:\s*(\d+)"),
    }


def compile_model(
    model: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, compiler: str | None = None, timeout: float = 600.0
) -> CompileResult:
    """Run edgetpu_compiler on ``model``; write ``<stem>_edgetpu.tflite`` (and its .log) into ``out_dir``
    (default: beside the model). The compiler writes into a temporary folder first, so a failed or
    interrupted compile never leaves a half-written model."""
    import time

    from edge_app.fsutil import atomic_write_bytes, atomic_write_text

    model = Path(model)
    if not model.is_file():
        raise EdgeTpuError(f"no model at {model}")
    exe = find_compiler(compiler)
    out_dir = Path(out_dir) if out_dir else model.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgetpu-", dir=out_dir) as tmp:
        cmd = [exe, "--show_operations", "--out_dir", tmp, str(model)]
        t = time.time()
        try:
            proc = run_bounded(cmd, timeout=timeout)  # on the limit, what it started is killed too
        except subprocess.TimeoutExpired:
            raise EdgeTpuError(f"{COMPILER} did not finish in {timeout:.0f} s on {model}", "raise --timeout") from None
        except OSError as exc:
            raise EdgeTpuError(f"cannot run {exe}: {exc.strerror or exc}") from None
        seconds = time.time() - t
        produced = Path(tmp) / f"{model.stem}_edgetpu.tflite"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise EdgeTpuError(f"{COMPILER} failed (exit {proc.returncode}) on {model}: " + " | ".join(tail))
        if not produced.is_file():
            raise EdgeTpuError(f"{COMPILER} exited 0 but wrote no {produced.name}: " + proc.stdout.strip()[-300:])
        log_path = Path(tmp) / f"{model.stem}_edgetpu.log"
        log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        counts = parse_compiler_output(proc.stdout, log_text)
        dest = out_dir / produced.name
        atomic_write_bytes(dest, produced.read_bytes())
        if log_text:
            atomic_write_text(out_dir / log_path.name, log_text)
    return CompileResult(
        model=str(model),
        output=str(dest),
        compiler_version=str(counts["version"]),
        ops_on_tpu=counts["on_tpu"],
        ops_total=counts["total"],
        subgraphs=counts["subgraphs"],
        seconds=round(seconds, 2),
        log=log_text or proc.stdout,
    )
