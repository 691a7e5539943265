"""Benchmark: the device loop on this host (issue: edge_app).

    python benchmarks/edge_loop.py artifacts/<run> [--video clip.avi]

Measures in one run, on the same machine:
- invoke-only FPS vs the whole loop's FPS on 640x480 frames, with and without prefetch (target: loop / invoke
  >= 0.90), 1 thread and all cores;
- cold start: process start to the first JSON line of `edge-app run` on a video (target <= 1 s);
- resident memory at frames 500, 5,000, 10,000, 20,000 and 30,000 of one run of the loop (target <= 200 MB,
  no growth; the summary keeps the last 10,000 frames' stage timings, about 1.3 MB, so it levels off there).
Writes benchmarks/results/edge_loop-<date>.json with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import machine  # noqa: E402

RSS_PROBE = """
import json, sys
from edge_app.camera.loop import run_loop
from edge_app.model import open_model
from edge_app.frames.sources import SyntheticSource

def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024

class Probe(SyntheticSource):
    # one run of the loop; resident memory read as frames 500 ... 30,000 are taken
    marks = {}
    def frames(self):
        for f in super().frames():
            if f.index + 1 in (500, 5000, 10000, 20000, 30000):
                self.marks[f.index + 1] = rss_mb()
            yield f

m = open_model(sys.argv[1])
p = Probe(640, 480, 30000)
run_loop(m, p, out=None)
print(json.dumps({f"rss_mb_after_{k}": v for k, v in p.marks.items()}))
"""


def synthetic_video(path: Path, frames: int = 60) -> Path:
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for i in range(frames):
        f = np.full((480, 640, 3), 40, np.uint8)
        f[100:300, 50 + 4 * i:250 + 4 * i] = (40, 180, 220)
        w.write(f)
    w.release()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--video", type=Path, default=None)
    args = ap.parse_args()
    from edge_app.measure.bench import bench
    from edge_app.model import open_model

    res: dict = {"run": str(args.run), "machine": machine(), "date": dt.date.today().isoformat(), "bench": {}}
    for threads in (1, os.cpu_count() or 1):
        r = bench(open_model(args.run, threads=threads), runs=1000)
        res["bench"][f"{threads}_threads"] = r
    video = args.video or synthetic_video(Path("/tmp/edge_loop_bench.avi"))
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "edge_app", "run", "--model", str(args.run), "--source", str(video)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    p.stdout.readline()
    res["cold_start_to_first_result_s"] = time.perf_counter() - t
    p.communicate()
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(args.run)], cwd=REPO, capture_output=True, text=True, check=True)
    res.update(json.loads(out.stdout.strip().splitlines()[-1]))
    path = HERE / "results" / f"edge_loop-{res['date']}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    for k, r in res["bench"].items():
        print(f"{k}: invoke {r['invoke_ms']['fps']:.0f} FPS (median {r['invoke_ms']['median']:.3f} ms), "
              f"loop {r['loop']['fps']:.0f} FPS, loop/invoke {r['loop_over_invoke_fps']:.2f} "
              f"(without prefetch {r['loop_no_prefetch']['fps']:.0f} FPS, {r['loop_no_prefetch_over_invoke_fps']:.2f}); "
              f"loop median ms: " + ", ".join(f"{s} {v['median']:.3f}" for s, v in r["loop"]["ms"].items()))
    print(f"cold start to first result: {res['cold_start_to_first_result_s']:.2f} s")
    print("RSS in one run: " + ", ".join(f"{v:.1f} MB at frame {k.rsplit('_', 1)[1]}" for k, v in res.items()
                                         if k.startswith("rss_mb_after_")))
    print(f"written: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
