"""Benchmark: memory and speed of the three ways of holding an image tree (--data-cache).

    python benchmarks/data_memory.py --sizes 3000 12000 --px 224          # peak RSS per mode and tree size
    python benchmarks/data_memory.py --speed-tree DIR                     # images/s: streaming vs in-memory

1. Peak RSS. Synthetic JPEG trees (10 classes, N train + N/10 test images at PX x PX) are
   built once under --work. For each tree and mode (memory, disk, none) a fresh process runs
   the real data path — ``make_splits`` then nin-imagenet (width 0.25) trained for --steps
   steps on ``make_dataset`` — and reports its own peak RSS (``getrusage(RUSAGE_SELF)`` at its
   end). The decoded size of the tree is reported beside it.
   Issue targets: streaming peak RSS does not grow with the number of images (<= 2.5 GB at
   224 px for 12,000 and 50,000 images); memory mode holds <= ~1.5x the decoded pixels.
2. Speed. The quick model (nin-cifar width 0.25, batch 128) trained for --speed-steps steps on
   the same tree held in memory, then streamed from the files (none): training images/s of each,
   and their ratio (target >= 0.9). Each in its own process, one after the other, in one run.

Writes benchmarks/results/data_memory-<date>.json with the machine block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quick_build import machine  # noqa: E402

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the CLI (pipeline/cli/main.py)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from pipeline.data.splits import DataConfig, make_dataset, make_splits
from pipeline.models.nin import ModelConfig, build_model
from pipeline.train.fit import TrainConfig, fit
tree, mode, size, arch, width, steps, batch, cache = sys.argv[1:9]
size = int(size) if size != "0" else None
t0 = time.time()
s = make_splits(DataConfig(dataset="folder", data_dir=tree, input_size=size, cache=mode, val_fraction=0.1), progress=False)
t_data = time.time() - t0
model = build_model(ModelConfig(arch=arch, width=float(width), num_classes=len(s.labels), input_shape=s.input_shape))
ds = make_dataset(s.x_train, s.y_train, int(batch), training=True, hflip=True, seed=0).repeat()
import tf_keras as keras
model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy())
model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up: graph building, first reads
t = time.time()
model.fit(ds, steps_per_epoch=int(steps), epochs=1, verbose=0)
sec = time.time() - t
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
print(json.dumps({"peak_rss_gb": round(peak, 2), "mode": s.cache, "hwc": list(s.input_shape),
                  "images": len(s.y_train) + len(s.y_val) + len(s.y_test),
                  "data_seconds": round(t_data, 1), "train_images_per_s": round(int(steps) * int(batch) / sec, 1)}))
"""


def make_tree(root: Path, n_train: int, px: int, classes: int = 10, seed: int = 0) -> Path:
    """n_train + n_train/10 JPEGs: a class-coloured disc on noise, px x px."""
    import numpy as np
    from PIL import Image

    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    for split, n in (("train", n_train), ("test", max(classes, n_train // 10))):
        for i in range(n):
            c = i % classes
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 120, (px, px, 3), dtype=np.uint8)
            cx, cy, r = rng.integers(px // 4, 3 * px // 4, 2).tolist() + [px // 5]
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (255 * (c % 3 == 0), 255 * (c % 3 == 1), 25 * c)
            Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)
    (root / "done").write_text("ok\n")
    return root


def child(tree: Path, mode: str, size: int, arch: str, width: float, steps: int, batch: int, cache: Path) -> dict:
    env = {**os.environ, "NIN_CACHE_DIR": str(cache), "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), mode, str(size), arch, str(width), str(steps), str(batch),
                          str(cache)], env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])  # peak_rss_gb: the child's own (RUSAGE_SELF, at its end)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nin-data-bench"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[3000, 12000])
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--modes", nargs="*", default=["none", "disk", "memory"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--speed-tree", type=Path, default=None, help="an image folder (e.g. CIFAR-10 JPEGs) for the speed ratio")
    ap.add_argument("--speed-steps", type=int, default=150)
    args = ap.parse_args()
    result: dict = {"date": dt.date.today().isoformat(), "machine": machine(), "rss": [], "speed": None}
    for n in sorted(args.sizes):
        tree = make_tree(args.work / f"tree-{n}-{args.px}", n, args.px)
        for mode in args.modes:
            cache = args.work / f"cache-{n}-{args.px}"
            r = child(tree, mode, args.px, "nin-imagenet", 0.25, args.steps, 32, cache)
            decoded = r["images"] * args.px * args.px * 3 / 1e9
            r.update(train_images=n, decoded_gb=round(decoded, 2),
                     rss_over_decoded=round(r["peak_rss_gb"] / decoded, 2) if r["peak_rss_gb"] else None)
            result["rss"].append(r)
            print(json.dumps(r), flush=True)
    if args.speed_tree:
        speeds = {}
        for mode in ("memory", "none"):
            speeds[mode] = child(args.speed_tree, mode, 0, "nin-cifar", 0.25, args.speed_steps, 128,
                                 args.work / "cache-speed")["train_images_per_s"]
            print(mode, speeds[mode], flush=True)
        result["speed"] = {**speeds, "none_over_memory": round(speeds["none"] / speeds["memory"], 3)}
    out = HERE / "results" / f"data_memory-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
