"""The devices training runs on: every GPU TensorFlow sees, else all CPU cores — and the knobs
that exercise the GPU paths on a CPU."""

from __future__ import annotations

import logging
import os
from typing import Any

from edge_app.runtime import usable_cores

log = logging.getLogger("pipeline")


def configure_devices() -> dict[str, Any]:
    """Use every GPU TensorFlow sees (growing memory, mixed precision), else all CPU cores.

    Two knobs exercise the GPU paths on a CPU (tests, debugging): ``NIN_CPU_REPLICAS=N`` splits the
    CPU into N logical devices, so training and QAT run under MirroredStrategy as on N GPUs;
    ``NIN_MIXED_PRECISION=1`` trains with the mixed_float16 policy as on a GPU (slower on a CPU).
    Both must take effect before TensorFlow starts its runtime: this is the build's first TF call."""
    import tensorflow as tf

    replicas = int(os.environ.get("NIN_CPU_REPLICAS", "0") or 0)
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        except RuntimeError:  # the runtime already started (a multi-worker build starts it first)
            log.warning("NIN_CPU_REPLICAS=%d ignored: TensorFlow's runtime had already started", replicas)
            replicas = 0
    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except RuntimeError:
            pass
    onednn = onednn_enabled()
    if gpus:
        log.info("training on %d GPU(s) with mixed precision", len(gpus))
    else:
        log.info(
            "no GPU visible to TensorFlow: training on the CPU (%d cores, oneDNN kernels %s)",
            usable_cores(),
            {True: "on", False: "off: TF_ENABLE_ONEDNN_OPTS=1 is about 2x faster on AVX2 CPUs", None: "unknown"}[onednn],
        )
    if replicas > 1:
        log.info(
            "NIN_CPU_REPLICAS=%d: the CPU split into %d logical devices (MirroredStrategy, as on %d GPUs)",
            replicas,
            len(tf.config.list_logical_devices("CPU")),
            replicas,
        )
    return {"gpus": len(gpus), "cpus": usable_cores(), "tensorflow": tf.__version__, "onednn": onednn}


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS, else TensorFlow's own choice by
    CPU features); None where this TensorFlow cannot say (a private function, present in 2.21)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def mixed_precision_wanted() -> bool:
    """mixed_float16 for float training: on a GPU, or where NIN_MIXED_PRECISION=1 asks for it."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU")) or os.environ.get("NIN_MIXED_PRECISION") == "1"
