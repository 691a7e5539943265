"""Holding a run folder for one command (``run_lock``), and a failed write that names its file (``writing``).
``pipeline.runs.folder`` writes every file of a run folder through these."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from edge_app.contract.files import LOCK_FILE

from pipeline.errors import RunError

log = logging.getLogger("pipeline")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def run_lock(root: Path, command: str) -> Iterator[None]:
    """Hold the run folder ``root`` for this process while ``command`` works in it.

    Two commands writing one folder (two builds, a build and ``report``) corrupt each other's
    history and checkpoints, so the second is refused with the holder's PID, host and command.
    The lock is ``flock`` on ``root/.lock``: the kernel drops it when its process ends, however it
    ends (kill -9 included), so a dead holder never blocks the next command. A folder this made
    and that holds nothing else afterwards is removed again.
    """
    import fcntl

    root = Path(root)
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            try:
                h = json.loads(path.read_text())
                holder = f"PID {h['pid']} on {h['host']}, `{h['command']}` since {h['since']}"
            except (OSError, ValueError, KeyError, TypeError):
                holder = "another process"
            raise RunError(
                f"{root} is in use by {holder}", "wait for it to end, or stop it; two commands must not write one run folder"
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts): go on, and say so
            log.warning("cannot lock %s (%s): a second command on this run folder would not be noticed", path, exc.strerror or exc)
        with writing(path):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": now()}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock
        with contextlib.suppress(OSError):  # the folder may be gone (a build that never started removes it)
            if made and [p.name for p in root.iterdir()] == [LOCK_FILE]:
                path.unlink(missing_ok=True)
                root.rmdir()


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` (a full disk, no permission) as a RunError that names the file:
    the OS's own error from a write (ENOSPC) carries no file name."""
    import errno

    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise RunError(
            f"cannot write {path}: {exc.strerror or exc}",
            ("free some space on that disk" if full else "make it writable") + " (or choose another --out), then run the same "
            "command again: what was finished is kept",
        ) from None
