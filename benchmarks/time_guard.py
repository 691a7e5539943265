"""Benchmark: does `build --time-budget` hold to its budget when the machine slows down mid-build?

    python benchmarks/time_guard.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz \
        --budget 6 --limit-train 10000 --load-after 3

Starts a budgeted build, waits until it has logged ``--load-after`` float epochs, then starts a load
beside it (``--load-threads`` processes, each a float32 matmul loop on one thread, for the rest of the
build) and stops the load when the build ends. The guard (pipeline/stages/plan.py, ``Deadline``) should
see the slower epochs, shorten the schedule and say so; this records what was planned, what each
epoch took, every cut the build logged and the wall time against the budget, in
results/time_guard-<date>.json with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from quick_build import REPO, summarise, tf_env, write_result  # noqa: E402

EPOCH = re.compile(r" train epoch (\d+)/(\d+): .*\(lr=([\d.]+), ([\d.]+) s")
PLAN = re.compile(r"time budget [\d.]+ min: .*planned (\d+) float epochs \(([\d.]+) s each\).*about ([\d.]+) min in all")
CUT = re.compile(r"time budget: epochs take (\d+) s here, not the (\d+) s planned.*?shortened to (\d+) epochs")

# one thread per process, so each load process takes one core's worth of the machine
LOAD = "import numpy as np\na = np.ones((1024, 1024), np.float32)\nb = a / 1024\nwhile True:\n    a = a @ b\n"  # a stays all ones


def start_load(n: int) -> list[subprocess.Popen]:
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return [subprocess.Popen([sys.executable, "-c", LOAD], env=env) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))
    ap.add_argument("--budget", type=float, default=6.0, help="--time-budget of the build, minutes")
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--load-after", type=int, default=3, help="start the load after this many float epochs")
    ap.add_argument("--load-threads", type=int, default=2, help="load processes (one core each)")
    ap.add_argument("--name", default="time_guard")
    args = ap.parse_args()

    tf_env()
    run = REPO / "artifacts" / f"time-guard-{dt.datetime.now():%Y%m%d-%H%M%S}"
    cmd = [
        "build",
        "--dataset",
        "cifar10",
        "--data-dir",
        args.data_dir,
        "--limit-train",
        str(args.limit_train),
        "--time-budget",
        str(args.budget),
        "--out",
        str(run),
    ]
    log_path = run.with_suffix(".log")
    load: list[subprocess.Popen] = []
    load_started = None
    t0 = time.time()
    with open(log_path, "w") as log:
        build = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", *cmd], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            while build.poll() is None:
                time.sleep(1.0)
                if not load and len(EPOCH.findall(log_path.read_text())) >= args.load_after:
                    load, load_started = start_load(args.load_threads), time.time() - t0
                    print(f"load started after {load_started:.0f} s ({args.load_threads} processes)", flush=True)
        finally:
            for p in load:
                p.kill()
            if build.poll() is None:
                build.kill()
    wall = time.time() - t0
    text = log_path.read_text()
    if build.returncode != 0:
        sys.exit(f"the build failed (exit {build.returncode}); its log: {log_path}")
    plan = PLAN.search(text)
    epochs = [(int(d), int(p), float(lr), float(s)) for d, p, lr, s in EPOCH.findall(text)]
    cuts = [{"epoch_seconds_seen": int(a), "planned_epoch_seconds": int(b), "shortened_to": int(c)} for a, b, c in CUT.findall(text)]
    res = {
        "command": ["nin-pipeline", *cmd],
        "budget_min": args.budget,
        "load": {"processes": args.load_threads, "after_epochs": args.load_after, "started_s": load_started},
        "planned": {"epochs": int(plan.group(1)), "epoch_s": float(plan.group(2)), "total_min": float(plan.group(3))} if plan else None,
        "epochs": [{"epoch": d, "of": p, "lr": lr, "seconds": s} for d, p, lr, s in epochs],
        "cuts": cuts,
        "wall_min": wall / 60,
        "within_budget": wall / 60 <= args.budget,
        "build": summarise(run, wall, ["nin-pipeline", *cmd]),
    }
    write_result(args.name, res)
    planned = res["planned"] or {}
    print(
        f"planned {planned.get('epochs')} epochs, {planned.get('total_min')} min of {args.budget}; "
        f"trained {len(epochs)}; cuts {[c['shortened_to'] for c in cuts]}; "
        f"wall {wall / 60:.2f} min ({'within' if res['within_budget'] else 'OVER'} the budget)"
    )


if __name__ == "__main__":
    main()
