"""Benchmark: where training speed goes — this machine's peak, bare `model.fit`, and the build.

    python benchmarks/train_speed.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

Measures, side by side in one run, each in its own process one after the other:
  * float32 matmul peak of this machine (numpy, all cores, 2048 x 2048), GFLOP/s;
  * bare tf_keras `model.fit` of the quick model (nin-cifar width 0.25, batch 128, SGD) on
    in-memory tensors, with oneDNN's kernels on as the CLI runs it, and the same with each lever:
    oneDNN off (TensorFlow's own default on CPUs without AVX512_VNNI), XLA (`jit_compile=True`),
    `steps_per_execution=8`, and one thread less / more inter-op parallelism;
  * `nin-pipeline build`'s own training images/s on a CIFAR-10 subset (train.log's epoch seconds,
    first epoch left out);
and reports training FLOP/s / peak (a training step is taken as 3 forward passes: 6 x MACs per
image) and build / bare. Writes benchmarks/results/train_speed-<date>.json with the machine block.
Targets (issue 12): build / bare >= 0.95; training step >= 0.45 of peak.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from quick_build import machine, save_result, tf_env, train_speed  # noqa: E402


def matmul_peak(n: int = 2048, seconds: float = 5.0) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    t, k = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        a @ a
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t) / 1e9


def bare_fit(jit: bool, spe: int, width: float, batch: int, n: int = 4096, epochs: int = 3) -> dict:
    """One process's measurement: images/s of epochs 2.. of `fit` on in-memory tensors."""
    tf_env()
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    sys.path.insert(0, str(REPO))
    from pipeline.models.nin import ModelConfig, build_model, count_macs

    keras.utils.set_random_seed(0)
    from pipeline.runs.profiles import PROFILES

    quick = PROFILES["quick"]  # the model the build trains
    m = build_model(ModelConfig(arch="nin-cifar", num_classes=10, input_shape=(32, 32, 3), width=width, dropout=quick.dropout,
                                pool2=quick.pool2))
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), loss=keras.losses.SparseCategoricalCrossentropy(),
              metrics=["accuracy"], jit_compile=jit, steps_per_execution=spe)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((n, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, n), tf.int32)
    times = []

    class T(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    m.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[T()], shuffle=False)
    ips = (n // batch) * batch / statistics.median(times[1:])
    return {"images_per_second": ips, "macs_per_image": count_macs(m), "epoch_seconds": times}


def child(args) -> dict:
    """Run one measurement in a fresh interpreter (thread settings are per process)."""
    env = {**os.environ, **{k: str(v) for k, v in args.get("env", {}).items()}}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_speed(args) -> dict:
    out = args.work / "build"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "pipeline", "build", "--dataset", "cifar10", "--data-dir", str(args.data_dir), "--out", str(out),
           "--epochs", "3", "--qat-epochs", "0", "--limit-train", str(args.limit_train), "--limit-test", "500", "--seed", "0",
           "--width", str(args.width), "--batch-size", str(args.batch_size)]
    with open(args.work / "build.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "NIN_CACHE_DIR": str(args.cache_dir)}, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    if rc:
        return {"error": f"build exited {rc}; see {args.work / 'build.log'}"}
    return train_speed(out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        a = json.loads(sys.argv[2])
        print(json.dumps(matmul_peak() if a["what"] == "peak" else bare_fit(a["jit"], a["spe"], a["width"], a["batch"])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-train-speed")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "artifacts" / "bench-cache")
    ap.add_argument("--limit-train", type=int, default=6000)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="measure every case this many times, alternating (noisy hosts)")
    ap.add_argument("--cases", nargs="*", help="only the bare-fit cases whose name contains one of these")
    ap.add_argument("--no-build", action="store_true", help="leave out the build")
    args = ap.parse_args()
    tf_env()  # every case (a child process) inherits it
    args.work.mkdir(parents=True, exist_ok=True)
    base = {"what": "fit", "jit": False, "spe": 1, "width": args.width, "batch": args.batch_size}
    cases = {
        "bare fit": base,
        "bare fit, oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)": {**base, "env": {"TF_ENABLE_ONEDNN_OPTS": 0}},
        "bare fit, XLA (jit_compile=True)": {**base, "jit": True},
        "bare fit, steps_per_execution=8": {**base, "spe": 8},
        "bare fit, TF_NUM_INTEROP_THREADS=1": {**base, "env": {"TF_NUM_INTEROP_THREADS": 1}},
        "bare fit, TF_NUM_INTRAOP_THREADS=1": {**base, "env": {"TF_NUM_INTRAOP_THREADS": 1}},
        "bare fit, batch 64": {**base, "batch": 64},
        "bare fit, batch 256": {**base, "batch": 256},
    }
    if args.cases:
        cases = {k: v for k, v in cases.items() if k == "bare fit" or any(c in k for c in args.cases)}
    res: dict = {"matmul peak GFLOP/s": child({"what": "peak"})}
    print("peak", res["matmul peak GFLOP/s"], flush=True)
    peak = res["matmul peak GFLOP/s"]
    for rnd in range(args.rounds):
        for name, a in cases.items():
            r = child(a)
            if "images_per_second" in r:
                r["gflops"] = r["images_per_second"] * 6 * r["macs_per_image"] / 1e9
                r["of_peak"] = r["gflops"] / peak
            res.setdefault(name, []).append(r)
            print(f"round {rnd + 1}", name, json.dumps(r), flush=True)
    if not args.no_build:
        res["build"] = build_speed(args)
        print("build", json.dumps(res["build"]), flush=True)

    def median_ips(name: str) -> float | None:
        ips = [r["images_per_second"] for r in res.get(name, []) if "images_per_second" in r]
        return statistics.median(ips) if ips else None

    bare = median_ips("bare fit")
    summary = {"rounds": args.rounds}
    if bare:
        summary["bare images/s (median)"] = round(bare, 1)
        summary["bare of peak"] = round(bare * 6 * res["bare fit"][0]["macs_per_image"] / 1e9 / peak, 3)
        if "images_per_second" in res.get("build", {}):
            summary["build / bare"] = round(res["build"]["images_per_second"] / bare, 3)
            summary["build of peak"] = round(res["build"]["images_per_second"] * 6 * res["bare fit"][0]["macs_per_image"] / 1e9 / peak, 3)
        for name in cases:
            if name != "bare fit" and median_ips(name):
                summary[f"{name} / bare fit"] = round(median_ips(name) / bare, 3)
    out = {"date": dt.date.today().isoformat(), "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()},
           "results": res, "summary": summary}
    path = save_result(HERE / "results" / f"train_speed-{dt.date.today().isoformat()}.json", out)
    print(json.dumps(summary, indent=1), "->", path)


if __name__ == "__main__":
    main()
