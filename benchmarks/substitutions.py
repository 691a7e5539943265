"""Benchmark: what the QAT-friendly substitutions in pipeline/models/zoo.py cost in float accuracy.

    python benchmarks/substitutions.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

The original forms that do not quantise or fold — DenseNet's pre-activation BN -> ReLU -> Conv and
AlexNet's local response normalisation without BatchNorm — built here (they are not product
architectures: they would not convert to a fully int8 model), trained float-only with the project's
own data pipeline and trainer under the budget of benchmarks/architectures.py (the same 20,000-image
CIFAR-10 subset, 4 epochs, the quick recipe, seed 0, the same widths), and evaluated on the full
test split. Their float top-1 against the float top-1 of the zoo's forms in the architectures
benchmark's run folders is the cost. If the shared recipe's learning rate makes the loss NaN or leaves
the model at chance level (a net without BatchNorm at lr 0.2), it is retried at a tenth of it, and said.

Writes benchmarks/results/substitutions-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from quick_build import tf_env, write_result  # noqa: E402

tf_env()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def densenet_preact(cfg, growth: int = 32, convs=(4, 4, 4, 4)):
    """d2l.ai's DenseNet as written: conv_block = BN -> ReLU -> 3x3 conv; transition = BN -> ReLU ->
    1x1 conv -> 2x2 avg pool; BN -> ReLU before the global average pooling."""
    import tf_keras as keras

    from pipeline.models.layers import conv_bn_relu, gap_classifier, scaled

    L = keras.layers
    inputs = keras.Input(cfg.input_shape, name="image")
    x = conv_bn_relu(inputs, scaled(64, cfg.width), 7, "stem", cfg, strides=2)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    k = scaled(growth, cfg.width)
    for b, n in enumerate(convs, 1):
        for _ in range(n):
            y = L.Conv2D(k, 3, padding="same", kernel_initializer="he_normal")(L.ReLU()(L.BatchNormalization(momentum=0.9)(x)))
            x = L.Concatenate()([x, y])
        if b < len(convs):
            x = L.Conv2D(max(8, int(x.shape[-1]) // 2), 1, kernel_initializer="he_normal")(
                L.ReLU()(L.BatchNormalization(momentum=0.9)(x)))
            x = L.AveragePooling2D(2, strides=2)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    return keras.Model(inputs, gap_classifier(x, cfg), name="densenet_preact")


def alexnet_lrn(cfg):
    """AlexNet as written: convs with bias and ReLU, no BatchNorm; local response normalisation
    (size 5, alpha 1e-4, beta 0.75, k 2) after the first two convs' ReLU."""
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.models.layers import fc_classifier, scaled

    L = keras.layers
    w = cfg.width

    def conv(x, c, k, s=1, pad="same"):
        return L.Conv2D(scaled(c, w), k, strides=s, padding=pad, activation="relu", kernel_initializer="he_normal")(x)

    def lrn(x):
        return L.Lambda(lambda t: tf.nn.local_response_normalization(t, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75))(x)

    inputs = keras.Input(cfg.input_shape, name="image")
    x = L.MaxPooling2D(3, strides=2)(lrn(conv(inputs, 96, 11, 4, "valid")))
    x = L.MaxPooling2D(3, strides=2)(lrn(conv(x, 256, 5)))
    x = L.MaxPooling2D(3, strides=2)(conv(conv(conv(x, 384, 3), 384, 3), 256, 3))
    return keras.Model(inputs, fc_classifier(x, cfg, hidden=(scaled(4096, w), scaled(4096, w)), dropout=cfg.dropout),
                       name="alexnet_lrn")


ORIGINALS = {  # name: (builder, the zoo arch it stands beside, width, extra build settings)
    "densenet-preact": (densenet_preact, "densenet", 1.0, {}),
    "alexnet-lrn": (alexnet_lrn, "alexnet", 0.375, {"input_size": 67}),
}


def train_original(name: str, args) -> dict:
    import dataclasses

    from pipeline.runs.config import BuildRequest
    from pipeline.data.splits import make_splits
    from pipeline.errors import TrainingError
    from pipeline.report.predict import predict_keras
    from pipeline.stages.inputs import fit_datasets
    from pipeline.train.fit import fit, seed_everything

    builder, arch, width, extra = ORIGINALS[name]
    cfg = BuildRequest(dataset="cifar10", data_dir=args.data_dir, arch=arch, overrides={
        "width": width, "epochs": args.epochs, "limit_train": args.limit_train, **extra}).config()
    splits = make_splits(cfg.data)
    mcfg = dataclasses.replace(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    lr, tries = cfg.train.lr, []
    for attempt in range(2):
        seed_everything(0, True)
        model = builder(mcfg)
        # the build's own pipelines (repeated; a one-pass dataset ran out after the first epoch: the first
        # run of this script trained for one epoch only and is not reported)
        train, val, steps = fit_datasets(splits, cfg.train.batch_size, 0)
        out = args.work / f"{name}-lr{lr:g}"
        t = time.time()
        try:
            fit(model, train, val, dataclasses.replace(cfg.train, lr=lr), steps_per_epoch=steps, run_dir=out, tag="train",
                backup_dir=out / "checkpoints")
        except TrainingError as exc:  # the loss became NaN: say so and try a tenth of the rate
            tries.append({"lr": lr, "failed": str(exc), "seconds": round(time.time() - t, 1)})
            lr /= 10
            continue
        top1 = float((predict_keras(model, splits.x_test).argmax(1) == splits.y_test).mean())
        tries.append({"lr": lr, "float_top1": top1, "seconds": round(time.time() - t, 1), "params": model.count_params()})
        if top1 > 1.5 / splits.num_classes or attempt == 1:
            break
        lr /= 10  # learned nothing (chance level) at the shared rate: a tenth of it, said in "tries"
    return {"stands_beside": arch, "width": width, "input_size": splits.input_shape[0], "tries": tries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-substitutions")
    ap.add_argument("--archs-work", type=Path, default=REPO / "artifacts" / "bench-archs",
                    help="the architectures benchmark's run folders (their float top-1 is the comparison)")
    ap.add_argument("--limit-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--only", nargs="*", default=None, help="a subset of: " + ", ".join(ORIGINALS))
    ap.add_argument("--merge", type=Path, default=None, help="keep the other originals' results from this earlier JSON")
    args = ap.parse_args()
    res = json.loads(args.merge.read_text())["results"] if args.merge else {}
    for name in args.only or ORIGINALS:
        res[name] = train_original(name, args)
        report = args.archs_work / res[name]["stands_beside"] / "report.json"
        if report.is_file():
            ours = json.loads(report.read_text())["variants"]["float_keras"]["top1"]
            res[name]["zoo_form_float_top1"] = ours
            last = res[name]["tries"][-1]
            if "float_top1" in last:
                res[name]["original_minus_zoo_form_points"] = round(100 * (last["float_top1"] - ours), 2)
        print(name, json.dumps(res[name]), flush=True)
    write_result("substitutions", {"settings": {k: str(v) for k, v in vars(args).items()},
           "results": res})


if __name__ == "__main__":
    main()
