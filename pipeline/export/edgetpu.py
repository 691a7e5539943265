"""Coral Edge TPU: lint any .tflite against the Edge TPU's documented requirements, and run
``edgetpu_compiler`` when it is installed.

The checker reads the model through a TFLite interpreter (no TensorFlow, no compiler) and
applies the rules of Coral's "TensorFlow models on the Edge TPU" page
(https://coral.ai/docs/edgetpu/models-intro/):

* every tensor is 8-bit quantised (int8 or uint8; int32 only for biases and other constants);
* tensor sizes are constant at compile time (no dynamic dimension);
* a tensor has at most 3 dimensions larger than 1, and they are the innermost ones;
* only the listed operations, each with its known limitations;
* the compiler partitions the graph once: the first operation that cannot run on the Edge
  TPU, and every operation after it, runs on the CPU.

This predicts; ``edgetpu_compiler`` decides. The compiler can refuse more (e.g. operation
versions, on-chip memory), so ``compile`` reports the compiler's own count next to ours.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EdgeTpuError

COMPILER = "edgetpu_compiler"
COMPILER_INSTALL = ("install it on an x86-64 Debian/Ubuntu host from Coral's apt repository (package edgetpu-compiler; "
                    "https://coral.ai/docs/edgetpu/compiler/), or compile in Coral's Colab notebook, then copy "
                    "model_int8_edgetpu.tflite into the run folder")

# Operation -> known limitation (Coral's table). The ones we can check from the model alone are
# checked in _op_problem; the others are reported as notes.
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation function", "CONCATENATION": "no fused activation function",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y", "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "output is one-dimensional", "L2_NORMALIZATION": "", "LOGISTIC": "", "LSTM": "unidirectional only",
    "MAXIMUM": "", "MAX_POOL_2D": "no fused activation function", "MEAN": "no reduction in the batch dimension; a "
    "channel reduction needs channels divisible by 4", "MINIMUM": "", "MUL": "", "PACK": "not in the batch dimension",
    "PAD": "not in the batch dimension", "PRELU": "alpha is 1-dimensional", "QUANTIZE": "", "REDUCE_MAX": "not on the "
    "batch dimension", "REDUCE_MIN": "not on the batch dimension", "RELU": "", "RELU6": "", "RELU_N1_TO_1": "",
    "RESHAPE": "some large reshapes are not mapped", "RESIZE_BILINEAR": "3-dimensional input/output",
    "RESIZE_NEAREST_NEIGHBOR": "3-dimensional input/output", "RSQRT": "", "SLICE": "", "SOFTMAX": "1-dimensional input "
    "of at most 16,000 elements", "SPACE_TO_DEPTH": "", "SPLIT": "not in the batch dimension", "SQUEEZE": "",
    "STRIDED_SLICE": "", "SUB": "", "SUM": "not in the batch dimension", "SQUARED_DIFFERENCE": "", "TANH": "",
    "TRANSPOSE": "", "TRANSPOSE_CONV": "",
}
CHECKED_OPS = {"SOFTMAX", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "FULLY_CONNECTED"}  # limits _op_problem tests
EDGE_OPS = {"QUANTIZE", "DEQUANTIZE"}  # float <-> int conversions at the graph's edges


@dataclass(frozen=True)
class OpVerdict:
    index: int
    op: str
    device: str  # "tpu" | "cpu"
    reason: str = ""


@dataclass
class CheckResult:
    model: str
    ops: list[OpVerdict]
    problems: list[str] = field(default_factory=list)  # model-level findings
    input_dtype: str = ""
    output_dtypes: list[str] = field(default_factory=list)

    @property
    def on_tpu(self) -> int:
        return sum(op.device == "tpu" for op in self.ops)

    @property
    def fully_mapped(self) -> bool:
        return self.on_tpu == len(self.ops) and not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(on_tpu=self.on_tpu, total=len(self.ops), fully_mapped=self.fully_mapped)
        return d


def _load(path: Path):
    from edge_app.runtime import load_interpreter

    interp, _ = load_interpreter(path, num_threads=1)
    return interp


def _non1_dims(shape) -> int:
    return sum(int(v) != 1 for v in shape)


def _rank_ok(shape) -> bool:
    """At most 3 dimensions larger than 1, and only among the 3 innermost."""
    return all(int(v) == 1 for v in list(shape)[:-3])


def check_model(path: str | os.PathLike) -> CheckResult:
    """Op by op: would it run on the Edge TPU, and if not, why (first failure and everything after -> CPU)."""
    path = Path(path)
    interp = _load(path)
    tensors = {int(t["index"]): t for t in interp.get_tensor_details()}
    if not hasattr(interp, "_get_ops_details"):
        raise EdgeTpuError("this TFLite runtime cannot list a model's operations", "pip install ai-edge-litert")
    ops = [o for o in interp._get_ops_details() if o["op_name"] != "DELEGATE"]  # DELEGATE: XNNPACK's own nodes
    produced = {int(i) for o in ops for i in o["outputs"]}
    model_inputs = {int(d["index"]) for d in interp.get_input_details()}
    model_outputs = {int(d["index"]) for d in interp.get_output_details()}
    activations = produced | model_inputs

    problems = []
    for i in sorted(activations):
        t = tensors[i]
        sig = t.get("shape_signature", t["shape"])
        if any(int(v) < 0 for v in sig):
            problems.append(f"tensor {t['name']!r} has a dynamic shape {list(map(int, sig))}: the Edge TPU needs static "
                            "shapes (convert with a fixed batch of 1)")

    verdicts: list[OpVerdict] = []
    partitioned = False
    for n, o in enumerate(ops):
        name = o["op_name"]
        ins = [int(i) for i in o["inputs"] if int(i) >= 0]
        outs = [int(i) for i in o["outputs"]]
        at_edge = name in EDGE_OPS and (set(ins) & model_inputs or set(outs) & model_outputs)
        reason = _op_problem(name, ins, outs, tensors, activations, interp)
        if reason and at_edge:
            verdicts.append(OpVerdict(n, name, "cpu", f"{reason} (at the graph's edge: the rest can still map)"))
        elif partitioned:
            verdicts.append(OpVerdict(n, name, "cpu", "after the first unsupported operation (the compiler partitions once)"))
        elif reason:
            partitioned = True
            verdicts.append(OpVerdict(n, name, "cpu", reason))
        else:
            limit = SUPPORTED_OPS.get(name, "")
            verdicts.append(OpVerdict(n, name, "tpu", f"not checked here: {limit}" if limit and name not in CHECKED_OPS else ""))
    inp = interp.get_input_details()[0]
    return CheckResult(
        model=str(path), ops=verdicts, problems=problems, input_dtype=np.dtype(inp["dtype"]).name,
        output_dtypes=[np.dtype(d["dtype"]).name for d in interp.get_output_details()],
    )


def _op_problem(name: str, ins: list[int], outs: list[int], tensors: dict, activations: set[int], interp) -> str:
    if name not in SUPPORTED_OPS:
        return "not an Edge TPU operation" if name != "DEQUANTIZE" else "DEQUANTIZE (int8 -> float) runs on the CPU"
    for i in ins + outs:
        t = tensors[i]
        dtype = np.dtype(t["dtype"])
        if i in activations or i in outs:
            if dtype.kind == "f":
                return f"float tensor {t['name']!r}: the Edge TPU needs every tensor 8-bit quantised"
            if dtype not in (np.int8, np.uint8):
                return f"{dtype.name} tensor {t['name']!r}: only int8/uint8 activations"
            if not _rank_ok(t["shape"]):
                return f"tensor {t['name']!r} of shape {list(map(int, t['shape']))}: only the 3 innermost dimensions may exceed 1"
        elif dtype.kind == "f":
            return f"float constant {t['name']!r}: weights must be quantised"
    act_in = [tensors[i] for i in ins if i in activations]
    if name == "SOFTMAX" and act_in:
        shape = act_in[0]["shape"]
        if _non1_dims(shape) > 1 or int(np.prod(shape)) > 16000:
            return f"SOFTMAX on {list(map(int, shape))}: the Edge TPU takes a 1-dimensional input of at most 16,000 elements"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and act_in:
        axes_t = [i for i in ins if i not in activations]
        if axes_t:
            rank = len(act_in[0]["shape"])
            axes = {int(a) % rank for a in np.atleast_1d(interp.get_tensor(axes_t[0]))}
            if 0 in axes and rank > 1:
                return f"{name} over the batch dimension"
            if name == "MEAN" and rank - 1 in axes and int(act_in[0]["shape"][-1]) % 4:
                return "MEAN over channels that are not a multiple of 4"
    if name == "FULLY_CONNECTED" and outs and _non1_dims(tensors[outs[0]]["shape"]) > 1:
        return "FULLY_CONNECTED with a multi-dimensional output"
    return ""


def verdict(result: CheckResult) -> str:
    """One line: how many operations would run on the Edge TPU, and where the CPU takes over."""
    first_cpu = next((v for v in result.ops if v.device == "cpu" and "graph's edge" not in v.reason), None)
    return (f"{result.on_tpu} of {len(result.ops)} operations would run on the Edge TPU"
            + (f"; from #{first_cpu.index} {first_cpu.op} on, the CPU ({first_cpu.reason})" if first_cpu else "")
            + (" — all of them" if result.fully_mapped else ""))


def format_check(result: CheckResult) -> list[str]:
    lines = [f"{'#':>3}  {'operation':<18} {'runs on':<8} note"]
    for v in result.ops:
        lines.append(f"{v.index:>3}  {v.op:<18} {'Edge TPU' if v.device == 'tpu' else 'CPU':<8} {v.reason}")
    lines.extend(f"model: {p}" for p in result.problems)
    if result.input_dtype not in ("uint8", "int8"):
        lines.append(f"model: input is {result.input_dtype}; convert with --target edgetpu for uint8 input and output")
    lines.append(verdict(result))
    lines.append("(predicted from Coral's documented requirements; edgetpu_compiler has the last word)")
    return lines


# --------------------------------------------------------------------------- the compiler

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


def parse_compiler_output(stdout: str, log_text: str) -> dict[str, int | str | None]:
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
    return {"version": version.group(1) if version else "", "on_tpu": on_tpu, "total": total,
            "subgraphs": num(r"Number of Edge TPU subgraphs:\s*(\d+)")}


def compile_model(model: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, compiler: str | None = None,
                  timeout: float = 600.0) -> CompileResult:
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
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
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
    return CompileResult(model=str(model), output=str(dest), compiler_version=str(counts["version"]),
                         ops_on_tpu=counts["on_tpu"], ops_total=counts["total"], subgraphs=counts["subgraphs"],
                         seconds=round(seconds, 2), log=log_text or proc.stdout)
