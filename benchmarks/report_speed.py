"""Benchmark: how long evaluation and the report take on a finished run folder.

    python benchmarks/report_speed.py artifacts/<run> [--data-dir ../shared/datasets/cifar10-jpg.tar.gz]

Measures, in one process on this machine:
- the 10,000 CIFAR-10 test images through model_int8.tflite (`nin-pipeline evaluate`), target <= 30 s;
- `nin-pipeline report RUN --rerun` (all four variants, latency, plots, md/html), target <= 2 min.
Writes benchmarks/results/report_speed-<date>.json with the machine.
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

from quick_build import machine, tf_env  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))
    args = ap.parse_args()
    tf_env()
    from pipeline.report.predict import evaluate_model

    ev = evaluate_model(args.run / "model_int8.tflite", "cifar10", args.data_dir, progress=False)
    t = time.time()
    subprocess.run([sys.executable, "-m", "pipeline.cli.main", "report", str(args.run), "--rerun"], cwd=REPO, check=True)
    report_s = time.time() - t
    res = {"run": str(args.run), "int8_eval": ev, "report_rerun_seconds": report_s, "machine": machine(),
           "date": dt.date.today().isoformat()}
    out = HERE / "results" / f"report_speed-{res['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"int8 evaluation: {ev['images']:,} images in {ev['seconds']:.1f} s ({ev['images_per_second']:.0f} images/s), "
          f"top-1 {100 * ev['top1']:.2f}%")
    print(f"`nin-pipeline report --rerun`: {report_s:.1f} s (includes Python/TensorFlow start-up and data loading)")
    print(f"written: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
