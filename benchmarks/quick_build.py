"""Benchmark: `nin-pipeline build --dataset cifar10 --profile quick` on the full CIFAR-10 copy.

    python benchmarks/quick_build.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz
    python benchmarks/quick_build.py --run artifacts/<run>      # summarise a finished run

Writes benchmarks/results/quick_build-<date>.json (figures, command, machine) and prints a
Markdown summary. Targets (issue: the main job): <= 25 minutes on the 2-core machine, QAT int8
>= 75% test top-1, within 1.0 point of float and not below PTQ, int8 <= 30% of float bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def tf_env() -> None:
    """What `nin-pipeline`'s entry point sets before TensorFlow is first imported (`pipeline.cli.main.tf_env`:
    Keras 2 for tfmot, oneDNN's CPU kernels). Call it before importing TensorFlow; a child process
    started afterwards inherits both."""
    from pipeline.cli.main import tf_env as entry_point_env

    entry_point_env()


def save_result(path: Path, data: dict) -> Path:
    """Write a benchmark's JSON atomically and never over an earlier result: a second run with the same
    name (the same day) goes to ``<name>-2.json``, ``-3``, ... Returns the path written."""
    stem, n = path.stem, 2
    while path.exists():
        path, n = path.with_name(f"{stem}-{n}.json"), n + 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_result(name: str, data: dict) -> Path:
    """results/<name>-<date>.json with the date and this machine recorded; its path."""
    stamp = dt.date.today().isoformat()
    path = save_result(HERE / "results" / f"{name}-{stamp}.json", {"date": stamp, "machine": machine(), **data})
    print(f"-> {path}")
    return path


def machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split())
        info["cpu_features"] = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma"})
    except (OSError, StopIteration):
        pass
    # TensorFlow turns oneDNN on by itself only on AVX512_VNNI/BF16/AMX CPUs; the CLI sets it to 1
    info["TF_ENABLE_ONEDNN_OPTS"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    try:
        from importlib.metadata import version

        info["tensorflow"] = version("tensorflow")
        info["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:
        pass
    return info


def train_speed(run: Path) -> dict:
    """Float-training images/s of a finished run folder, from train.log's per-epoch seconds (the
    first epoch left out when there are more: it includes tracing); where the log gives each epoch's
    validation seconds (since 2026-11-27), also the images/s of the training steps alone."""
    import re
    import statistics

    text = (run / "train.log").read_text()
    n_train = int(re.search(r"data: \S+ from .*?: (\d+) train", text).group(1))
    epochs = re.findall(r" train epoch \d+/\d+: .*\(lr=[\d.]+, ([\d.]+) s(?:, validation ([\d.]+) s)?", text)
    secs = [float(s) for s, _ in epochs]
    out = {"train_images": n_train, "epoch_seconds": secs, "images_per_second": n_train / statistics.median(secs[1:] or secs)}
    if epochs and all(v for _, v in epochs):
        fit = [float(s) - float(v) for s, v in epochs]
        out |= {"validation_seconds": [float(v) for _, v in epochs],
                "training_images_per_second": n_train / statistics.median(fit[1:] or fit)}
    return out


def summarise(run: Path, wall: float | None, command: list[str] | None) -> dict:
    report = json.loads((run / "report.json").read_text())
    state = json.loads((run / "state.json").read_text())
    v = report["variants"]
    res = {
        "run": str(run), "command": command, "wall_seconds": wall,
        "stage_seconds": {k: s.get("seconds") for k, s in state.items()},
        "top1": {k: x["top1"] for k, x in v.items()},
        "bytes": {k: x["bytes"] for k, x in v.items()},
        "int8_over_float_bytes": v["qat_int8"]["bytes"] / v["float_tflite"]["bytes"],
        "qat_minus_float_points": 100 * (v["qat_int8"]["top1"] - v["float_keras"]["top1"]),
        "qat_minus_ptq_points": 100 * (v["qat_int8"]["top1"] - v["ptq_int8"]["top1"]),
        "config": json.loads((run / "config.json").read_text()),
        "agreement_with_float": {k: x.get("agreement_with_float") for k, x in v.items()},
        "significance": report.get("significance"),
        "validation_accuracy_last_epoch": _last_val(run),
        "onednn_in_train_log": _onednn(run),
        "train_speed": train_speed(run),
        "machine": machine(), "date": dt.date.today().isoformat(),
    }
    return res


def _last_val(run: Path) -> float | None:
    import re

    found = re.findall(r" train epoch \d+/\d+: .*val_accuracy=([\d.]+)", (run / "train.log").read_text())
    return float(found[-1]) if found else None


def _onednn(run: Path) -> str | None:
    """What the build said about oneDNN's kernels ("on", "off: ..."), from train.log."""
    import re

    m = re.search(r"oneDNN kernels ([^)]*)\)", (run / "train.log").read_text())
    return m.group(1) if m else None


def markdown(res: dict) -> str:
    t, b = res["top1"], res["bytes"]
    lines = [
        f"quick build, {res['date']}, {res['machine'].get('cpus')} cores ({res['machine'].get('cpu', '?')})",
        f"wall time: {res['wall_seconds'] / 60:.1f} min" if res["wall_seconds"] else "wall time: (not timed)",
        "stages (s): " + ", ".join(f"{k} {v}" for k, v in res["stage_seconds"].items()),
        "",
        "| variant | test top-1 | bytes |",
        "|---|---|---|",
        *(f"| {k} | {100 * t[k]:.2f}% | {b[k]:,} |" for k in t),
        "",
        "agreement with float: " + ", ".join(f"{k} {100 * a:.2f}%" for k, a in res["agreement_with_float"].items() if a),
        "",
        f"QAT int8 - float: {res['qat_minus_float_points']:+.2f} points; QAT - PTQ: {res['qat_minus_ptq_points']:+.2f} points; "
        f"int8 / float32 .tflite bytes: {100 * res['int8_over_float_bytes']:.1f}%",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))
    ap.add_argument("--run", type=Path, help="summarise this finished run folder instead of building")
    ap.add_argument("--wall", type=float, help="with --run: the wall time you measured, in seconds")
    ap.add_argument("--name", default="quick_build", help="results/<name>-<date>.json")
    args = ap.parse_args()
    if args.run:
        run, wall, cmd = args.run, args.wall, None
    else:
        run = REPO / "artifacts" / f"bench-quick-{dt.datetime.now():%Y%m%d-%H%M%S}"
        cmd = ["nin-pipeline", "build", "--dataset", "cifar10", "--profile", "quick", "--data-dir", args.data_dir,
               "--out", str(run)]
        t = time.time()
        subprocess.run([sys.executable, "-m", "pipeline.cli.main", *cmd[1:]], cwd=REPO, check=True)
        wall = time.time() - t
    res = summarise(run, wall, cmd)
    out = HERE / "results" / f"{args.name}-{res['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    print(f"\nwritten: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
