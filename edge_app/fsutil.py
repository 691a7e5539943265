"""File writes that say which file failed: atomic ones (a crash or Ctrl-C never leaves a half-written
file behind) and a file of lines (a full disk never leaves half a line)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from edge_app.errors import OutputError


def named(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` naming ``path`` (a write's ENOSPC names no file; a temporary file's name would mislead).
    OSError(errno, ...) is the errno's own subclass (PermissionError, ...)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def is_special(path: str | os.PathLike) -> bool:
    """An existing path that is no regular file: a device or a pipe (/dev/null, /dev/stdout, a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.
    A device or a pipe is written to as it is: a rename would replace the device node itself."""
    path = Path(path)
    if is_special(path):
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise named(exc, path) from None
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise named(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise named(exc, path) from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


FULL_HINT = "the lines before it are complete; free some space or write to another disk"


class LineFile:
    """A file of text lines (`run --output`), each ``write`` one or more whole lines. A write that fails
    (a full disk: a short write, then ENOSPC) is cut back to the last complete line, and the
    :class:`~edge_app.errors.OutputError` names the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.name = str(path)
        try:
            self._fh = open(self.path, "wb", buffering=0)  # noqa: SIM115  (unbuffered: what write() returns is what the file holds)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._end = 0  # where the last complete line ends
        self._cuttable = self._fh.seekable() and stat.S_ISREG(os.fstat(self._fh.fileno()).st_mode)

    def _write_some(self, data: memoryview) -> int:
        return self._fh.write(data) or 0

    def write(self, text: str) -> int:
        data = memoryview(text.encode("utf-8"))
        done = 0
        try:
            while done < len(data):
                n = self._write_some(data[done:])
                if not n:  # a file that takes nothing and says nothing: as full as ENOSPC
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as exc:
            self._cut()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}", FULL_HINT) from None
        self._end += done
        return len(text)

    def _cut(self) -> None:
        if self._cuttable:  # a pipe or a device keeps what it was given
            with contextlib.suppress(OSError):
                self._fh.truncate(self._end)
                self._fh.seek(self._end)

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> LineFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NamedStream:
    """An open text stream (stdout) whose write failures are an :class:`~edge_app.errors.OutputError` naming it;
    a broken pipe stays a BrokenPipeError (the reader went away, e.g. ``| head``: the CLI ends quietly)."""

    def __init__(self, stream, name: str = "stdout") -> None:
        self.stream, self.name = stream, name

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            raise self._named(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise self._named(exc) from None

    def _named(self, exc: OSError) -> OSError | OutputError:
        return exc if exc.errno == errno.EPIPE else OutputError(f"cannot write {self.name}: {exc.strerror or exc}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
