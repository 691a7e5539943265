"""Benchmark: one training step of the quick model, 1 worker vs 2 (MultiWorkerMirroredStrategy), no input pipeline.

    python benchmarks/multi_worker_step.py [--rounds 3 --executions 10] [--input pipeline]

Where `benchmarks/multi_worker.py` times whole builds, this times Keras `fit` steps (the build's
model, optimizer, steps per execution and per-worker input route; 128 images per worker per step)
on float tensors already in memory (``--input tensors``: only the step and the workers' exchange)
or through the build's own tf.data pipeline (``--input pipeline``: uint8 images read by position,
flipped and translated per batch, as `pipeline.data.splits.make_dataset` does in a build).
Three setups, one after the other in each round, every process pinned to one core (`taskset`,
one intra-op and one inter-op thread):

- ``solo``: one process on core 0, no strategy (the reference);
- ``pair``: two such processes at once on cores 0 and 1, independent: both cores busy, nothing
  exchanged - what this host gives two workers at best;
- ``two``: two workers over 127.0.0.1 on cores 0 and 1, in lockstep (an all-reduce per step).

Reports each setup's median step (ms) and images/s per round, 2 x solo / pair and 2 x solo / two
(the scaling each would give), and writes benchmarks/results/multi_worker_step-<date>.json with the
machine block. Nothing here is a timed test: the figures depend on the host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

BATCH = 128  # per worker


def child(addrs: str, index: int, executions: int, source: str) -> dict:
    """One process's measurement (run through ``--child``): median ms per step over ``executions``
    calls of the train function (each STEPS_PER_EXECUTION steps), after a warm-up."""
    from quick_build import tf_env

    tf_env()
    from pipeline.stages import cluster

    strategy = None
    if addrs:
        workers = tuple(addrs.split(","))
        os.environ["TF_CONFIG"] = cluster.tf_config(workers, index)
        strategy = cluster.start(cluster.Cluster(workers, index), startup_s=120)
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.models.nin import ModelConfig, build_model
    from pipeline.train.fit import STEPS_PER_EXECUTION, TrainConfig, make_optimizer

    keras.utils.set_random_seed(0)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build_model(ModelConfig(arch="nin-cifar", num_classes=10, input_shape=(32, 32, 3), width=0.25, dropout=0.0))
        model.compile(optimizer=make_optimizer(TrainConfig(), 100), loss=keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION)
    if strategy is not None:
        model.distribute_reduction_method = "first"  # as pipeline.train.fit.fit
    rng = np.random.default_rng(index)
    if source == "pipeline":  # the build's: 9,000 images, each of 2 workers reads its half
        from pipeline.data.splits import make_dataset, worker_train_dataset

        x = rng.integers(0, 256, (9000, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, 9000).astype(np.int32)
        if strategy is not None:
            data = cluster.per_worker_dataset(strategy, worker_train_dataset(x, y, BATCH * strategy.num_replicas_in_sync,
                                                                             hflip=True, seed=0))
        else:
            data = make_dataset(x, y, BATCH, training=True, hflip=True, seed=0).repeat()
    else:
        x = rng.random((2048, 32, 32, 3), dtype=np.float32)
        y = rng.integers(0, 10, 2048).astype(np.int32)

        def dataset(ctx=None):
            return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH, drop_remainder=True).prefetch(2)

        data = cluster.per_worker_dataset(strategy, dataset) if strategy is not None else dataset()
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    model.fit(data, epochs=1, steps_per_epoch=3 * STEPS_PER_EXECUTION, verbose=0)  # warm-up: tracing
    model.fit(data, epochs=1, steps_per_epoch=(executions + 1) * STEPS_PER_EXECUTION, verbose=0, callbacks=[timer])
    steps = [1000 * (b - a) / STEPS_PER_EXECUTION for a, b in zip(ends, ends[1:])]
    return {"index": index, "step_ms_median": round(statistics.median(steps), 1), "step_ms": [round(s, 1) for s in steps]}


def launch(kind: str, executions: int, source: str) -> list[dict]:
    """Run one setup (solo, pair or two) and return each process's result."""
    from multi_worker import free_port

    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    addrs = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}" if kind == "two" else ""
    procs = [subprocess.Popen(["taskset", "-c", str(i), sys.executable, __file__, "--child", "--addrs", addrs,
                               "--index", str(i), "--executions", str(executions), "--input", source],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(1 if kind == "solo" else 2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not lines:
            sys.exit(f"{kind}: a process exited {p.returncode}:\n{err[-2000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--executions", type=int, default=10, help="timed train-function calls per process")
    ap.add_argument("--input", choices=("tensors", "pipeline"), default="tensors",
                    help="float tensors in memory (the step alone), or the build's tf.data pipeline with augmentation")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--addrs", default="", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.addrs, args.index, args.executions, args.input)), flush=True)
        return
    from multi_worker import core_shares
    from quick_build import machine, save_result

    rounds = []
    for r in range(args.rounds):
        res = {"core_probe_share_and_matmuls_per_s": core_shares()}
        for kind in ("solo", "pair", "two"):
            res[kind] = launch(kind, args.executions, args.input)
        solo = res["solo"][0]["step_ms_median"]
        # two independent processes each go at their own pace; two workers at the slower one's (lockstep)
        res["pair_scaling"] = round(sum(solo / p["step_ms_median"] for p in res["pair"]), 3)
        res["two_scaling"] = round(2 * solo / max(p["step_ms_median"] for p in res["two"]), 3)
        rounds.append(res)
        print(f"round {r + 1}: step ms solo {solo}, pair {[p['step_ms_median'] for p in res['pair']]}, "
              f"two {[p['step_ms_median'] for p in res['two']]} -> scaling pair {res['pair_scaling']:.2f}x, "
              f"two workers {res['two_scaling']:.2f}x (images/s: two {2 * BATCH / max(p['step_ms_median'] for p in res['two']) * 1000:.0f}, "
              f"solo {BATCH / solo * 1000:.0f})", flush=True)
    out = {"date": dt.date.today().isoformat(), "machine": machine(), "settings": vars(args) | {"batch_per_worker": BATCH},
           "rounds": rounds,
           "pair_scaling_median": statistics.median(r["pair_scaling"] for r in rounds),
           "two_scaling_median": statistics.median(r["two_scaling"] for r in rounds)}
    path = save_result(HERE / "results" / f"multi_worker_step-{args.input}-{dt.date.today().isoformat()}.json", out)
    print(f"median scaling: two independent processes {out['pair_scaling_median']:.2f}x, two workers "
          f"{out['two_scaling_median']:.2f}x -> {path}")


if __name__ == "__main__":
    main()
