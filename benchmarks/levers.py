"""Benchmark: a recipe lever, chosen on the validation split (issue 30: levers are measured, not applied).

    nin-pipeline build --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpg.tar.gz --epochs 20 --out artifacts/ref
    nin-pipeline build ... --epochs 20 --ema 0.999 --out artifacts/ema      # the same build, one setting changed
    python benchmarks/levers.py artifacts/ref artifacts/ema

For each finished run folder: the float model's top-1 on the run's own validation split (rebuilt from
its config.json: the same images the build held out of training), the settings in which it differs
from the first run, its training seconds, and McNemar's exact test against the first run on those
validation images. The test split is not looked at (it is for a finished profile, once). Writes
benchmarks/results/levers-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from quick_build import tf_env, write_result  # noqa: E402


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validation_correct(run_dir: Path):
    """(correct per validation image, labels) of the run's float model."""
    import numpy as np

    from pipeline.data.splits import make_splits
    from pipeline.runs.folder import RunFolder
    from pipeline.stages.inputs import fit_datasets

    run = RunFolder(run_dir)
    cfg = run.load_config()
    splits = make_splits(cfg.data, progress=False)
    _, val, _ = fit_datasets(splits, cfg.train.batch_size, cfg.train.seed)
    if val is None:
        raise SystemExit(f"{run_dir} holds no validation split out of train")
    model = run.load_float()
    pred = np.concatenate([model(x, training=False).numpy().argmax(1) for x, _ in val])
    y = np.asarray(splits.y_val).reshape(-1)
    return pred == y, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders; the first is the reference")
    ap.add_argument("--name", default="levers", help="results/<name>-<date>.json")
    args = ap.parse_args()
    tf_env()

    from pipeline.report.figures import mcnemar

    ref_cfg = flat(json.loads((args.runs[0] / "config.json").read_text()))
    rows, ref = [], None
    for run_dir in args.runs:
        correct, y = validation_correct(run_dir)
        cfg = flat(json.loads((run_dir / "config.json").read_text()))
        row = {
            "run": str(run_dir),
            "differs_from_reference": {
                k: [ref_cfg.get(k), v] for k, v in cfg.items() if ref_cfg.get(k) != v and not k.startswith(("plan", "time_budget"))
            },
            "validation_images": int(len(y)),
            "float_validation_top1": round(100 * float(correct.mean()), 2),
            "stage_seconds": {k: s.get("seconds") for k, s in json.loads((run_dir / "state.json").read_text()).items() if isinstance(s, dict)},
        }
        if ref is None:
            ref = (correct, y)
        else:
            if len(y) != len(ref[1]) or (y != ref[1]).any():
                raise SystemExit(f"{run_dir} holds out other validation images than {args.runs[0]}: not comparable")
            row["mcnemar_vs_reference"] = mcnemar(ref[0], correct)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    write_result(args.name, {"reference": str(args.runs[0]), "runs": rows})


if __name__ == "__main__":
    main()
