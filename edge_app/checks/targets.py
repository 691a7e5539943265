"""Will this model load on that runtime? Every op with its builtin code and version, checked against
the runtimes themselves (numpy-free; no TensorFlow, no flatbuffers package).

A TFLite runtime refuses a model whose op versions it does not register ("Didn't find op for builtin
opcode 'FULLY_CONNECTED' version '12'"): a newer converter may write versions an older runtime lacks.
The truth comes from the runtimes: :func:`load_here` loads the model in every runtime this Python
has, :func:`load_with` in another Python (a venv holding tflite-runtime 2.14, say), and for a runtime
not at hand :func:`table_verdict` reads ``op_versions.json``, made by ``scripts/op_versions.py`` from
that release (it records where each number came from).

:func:`read_ops` is the one reader of a model's op list: every other check (the Edge TPU's rules in
``edgetpu``, the delegate placement in ``placement``) takes the nodes from it, straight from the file.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from edge_app.checks.specs import is_loaded, normalise
from edge_app.errors import ModelLoadError
from edge_app.subpython import ask

OP_TABLE = Path(__file__).with_name("op_versions.json")
_REFUSED = re.compile(r"Didn't find (?:op for builtin opcode|custom op for name) '([^']+)'(?: version '(\d+)')?")


@dataclass(frozen=True)
class OpUse:
    name: str  # the builtin's name (BuiltinOperator), or the custom op's code
    code: int  # the builtin code (32 = CUSTOM)
    version: int
    count: int  # how many nodes use it, over every subgraph


@dataclass(frozen=True)
class Node:
    """One node of the model as the file lists it (an interpreter numbers subgraph 0's nodes the same way)."""

    subgraph: int
    index: int  # its position in the subgraph: the execution order
    name: str  # as OpUse.name
    code: int
    version: int
    inputs: tuple[int, ...]  # tensor indices of the subgraph; -1: an optional input left out
    outputs: tuple[int, ...]


class OpList(NamedTuple):
    ops: list[OpUse]  # per operator code, in the file's order
    nodes: list[Node]  # every node, subgraph by subgraph, in execution order


# --------------------------------------------------------------------------- the flatbuffer
# Just enough of FlatBuffers to read Model.operator_codes and the operators (opcode_index, inputs, outputs)
# (tensorflow/lite/schema/schema.fbs): a table starts with an int32 offset back to its vtable,
# whose uint16 entries give each field's offset in the table (0: absent, the default applies).


class _Buf:
    def __init__(self, data: bytes):
        self.d = data

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.d, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """The position of field ``index`` of the table at ``table``, or None when it is absent."""
        vtable = table - struct.unpack_from("<i", self.d, table)[0]
        vsize = struct.unpack_from("<H", self.d, vtable)[0]
        if 4 + 2 * index >= vsize:
            return None
        off = struct.unpack_from("<H", self.d, vtable + 4 + 2 * index)[0]
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        pos = self.field(table, index)
        return struct.unpack_from("<" + fmt, self.d, pos)[0] if pos is not None else default

    def tables(self, table: int, index: int) -> list[int]:
        """The tables of a vector-of-tables field."""
        pos = self.field(table, index)
        if pos is None:
            return []
        vec = pos + self.u32(pos)
        return [vec + 4 + 4 * i + self.u32(vec + 4 + 4 * i) for i in range(self.u32(vec))]

    def ints(self, table: int, index: int) -> tuple[int, ...]:
        """The values of a vector-of-int32 field."""
        pos = self.field(table, index)
        if pos is None:
            return ()
        vec = pos + self.u32(pos)
        return struct.unpack_from(f"<{self.u32(vec)}i", self.d, vec + 4)

    def string(self, table: int, index: int) -> str | None:
        pos = self.field(table, index)
        if pos is None:
            return None
        s = pos + self.u32(pos)
        return self.d[s + 4 : s + 4 + self.u32(s)].decode("utf-8", "replace")


def builtin_names() -> dict[int, str]:
    """BuiltinOperator code -> name, from op_versions.json (copied there from the schema)."""
    return {int(k): v for k, v in _table().get("builtin_names", {}).items()}


def read_ops(model: bytes | str | os.PathLike) -> OpList:
    """The model's op list, read from the file (no runtime): every operator code with its name, builtin
    code, version and node count, and every node with its input and output tensors."""
    what = "the data" if isinstance(model, bytes) else str(model)
    try:
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what}: {exc.strerror or exc}", "give a .tflite file") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError(f"{what} is not a TFLite model (no TFL3 identifier)", "give a .tflite file made by a TFLite converter")
    try:
        b = _Buf(data)
        root = b.u32(0)
        names = builtin_names()
        codes = []
        for oc in b.tables(root, 1):  # Model.operator_codes
            # the code is the larger of deprecated_builtin_code (int8, field 0) and builtin_code (int32,
            # field 3): codes above 127 live only in the second, old models only in the first
            code = max(b.scalar(oc, 0, "b", 0), b.scalar(oc, 3, "i", 0))
            custom = b.string(oc, 1)
            codes.append((custom if code == 32 and custom else names.get(code, f"BUILTIN_{code}"), code, b.scalar(oc, 2, "i", 1)))
        counts = [0] * len(codes)
        nodes = []
        for s, sub in enumerate(b.tables(root, 2)):  # Model.subgraphs
            for i, op in enumerate(b.tables(sub, 3)):  # SubGraph.operators
                k = b.scalar(op, 0, "I", 0)  # Operator.opcode_index
                counts[k] += 1
                nodes.append(Node(s, i, *codes[k], b.ints(op, 1), b.ints(op, 2)))  # Operator.inputs, .outputs
    except (struct.error, IndexError) as exc:
        raise ModelLoadError(f"{what} is a truncated or corrupt TFLite model ({exc})", "copy or convert it again") from None
    return OpList([OpUse(*c, counts[i]) for i, c in enumerate(codes)], nodes)


def model_ops(model: bytes | str | os.PathLike) -> list[OpUse]:
    """Every op the model uses: name, builtin code, version and node count (in operator-code order)."""
    return read_ops(model).ops


def model_nodes(model: bytes | str | os.PathLike, subgraph: int | None = 0) -> list[Node]:
    """The nodes of ``subgraph`` (0: the one an interpreter runs; None: every one), in execution order."""
    return [n for n in read_ops(model).nodes if subgraph is None or n.subgraph == subgraph]


# --------------------------------------------------------------------------- the runtimes
_LOADER = r"""
import json, sys
out = {}
for name, mod in (("ai-edge-litert", "ai_edge_litert.interpreter"), ("tflite-runtime", "tflite_runtime.interpreter"),
                  ("tensorflow", "tensorflow")):
    if name not in sys.argv[2].split(","):
        continue
    try:
        m = __import__(mod, fromlist=["Interpreter"])
        m = m.lite if name == "tensorflow" else m
    except Exception:
        continue
    try:
        from importlib.metadata import version
        ver = version(name)
    except Exception:
        ver = "?"
    try:
        m.Interpreter(model_path=sys.argv[1], num_threads=1).allocate_tensors()
        out[f"{name} {ver}"] = ""
    except Exception as exc:
        out[f"{name} {ver}"] = " ".join(str(exc).split())[:500] or type(exc).__name__
print("@@" + json.dumps(out))
"""


def _verdicts(raw: dict[str, str], how: str) -> list[dict]:
    rows = []
    for runtime, error in raw.items():
        m = _REFUSED.search(error)
        rows.append(
            {
                "runtime": runtime,
                "how": how,
                "loads": not error,
                "error": error,
                "refused_op": m.group(1) if m else None,
                "refused_version": int(m.group(2)) if m and m.group(2) else None,
            }
        )
    return rows


LOADABLE = ("ai-edge-litert", "tflite-runtime")  # and "tensorflow" when named (its tf.lite.Interpreter is deprecated)


def load_here(path: str | os.PathLike, runtimes: tuple[str, ...] = LOADABLE) -> list[dict]:
    """Load the model in every TFLite runtime this Python can import, of ``runtimes`` (in a child
    process: a runtime that aborts on a bad model must not take this one down)."""
    import sys

    return load_with(sys.executable, path, how="loaded here", runtimes=runtimes)


def load_with(
    python: str | os.PathLike, path: str | os.PathLike, how: str | None = None, timeout: float = 120, runtimes: tuple[str, ...] = LOADABLE
) -> list[dict]:
    """Load the model in every TFLite runtime another Python (e.g. a venv's bin/python) can import."""
    reply = ask(python, _LOADER, [path, ",".join(runtimes)], timeout=timeout, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    if reply.answer is None:  # not a Python, or one that crashed before trying: nothing is known of the model
        return [
            {
                "runtime": f"python {python}",
                "how": how or f"loaded ({python})",
                "loads": None,
                "error": f"the loader did not run (exit {reply.returncode}): {reply.why}",
                "refused_op": None,
                "refused_version": None,
            }
        ]
    rows = _verdicts(reply.answer, how or f"loaded ({python})")
    if not rows and how is None:  # --python PY without a runtime: say so rather than nothing
        rows = [
            {
                "runtime": f"python {python}",
                "how": f"loaded ({python})",
                "loads": None,
                "refused_op": None,
                "refused_version": None,
                "error": f"no TFLite runtime ({', '.join(runtimes)}) in {python}",
            }
        ]
    return rows


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    try:
        return json.loads(OP_TABLE.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"the op-version table {OP_TABLE} is unreadable ({exc})", "reinstall nin-pipeline, or remake it with scripts/op_versions.py"
        ) from None


def table_runtimes() -> list[str]:
    return sorted(_table().get("runtimes", {}))


def table_verdict(ops: list[OpUse], runtime: str) -> dict:
    """What op_versions.json says ``runtime`` registers, op by op: the highest version it has, and
    whether the model's version is within it (None: the table does not know the op)."""
    entry = _table().get("runtimes", {}).get(runtime)
    if entry is None:
        raise ModelLoadError(f"no op-version table for {runtime!r}", "known: " + ", ".join(table_runtimes()))
    rows: list[dict] = []
    loads: bool | None = True  # None: some op is not in the table
    for op in ops:
        have = entry["ops"].get(op.name)
        ok = None if have is None else op.version in have
        rows.append({**asdict(op), "runtime_versions": have, "ok": ok})
        if ok is False:
            loads = False
        elif ok is None and loads:
            loads = None
    return {"runtime": runtime, "how": f"op table from {entry['source'].split(' (')[0]}", "source": entry["source"], "loads": loads, "ops": rows}


def runtime_spec(spec: str) -> str:
    """A target as given (``tflite-runtime==2.14``, as pip writes it) as the op table names it (its 2.14.0)."""
    return normalise(spec, (*_table().get("runtimes", {}), *_table().get("probed", {})))


def _known(name: str) -> dict | None:
    """The table entry for ``name`` ("tflite-runtime==2.14.0", or "ai-edge-litert 2.3.0" as a load names
    it): a release's source first, else a probe."""
    t = _table()
    key = name.replace(" ", "==")
    return t.get("runtimes", {}).get(key) or t.get("probed", {}).get(key)


def advice(op: str, version: int, runtime: str, have: list[int] | None) -> str:
    """What to do about an op version the runtime does not register."""
    if op.startswith("edgetpu-custom-op"):
        return "an Edge TPU-compiled model: it runs only with the Edge TPU delegate (edge-app run --delegate edgetpu)"
    newer = [n for n in table_runtimes() if n != runtime.replace(" ", "==") and version in (_known(n) or {}).get("ops", {}).get(op, [])]
    if have is None:  # a runtime no table knows: only its refusal is known
        what = f"{runtime} does not register {op} version {version}"
    elif not have:
        what = f"{runtime} has no {op} at all"
    else:
        what = f"{runtime} has {op} versions {have[0]}-{have[-1]}, the model uses {version}"
    return (
        f"{what}: upgrade the device's runtime (pip install ai-edge-litert; it has builds for Raspberry Pi OS "
        "Bookworm, Python 3.11, aarch64)"
        + (f" — {', '.join(newer)} has it" if newer else "")
        + ", or convert with a TensorFlow no newer than the runtime (an op's version rises with what it uses: "
        "int16 activations, 4-bit or per-channel weights, broadcasting, more dimensions)"
    )


def check_target(path: str | os.PathLike, runtimes: list[str] | tuple[str, ...] = (), pythons=(), here: tuple[str, ...] = LOADABLE) -> dict:
    """Every op of the model, and for each target whether it loads: loaded in every runtime this
    Python (and each of ``pythons``) has; from op_versions.json for the ``runtimes`` named that none of
    those is. Returns {"model", "ops", "targets": [{"runtime", "how", "loads", "problems": [...]}]}."""
    path = Path(path)
    ops = model_ops(path)
    runtimes = tuple(runtime_spec(n) for n in runtimes)
    here = tuple(here) + (("tensorflow",) if any(n.partition("==")[0] == "tensorflow" for n in runtimes) else ())
    loaded = load_here(path, here) + [r for py in pythons for r in load_with(py, path, runtimes=here)]
    targets = []
    for r in loaded:
        problems = []
        if r["refused_op"]:
            have = ((_known(r["runtime"]) or {}).get("ops", {})).get(r["refused_op"])
            problems.append(
                {
                    "op": r["refused_op"],
                    "version": r["refused_version"],
                    "runtime_versions": have,
                    "advice": advice(r["refused_op"], r["refused_version"] or 0, r["runtime"], have),
                }
            )
        targets.append({"runtime": r["runtime"], "how": r["how"], "loads": r["loads"], "error": r["error"], "problems": problems})
    have_loaded = {t["runtime"].replace(" ", "==") for t in targets}
    for name in runtimes:
        if any(is_loaded(name, h) for h in have_loaded):
            continue
        if name not in table_runtimes():
            targets.append(
                {
                    "runtime": name,
                    "how": "not installed here",
                    "loads": None,
                    "problems": [],
                    "error": f"{name} is not installed in this Python and has no op table: give --python PY of an environment that has it",
                }
            )
            continue
        v = table_verdict(ops, name)
        problems = [
            {
                "op": o["name"],
                "version": o["version"],
                "runtime_versions": o["runtime_versions"],
                "advice": advice(o["name"], o["version"], name, o["runtime_versions"]),
            }
            for o in v["ops"]
            if o["ok"] is False
        ]
        unknown = [o["name"] for o in v["ops"] if o["ok"] is None]
        targets.append(
            {
                "runtime": name,
                "how": v["how"],
                "source": v["source"],
                "loads": v["loads"],
                "problems": problems,
                "error": f"not in the table: {', '.join(unknown)}" if unknown else "",
            }
        )
    return {"model": str(path), "ops": [asdict(o) for o in ops], "targets": targets}


def format_check(result: dict) -> list[str]:
    """The terminal table: one row per op, one column per target (ok, or the highest version it has)."""
    targets = result["targets"]
    cols = [t["runtime"] for t in targets]
    marks = []  # per target, one mark per op row (a builtin can appear at two versions)
    for t in targets:
        bad = {(p["op"], p["version"]): p for p in t["problems"]}
        known = (_known(t["runtime"]) or {}).get("ops", {})
        row_marks = []
        for o in result["ops"]:
            p = bad.get((o["name"], o["version"]))
            if p is not None:
                have = p["runtime_versions"]
                row_marks.append(f"NO (has <= {have[-1]})" if have else "NO (none)" if have is not None else "NO")
            elif t["loads"]:
                row_marks.append("ok")
            elif o["name"] not in known:
                row_marks.append("?")
            else:
                row_marks.append("ok" if o["version"] in known[o["name"]] else "NO")
        marks.append(row_marks)
    head = ["op", "code", "version", "nodes", *cols]
    rows = [[o["name"], str(o["code"]), str(o["version"]), str(o["count"]), *(m[i] for m in marks)] for i, o in enumerate(result["ops"])]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (head, *rows)]
    for t in targets:
        state = {True: "loads", False: "WILL NOT LOAD", None: "unknown"}[t["loads"]]
        lines.append(f"{t['runtime']}: {state} ({t['how']})")
        for p in t["problems"]:
            lines.append(f"  {p['op']} version {p['version']}: {p['advice']}")
        if t["error"] and not t["problems"]:
            lines.append(f"  {t['error']}")
    return lines
