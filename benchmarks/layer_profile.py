"""Benchmark: where one training step's time goes, layer by layer (issue 12: does the model's shape cap the speed?).

    python benchmarks/layer_profile.py [--arch nin-cifar --width 0.25 --batch-size 128 --steps 12]

Trains the model with bare tf_keras `fit` on in-memory tensors (SGD, as the build does), records
`--steps` steps with TensorFlow's profiler after a warm-up, and reads the trace (the XSpace
protobuf the profiler writes): every op event named `<op name>:<op type>` is charged to the layer in
its name (`gradient_tape/...` = the backward pass; `SGD/...` = the weight update). For each
convolution it works out the floating-point operations of its forward and backward ops (2 x MACs
each; the first convolution has no input gradient) and the GFLOP/s they ran at, against this
machine's float32 matmul peak (numpy, all cores, measured in the same run).

What it answers: the share of the step spent in layers that do almost no arithmetic
(BatchNorm, ReLU, pooling, dropout: bound by memory traffic, not by the FPU), and the fraction of
peak the step would reach if every convolution ran at the matmul peak and the rest took the time
it takes now (the "shape cap"). Writes benchmarks/results/layer_profile-<arch>-w<width>-<date>.json
with the machine block and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from quick_build import machine, save_result, tf_env  # noqa: E402
from train_speed import matmul_peak  # noqa: E402

OP_EVENT = re.compile(r"^([^:\s]+):([A-Za-z0-9_]+)$")  # "<op name>:<op type>", as the TF profiler names op events


def conv_flops(model) -> dict[str, dict[str, float]]:
    """Per Conv2D layer: forward and backward floating-point operations for one image."""
    import tf_keras as keras

    out, first = {}, True
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, oh, ow, oc = layer.output_shape
            kh, kw = layer.kernel_size
            macs = oh * ow * oc * kh * kw * layer.input_shape[-1]
            # backward: the kernel gradient always, the input gradient except for the first layer
            # (nothing upstream needs it, and TensorFlow prunes it)
            out[layer.name] = {"forward": 2.0 * macs, "backward": 2.0 * macs * (1 if first else 2)}
            first = False
    return out


def parse_trace(logdir: Path, model_name: str) -> dict[tuple[str, str], float]:
    """Seconds of op time per (layer or group, pass) summed over the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = list(logdir.rglob("*.xplane.pb"))[:1] or [None]
    if path is None:
        raise SystemExit(f"no profiler trace under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    times: dict[tuple[str, str], float] = collections.defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                m = OP_EVENT.match(names.get(ev.metadata_id, ""))
                if not m:
                    continue
                parts = m.group(1).split("/")
                backward = parts[0] == "gradient_tape"
                if backward:
                    parts = parts[1:]
                if parts[0] == model_name and len(parts) > 1:
                    key = (parts[1], "backward" if backward else "forward")
                elif parts[0].startswith("SGD"):
                    key = ("(weight update)", "update")
                else:  # the loss, the metrics, the input's slicing and shuffling
                    key = ("(loss, metrics, input)", "backward" if backward else "other")
                times[key] += ev.duration_ps / 1e12
    return times


def kind_of(model, layer_name: str) -> str:
    try:
        return type(model.get_layer(layer_name)).__name__
    except ValueError:
        return "other"


def profile(arch: str, width: float, batch: int, steps: int, warmup: int, n: int) -> dict:
    tf_env()
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.models.nin import ModelConfig, build_model
    from pipeline.runs.profiles import PROFILES

    keras.utils.set_random_seed(0)
    quick = PROFILES["quick"]  # the model the build trains (its dropout, its form of block 2's pooling)
    m = build_model(ModelConfig(arch=arch, num_classes=10, input_shape=(32, 32, 3), width=width, dropout=quick.dropout,
                                pool2=quick.pool2 if arch == "nin-cifar" else "avg"))
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
              loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((n, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, n), tf.int32)

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self.t)

    m.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=warmup, verbose=0)
    # an unprofiled timing of the same steps, so the profiler's own overhead can be seen
    plain = StepTimes()
    m.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[plain])
    traced = StepTimes()
    with tempfile.TemporaryDirectory() as tmp:
        tf.profiler.experimental.start(tmp)
        m.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[traced])
        tf.profiler.experimental.stop()
        times = parse_trace(Path(tmp), m.name)
    return {"model": m, "times": times, "step_seconds": statistics.median(plain.seconds),
            "step_seconds_traced": statistics.median(traced.seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="nin-cifar")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--out", type=Path, default=None, help="result file (default: results/layer_profile-<arch>-w<width>-b<batch>-<date>.json)")
    args = ap.parse_args()
    peak = matmul_peak()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    res = profile(args.arch, args.width, args.batch_size, args.steps, args.warmup, n=args.batch_size * 8)
    model, times, b = res["model"], res["times"], args.batch_size
    flops = conv_flops(model)
    per_layer: dict[str, dict] = collections.OrderedDict()
    order = [layer.name for layer in model.layers]
    for (name, pas), secs in sorted(times.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 999, kv[0][0])):
        row = per_layer.setdefault(name, {"kind": kind_of(model, name), "forward_ms": 0.0, "backward_ms": 0.0, "other_ms": 0.0})
        row["forward_ms" if pas == "forward" else "backward_ms" if pas == "backward" else "other_ms"] += 1000 * secs / args.steps
    total_ms = sum(r["forward_ms"] + r["backward_ms"] + r["other_ms"] for r in per_layer.values())
    conv_ms = conv_gflop = 0.0
    for name, row in per_layer.items():
        row["ms"] = row["forward_ms"] + row["backward_ms"] + row["other_ms"]
        row["share"] = row["ms"] / total_ms
        if name in flops:
            gflop = b * (flops[name]["forward"] + flops[name]["backward"]) / 1e9
            row["gflop_per_step"] = gflop
            row["gflops"] = gflop / (row["ms"] / 1000)
            row["of_peak"] = row["gflops"] / peak
            conv_ms += row["ms"]
            conv_gflop += gflop
    other_ms = total_ms - conv_ms
    by_kind = collections.defaultdict(float)
    for row in per_layer.values():
        by_kind[row["kind"]] += row["ms"] / total_ms
    step_gflops = conv_gflop / res["step_seconds"]
    cap_ms = other_ms + 1000 * conv_gflop / peak  # convolutions at the peak, everything else as measured
    summary = {
        "step ms (unprofiled)": round(1000 * res["step_seconds"], 1),
        "step ms (profiled)": round(1000 * res["step_seconds_traced"], 1),
        "op time per step, ms (summed over threads)": round(total_ms, 1),
        "convolutions: share of op time": round(conv_ms / total_ms, 3),
        "convolutions: GFLOP/s while running": round(conv_gflop / (conv_ms / 1000), 1),
        "convolutions: of peak while running": round(conv_gflop / (conv_ms / 1000) / peak, 3),
        "step: of peak (conv FLOPs / unprofiled step time)": round(step_gflops / peak, 3),
        "shape cap: of peak if every convolution ran at the peak": round(conv_gflop / (cap_ms / 1000) / peak, 3),
        "share of op time by layer type": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
    }
    print(f"\n{'layer':24} {'type':20} {'fwd ms':>8} {'bwd ms':>8} {'share':>6} {'GFLOP/s':>8} {'of peak':>8}")
    for name, row in per_layer.items():
        extra = f"{row['gflops']:8.1f} {row['of_peak']:8.2f}" if "gflops" in row else ""
        print(f"{name:24} {row['kind']:20} {row['forward_ms']:8.1f} {row['backward_ms'] + row['other_ms']:8.1f} "
              f"{100 * row['share']:5.1f}% {extra}")
    print(json.dumps(summary, indent=1))
    out = {"date": dt.date.today().isoformat(), "machine": machine(), "matmul_peak_gflops": round(peak, 1),
           "settings": {k: str(v) for k, v in vars(args).items()},
           "threads": {k: os.environ.get(k) for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS")},
           "cpu_affinity": sorted(os.sched_getaffinity(0)), "summary": summary,
           "layers": {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()} for k, v in per_layer.items()}}
    default = HERE / "results" / f"layer_profile-{args.arch}-w{args.width:g}-b{args.batch_size}-{dt.date.today().isoformat()}.json"
    path = save_result(args.out or default, out)
    print("->", path)


if __name__ == "__main__":
    main()
