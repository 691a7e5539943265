"""Benchmark: what the delegate placement costs — int8 vs float32 invoke latency of one run folder's
models in ai-edge-litert (this Python) and in tflite-runtime 2.14 (another Python, e.g. a venv), side
by side in one run, with the placement each runtime reports.

    python benchmarks/runtime_placement.py RUN_DIR --python-214 /path/to/venv/bin/python

tflite-runtime 2.14's XNNPACK takes the whole float model and no op of an int8 model (measured, see
edge_app/checks/placement.py); this shows what that does to speed. Writes
benchmarks/results/runtime_placement-<date>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import write_result  # noqa: E402

CODE = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from edge_app.checks.placement import placement
mod = sys.argv[2]
Interpreter = __import__(mod, fromlist=["Interpreter"]).Interpreter
out = {}
for path in sys.argv[4:]:
    row = {}
    for threads in (1, 2):
        it = Interpreter(model_path=path, num_threads=threads)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        x = np.random.default_rng(0).integers(0, 255, d["shape"]).astype(d["dtype"]) if d["dtype"] != np.float32 else \
            np.random.default_rng(0).random(d["shape"], dtype=np.float32)
        it.set_tensor(d["index"], x)
        for _ in range(30):
            it.invoke()
        times = []
        for _ in range(int(sys.argv[3])):
            t = time.perf_counter(); it.invoke(); times.append((time.perf_counter() - t) * 1e3)
        row[f"ms_median_{threads}t"] = round(float(np.median(times)), 4)
        p = placement(it, model=path)
    row["delegated"], row["nodes"], row["cpu_ops"] = p["delegated"], p["nodes"], p["cpu_ops"]
    out[path.rsplit("/", 1)[-1]] = row
print("@@" + json.dumps(out))
"""


def measure(python: str, module: str, models: list[str], runs: int) -> dict:
    from edge_app.subpython import ask

    reply = ask(python, CODE, [REPO, module, runs, *models], timeout=900)
    if not reply.ok:
        raise SystemExit(f"{python}: {reply.why}")
    return reply.answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--python-214", required=True, help="a Python with tflite-runtime 2.14.0")
    ap.add_argument("--runs", type=int, default=500)
    args = ap.parse_args()
    models = [str(args.run_dir / n) for n in ("model_int8.tflite", "model_int8_ptq.tflite", "model_float32.tflite")]
    res = {"ai-edge-litert (this Python)": measure(sys.executable, "ai_edge_litert.interpreter", models, args.runs),
           "tflite-runtime 2.14.0": measure(args.python_214, "tflite_runtime.interpreter", models, args.runs)}
    for runtime, rows in res.items():
        for name, r in rows.items():
            print(f"{runtime:<28} {name:<24} 1 thread {r['ms_median_1t']:.3f} ms, 2 threads {r['ms_median_2t']:.3f} ms; "
                  f"delegate took {r['delegated']}/{r['nodes']}; left: {r['cpu_ops']}")
    write_result("runtime_placement", {"run_dir": str(args.run_dir), "runs": args.runs,
           "results": res})


if __name__ == "__main__":
    main()
