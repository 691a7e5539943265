"""Named settings bundles for `nin-pipeline build --profile`.

quick: a small-width NiN that trains, fine-tunes and converts on a 2-core CPU in about
       22 minutes on CIFAR-10, to 80% int8 top-1 (see benchmarks/).
paper: the paper's CIFAR-10 recipe (full width, dropout 0.5, SGD with momentum and weight
       decay, 10x learning-rate drops, flips and translations), meant for a GPU.
"""

from __future__ import annotations

PROFILES: dict[str, dict[str, object]] = {
    "quick": {
        # 15 epochs, no dropout: the 14-epoch build with dropout 0.1 ended underfitting (train 79.2%,
        # validation 79.4%); without it, validation 80.2% and QAT int8 test top-1 80.53% in 22.4 min on a
        # 2-core AVX2 host with oneDNN on (benchmarks/README.md, "Quick build")
        "width": 0.25, "dropout": 0.0, "epochs": 15, "qat_epochs": 1, "batch_size": 128,
        "lr": 0.2, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1.0, "qat_lr": 0.001,
        # QAT learns the float model's answers: on one float model, int8 agreement with it 98.55% vs 96.12%
        # learning the labels (same lr; benchmarks/README.md, "QAT targets"), top-1 the same (76.17%)
        "qat_distill": 1.0,
    },
    "paper": {
        "width": 1.0, "dropout": 0.5, "epochs": 200, "qat_epochs": 5, "batch_size": 128,
        "lr": 0.1, "weight_decay": 5e-4, "schedule": "step", "warmup_epochs": 0.0, "qat_lr": 0.001,
    },
}
