"""Benchmark: the convert stage's three conversions (float32, QAT int8, PTQ int8) of a finished run,
handing the TFLite converter the Keras model (as before 2026-11-27) or a bare module holding only the
serving function and the weights (pipeline/export/convert.py `_converter`, now). Alternated in one process;
checks that both give the same bytes.

    python benchmarks/convert_speed.py artifacts/<run> [--rounds 2]

Writes benchmarks/results/convert_speed-<date>.json with the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quick_build import tf_env, write_result  # noqa: E402


def keras_model_converter(model):
    """The converter as it was made before: the Keras model is what the converter saves first."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name="image"))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run folder (model_float.keras and the QAT weights)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tf_env()
    import numpy as np

    from pipeline.export import convert
    from pipeline.models.nin import with_class_maps
    from pipeline.runs.folder import RunFolder

    run = RunFolder.open(args.run)
    float_model, qat_model = with_class_maps(run.load_float()), with_class_maps(run.load_qat())
    rep = (np.random.default_rng(0).random((256, *float_model.input_shape[1:])) * 255).astype(np.uint8)
    current = convert._converter
    ways = {"keras model": keras_model_converter, "bare module": current}
    seconds: dict[str, list[float]] = {k: [] for k in ways}
    digests: dict[str, list[str]] = {}
    try:
        for r in range(args.rounds):
            for name, make in ways.items():
                convert._converter = make
                t = time.perf_counter()
                out = (convert.to_tflite_float(float_model), convert.to_tflite_int8(qat_model, rep),
                       convert.to_tflite_int8(float_model, rep))
                seconds[name].append(round(time.perf_counter() - t, 2))
                digests[name] = [hashlib.sha256(b).hexdigest() for b in out]
                print(f"round {r + 1}: {name}: {seconds[name][-1]:.1f} s for the three conversions", flush=True)
    finally:
        convert._converter = current
    same = digests["keras model"] == digests["bare module"]
    print(f"same .tflite bytes both ways: {same}")
    write_result("convert_speed", {"run": str(args.run), "parameters": float_model.count_params(),
                                   "representative_images": len(rep), "seconds": seconds, "same_bytes": same,
                                   "sha256_bare_module": digests["bare module"]})


if __name__ == "__main__":
    main()
