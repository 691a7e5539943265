"""Benchmark: nin-cifar's second pooling, the paper's 3x3/2 average against the one-partition forms
(`build --pool2 max|depthwise`), on two builds that differ only in that flag (same seed, epochs, data).

    nin-pipeline build --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpg.tar.gz --epochs 14 --out artifacts/p-avg
    nin-pipeline build ... --epochs 14 --pool2 depthwise --out artifacts/p-depthwise
    python benchmarks/pool2_forms.py artifacts/p-avg artifacts/p-depthwise [--python-214 /path/to/venv/bin/python]

For each run: test top-1 (float Keras, QAT int8), int8 bytes, where XNNPACK puts the int8 graph in
ai-edge-litert (this Python) and in tflite-runtime 2.14 (``--python-214``: a venv with it and numpy<2),
the Edge TPU check, and the int8 invoke median (1 and 2 threads; runs alternated in one process so that
the machine's drift falls on both). Then McNemar's exact test of each run against the first, per variant,
on the same 10,000 test images. Writes benchmarks/results/pool2_forms-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from quick_build import write_result  # noqa: E402

PLACEMENT_214 = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tflite_runtime.interpreter import Interpreter
from edge_app.checks.placement import placement
it = Interpreter(model_path=sys.argv[2], num_threads=1)
it.allocate_tensors()
p = placement(it, model=sys.argv[2])
print(json.dumps({k: p[k] for k in ("nodes", "delegated", "partitions", "cpu_ops")}))
"""


def litert_placement(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from edge_app.checks.placement import placement

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    p = placement(it, model=path)
    return {k: p[k] for k in ("nodes", "delegated", "partitions", "cpu_ops")}


def latencies(paths: list[Path], rounds: int, invokes: int) -> dict[str, dict[str, float]]:
    """Median invoke ms per model and thread count, the models alternated round by round."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    its = {}
    for p in paths:
        for threads in (1, 2):
            it = Interpreter(model_path=str(p), num_threads=threads)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            it.set_tensor(d["index"], np.random.default_rng(0).integers(-128, 127, d["shape"]).astype(d["dtype"]))
            for _ in range(20):
                it.invoke()
            its[(str(p), threads)] = it
    times: dict = {k: [] for k in its}
    for _ in range(rounds):
        for k, it in its.items():
            t = time.perf_counter()
            for _ in range(invokes):
                it.invoke()
            times[k].append((time.perf_counter() - t) / invokes * 1e3)
    out: dict[str, dict[str, float]] = {}
    for (p, threads), ts in times.items():
        out.setdefault(p, {})[f"{threads}_thread"] = round(statistics.median(ts), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders; the first is the reference (the paper's average)")
    ap.add_argument("--python-214", type=Path, help="a Python with tflite-runtime 2.14 (numpy<2)")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--invokes", type=int, default=200)
    args = ap.parse_args()

    from edge_app.checks.edgetpu import check_model, summary

    from pipeline.report.figures import mcnemar
    from pipeline.runs.folder import RunFolder

    rows, preds = [], {}
    for run_dir in args.runs:
        run = RunFolder(run_dir)
        cfg = run.load_config()
        p, y, _ = run.load_predictions(("float_keras", "qat_int8"))
        preds[str(run_dir)] = (p, y)
        int8 = run_dir / "model_int8.tflite"
        row = {
            "run": str(run_dir),
            "pool2": cfg.model.pool2,
            "epochs": cfg.train.epochs,
            "seed": cfg.train.seed,
            "float_top1": round(100 * float((p["float_keras"].argmax(1) == y).mean()), 2),
            "qat_int8_top1": round(100 * float((p["qat_int8"].argmax(1) == y).mean()), 2),
            "int8_bytes": int8.stat().st_size,
            "litert_placement": litert_placement(int8),
            "edgetpu_check": summary(check_model(int8)),
        }
        if args.python_214:
            out = subprocess.run([str(args.python_214), "-c", PLACEMENT_214, str(REPO), str(int8)], capture_output=True, text=True, timeout=120)
            row["tflite_runtime_2_14_placement"] = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}
        rows.append(row)
    lat = latencies([Path(r["run"]) / "model_int8.tflite" for r in rows], args.rounds, args.invokes)
    for r in rows:
        r["int8_invoke_ms_median"] = lat[str(Path(r["run"]) / "model_int8.tflite")]
    ref_p, ref_y = preds[str(args.runs[0])]
    tests = {}
    for r in rows[1:]:
        p, y = preds[r["run"]]
        if (y != ref_y).any():
            raise SystemExit(f"{r['run']} was evaluated on other test images than {args.runs[0]}")
        tests[r["run"]] = {v: mcnemar(ref_p[v].argmax(1) == ref_y, p[v].argmax(1) == y) for v in ("float_keras", "qat_int8")}
    res = {"reference": str(args.runs[0]), "rounds": args.rounds, "invokes": args.invokes, "runs": rows, "mcnemar_vs_reference": tests}
    print(json.dumps(res, indent=2, default=str))
    write_result("pool2_forms", res)


if __name__ == "__main__":
    main()
