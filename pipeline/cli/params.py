"""click parameter types shared by the `nin-pipeline` command modules (cli, choose)."""

from __future__ import annotations

from pathlib import Path

import click


class _Bounded(click.ParamType):
    """An int or float above a lower bound, said in words ("must be greater than 0")."""

    def __init__(self, base: type, minimum: float, inclusive: bool) -> None:
        self.base, self.minimum, self.inclusive = base, minimum, inclusive
        self.name = base.__name__

    def convert(self, value, param, ctx):
        try:
            v = self.base(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if v < self.minimum or (v == self.minimum and not self.inclusive):
            self.fail(f"must be {'0 or more' if self.inclusive else 'greater than 0'}, got {v}", param, ctx)
        return v


POSITIVE_INT = _Bounded(int, 0, inclusive=False)
NON_NEGATIVE_INT = _Bounded(int, 0, inclusive=True)
POSITIVE_FLOAT = _Bounded(float, 0, inclusive=False)
RUN_DIR = click.Path(file_okay=False, path_type=Path)


class _Workers(click.ParamType):
    name = "workers"

    def convert(self, value, param, ctx):
        from pipeline.stages.cluster import ClusterError, parse_workers

        if isinstance(value, tuple):
            return value
        try:
            return parse_workers(value)
        except ClusterError as exc:
            self.fail(str(exc), param, ctx)


WORKERS = _Workers()


class CommaList(click.ParamType):
    """A comma-separated list of ``item`` values ("0.125,0.25"), each checked by ``item``."""

    def __init__(self, item: click.ParamType, name: str) -> None:
        self.item, self.name = item, name

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [v.strip() for v in str(value).split(",") if v.strip()]
        if not parts:
            self.fail("give at least one value, comma-separated", param, ctx)
        return [self.item.convert(v, param, ctx) for v in parts]
