"""What the `edge-app` commands share: the model options, their bundling into one object, the
model given as MODEL or --model, and writing a user's output file with one clear error."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import click

from edge_app.cli.params import NonEmptyPath
from edge_app.errors import HintedError, OutputError
from edge_app.quiet import VerboseGroup, verbose_option
from edge_app.runtime import DELEGATES, RUNTIME_NAMES

RUNTIME_CHOICES = ("auto", *RUNTIME_NAMES)


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

    return click.argument("model_arg", required=False, metavar="[MODEL]", type=NonEmptyPath(path_type=Path))(wrapper)


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
    """A file of lines written whole (a full disk cuts it back to its last complete line), its errors naming it."""
    from edge_app.fsutil import LineFile

    return LineFile(path)


def _key(p: Path) -> tuple:
    """What makes two paths one file: the inode where it exists (symlinks, hard links), else the real path."""
    try:
        st = os.stat(p)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(p)))


def _inside(p: Path, folder: Path) -> bool:
    return Path(os.path.realpath(p)).is_relative_to(os.path.realpath(folder))


def _run_folder_names() -> frozenset[str]:
    """Every name edge_app.contract.files gives a file (or subfolder) of a run folder."""
    from edge_app.contract import files

    names = {v for k, v in vars(files).items() if k.isupper() and isinstance(v, str) and k != "DEMO"}
    return frozenset({*names, files.history_csv("train"), files.history_csv("qat")})


def check_outputs(outputs, inputs=(), runs: tuple | list = (), writes: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is opened, an output that would destroy what the command reads or another output.

    ``outputs``: {option: path} or (option, path) pairs (None: not given). ``inputs``: (what, path) pairs read
    by the command, e.g. ("the model", p); a folder means the images in it, as a folder source, a labelled folder and a
    data tree are read (but a folder of ``runs`` is judged
    by the next rule only). ``runs``: run folders whose files (edge_app.contract.files' names) no output may
    be, but for ``writes``, the names the command itself records there (e.g. eval.json). An existing device or
    pipe (/dev/null, /dev/stdout) is no file to lose and passes. One file through symlinks and hard links is one file."""
    from edge_app.frames.sources import IMAGE_EXTS
    from edge_app.fsutil import is_special

    reads = {*IMAGE_EXTS, ".gif"}  # what a folder of inputs is read for (the training side's data trees take .gif too)
    pairs = outputs.items() if isinstance(outputs, dict) else outputs
    outs = [(opt, Path(p)) for opt, p in pairs if p is not None and not is_special(p)]
    seen: dict[tuple, tuple[str, Path]] = {}
    for opt, p in outs:
        first = seen.setdefault(_key(p), (opt, p))
        if first != (opt, p):
            both = f"both name {p}" if first[1] == p else f"are one file ({first[1]}, {p})"
            raise OutputError(f"{first[0]} and {opt} {both}", "give each output its own file")
    run_dirs = [Path(r) for r in runs if r is not None and Path(r).is_dir()]
    files: dict[tuple, tuple[str, Path]] = {}
    folders: list[tuple[str, Path]] = []
    for what, p in inputs:
        if p is None or not Path(p).exists():
            continue
        if not Path(p).is_dir():
            files.setdefault(_key(Path(p)), (what, Path(p)))
        elif not any(os.path.samefile(p, r) for r in run_dirs):
            folders.append((what, Path(p)))
    names = _run_folder_names() - set(writes)
    run_files = {_key(r / n): (n, r) for r in run_dirs for n in names if (r / n).exists()}
    for opt, p in outs:
        key = _key(p)
        if key in files:
            what, f = files[key]
            raise OutputError(f"{opt} {p} would overwrite {what} ({f})", "give another file")
        for what, folder in folders if p.exists() else ():
            # a hard link's other name may be anywhere in the folder: looked for only where there is one
            read = p.suffix.lower() in reads and _inside(p, folder)
            if read or (os.stat(p).st_nlink > 1 and any(_key(f) == key for f in folder.rglob("*") if f.suffix.lower() in reads)):
                raise OutputError(f"{opt} {p} would overwrite an image of {what} {folder}", "write it outside that folder or under another name")
        for run in run_dirs:
            part = (Path(os.path.realpath(p)).relative_to(os.path.realpath(run)).parts or ("",))[0] if _inside(p, run) else None
            if part in names or key in run_files:
                name, run = (part, run) if part in names else run_files[key]
                raise OutputError(f"{opt} {p} is the run folder's own {name} ({run})", "write it outside the run folder or under another name")


def model_inputs(
    model: str | os.PathLike, delegate: str = "cpu", labels: str | os.PathLike | None = None
) -> tuple[list[tuple[str, Path | None]], list[Path]]:
    """What loading ``model`` (a run folder, a .tflite or ``demo``) reads, as ``inputs`` for :func:`check_outputs`,
    and the run folder it is in (a folder given, or one with a model.json or config.json beside the model)."""
    from edge_app.contract.files import CONFIG_JSON, LABELS_TXT, SIDECAR_NAME, resolve_model_path
    from edge_app.errors import ModelLoadError

    found = []
    for d in dict.fromkeys(("cpu", delegate)):  # an Edge TPU model falls back to the plain one on the CPU
        try:
            found.append(resolve_model_path(model, d))
        except ModelLoadError:
            pass
    if not found:
        resolve_model_path(model, delegate)  # the wrong path said first, as loading would
    folder = found[0].parent
    inputs: list[tuple[str, Path | None]] = [("the model", p) for p in dict.fromkeys(found)]
    inputs += [("the model's sidecar", folder / SIDECAR_NAME), ("the labels", folder / LABELS_TXT)]
    inputs.append(("--labels", Path(labels) if labels is not None else None))
    is_run = Path(model).is_dir() or (folder / SIDECAR_NAME).is_file() or (folder / CONFIG_JSON).is_file()
    return inputs, [folder] if is_run else []


def source_inputs(spec: str, option: str = "--source") -> list[tuple[str, Path | None]]:
    """The files a `run`/`check-input` source reads (a file, a folder, a glob's matches), as edge_app.frames.sources
    tells the kinds apart: a camera, picamera or a URL reads none."""
    import glob

    if spec == "picamera" or spec.isdigit() or spec.startswith("/dev/video") or "://" in spec:
        return []
    p = Path(spec).expanduser()
    if p.exists() or not any(c in spec for c in "*?["):
        return [(option, p)]
    return [(option, Path(f)) for f in glob.glob(spec)]
