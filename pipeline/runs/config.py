"""One build's settings: a frozen dataclass per stage, put together from a profile and flags.

``BuildConfig`` is what ``config.json`` in a run folder holds; ``make_build_config`` turns the
command line's choices into one, and ``diff_configs`` says how two differ (a run folder is
only resumed with the settings it was started with).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.export.convert import ConvertConfig, QatConfig
from pipeline.data.splits import DataConfig
from pipeline.errors import RunError
from pipeline.models.nin import ARCHS, ModelConfig, has_class_maps
from pipeline.runs.profiles import PROFILES
from pipeline.train.fit import TrainConfig


@dataclass(frozen=True)
class BuildConfig:
    data: DataConfig
    model: ModelConfig  # num_classes and input_shape are filled from the data
    train: TrainConfig
    qat: QatConfig
    convert: ConvertConfig
    profile: str = "quick"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildConfig":
        try:
            m = dict(d["model"])
            m["input_shape"] = tuple(m["input_shape"])
            return cls(
                data=DataConfig(**d["data"]), model=ModelConfig(**m), train=TrainConfig(**d["train"]),
                qat=QatConfig(**d["qat"]), convert=ConvertConfig(**d["convert"]), profile=d.get("profile", "quick"),
            )
        except (KeyError, TypeError) as exc:
            raise RunError(f"config.json does not describe a build ({exc})", "start a new run folder") from None


def io_for_target(target: str, io_type: str | None) -> str:
    """The Edge TPU (and pycoral) want uint8 input and output; elsewhere int8 unless asked."""
    if target == "edgetpu":
        if io_type == "int8":
            raise RunError("--target edgetpu takes uint8 input and output", "leave out --io-type int8")
        return "uint8"
    return io_type or "int8"


def make_build_config(dataset: str, data_dir: Path | None, profile: str, arch: str, explicit: dict[str, Any],
                      val_fraction: float, io_type: str | None, seed: int, class_maps: bool | None = None,
                      target: str = "cpu", data_cache: str = "auto", memory_budget_gb: float | None = None) -> BuildConfig:
    """A profile's settings, overridden by the flags the user gave (``explicit``). ``class_maps``
    None: export them where the architecture has them."""
    p = {**PROFILES[profile], **explicit}
    input_size = p.get("input_size")
    if arch != "nin-cifar" and input_size is None and dataset == "folder":
        input_size = ARCHS[arch].default_input_size
    model = ModelConfig(arch=arch, width=float(p["width"]), dropout=float(p["dropout"]), head=str(p.get("head", "gap")))
    info = ARCHS[arch]
    if model.head not in info.heads:
        raise RunError(f"--head {model.head}: {arch} has {' / '.join(info.heads)} only",
                       "the fc heads are nin-cifar's ablation of its global average pooling; leave out --head")
    if class_maps is None:
        class_maps = has_class_maps(model)
    elif class_maps and not has_class_maps(model):
        raise RunError(f"--class-maps: {arch}{' with --head ' + model.head if model.head != 'gap' else ''} has no "
                       "per-class maps (only NiN with its global average pooling head has)", "leave out --class-maps")
    return BuildConfig(
        data=DataConfig(dataset=dataset, data_dir=str(data_dir.expanduser().resolve()) if data_dir else None,
                        input_size=input_size, val_fraction=val_fraction, limit_train=p.get("limit_train"),
                        limit_test=p.get("limit_test"), seed=seed, cache=data_cache, memory_budget_gb=memory_budget_gb),
        model=model,
        train=TrainConfig(epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), lr=float(p["lr"]),
                          weight_decay=float(p["weight_decay"]), schedule=str(p["schedule"]),
                          warmup_epochs=float(p["warmup_epochs"]), label_smoothing=float(p.get("label_smoothing", 0.0)), seed=seed,
                          deterministic=bool(p.get("deterministic", True))),
        qat=QatConfig(epochs=int(p["qat_epochs"]), lr=float(p["qat_lr"]), batch_size=int(p["batch_size"]),
                      distill=float(p.get("qat_distill", 0.0))),
        convert=ConvertConfig(io_type=io_for_target(target, io_type), class_maps=class_maps, target=target),
        profile=profile,
    )


def with_target(cfg: BuildConfig, target: str) -> BuildConfig:
    """The same build, converted for another target from now on."""
    io_type = io_for_target(target, None if target == "edgetpu" else cfg.convert.io_type)
    return dataclasses.replace(cfg, convert=dataclasses.replace(cfg.convert, target=target, io_type=io_type))


# How the decoded images are held changes no result (the splits and pixels are the same in every
# mode), and where they live is not what they are (the run folder records the data's fingerprint):
# a run folder may be resumed with other values of these.
NOT_TRAINING_SETTINGS = {"data.cache", "data.memory_budget_gb", "data.data_dir"}  # where the data lives: its fingerprint is checked


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: old then, new now`` for every training setting that differs (lists and tuples compare equal)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if f"{prefix}{k}" in NOT_TRAINING_SETTINGS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{prefix}{k}.")
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (list(vb) if isinstance(vb, (list, tuple)) else vb):
            out.append(f"{prefix}{k}: {va!r} then, {vb!r} now")
    return out
