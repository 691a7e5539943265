"""Progress for long loops: tqdm's bar on a terminal; plain lines in a log file or a pipe.

A bar redrawn with carriage returns is thousands of updates glued into one line of a log file, so
where stderr is not a terminal :class:`PlainProgress` writes one line at most every ``every`` seconds
(and a last one when a loop that said anything ends).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator


class PlainProgress:
    """The part of tqdm's interface used here: iterate, ``update(n)``, ``n``, ``close()``, ``with``."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, every: float = 30.0, stream=None) -> None:
        self.iterable, self.total, self.desc, self.unit, self.every = iterable, total, desc, unit, every
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.said = self.closed = False

    def _say(self) -> None:
        rate = self.n / max(time.monotonic() - self.t0, 1e-9)
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        self.stream.write(f"{self.desc}: {self.n}{of} {self.unit}{pct}, {rate:.0f} {self.unit}/s\n")
        self.stream.flush()
        self.said = True

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._say()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        if self.said and not self.closed:
            self.closed = True
            self._say()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "img", disable: bool = False, leave: bool = True
):
    """tqdm on a terminal (or when disabled: nothing), :class:`PlainProgress` otherwise."""
    from tqdm import tqdm

    from edge_app.quiet import stderr_is_tty

    if disable or stderr_is_tty():  # (sys.stderr.isatty() says no while stderr runs through the quiet filter)
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, mininterval=1.0, leave=leave)
    return PlainProgress(iterable, total, desc, unit)
