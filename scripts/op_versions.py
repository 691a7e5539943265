"""Make edge_app/checks/op_versions.json: which op versions each TFLite runtime release registers.

`check-target` loads a model in the runtimes at hand; for a runtime that is not, it reads this
table. Two ways to fill an entry, each recorded in the entry's ``source``:

* ``probe`` — ask the runtime itself. For every builtin op in the given models, rewrite the
  model's operator code to versions 1..N and construct an Interpreter on each in the runtime's
  own Python (a venv holding it): the constructor looks each (op, version) up in the runtime's
  op resolver, so the versions that construct are the ones it registers. Only the probed ops are
  known (``complete``: false). Kept under ``probed``: the tests hold the source tables to it.

      python -m venv /tmp/tfl214 && /tmp/tfl214/bin/pip install tflite-runtime==2.14.0 "numpy<2"
      python scripts/op_versions.py probe --python /tmp/tfl214/bin/python --runtime tflite-runtime==2.14.0 \\
          --module tflite_runtime.interpreter MODEL.tflite ...

* ``source`` — read the release's ``tensorflow/lite/kernels/register.cc`` (its
  ``AddBuiltin(BuiltinOperator_X, Register_X(), min_version, max_version)`` lines; no versions
  given means 1..1). Every builtin op is known (``complete``: true).

      python scripts/op_versions.py source --register-cc register.cc --runtime tflite-runtime==2.5.0.post1 \\
          --source "tensorflow/tensorflow@<commit>:tensorflow/lite/kernels/register.cc (v2.5.0)"

Both also (re)write ``builtin_names`` (BuiltinOperator code -> name) from the installed TensorFlow's
schema, which is how the device side names ops without TensorFlow. Needs the training extra.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TABLE = REPO / "edge_app" / "checks" / "op_versions.json"

_PROBE = r"""
import importlib, json, sys
m = importlib.import_module(sys.argv[1])
out = {}
for p in sys.argv[2:]:
    try:
        m.Interpreter(model_path=p, num_threads=1)
        out[p] = ""
    except Exception as exc:
        out[p] = " ".join(str(exc).split())[:300] or type(exc).__name__
print("@@" + json.dumps(out))
"""


def builtin_names() -> dict[str, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {str(v): k for k, v in sorted(vars(schema.BuiltinOperator).items(), key=lambda kv: str(kv[1]))
            if not k.startswith("_") and isinstance(v, int)}


def sampler_model(folder: Path) -> list[Path]:
    """Two small models with the ops users' classifiers commonly have beyond ours (depthwise
    convolutions, hard-swish, resizes, reshapes...), float32 and int8 with float I/O (QUANTIZE and
    DEQUANTIZE at the edges), so a probe covers them too."""
    import numpy as np
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 4], tf.float32)])
    def f(x):
        k = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 4, 1)).astype(np.float32))
        y = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")
        y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]]) * 0.5 - 0.1
        y = tf.nn.relu6(y) + tf.sigmoid(y) + tf.tanh(y) + y * tf.nn.relu6(y + 3) / 6 + tf.nn.leaky_relu(y)
        y = tf.image.resize(y, [8, 8]) + tf.image.resize(y, [8, 8], method="nearest")
        y = tf.transpose(y, [0, 2, 1, 3])[:, 1:7, :, :]
        y = tf.reshape(y, [1, -1])
        return tf.nn.softmax(tf.maximum(y, 0.0) - tf.minimum(y, 1.0))

    out = []
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    (folder / "sampler_float32.tflite").write_bytes(conv.convert())
    out.append(folder / "sampler_float32.tflite")
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(1)
    conv.representative_dataset = lambda: ([rng.random((1, 16, 16, 4), dtype=np.float32)] for _ in range(8))
    (folder / "sampler_int8.tflite").write_bytes(conv.convert())
    out.append(folder / "sampler_int8.tflite")
    return out


def _with_version(model_bytes: bytes, code: int, version: int) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils as fu

    model = fu.read_model_from_bytearray(bytearray(model_bytes))
    for oc in model.operatorCodes:
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            oc.version = version
    return bytes(fu.convert_object_to_bytearray(model))


def probe(python: str, module: str, models: list[Path], max_version: int) -> dict[str, list[int]]:
    from edge_app.checks.targets import model_ops

    names = builtin_names()
    first_model: dict[int, tuple[str, Path]] = {}
    for m in models:
        for op in model_ops(m):
            if op.code != 32:  # custom ops have no versions to probe
                first_model.setdefault(op.code, (names[str(op.code)], m))
    found: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for code, (name, m) in sorted(first_model.items()):
            data = m.read_bytes()
            for v in range(1, max_version + 1):
                f = Path(tmp) / f"{name}_v{v}.tflite"
                f.write_bytes(_with_version(data, code, v))
                files[str(f)] = (name, v)
        from edge_app.subpython import ask

        reply = ask(python, _PROBE, [module, *files], timeout=600)
        if not reply.ok:
            raise SystemExit(f"the probe died: {reply.why}")
        for path, error in reply.answer.items():
            name, v = files[path]
            found.setdefault(name, [])
            if not error:
                found[name].append(v)
            elif "Didn't find op" not in error:
                raise SystemExit(f"{name} version {v}: unexpected error {error!r}")
    for name, versions in found.items():
        print(f"  {name:<20} {versions}")
    return found


_ADD = re.compile(r"AddBuiltin\(\s*BuiltinOperator_(\w+)\s*,\s*[\w:]+\(\)\s*(?:,\s*(?:/\*[^*]*\*/\s*)?(\d+)\s*,"
                  r"\s*(?:/\*[^*]*\*/\s*)?(\d+))?\s*\)", re.S)


def parse_register_cc(text: str) -> dict[str, list[int]]:
    """Op -> the versions the resolver registers, from register.cc's AddBuiltin calls."""
    out: dict[str, list[int]] = {}
    for name, lo, hi in _ADD.findall(text):
        lo_i, hi_i = (int(lo), int(hi)) if lo else (1, 1)
        out[name] = list(range(lo_i, hi_i + 1))
    if len(out) < 50:
        raise SystemExit(f"only {len(out)} AddBuiltin calls found: is this tensorflow/lite/kernels/register.cc?")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="how", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--python", required=True)
    pr.add_argument("--module", default="tflite_runtime.interpreter")
    pr.add_argument("--max-version", type=int, default=16)
    pr.add_argument("--sampler", action="store_true", help="also probe the ops of two small made-up models (see sampler_model)")
    pr.add_argument("models", nargs="*", type=Path)
    so = sub.add_parser("source")
    so.add_argument("--register-cc", type=Path, required=True)
    so.add_argument("--source", required=True, help="repo@commit:path (release), where the file came from")
    for p in (pr, so):
        p.add_argument("--runtime", required=True, help="e.g. tflite-runtime==2.14.0")
    args = ap.parse_args()
    table = json.loads(TABLE.read_text()) if TABLE.is_file() else {}
    if args.how == "probe":
        models = list(args.models)
        if args.sampler:
            sampled = Path(tempfile.mkdtemp())
            models += sampler_model(sampled)
        ops = probe(args.python, args.module, models, args.max_version)
        version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                                 text=True).stdout.strip()
        entry = {"source": f"probed: {args.module} in Python {version}, op codes rewritten to versions "
                           f"1..{args.max_version} in {', '.join(str(m) for m in args.models)}"
                           + (" and the sampler models" if args.sampler else ""),
                 "complete": False, "made": dt.date.today().isoformat(), "ops": ops}
    else:
        entry = {"source": args.source, "complete": True, "made": dt.date.today().isoformat(),
                 "ops": parse_register_cc(args.register_cc.read_text())}
    import tensorflow as tf

    table["builtin_names_from"] = f"tensorflow {tf.__version__} tensorflow/lite/python/schema_py_generated.py"
    table["builtin_names"] = builtin_names()
    # a runtime's release source is its whole table; a probe is kept apart, as a check on it
    table.setdefault("runtimes" if args.how == "source" else "probed", {})[args.runtime] = entry
    from edge_app.fsutil import atomic_write_text

    atomic_write_text(TABLE, json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"-> {TABLE} ({args.runtime}: {len(entry['ops'])} ops)")


if __name__ == "__main__":
    main()
