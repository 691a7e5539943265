"""Benchmark: every architecture on CIFAR-10 under one equal budget, and NiN's GAP-vs-FC ablation.

    python benchmarks/architectures.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

The budget rule: **the same data and epochs for every model** (a stratified 20,000-image subset of
the training split, 10% of it held out for validation; 4 float epochs + 1 QAT epoch; the quick
profile's recipe: SGD lr 0.2 with warm-up and cosine decay, weight decay 5e-4, dropout 0.1, QAT
distilled from the float model; seed 0), with **widths chosen so every model does 10-25 M MACs per
image** like the quick NiN (16.7 M), LeNet at its own width (0.9 M). AlexNet needs 67x67 inputs:
its images are resized. Every model is evaluated on the full 10,000-image test split.

Each build is a normal run folder under --work (default artifacts/bench-archs/<name>); running the
script again resumes an interrupted build and skips finished ones. Then `nin-pipeline edgetpu check`
on each, and `nin-pipeline compare` over all of them writes the table (terminal, markdown) and the
accuracy-vs-latency plot. Writes benchmarks/results/architectures-<date>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import machine  # noqa: E402

# name: (arch, width, extra build flags)
CANDIDATES = {
    "nin-gap": ("nin-cifar", 0.25, ["--head", "gap"]),
    "nin-fc": ("nin-cifar", 0.25, ["--head", "fc"]),
    "nin-fc-dropout": ("nin-cifar", 0.25, ["--head", "fc-dropout"]),
    "lenet": ("lenet", 1.0, []),
    "resnet20": ("resnet20", 0.75, []),
    "densenet": ("densenet", 1.0, []),
    "vgg11": ("vgg11", 0.25, []),
    "googlenet": ("googlenet", 0.75, []),
    "resnet18": ("resnet18", 0.75, []),
    "vgg16": ("vgg16", 0.25, []),
    "alexnet": ("alexnet", 0.375, ["--input-size", "67"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-archs")
    ap.add_argument("--limit-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="a subset of: " + ", ".join(CANDIDATES))
    args = ap.parse_args()
    names = args.only or list(CANDIDATES)
    args.work.mkdir(parents=True, exist_ok=True)
    nin = [sys.executable, "-m", "pipeline"]
    walls = {}
    for name in names:
        arch, width, extra = CANDIDATES[name]
        out = args.work / name
        if (out / "report.json").is_file() and (out / "edgetpu.json").is_file():
            print(f"{name}: done before, skipped", flush=True)
            continue
        cmd = [*nin, "build", "--dataset", "cifar10", "--data-dir", str(args.data_dir), "--out", str(out), "--arch", arch,
               "--width", str(width), "--epochs", str(args.epochs), "--qat-epochs", str(args.qat_epochs),
               "--limit-train", str(args.limit_train), "--seed", "0", *extra]
        print(f"{name}: {' '.join(cmd[2:])}", flush=True)
        t = time.time()
        with open(args.work / f"{name}.log", "a") as log:
            rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
            if rc == 0:
                subprocess.run([*nin, "edgetpu", "check", str(out)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        walls[name] = round(time.time() - t, 1)
        print(f"{name}: exit {rc} after {walls[name]:.0f} s", flush=True)
    runs = [str(args.work / n) for n in CANDIDATES if (args.work / n / "report.json").is_file()]
    stamp = dt.date.today().isoformat()
    md, png, js = (HERE / "results" / f"architectures-{stamp}.{ext}" for ext in ("md", "png", "json"))
    subprocess.run([*nin, "compare", *runs, "--markdown", str(md), "--plot", str(png), "--json", str(js)], cwd=REPO, check=True)
    data = json.loads(js.read_text())
    data.update(machine=machine(), settings=vars(args) | {"data_dir": str(args.data_dir), "work": str(args.work)},
                candidates={n: {"arch": a, "width": w, "flags": f} for n, (a, w, f) in CANDIDATES.items()},
                wall_seconds_this_call=walls)
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"-> {md}, {png}, {js}")


if __name__ == "__main__":
    main()
