"""What the `edge-app` commands share: the model options, their bundling into one object, the
model given as MODEL or --model, and writing a user's output file with one clear error."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import click

from edge_app.errors import OutputError
from edge_app.runtime import DELEGATES, RUNTIMES

RUNTIME_CHOICES = ("auto", *RUNTIMES)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """The model options of `run`, `bench`, `eval` and `info`; :meth:`open` loads it (see model.open_model)."""

    model: Path
    runtime: str = "auto"
    delegate: str = "cpu"
    threads: int | None = None
    device: str | None = None
    delegate_lib: str | None = None
    delegate_options: dict[str, str] = dataclasses.field(default_factory=dict)
    fallback_cpu: bool = False
    ignore_checksum: bool = False
    labels: Path | None = None

    def open(self):
        from edge_app.model import open_model

        options = dict(self.delegate_options, **({"device": self.device} if self.device else {}))
        return open_model(self.model, runtime=self.runtime, delegate=self.delegate, threads=self.threads,
                          delegate_lib=self.delegate_lib, delegate_options=options, fallback_cpu=self.fallback_cpu,
                          ignore_checksum=self.ignore_checksum, labels_file=self.labels)


def bundle(name: str, factory: Callable, fields: tuple[str, ...]):
    """Hand a command the options named ``fields`` as one object, ``factory(**options)``, in ``name``."""
    def decorate(command):
        @functools.wraps(command)
        def wrapper(**kwargs):
            kwargs[name] = factory(**{k: kwargs.pop(k) for k in fields if k in kwargs})
            return command(**kwargs)
        return wrapper
    return decorate


def model_anywhere(command):
    """The model as MODEL or as --model MODEL, the same for every command that takes one."""
    @functools.wraps(command)
    def wrapper(**kwargs):
        given = kwargs.pop("model_arg", None)
        if kwargs.get("model") is None:
            kwargs["model"] = given
        elif given is not None and Path(given) != Path(kwargs["model"]):
            raise click.UsageError(f"two models given ({given} and --model {kwargs['model']}): give one")
        if kwargs["model"] is None:
            raise click.UsageError("which model? give a run folder or a .tflite as MODEL or --model MODEL")
        return command(**kwargs)
    return click.argument("model_arg", required=False, metavar="[MODEL]", type=click.Path(path_type=Path))(wrapper)


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelChoice))


def kv(ctx, param, values):
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r} is not key=value")
        k, _, val = v.partition("=")
        out[k.strip()] = val.strip()
    return out


def runtime_options(fallback: bool = False):
    """The options that say how a model runs: the same for run, bench and eval (``--fallback-cpu``: run only)."""
    options = [
        click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True),
        click.option("--delegate", type=click.Choice(DELEGATES), default="cpu", show_default=True),
        click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads (default: the cores this process may use)."),
        click.option("--device", default=None, help="Edge TPU device, e.g. usb:0 or pci:0."),
        click.option("--delegate-lib", default=None, help="Path of any external delegate library."),
        click.option("--delegate-option", "delegate_options", multiple=True, callback=kv, help="key=value for the delegate."),
        *([click.option("--fallback-cpu", is_flag=True, help="If the delegate fails to load, warn and run on the CPU.")]
          if fallback else []),
        click.option("--ignore-checksum", is_flag=True, help="Run a model whose sha256 differs from its model.json (warns)."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def write_text(path: Path, text: str) -> None:
    from edge_app.fsutil import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def open_text(path: Path):
    try:
        return open(path, "w", buffering=1)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


