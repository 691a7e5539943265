"""Benchmark: does a model that ends with the moving average of its weights (`build --ema M`) lose
accuracy because its BatchNorm statistics are the raw weights' ones?

    python benchmarks/ema_bn.py artifacts/e27-ema --images 8192

Keras's optimizer EMA averages the trainable variables only; the BatchNorm layers' moving mean and
variance stay those that the raw weights' activations gave. This loads the run's float model, measures
its top-1 on the run's own validation split, then re-estimates every BatchNorm layer's moving
statistics from the averaged weights' own activations (a forward pass in training mode over
``--images`` training images, no augmentation, the weights frozen) and measures again; McNemar between
the two on the same images. The test split is not looked at. Writes results/ema_bn-<date>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from quick_build import tf_env, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=8192, help="training images to re-estimate the statistics on")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    tf_env()

    import numpy as np
    import tf_keras as keras

    from pipeline.data.splits import make_splits
    from pipeline.report.figures import mcnemar
    from pipeline.runs.folder import RunFolder

    run = RunFolder(args.run)
    cfg = run.load_config()
    splits = make_splits(cfg.data, progress=False)
    model = run.load_float()
    x_val = np.asarray(splits.x_val, np.float32) / 255.0
    y_val = np.asarray(splits.y_val).reshape(-1)

    def correct():
        return model.predict(x_val, batch_size=512, verbose=0).argmax(1) == y_val

    before = correct()
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # a random sample: the training images are stored class by class, and a class-sorted slice skews the statistics
    pick = np.sort(np.random.default_rng(0).permutation(len(splits.y_train))[: args.images])
    x_train = np.asarray(splits.x_train[pick], np.float32) / 255.0
    # a cumulative average over the passes, not the layer's own 0.99 momentum: momentum 1 - 1/(k+1) at pass k
    for k, i in enumerate(range(0, len(x_train), args.batch)):
        for bn in bns:
            bn.momentum = k / (k + 1)
        model(x_train[i : i + args.batch], training=True)
    after = correct()
    res = {
        "run": str(args.run),
        "ema": cfg.train.ema,
        "batchnorm_layers": len(bns),
        "reestimated_on_train_images": len(x_train),
        "validation_images": int(len(y_val)),
        "float_validation_top1_as_built": round(100 * float(before.mean()), 2),
        "float_validation_top1_statistics_reestimated": round(100 * float(after.mean()), 2),
        "mcnemar_reestimated_vs_built": mcnemar(before, after),
    }
    print(res)
    write_result("ema_bn", res)


if __name__ == "__main__":
    main()
