"""click parameter types of both commands (`edge-app`, and `nin-pipeline` through pipeline.cli.params):
every float option's type, which refuses NaN and infinity, and the preview's token."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A float that is a number: NaN and infinity (``nan``, ``inf``, ``1e309``) are refused. A bound
    alone does not do it: every comparison with NaN is false, so ``FloatRange(0, 1)`` lets ``nan``
    through. ``min``/``max`` bound it as click.FloatRange does; a lower bound alone is said in words
    ("must be greater than 0")."""

    name = "float"

    def convert(self, value, param, ctx):
        v = click.FLOAT.convert(value, param, ctx)  # click's own message for what is no number at all
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.max is None and self.min is not None and (v < self.min or (v == self.min and self.min_open)):
            self.fail(f"must be {f'greater than {self.min:g}' if self.min_open else f'{self.min:g} or more'}, got {v:g}", param, ctx)
        return super().convert(v, param, ctx)


FINITE_FLOAT = FiniteFloat()
POSITIVE_FLOAT = FiniteFloat(0, min_open=True)

TOKEN_MIN_LENGTH = 16
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(24))"'


class Token(click.ParamType):
    """A secret someone must not guess: at least TOKEN_MIN_LENGTH printable ASCII characters, no
    spaces (it goes into a URL and a cookie). The message never repeats the value."""

    name = "token"

    def convert(self, value, param, ctx):
        text = str(value)
        if len(text) < TOKEN_MIN_LENGTH or not all("!" <= ch <= "~" for ch in text):
            self.fail(
                f"a token needs at least {TOKEN_MIN_LENGTH} characters, printable ASCII without spaces (this one has "
                f"{len(text)}); make one with: {MAKE_TOKEN}",
                param,
                ctx,
            )
        return text


TOKEN = Token()


class NonEmptyPath(click.Path):
    """click.Path that refuses an empty (or blank) value: click makes ``''`` the current folder, so
    ``--source ''`` would read everything under it."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: give a path", param, ctx)
        return super().convert(value, param, ctx)
