"""Benchmark: what `--deterministic` costs, and whether builds repeat bit for bit with and without it.

    python benchmarks/determinism.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

Builds the same CIFAR-10 subset (quick model, seed 0) four times, alternating --deterministic and
--no-deterministic, on all cores as a user would. Reports each build's float-training images/s
(per-epoch seconds from train.log, first epoch left out: it includes tracing), the ratio
deterministic / not, and whether the two builds of each mode gave byte-identical .tflite files and
the same QAT int8 top-1. Writes benchmarks/results/determinism-<date>.json with the machine block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import machine, train_speed  # noqa: E402

MODELS = ("model_float32.tflite", "model_int8.tflite", "model_int8_ptq.tflite")


def build(args, out: Path, deterministic: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "pipeline", "build", "--dataset", "cifar10", "--data-dir", str(args.data_dir), "--out", str(out),
           "--epochs", str(args.epochs), "--qat-epochs", "1", "--limit-train", str(args.limit_train), "--limit-test",
           str(args.limit_test), "--seed", "0", "--deterministic" if deterministic else "--no-deterministic"]
    with open(out.parent / f"{out.name}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "NIN_CACHE_DIR": str(args.cache_dir)}, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"{out}: build exited {rc}; see {out.parent / (out.name + '.log')}")
    report = json.loads((out / "report.json").read_text())
    return {"deterministic": deterministic, **train_speed(out),
            "qat_int8_top1": report["variants"]["qat_int8"]["top1"], "float_top1": report["variants"]["float_keras"]["top1"],
            "sha256": {m: hashlib.sha256((out / m).read_bytes()).hexdigest() for m in MODELS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-determinism")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "artifacts" / "bench-cache")
    ap.add_argument("--limit-train", type=int, default=6000)
    ap.add_argument("--limit-test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, det in enumerate((True, False, True, False)):
        r = build(args, args.work / f"run{i}-{'det' if det else 'nodet'}", det)
        runs.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "sha256"}), flush=True)
    det, nodet = [r for r in runs if r["deterministic"]], [r for r in runs if not r["deterministic"]]
    ratio = statistics.mean(r["images_per_second"] for r in det) / statistics.mean(r["images_per_second"] for r in nodet)
    out = {
        "date": dt.date.today().isoformat(), "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": runs, "images_per_second_ratio_det_over_nodet": round(ratio, 3),
        "deterministic_builds_identical": det[0]["sha256"] == det[1]["sha256"],
        "nondeterministic_builds_identical": nodet[0]["sha256"] == nodet[1]["sha256"],
        "qat_int8_top1": {"deterministic": [r["qat_int8_top1"] for r in det], "not": [r["qat_int8_top1"] for r in nodet]},
    }
    path = HERE / "results" / f"determinism-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"deterministic / not: {ratio:.3f}x images/s; identical .tflite: deterministic {out['deterministic_builds_identical']}, "
          f"not {out['nondeterministic_builds_identical']} -> {path}")


if __name__ == "__main__":
    main()
