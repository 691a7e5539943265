"""Keep the native libraries' start-up chatter off the user's terminal (``--verbose`` shows it).

TensorFlow, XLA and LiteRT log from C++ straight to file descriptor 2, before and regardless of
Python's logging: ``TF_CPP_MIN_LOG_LEVEL`` does not silence the absl messages written before
``absl::InitializeLog()`` (tensorflow/tensorflow#100442, seen here with TensorFlow 2.21: "Could not
find cuda drivers", "failed call to cuInit", the converter's "fully_quantize: 0, ...", LiteRT's
"Created TensorFlow Lite XNNPACK delegate"). So the command-line entry points route descriptor 2
through a pipe and a thread that drops only lines matching :data:`NOISE` and passes everything else
on at once (progress bars included: a partial line is held back only while it could still become a
noise line). Fatal native messages (``F...``) and errors not listed here still reach the user.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

# Whole lines, without their newline. Each is a message seen here that says nothing a user can act on.
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


def quiet_native_stderr() -> None:
    """Filter descriptor 2 for the rest of this process (idempotent; undone at exit by :func:`restore`)."""
    if _active:
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
    except OSError:  # no descriptor 2 (a daemon), or none left: keep the noise rather than fail
        return
    lines = LineFilter()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(read, 65536)
            except OSError:
                break
            out = lines.feed(chunk) if chunk else lines.flush()
            if out:
                try:
                    os.write(original, out)
                except OSError:
                    pass
            if not chunk:
                break
        os.close(read)

    thread = threading.Thread(target=pump, name="quiet-stderr", daemon=True)
    thread.start()
    _active.update(original=original, thread=thread)
    atexit.register(restore)


def restore(timeout: float = 2.0) -> None:
    """Put descriptor 2 back and pass on what is still in the pipe: call before ``os._exit``."""
    if not _active:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    original, thread = _active.pop("original"), _active.pop("thread")
    os.dup2(original, 2)  # closes this process's last write end of the pipe: the pump reads to its end
    thread.join(timeout)  # ... and passes it on to ``original``, closed only then
    os.close(original)


def wants_verbose(argv: list[str]) -> bool:
    """``--verbose`` anywhere before a ``--`` (the commands also accept it), or ``NIN_VERBOSE=1``."""
    args = argv[: argv.index("--")] if "--" in argv else argv
    return "--verbose" in args or os.environ.get("NIN_VERBOSE", "") not in ("", "0")


def verbose_option(command):
    """Give a click command ``--verbose`` (read by :func:`wants_verbose` before click parses anything)."""
    import click

    if not any(p.name == "verbose" for p in command.params):
        command.params.append(click.Option(
            ["--verbose"], is_flag=True, expose_value=False,
            help="Also show the native libraries' log lines (TensorFlow, absl, LiteRT), hidden by default."))
    return command


def entry_point(argv: list[str] | None) -> None:
    """What both command-line entry points do first: quiet unless asked not to be (``NIN_VERBOSE=1``
    then tells the libraries' own settings, e.g. ``TF_CPP_MIN_LOG_LEVEL``, to stay at their defaults)."""
    if wants_verbose(sys.argv[1:] if argv is None else list(argv)):
        os.environ.setdefault("NIN_VERBOSE", "1")
    else:
        quiet_native_stderr()
