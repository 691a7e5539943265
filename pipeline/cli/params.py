"""click parameter types shared by the `nin-pipeline` command modules (cli, choose, ship); the float
types are edge-app's (edge_app.cli.params: NaN and infinity refused), so both commands read numbers alike."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edge_app.cli.params import FINITE_FLOAT as FINITE_FLOAT  # edge-app's float types, for the command modules here
from edge_app.cli.params import POSITIVE_FLOAT as POSITIVE_FLOAT
from edge_app.cli.params import FiniteFloat as FiniteFloat
from edge_app.cli.params import NonEmptyPath as NonEmptyPath

from pipeline.data.tree import FOLLOW_LINKS_ENV


class _Bounded(click.ParamType):
    """An int above a lower bound, said in words ("must be greater than 0")."""

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
# random.seed, numpy's and TensorFlow's all take it, and QAT uses seed + 1 (np.random.seed wants < 2**32)
SEED = click.IntRange(0, 2**32 - 2)
RUN_DIR = NonEmptyPath(file_okay=False, path_type=Path)


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


def _follow_links(ctx, param, value: bool) -> bool:
    # the tree is listed deep inside the build (and again on a resume): the environment carries the choice there
    if value:
        os.environ[FOLLOW_LINKS_ENV] = "1"
    return value


FOLLOW_LINKS = click.option(
    "--follow-links",
    is_flag=True,
    expose_value=False,
    callback=_follow_links,
    help=f"Read the images that links in an image-tree --data-dir point to outside it (default: refused; env {FOLLOW_LINKS_ENV}=1).",
)
