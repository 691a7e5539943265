"""What the `edge-app` commands share: the model options, their bundling into one object, the
model given as MODEL or --model, and writing a user's output file with one clear error."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import click

from edge_app.errors import HintedError, OutputError
from edge_app.quiet import VerboseGroup, verbose_option
from edge_app.runtime import DELEGATES, RUNTIMES

RUNTIME_CHOICES = ("auto", *RUNTIMES)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class ErrorGroup(VerboseGroup, click.Group):
    """The one error handler of both commands (`edge-app`, and `nin-pipeline`, which adds what only
    training meets): every error a user can fix (a :class:`~edge_app.errors.HintedError` of either
    side, an OSError) becomes one ``Error: ...`` line and exit status 1, no traceback."""

    os_error_hint = ""  # what to do about a file that cannot be read or written, after the OS's reason

    def invoke(self, ctx: click.Context):
        import errno

        try:
            return super().invoke(ctx)
        except HintedError as exc:
            if getattr(exc, "exit_now", False):
                # training threads (a multi-worker strategy's) would keep an ordinary exit waiting
                from edge_app.quiet import restore

                click.echo(f"Error: {one_line(str(exc))}", err=True)
                restore()
                os._exit(1)
            raise click.ClickException(one_line(str(exc))) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # the reader of stdout went away (e.g. `| head`): click ends quietly
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(one_line(f"{where}{exc.strerror or exc}{self.os_error_hint}")) from None


def command_group(cls: type[ErrorGroup], **kwargs):
    """``@click.group`` with the shared settings: ``-h``/``--help``, ``--verbose`` (once, from edge_app.quiet)."""

    def decorate(f):
        return verbose_option(click.group(cls=cls, context_settings={"help_option_names": ["-h", "--help"]}, **kwargs)(f))

    return decorate


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
        return open_model(
            self.model,
            runtime=self.runtime,
            delegate=self.delegate,
            threads=self.threads,
            delegate_lib=self.delegate_lib,
            delegate_options=options,
            fallback_cpu=self.fallback_cpu,
            ignore_checksum=self.ignore_checksum,
            labels_file=self.labels,
        )


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
        *([click.option("--fallback-cpu", is_flag=True, help="If the delegate fails to load, warn and run on the CPU.")] if fallback else []),
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
