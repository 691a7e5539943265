"""Keep the native libraries' start-up chatter off the user's terminal (``--verbose`` shows it).

TensorFlow, XLA and LiteRT log from C++ straight to file descriptor 2, before and regardless of
Python's logging: ``TF_CPP_MIN_LOG_LEVEL`` does not silence the absl messages written before
``absl::InitializeLog()`` (tensorflow/tensorflow#100442, seen here with TensorFlow 2.21: "Could not
find cuda drivers", "failed call to cuInit", the converter's "fully_quantize: 0, ...", LiteRT's
"Created TensorFlow Lite XNNPACK delegate"). So the command-line entry points route descriptor 2
through a pipe to a small filter process that drops what :data:`NOISE` matches — every C++ INFO
and WARNING line of absl/TSL (what ``TF_CPP_MIN_LOG_LEVEL=2`` is meant to hide) and a few known,
harmless ERROR and plain lines — and passes everything else on as it comes: a progress bar's
``\r`` updates at once, a partial line only once it cannot be noise. Fatal messages (``F...``),
other errors and Python's own output always reach the user, also when the process crashes.
"""

from __future__ import annotations

import atexit
import os
import re
import sys

# Whole lines, without their newline: C++ INFO/WARNING lines, and messages seen here that say nothing a user can act on.
NOISE = re.compile(
    rb"^(?:"
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.+-]+:\d+\] .*"  # absl INFO / WARNING
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] [\w/.+-]+:\d+\] .*"  # TSL's older format
    rb"|E\d{4} [\d:. ]+ \d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*"  # no GPU (we say so ourselves)
    rb"|E\d{4} [\d:. ]+ \d+ cuda_(?:dnn|blas|fft)\.cc:\d+\] Unable to register cu\w+ factory: .*"
    rb"|E\d{4} [\d:. ]+ \d+ node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool .*"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|INFO: Initialized TensorFlow Lite runtime\."
    rb")\r?$"
)
# how a noise line can begin: a partial line that matches is held until its newline arrives
_NOISE_START = re.compile(rb"^(?:W|WA|WAR|WARN|WARNI|WARNIN|WARNING|[IWE]\d|\d{4}-|To |fully_|INFO: )")


class LineFilter:
    """Stateful: :meth:`feed` takes bytes as they arrive and returns the bytes to pass on."""

    def __init__(self, noise: re.Pattern[bytes] = NOISE) -> None:
        self.noise = noise
        self.held = b""
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        data = self.held + data
        self.held = b""
        out = []
        *lines, tail = data.split(b"\n")
        for line in lines:
            if self.noise.match(line):
                self.dropped += 1
            else:
                out.append(line + b"\n")
        if tail:
            # a progress bar's update ends in "\r", not "\n": pass it on now; hold only what may be noise
            if b"\r" not in tail and _NOISE_START.match(tail[:8]):
                self.held = tail
            else:
                out.append(tail)
        return b"".join(out)

    def flush(self) -> bytes:
        held, self.held = self.held, b""
        return b"" if self.noise.match(held) else held


_active: dict = {}


def pump(read_fd: int, write_fd: int, lines: LineFilter | None = None) -> None:
    """Copy ``read_fd`` to ``write_fd`` through a :class:`LineFilter` until end of file."""
    lines = lines or LineFilter()
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            chunk = b""
        out = lines.feed(chunk) if chunk else lines.flush()
        if out:
            try:
                os.write(write_fd, out)
            except OSError:
                pass
        if not chunk:
            return


def quiet_native_stderr() -> None:
    """Filter descriptor 2 for the rest of this process (idempotent; undone at exit by :func:`restore`).

    The filter is a separate small process (``python -m edge_app.quiet``) reading a pipe that is now
    descriptor 2: it outlives this one, so what a crash writes last (an abort's fatal message, a
    segfault's traceback) still reaches the terminal. It ignores Ctrl-C and SIGTERM (they are meant
    for this process, which reports on them through it) and ends when the pipe's last writer closes.
    """
    if _active:
        return
    import subprocess

    was_tty = os.isatty(2)
    original = read = write = -1
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read, write = os.pipe()
        child = subprocess.Popen(
            [sys.executable, "-m", "edge_app.quiet"],
            stdin=read,
            stdout=original,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
        os.close(read)
        read = -1
        os.dup2(write, 2)
        os.close(write)
    except OSError:  # no descriptor 2 (a daemon), no descriptors left, no interpreter: keep the noise
        for fd in (original, read, write):
            if fd >= 0:
                os.close(fd)
        return
    _active.update(original=original, child=child, tty=was_tty)
    atexit.register(restore)


def stderr_is_tty() -> bool:
    """Whether stderr is a terminal — also while it runs through the filter's pipe."""
    return _active["tty"] if _active else os.isatty(2)


def restore(timeout: float = 2.0) -> None:
    """Put descriptor 2 back and let the filter pass on what is still in the pipe: call before ``os._exit``."""
    if not _active:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    original, child = _active.pop("original"), _active.pop("child")
    _active.clear()
    os.dup2(original, 2)  # closes this process's write end of the pipe: the filter reads to its end
    os.close(original)
    try:
        child.wait(timeout)
    except Exception:  # noqa: BLE001  (a child process of ours still holds the pipe: the filter ends with it)
        pass


def is_verbose() -> bool:
    """``NIN_VERBOSE`` set to anything but "" or "0"."""
    return os.environ.get("NIN_VERBOSE", "") not in ("", "0")


def wants_verbose(argv: list[str]) -> bool:
    """``--verbose`` anywhere before a ``--`` (the commands also accept it), or ``NIN_VERBOSE=1``."""
    args = argv[: argv.index("--")] if "--" in argv else argv
    return "--verbose" in args or is_verbose()


def verbose_option(command):
    """Give a click command ``--verbose`` (read by :func:`wants_verbose` before click parses anything)."""
    import click

    if not any(p.name == "verbose" for p in command.params):
        command.params.append(
            click.Option(
                ["--verbose"],
                is_flag=True,
                expose_value=False,
                help="Also show the native libraries' own log lines (TensorFlow, LiteRT, OpenCV), hidden by default.",
            )
        )
    return command


def entry_point(argv: list[str] | None) -> None:
    """What both command-line entry points do first: quiet unless asked not to be (``NIN_VERBOSE=1``
    then tells the libraries' own settings, e.g. ``TF_CPP_MIN_LOG_LEVEL``, to stay at their defaults)."""
    if wants_verbose(sys.argv[1:] if argv is None else list(argv)):
        os.environ["NIN_VERBOSE"] = "1"
    else:
        quiet_native_stderr()


class VerboseGroup:
    """Mixin for a click.Group: every command added gets ``--verbose`` (see :func:`verbose_option`)."""

    def add_command(self, cmd, name=None):
        super().add_command(verbose_option(cmd), name)  # type: ignore[misc]


if __name__ == "__main__":  # the filter process started by quiet_native_stderr
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pump(0, 1)
