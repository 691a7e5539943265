"""What a build needs of this machine, estimated before any image is decoded at its size: the decoded
images (in memory, or in the decoded-image cache on disk), the images being decoded and batched, and
the model's activations for one training batch, against the RAM (the container's share, where it has
one) and the cache's disk. A size it cannot hold is refused with how much it would need and what to
pass instead, rather than found out by the kernel's out-of-memory killer (an exit 137 and no message).

The model's part is measured on the architecture itself, built at its own input size for the shapes
only (in a graph of its own: no weights are made), and scaled by the number of pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

from edge_app.runtime import usable_cores

from pipeline.data.splits import DataPlan, machine_ram
from pipeline.errors import RunError
from pipeline.runs.config import BuildConfig

log = logging.getLogger("pipeline")

FLOAT = 4  # bytes of a float32
# the weights, their gradients, the optimizer's momentum and the QAT copy of them
WEIGHT_COPIES = 4
# a decoding thread holds the decoded image and Pillow's resized copy
DECODE_COPIES = 2


def fits_machine(cfg: BuildConfig) -> Callable[[DataPlan], None]:
    """The ``fits`` check of :func:`pipeline.data.splits.make_splits` for a build with ``cfg``."""

    def fits(plan: DataPlan) -> None:
        _check_memory(cfg, plan)
        _check_disk(plan)

    return fits


def model_bytes(cfg: BuildConfig, hwc: tuple[int, int, int], classes: int, batch: int) -> tuple[float, float] | None:
    """(activations of one training batch, weights with their training copies) in bytes, for ``cfg.model``
    on ``hwc`` images; None where the architecture cannot be built for them (the train stage says why)."""
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.models.nin import ARCHS, build_model

    info = ARCHS[cfg.model.arch]
    ref = max(info.default_input_size, info.min_input_size)
    mcfg = dataclasses.replace(cfg.model, input_shape=(ref, ref, hwc[2]), num_classes=classes)
    with tf.Graph().as_default():  # shapes only: no weights are made, no layer name is taken from the stage's model
        try:
            model = build_model(mcfg)
        except ValueError:
            return None
        elements = 0
        for layer in model.layers:
            shapes = layer.output_shape if isinstance(layer.output_shape, list) else [layer.output_shape]
            elements += sum(math.prod(s[1:]) for s in shapes)
        params = model.count_params()
        flat = any(isinstance(layer, keras.layers.Flatten) for layer in model.layers)  # a dense head grows with the image
    scale = hwc[0] * hwc[1] / ref**2
    return elements * scale * batch * FLOAT, params * (scale if flat else 1.0) * FLOAT * WEIGHT_COPIES


def _gb(n: float) -> str:
    return f"{n / 1e9:,.3g} GB"


def _check_memory(cfg: BuildConfig, plan: DataPlan) -> None:
    import tensorflow as tf

    h, w, c = plan.hwc
    image = h * w * c
    batch = min(cfg.train.batch_size, plan.images)  # a batch larger than the data is the data
    parts = {
        f"the decoded images held in memory (--data-cache {plan.mode})": float(plan.decoded_bytes if plan.mode == "memory" else 0),
        f"decoding ({usable_cores()} threads)": float(usable_cores() * image * DECODE_COPIES),
        f"a batch of {batch} in the input pipeline": float(batch * image * (1 + FLOAT)),
    }
    model = model_bytes(cfg, plan.hwc, plan.classes, batch)
    if model is not None and not tf.config.list_physical_devices("GPU"):  # on a GPU the model's part is in its memory
        parts[f"the model's activations for a batch of {batch}"] = model[0]
        parts["its weights while training"] = model[1]
    need, ram = sum(parts.values()), machine_ram()
    if need <= ram:
        return
    size = f"--input-size {cfg.data.input_size}" if cfg.data.input_size else f"the images' own size ({h}x{w})"
    shown = ", ".join(f"{k}: {_gb(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.01 * need)
    fixes = []
    from pipeline.models.nin import ARCHS

    largest = int(min(h, w) * math.sqrt(ram / need))  # every part grows with the pixels (the weights at most so)
    if largest >= ARCHS[cfg.model.arch].min_input_size:
        fixes.append(f"--input-size {largest} or less")
    batch_part = sum(v for k, v in parts.items() if "batch of" in k)
    if batch_part:
        smaller = int(batch * (ram - (need - batch_part)) / batch_part)
        if smaller >= 1:
            fixes.append(f"--batch-size {smaller} or less at this size")
    if plan.mode == "memory" and plan.decoded_bytes > 0.5 * ram:
        fixes.append("--data-cache disk (the decoded images on disk)")
    raise RunError(
        f"{size}: training {cfg.model.arch} on {plan.images:,} images of {h}x{w}x{c} needs about {_gb(need)} of memory "
        f"({shown}), more than the {_gb(ram)} this machine has",
        f"pass {', or '.join(fixes)}" if fixes else "choose a smaller --input-size, --batch-size or --width",
    )


def _check_disk(plan: DataPlan) -> None:
    """The decoded-image cache (mode disk) must fit the disk it goes to, unless it is there already."""
    if plan.mode != "disk":
        return
    place = Path(plan.cache_dir)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return  # not knowable here: the write itself says so
    need = plan.decoded_bytes
    if need <= free or any(p.stat().st_size == need for p in Path(plan.cache_dir).glob("*.u8")):
        return
    h, w, c = plan.hwc
    raise RunError(
        f"the decoded-image cache of {plan.source} ({plan.images:,} images of {h}x{w}x{c}) takes {_gb(need)}, and {place} has {_gb(free)} free",
        "pass a smaller --input-size, or --data-cache none (decode the files every epoch), or set NIN_CACHE_DIR to a disk with room",
    )
