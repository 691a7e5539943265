"""Which ops did the delegate take? Read from a loaded interpreter and the model file, numpy-free.

The model's nodes come from the file (:func:`edge_app.checks.targets.model_nodes`, the one op list);
the interpreter is asked only what it alone knows: which partitions a delegate took. How the runtimes
expose it (checked with ai-edge-litert 2.3.0 and tflite-runtime 2.14.0): neither has a public API;
both have ``Interpreter._get_ops_details()``, which lists the model's own nodes (numbered as the file
lists them) and, after a delegate was applied, one extra node named ``DELEGATE`` per partition it took,
with the partition's input and output tensors. Which nodes a partition holds is worked out here:
walking back from a partition's outputs through the nodes that produce them, up to its inputs.
XNNPACK, applied by default for the CPU, shows up the same way. An Edge TPU-compiled model carries its
placement in the file itself: the ops the compiler mapped are inside one ``edgetpu-custom-op`` node,
the rest are ordinary ops that run on the CPU. A runtime without ``_get_ops_details`` gets "not
exposed by this runtime".
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

HEAVY = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "CONV_3D"}


def placement(interpreter, delegate: str = "cpu", *, model: str | os.PathLike | bytes | Sequence) -> dict:
    """{"exposed", "nodes", "delegated", "partitions", "cpu_ops": {op: count}, "tpu_custom_ops", "warnings"}.
    ``model``: the file the interpreter loaded (or its :func:`~edge_app.checks.targets.model_nodes`)."""
    from edge_app.checks.targets import model_nodes
    from edge_app.errors import ModelLoadError

    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        return {"exposed": False, "note": "not exposed by this runtime (no Interpreter._get_ops_details)", "warnings": []}
    try:
        ops = details()
        nodes = model_nodes(model) if isinstance(model, (str, os.PathLike, bytes)) else list(model)
    except ModelLoadError as exc:
        return {"exposed": False, "note": f"not readable from the model file ({exc})", "warnings": []}
    except Exception as exc:  # a private API: a runtime may change or break it; never stop a run for it
        return {"exposed": False, "note": f"not readable from this runtime ({type(exc).__name__}: {exc})", "warnings": []}
    partitions = [o for o in ops if o["op_name"] == "DELEGATE"]  # what only the interpreter knows
    if len(ops) - len(partitions) != len(nodes):
        return {
            "exposed": False,
            "note": f"the interpreter runs {len(ops) - len(partitions)} nodes, the model file has {len(nodes)}: not the same model",
            "warnings": [],
        }
    producer = {t: n.index for n in nodes for t in n.outputs}
    by_index = {n.index: n for n in nodes}
    taken: set[int] = set()
    for part in partitions:
        stop = {int(t) for t in part["inputs"]}
        queue = [int(t) for t in part["outputs"]]
        while queue:
            node = producer.get(queue.pop())
            if node is None or node in taken:
                continue
            taken.add(node)
            queue.extend(t for t in by_index[node].inputs if t >= 0 and t not in stop)
    tpu = [n for n in nodes if n.name == "edgetpu-custom-op"]
    on_cpu = Counter(n.name for n in nodes if n.index not in taken and n.name != "edgetpu-custom-op")
    out = {
        "exposed": True,
        "nodes": len(nodes),
        "delegated": len(taken),
        "partitions": len(partitions),
        "cpu_ops": dict(on_cpu),
        "tpu_custom_ops": len(tpu),
        "warnings": [],
    }
    out["warnings"] = _warnings(on_cpu, len(partitions), bool(tpu), bool(nodes), delegate)
    return out


def _warnings(on_cpu: Counter, partitions: int, tpu: bool, any_ops: bool, delegate: str) -> list[str]:
    """Where the placement makes int8 slower than it should be."""
    heavy = {k: v for k, v in on_cpu.items() if k in HEAVY}
    if tpu:
        return (
            [
                f"{sum(on_cpu.values())} op(s) outside the Edge TPU run on the CPU ({_ops(on_cpu)}): every frame "
                "crosses USB/PCIe and back for them"
            ]
            if on_cpu
            else []
        )
    if not partitions:
        if not any_ops:
            return []
        if delegate.startswith("cpu"):
            return [
                "XNNPACK took no op: TFLite's built-in CPU kernels run everything (tflite-runtime 2.14, for one, "
                "applies XNNPACK to float models only, so its int8 models run without it: compare with "
                "`edge-app bench RUN --all`)"
            ]
        return [f"the {delegate} delegate took no op: TFLite's built-in CPU kernels run everything"]
    out = []
    if heavy:
        out.append(
            f"{_ops(heavy)} stayed on TFLite's built-in CPU kernels: the delegate did not take them, so int8 "
            "may run no faster than float (a type, option or shape it does not support)"
        )
    if partitions > 1:
        out.append(
            f"the graph is cut into {partitions} delegate partitions by the ops left out ({_ops(on_cpu)}): each cut costs a hand-over per frame"
        )
    return out


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(counts.items()))


def describe(p: dict, delegate: str) -> str:
    """One line for `info` and the run summary."""
    if not p.get("exposed"):
        return f"delegate placement: {p.get('note', 'unknown')}"
    who = "XNNPACK (the CPU's default delegate)" if delegate.startswith("cpu") else f"the {delegate} delegate"
    if p["tpu_custom_ops"]:
        head = f"delegate placement: compiled for the Edge TPU; {p['nodes'] - p['tpu_custom_ops']} op(s) outside it"
    else:
        head = f"delegate placement: {who} took {p['delegated']} of {p['nodes']} nodes in {p['partitions']} partition(s)"
    cpu = f"; on TFLite's built-in CPU kernels: {_ops(p['cpu_ops'])}" if p["cpu_ops"] else "; nothing left on TFLite's built-in CPU kernels"
    return head + cpu + "".join(f". WARNING: {w}" for w in p["warnings"])


def compiled_placement(path: str | os.PathLike) -> dict | None:
    """An Edge TPU-compiled model's placement, read from the file: the ops the compiler mapped are inside
    its edgetpu-custom-op node(s), the rest run on the CPU. None for a model that is not compiled."""
    from edge_app.checks.targets import model_ops

    ops = model_ops(path)
    tpu = sum(o.count for o in ops if o.name == "edgetpu-custom-op")
    if not tpu:
        return None
    on_cpu = Counter({o.name: o.count for o in ops if o.name != "edgetpu-custom-op"})
    return {
        "exposed": True,
        "nodes": sum(o.count for o in ops),
        "delegated": tpu,
        "partitions": tpu,
        "cpu_ops": dict(on_cpu),
        "tpu_custom_ops": tpu,
        "warnings": _warnings(on_cpu, tpu, True, True, "edgetpu"),
    }
