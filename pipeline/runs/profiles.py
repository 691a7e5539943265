"""Named settings bundles for `nin-pipeline build --profile`: one typed :class:`Profile` each.

quick: a small-width NiN that trains, fine-tunes and converts on a 2-core CPU (time and accuracy
       per machine: docs/benchmarks/quick-build.md).
paper: the paper's CIFAR-10 recipe (full width, dropout 0.5, SGD with momentum and weight
       decay, 10x learning-rate drops, flips and translations), meant for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Profile:
    """Every setting a flag of `build` can override (the flag's name with ``_``: ``--qat-lr`` is ``qat_lr``)."""

    width: float
    dropout: float
    epochs: int
    qat_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    warmup_epochs: float
    qat_lr: float
    qat_distill: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0
    deterministic: bool = True
    head: str = "gap"
    pool2: str = "avg"
    input_size: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None


SETTINGS = tuple(f.name for f in fields(Profile))

PROFILES: dict[str, Profile] = {
    # no dropout: with it the quick model ended underfitting (docs/benchmarks/quick-build.md);
    # QAT learns the float model's answers (qat_distill): int8 stays closer to float ("QAT targets")
    "quick": Profile(
        width=0.25,
        dropout=0.0,
        epochs=15,
        qat_epochs=1,
        batch_size=128,
        lr=0.2,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        qat_lr=0.001,
        qat_distill=1.0,
        # block 2's 3x3/2 average as a depthwise convolution with fixed 1/9 weights: XNNPACK has no int8
        # average pooling, so the paper's form cuts the int8 graph in two partitions (docs/benchmarks/recipe.md)
        pool2="depthwise",
    ),
    "paper": Profile(
        width=1.0,
        dropout=0.5,
        epochs=200,
        qat_epochs=5,
        batch_size=128,
        lr=0.1,
        weight_decay=5e-4,
        schedule="step",
        warmup_epochs=0.0,
        qat_lr=0.001,
    ),
}
