"""Coral Edge TPU: lint any .tflite against the Edge TPU's documented requirements, on the device or
anywhere else (numpy and a TFLite runtime; no TensorFlow, no compiler).

The op list comes from the file (:func:`edge_app.checks.targets.model_nodes`); the tensors' types and
shapes and the constant axes from a TFLite interpreter. The rules are those of Coral's "TensorFlow
models on the Edge TPU" page (https://coral.ai/docs/edgetpu/models-intro/):

* every tensor is 8-bit quantised (int8 or uint8; int32 only for biases and other constants);
* tensor sizes are constant at compile time (no dynamic dimension);
* a tensor has at most 3 dimensions larger than 1, and they are the innermost ones;
* only the listed operations, each with its known limitations;
* the compiler partitions the graph once: the first operation that cannot run on the Edge
  TPU, and every operation after it, runs on the CPU.

This predicts; ``edgetpu_compiler`` decides. The compiler can refuse more (e.g. operation
versions, on-chip memory): the training side's ``nin-pipeline edgetpu compile`` (pipeline.export.edgetpu)
reports the compiler's own count next to ours. `check-target` gives the verdict beside the runtimes'
(:func:`with_edgetpu`); `nin-pipeline edgetpu check` gives it op by op.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.checks.targets import model_nodes
from edge_app.errors import EdgeAppError
from edge_app.runtime import load_interpreter

# Operation -> known limitation (Coral's table). The ones we can check from the model alone are
# checked in _op_problem; the others are reported as notes.
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "output is one-dimensional",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction in the batch dimension; a channel reduction needs channels divisible by 4",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "not in the batch dimension",
    "PAD": "not in the batch dimension",
    "PRELU": "alpha is 1-dimensional",
    "QUANTIZE": "",
    "REDUCE_MAX": "not on the batch dimension",
    "REDUCE_MIN": "not on the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "some large reshapes are not mapped",
    "RESIZE_BILINEAR": "3-dimensional input/output",
    "RESIZE_NEAREST_NEIGHBOR": "3-dimensional input/output",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-dimensional input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "not in the batch dimension",
    "SQUEEZE": "",
    "STRIDED_SLICE": "",
    "SUB": "",
    "SUM": "not in the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
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


def _non1_dims(shape) -> int:
    return sum(int(v) != 1 for v in shape)


def _rank_ok(shape) -> bool:
    """At most 3 dimensions larger than 1, and only among the 3 innermost."""
    return all(int(v) == 1 for v in list(shape)[:-3])


def check_model(path: str | os.PathLike) -> CheckResult:
    """Op by op: would it run on the Edge TPU, and if not, why (first failure and everything after -> CPU)."""
    path = Path(path)
    interp, _ = load_interpreter(path, num_threads=1)  # what the file cannot say cheaply: tensors, constants
    tensors = {int(t["index"]): t for t in interp.get_tensor_details()}
    ops = model_nodes(path)  # the op list from the file (edge_app.checks.targets), as the interpreter numbers it
    produced = {i for o in ops for i in o.outputs}
    model_inputs = {int(d["index"]) for d in interp.get_input_details()}
    model_outputs = {int(d["index"]) for d in interp.get_output_details()}
    activations = produced | model_inputs

    problems = []
    for i in sorted(activations):
        t = tensors[i]
        sig = t.get("shape_signature", t["shape"])
        if any(int(v) < 0 for v in sig):
            problems.append(
                f"tensor {t['name']!r} has a dynamic shape {list(map(int, sig))}: the Edge TPU needs static "
                "shapes (convert with a fixed batch of 1)"
            )

    verdicts: list[OpVerdict] = []
    partitioned = False
    for o in ops:
        n, name = o.index, o.name
        ins, outs = [i for i in o.inputs if i >= 0], list(o.outputs)
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
        model=str(path),
        ops=verdicts,
        problems=problems,
        input_dtype=np.dtype(inp["dtype"]).name,
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
    return (
        f"{result.on_tpu} of {len(result.ops)} operations would run on the Edge TPU"
        + (f"; from #{first_cpu.index} {first_cpu.op} on, the CPU ({first_cpu.reason})" if first_cpu else "")
        + (" — all of them" if result.fully_mapped else "")
    )


def op_table(result: CheckResult) -> list[str]:
    """One row per operation (where it would run, and why), then the model-level findings."""
    lines = [f"{'#':>3}  {'operation':<18} {'runs on':<8} note"]
    for v in result.ops:
        lines.append(f"{v.index:>3}  {v.op:<18} {'Edge TPU' if v.device == 'tpu' else 'CPU':<8} {v.reason}")
    lines.extend(f"model: {p}" for p in result.problems)
    if result.input_dtype not in ("uint8", "int8"):
        lines.append(f"model: input is {result.input_dtype}; convert with --target edgetpu for uint8 input and output")
    return lines


def format_check(result: CheckResult) -> list[str]:
    return [*op_table(result), verdict(result), "(predicted from Coral's documented requirements; edgetpu_compiler has the last word)"]


def summary(result: CheckResult) -> dict[str, Any]:
    """check-target's Edge TPU entry (target.json's "edgetpu"): {"on_tpu", "total", "verdict"}."""
    return {"on_tpu": result.on_tpu, "total": len(result.ops), "verdict": verdict(result)}


def with_edgetpu(result: dict[str, Any], path: str | os.PathLike) -> CheckResult | None:
    """Add the "edgetpu" entry to a check_target ``result``; returns the check (None: not made). The model
    is checked in this process only once a runtime here has loaded it in a child process (a model that
    would abort the runtime is never loaded here); a model nothing here loads is "not checked", no error."""
    unchecked = {"on_tpu": None, "total": None}
    check = None
    if any(o["name"] == "edgetpu-custom-op" for o in result["ops"]):
        result["edgetpu"] = {**unchecked, "verdict": "already compiled for the Edge TPU (what it mapped: edge-app info MODEL)"}
    elif not any(t["loads"] and t["how"] == "loaded here" for t in result["targets"]):
        result["edgetpu"] = {**unchecked, "verdict": "not checked: no TFLite runtime here loads the model"}
    else:
        try:
            check = check_model(path)
        except EdgeAppError as exc:
            result["edgetpu"] = {**unchecked, "verdict": f"not checked: {exc}"}
        else:
            result["edgetpu"] = summary(check)
    return check
