"""Benchmark: multi-worker training (MultiWorkerMirroredStrategy) on one machine, over loopback.

    python benchmarks/multi_worker.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

Builds the same subset twice with the same global batch, epochs and seed: once as 1 worker pinned
to core 0, once as 2 workers pinned to cores 0 and 1 (`taskset`, one intra-op and one inter-op
thread each), one after the other. Reports float-training images/s of each (from the per-epoch
seconds in the chief's train.log, first epoch left out: it includes tracing) and their ratio, and
the QAT int8 test top-1 of each. Targets (issue 11): ratio >= 1.7; QAT int8 within 1 point.
Writes benchmarks/results/multi_worker-<date>.json with the machine block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import machine  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, out: Path, workers: int) -> float:
    """Start ``workers`` pinned processes (one per core) and wait for all; returns wall seconds."""
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "NIN_CACHE_DIR": str(args.cache_dir)}
    base = [sys.executable, "-m", "pipeline", "build", "--dataset", "cifar10", "--data-dir", str(args.data_dir),
            "--out", str(out), "--width", str(args.width), "--epochs", str(args.epochs), "--qat-epochs", str(args.qat_epochs),
            "--batch-size", str(args.batch_size), "--limit-train", str(args.limit_train), "--seed", "0"]
    addrs = ",".join(f"127.0.0.1:{free_port()}" for _ in range(workers))
    procs = []
    t = time.time()
    for i in range(workers):
        cmd = ["taskset", "-c", str(i), *base, *(["--workers", addrs, "--worker-index", str(i)] if workers > 1 else [])]
        log = open(out.parent / f"{out.name}.w{i}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for p, log in procs:
        rc = p.wait(timeout=args.timeout)
        log.close()
        if rc:
            sys.exit(f"{out}: a worker exited {rc}; see {log.name}")
    return time.time() - t


def figures(out: Path) -> dict:
    text = (out / "train.log").read_text()
    n_train = int(re.search(r"data: \S+ from .*?: (\d+) train", text).group(1))
    secs = [float(s) for s in re.findall(r" train epoch \d+/\d+: .*, ([\d.]+) s\)", text)]
    report = json.loads((out / "report.json").read_text())
    top1 = report["variants"]["qat_int8"]["top1"]
    steady = secs[1:] or secs
    return {"train_images": n_train, "epoch_seconds": secs, "images_per_second": n_train / statistics.median(steady),
            "qat_int8_top1": top1, "workers_in_log": re.findall(r"(\d+) workers, (\d+) replica", text)[:1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-multi-worker")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "artifacts" / "bench-cache")
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args()
    if not shutil.which("taskset"):
        sys.exit("taskset (util-linux) is needed to pin the workers to cores")
    args.work.mkdir(parents=True, exist_ok=True)
    res = {}
    for name, n in (("one_worker_one_core", 1), ("two_workers_one_core_each", 2)):
        wall = launch(args, args.work / name, n)
        res[name] = {**figures(args.work / name), "wall_seconds": round(wall, 1)}
        print(name, json.dumps(res[name]))
    one, two = res["one_worker_one_core"], res["two_workers_one_core_each"]
    ratio = two["images_per_second"] / one["images_per_second"]
    gap = 100 * (two["qat_int8_top1"] - one["qat_int8_top1"])
    out = {
        "date": dt.date.today().isoformat(), "machine": machine(), "settings": vars(args) | {"data_dir": str(args.data_dir),
               "work": str(args.work), "cache_dir": str(args.cache_dir)},
        "results": res, "images_per_second_ratio": round(ratio, 3), "qat_int8_top1_gap_points": round(gap, 2),
        "targets": {"ratio >= 1.7": ratio >= 1.7, "QAT int8 within 1 point": abs(gap) <= 1.0},
    }
    path = HERE / "results" / f"multi_worker-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"2 workers vs 1: {ratio:.2f}x images/s; QAT int8 top-1 {100 * one['qat_int8_top1']:.2f}% (1 worker) vs "
          f"{100 * two['qat_int8_top1']:.2f}% (2 workers), {gap:+.2f} points -> {path}")


if __name__ == "__main__":
    main()
