"""One build's settings: a frozen dataclass per stage, put together from a profile and flags.

``BuildConfig`` is what ``config.json`` in a run folder holds; a :class:`BuildRequest` (what the
command line asked for: a profile and the flags given) is resolved into one, once, by
``BuildRequest.config``; ``diff_configs`` says how two differ (a run folder is only resumed with
the settings it was started with).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.splits import DataConfig
from pipeline.errors import RunError
from pipeline.export.convert import ConvertConfig, QatConfig
from pipeline.models.nin import ARCHS, ModelConfig, has_class_maps
from pipeline.runs.profiles import PROFILES, SETTINGS
from pipeline.train.fit import TrainConfig


@dataclass(frozen=True)
class BuildConfig:
    data: DataConfig
    model: ModelConfig  # num_classes and input_shape are filled from the data
    train: TrainConfig
    qat: QatConfig
    convert: ConvertConfig
    profile: str = "quick"
    # --time-budget MINUTES (None: not given, or --epochs given, which wins); ``plan``: what was measured and
    # planned before training (pipeline.stages.plan), None until then
    time_budget_min: float | None = None
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildConfig:
        try:
            m = dict(d["model"])
            m["input_shape"] = tuple(m["input_shape"])
            return cls(
                data=DataConfig(**d["data"]),
                model=ModelConfig(**m),
                train=TrainConfig(**d["train"]),
                qat=QatConfig(**d["qat"]),
                convert=ConvertConfig(**d["convert"]),
                profile=d.get("profile", "quick"),
                time_budget_min=d.get("time_budget_min"),
                plan=d.get("plan"),
            )
        except (KeyError, TypeError) as exc:
            raise RunError(f"config.json does not describe a build ({exc})", "start a new run folder") from None

    def planned_as(self, saved: BuildConfig) -> BuildConfig:
        """The same command again on a run folder whose epochs were planned for the same --time-budget: the
        recorded plan (a plan is made once; the same budget on another day would plan other epochs)."""
        if self.time_budget_min is None or self.plan is not None or saved.plan is None or saved.time_budget_min != self.time_budget_min:
            return self
        train = dataclasses.replace(self.train, epochs=saved.train.epochs, cuts=saved.train.cuts)  # and where a deadline cut them
        return dataclasses.replace(self, train=train, plan=saved.plan)


def io_for_target(target: str, io_type: str | None) -> str:
    """The Edge TPU (and pycoral) want uint8 input and output; elsewhere int8 unless asked."""
    if target == "edgetpu":
        if io_type == "int8":
            raise RunError("--target edgetpu takes uint8 input and output", "leave out --io-type int8")
        return "uint8"
    return io_type or "int8"


def _absolute(path: Path | None) -> str | None:
    """A data path as config.json records it: absolute, so a run resumes from any working directory."""
    return str(Path(path).expanduser().resolve()) if path else None


@dataclass(frozen=True)
class BuildRequest:
    """What `nin-pipeline build` (or one sweep candidate) asks for: a profile, and the settings the user
    gave explicitly (``overrides``, keyed by :class:`~pipeline.runs.profiles.Profile` field). ``class_maps``
    None: export them where the architecture has them; ``data_cache`` None: not given (auto)."""

    dataset: str = "cifar10"
    data_dir: Path | None = None
    profile: str = "quick"
    arch: str = "nin-cifar"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    io_type: str | None = None
    target: str = "cpu"
    class_maps: bool | None = None
    seed: int = 0
    data_cache: str | None = None
    memory_budget_gb: float | None = None
    time_budget_min: float | None = None
    # which of the fields above (dataset ... seed, not the data place) the user gave explicitly: a resume with
    # flags changes only those (and ``overrides``); the others are the run's own, not the command's defaults
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.overrides) - set(SETTINGS)
        if unknown:  # a programming error (the CLI only passes known flags)
            raise TypeError(f"BuildRequest overrides: no setting {', '.join(sorted(unknown))}")

    def config(self) -> BuildConfig:
        """The one resolution of a request into the settings a run folder records."""
        p = dataclasses.replace(PROFILES[self.profile], **self.overrides)
        arch, info = self.arch, ARCHS[self.arch]
        input_size = p.input_size
        if arch != "nin-cifar" and input_size is None and self.dataset == "folder":
            input_size = info.default_input_size
        pool2 = p.pool2 if p.pool2 in info.pools else info.pools[0]  # a profile's pool2 is nin-cifar's
        if "pool2" in self.overrides and p.pool2 not in info.pools:
            raise RunError(f"--pool2 {p.pool2}: {arch} has {' / '.join(info.pools)} only", "--pool2 is nin-cifar's; leave it out")
        model = ModelConfig(arch=arch, width=float(p.width), dropout=float(p.dropout), head=p.head, pool2=pool2)
        if model.head not in info.heads:
            raise RunError(
                f"--head {model.head}: {arch} has {' / '.join(info.heads)} only",
                "the fc heads are nin-cifar's ablation of its global average pooling; leave out --head",
            )
        class_maps = self.class_maps
        if class_maps is None:
            class_maps = has_class_maps(model)
        elif class_maps and not has_class_maps(model):
            raise RunError(
                f"--class-maps: {arch}{' with --head ' + model.head if model.head != 'gap' else ''} has no "
                "per-class maps (only NiN with its global average pooling head has)",
                "leave out --class-maps",
            )
        data_dir = _absolute(self.data_dir)
        return BuildConfig(
            data=DataConfig(
                dataset=self.dataset,
                data_dir=data_dir,
                input_size=input_size,
                val_fraction=self.val_fraction,
                limit_train=p.limit_train,
                limit_test=p.limit_test,
                seed=self.seed,
                cache=self.data_cache or "auto",
                memory_budget_gb=self.memory_budget_gb,
            ),
            model=model,
            train=TrainConfig(
                epochs=int(p.epochs),
                batch_size=int(p.batch_size),
                lr=float(p.lr),
                weight_decay=float(p.weight_decay),
                schedule=p.schedule,
                warmup_epochs=float(p.warmup_epochs),
                label_smoothing=float(p.label_smoothing),
                ema=float(p.ema),
                seed=self.seed,
                deterministic=bool(p.deterministic),
            ),
            qat=QatConfig(epochs=int(p.qat_epochs), lr=float(p.qat_lr), batch_size=int(p.batch_size), distill=float(p.qat_distill)),
            convert=ConvertConfig(io_type=io_for_target(self.target, self.io_type), class_maps=class_maps, target=self.target),
            profile=self.profile,
            time_budget_min=self.time_budget_min if "epochs" not in self.overrides else None,  # --epochs given wins
        )

    def changes_to(self, cfg: BuildConfig) -> list[str]:
        """What this request changes in a run folder's own settings ``cfg`` (``build --resume`` with flags):
        exactly the settings given explicitly (``overrides``, ``given``) that differ, as ``diff_configs`` says them."""
        own: dict[str, Any] = {
            "dataset": cfg.data.dataset,
            "profile": cfg.profile,
            "arch": cfg.model.arch,
            "val_fraction": cfg.data.val_fraction,
            "io_type": cfg.convert.io_type,
            "target": cfg.convert.target,
            "class_maps": cfg.convert.class_maps,
            "seed": cfg.train.seed,
        }
        base = dataclasses.replace(self, **own, overrides=_profile_settings(cfg), given=frozenset())
        # settings that follow from a given one take its default, not the run's (e.g. --target edgetpu: uint8)
        if "target" in self.given:
            own["io_type"] = None
        if "arch" in self.given or "head" in self.overrides:
            own["class_maps"] = None
        settings = {} if "profile" in self.given else _profile_settings(cfg)
        kept = {k: v for k, v in own.items() if k not in self.given}
        asked = dataclasses.replace(self, **kept, overrides={**settings, **self.overrides}, given=frozenset())
        # against the run's settings as this version resolves them, so that nothing the user did not give is blamed on them
        return diff_configs(base.config().to_dict(), asked.config().to_dict())

    def with_data_place(self, cfg: BuildConfig) -> BuildConfig:
        """A run folder's own ``cfg`` (a resume), with where and how the data is held taken from this
        request where it gives them: these may change on resume (the data itself may not: its fingerprint)."""
        data = dataclasses.replace(
            cfg.data,
            cache=self.data_cache or cfg.data.cache,
            memory_budget_gb=self.memory_budget_gb if self.memory_budget_gb is not None else cfg.data.memory_budget_gb,
            data_dir=_absolute(self.data_dir) if self.data_dir is not None else cfg.data.data_dir,
        )
        return dataclasses.replace(cfg, data=data)


def _profile_settings(cfg: BuildConfig) -> dict[str, Any]:
    """A run's own value of every setting a flag of `build` can override (the fields of Profile)."""
    d, m, t, q = cfg.data, cfg.model, cfg.train, cfg.qat
    return dict(
        width=m.width,
        dropout=m.dropout,
        epochs=t.epochs,
        qat_epochs=q.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        schedule=t.schedule,
        warmup_epochs=t.warmup_epochs,
        qat_lr=q.lr,
        qat_distill=q.distill,
        label_smoothing=t.label_smoothing,
        ema=t.ema,
        deterministic=t.deterministic,
        head=m.head,
        pool2=m.pool2,
        input_size=d.input_size,
        limit_train=d.limit_train,
        limit_test=d.limit_test,
    )


def with_target(cfg: BuildConfig, target: str) -> BuildConfig:
    """The same build, converted for another target from now on."""
    io_type = io_for_target(target, None if target == "edgetpu" else cfg.convert.io_type)
    return dataclasses.replace(cfg, convert=dataclasses.replace(cfg.convert, target=target, io_type=io_type))


# How the decoded images are held changes no result (the splits and pixels are the same in every
# mode), and where they live is not what they are (the run folder records the data's fingerprint):
# a run folder may be resumed with other values of these.
NOT_TRAINING_SETTINGS = {"data.cache", "data.memory_budget_gb", "data.data_dir"}  # where the data lives: its fingerprint is checked


# settings that follow from another one (one flag sets both): said once, under the one the flag names
DERIVED = {"qat.batch_size": "train.batch_size", "data.seed": "train.seed", "convert.io_type": "convert.target"}


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: old then, new now`` for every training setting that differs (lists and tuples compare equal);
    one that follows from another that differs too (``DERIVED``) is left to that one."""
    out = _diffs(a, b, prefix)
    return [line for key, line in out if DERIVED.get(key) not in {k for k, _ in out}]


def _diffs(a: dict, b: dict, prefix: str) -> list[tuple[str, str]]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if key in NOT_TRAINING_SETTINGS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diffs(va, vb, f"{key}.")
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (list(vb) if isinstance(vb, (list, tuple)) else vb):
            out.append((key, f"{key}: {va!r} then, {vb!r} now"))
    return out


def format_diffs(diffs: list[str], most: int = 6) -> str:
    """``diffs`` on one line: all of them, or the first ``most`` and how many more."""
    shown = "; ".join(diffs[:most])
    return shown + (f"; and {len(diffs) - most} more" if len(diffs) > most else "")
