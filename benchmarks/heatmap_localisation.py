"""Benchmark: do the exported class maps show *where* a class is? (issue: edge_app, --heatmap)

    python benchmarks/heatmap_localisation.py artifacts/<run> [--mosaics 1000]

Mosaics of four CIFAR test images of four different classes (2 x 2, each 240 x 240 on a
480 x 480 frame, as a camera frame would be) go through edge_app's own resize and the int8
model. For each of the four classes, the peak of that class's map should fall in the quadrant
that holds the image of that class: chance is 25%. Nothing was trained on mosaics; the
network only ever saw single 32 x 32 images, so this measures what the paper's section 4.7
claims (the last block's maps are per-class confidence maps), on the deployed int8 model.
Writes benchmarks/results/heatmap_localisation-<date>.json with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quick_build import machine, tf_env  # noqa: E402


def mosaic_scores(run: Path, n: int, seed: int = 0, model_name: str = "model_int8.tflite") -> dict:
    import cv2
    import numpy as np

    tf_env()
    from edge_app.frames.geometry import fit_to_input
    from edge_app.runtime import Classifier
    from pipeline.runs.config import BuildConfig
    from pipeline.data.splits import make_splits

    cfg = BuildConfig.from_dict(json.loads((run / "config.json").read_text()))
    splits = make_splits(cfg.data, progress=False)
    clf = Classifier(run / model_name, num_threads=1)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(splits.y_test == c) for c in range(len(splits.labels))]
    hits = quadrant_of_top = top_hits = 0
    for _ in range(n):
        classes = rng.choice(len(by_class), 4, replace=False)
        frame = np.zeros((480, 480, 3), np.uint8)
        for q, c in enumerate(classes):
            img = splits.x_test[rng.choice(by_class[c])]
            y, x = divmod(q, 2)
            frame[y * 240:(y + 1) * 240, x * 240:(x + 1) * 240] = cv2.resize(img, (240, 240), interpolation=cv2.INTER_LINEAR)
        scores = clf.predict(fit_to_input(frame, 32, 32, 3, "crop"))
        maps = clf.class_maps()
        mh, mw = maps.shape[:2]
        for q, c in enumerate(classes):
            v, u = np.unravel_index(int(np.argmax(maps[..., c])), (mh, mw))
            hits += int((v >= mh // 2) * 2 + (u >= mw // 2) == q)
        best = int(np.argmax(scores))
        if best in classes:
            top_hits += 1
            v, u = np.unravel_index(int(np.argmax(maps[..., best])), (mh, mw))
            quadrant_of_top += int((v >= mh // 2) * 2 + (u >= mw // 2) == list(classes).index(best))
    return {"mosaics": n, "model": model_name, "map_shape": [int(mh), int(mw)],
            "peak_in_right_quadrant": hits / (4 * n), "chance": 0.25,
            "top1_is_one_of_the_four": top_hits / n,
            "top1_peak_in_its_quadrant": quadrant_of_top / max(1, top_hits)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--mosaics", type=int, default=1000)
    args = ap.parse_args()
    res = {"machine": machine(), "date": dt.date.today().isoformat(), "run": str(args.run),
           "int8": mosaic_scores(args.run, args.mosaics), "float": mosaic_scores(args.run, args.mosaics,
                                                                                   model_name="model_float32.tflite")}
    print(json.dumps(res, indent=2))
    out = HERE / "results" / f"heatmap_localisation-{res['date']}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
