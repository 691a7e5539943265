"""Benchmark: a real small `nin-pipeline sweep` on CIFAR-10 on this machine, and its Pareto front.

    python benchmarks/sweep_cifar10.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

NiN (nin-cifar) at widths 0.125 / 0.25 / 0.5 x input 24 / 32 px: six candidates under one short
budget (a stratified 10,000-image subset of the training split, 10% of it held out for validation;
3 float epochs + 1 QAT epoch, the quick profile's recipe, seed 0), each evaluated on the full 10,000
test images. The sweep folder (artifacts/sweep-cifar10 by default) resumes: running this again skips
finished candidates. Then the sweep's table, plot page and JSON are copied to
benchmarks/results/sweep-cifar10-<date>.{md,html,png,json} with the machine recorded, and a pick is made
under a latency budget to show the reasoning it prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "sweep-cifar10")
    ap.add_argument("--widths", default="0.125,0.25,0.5")
    ap.add_argument("--input-sizes", default="24,32")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--latency-budget", type=float, default=0.5, help="ms per image (int8, this host) for the pick")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "pipeline", "sweep", "--out", str(args.out), "--archs", "nin-cifar", "--widths", args.widths,
           "--input-sizes", args.input_sizes, "--dataset", "cifar10", "--data-dir", str(args.data_dir),
           "--epochs", str(args.epochs), "--qat-epochs", str(args.qat_epochs), "--limit-train", str(args.limit_train),
           "--seed", "0", "--latency-budget", str(args.latency_budget)]
    t = time.time()
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)  # stderr: the builds' progress, live
    print(out.stdout)
    if out.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {out.returncode})")
    stamp = dt.date.today().isoformat()
    dest = HERE / "results"
    for ext in ("md", "html", "png"):
        if (args.out / f"sweep.{ext}").is_file():
            shutil.copy(args.out / f"sweep.{ext}", dest / f"sweep-cifar10-{stamp}.{ext}")
    data = json.loads((args.out / "sweep.json").read_text())
    data.update(machine=machine(), command=" ".join(cmd[2:]), wall_seconds_this_call=round(time.time() - t, 1),
                pick_output=out.stdout.strip().splitlines()[-12:])
    (dest / f"sweep-cifar10-{stamp}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"-> {dest}/sweep-cifar10-{stamp}.{{md,html,json}}")


if __name__ == "__main__":
    main()
