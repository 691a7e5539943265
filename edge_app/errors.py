"""Every error a user of the device side can fix, under one base class.

Each carries a ``hint`` (what to do about it); the CLI catches :class:`EdgeAppError` (and
OSError) in one place and prints ``message: hint`` on one line with a non-zero exit.
"""

from __future__ import annotations


class HintedError(Exception):
    """A problem the user can fix, with what to do about it. ``str()`` is both on one line.
    The training side's ``PipelineError`` shares it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class EdgeAppError(HintedError, RuntimeError):
    """The device side's base: every error of edge_app a user can fix."""


class RuntimeNotFound(EdgeAppError):
    """No TFLite runtime is installed (or the one asked for is not)."""


class ModelLoadError(EdgeAppError):
    """A model file is missing, damaged, or not a classifier this app can run."""


class DelegateError(EdgeAppError):
    """A delegate that was asked for cannot be used here."""


class SidecarError(EdgeAppError, ValueError):
    """The sidecar is missing, unreadable or not of a schema this version understands."""


class SourceError(EdgeAppError):
    """The source cannot be opened (or stopped delivering frames for good)."""


class OutputError(EdgeAppError):
    """A window or video file that cannot be opened or written."""


class ServeError(EdgeAppError):
    """The preview server cannot start (a bad address, a port in use)."""


class AgentError(EdgeAppError):
    """A request the device agent refuses, or a job of it that failed. ``kind`` is its key in
    edge_app.agent.protocol.STATUS (the HTTP status it is answered with); ``reply`` the job's reply, if it ran."""

    def __init__(self, kind: str, message: str, hint: str = "", reply: dict | None = None) -> None:
        super().__init__(message, hint)
        self.kind, self.reply = kind, reply


class AgentUnreachable(AgentError):
    """No agent answers at the address (refused, timed out, the connection dropped mid-request): the device
    is off, its agent not started, or the network gone. The host tells it apart to keep what it measured and resume."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__("unreachable", message, hint)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``systemctl stop``, ``docker stop``, Kubernetes) or SIGHUP (the ssh session or terminal
    gone), ended like Ctrl-C: the loop's summary, the build's "finished epochs are checkpointed" message.
    ``signal_name`` says which; ``exit_code`` is 128 + its number, as a shell reports it."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


def stop_on_sigterm() -> None:
    """Make SIGTERM, and SIGHUP where the platform has it, raise :class:`Terminated` in the main thread.
    Entry points call it (a library import must not change a process's signal handling); elsewhere than
    the main thread it does nothing. A SIGHUP already ignored (``nohup``) stays ignored."""
    import signal

    def handler(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    try:
        signal.signal(signal.SIGTERM, handler)
        hup = getattr(signal, "SIGHUP", None)  # not on Windows
        if hup is not None and signal.getsignal(hup) is not signal.SIG_IGN:
            signal.signal(hup, handler)
    except ValueError:  # not the main thread: an embedding application keeps its own handling
        pass
