"""`edge-app agent`: serve this device's runtime to a host (edge_app.agent; the wire contract in
edge_app.agent.protocol). The command only checks its options and starts the server."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from edge_app.agent.jobs import TOKEN_ENV
from edge_app.agent.protocol import DEFAULT_PORT
from edge_app.cli.params import POSITIVE_FLOAT, TOKEN, NonEmptyPath


def data_aliases(ctx, param, values) -> dict[str, Path]:
    """``ALIAS=DIR`` pairs: the labelled folders a host may name (by alias only) for eval and check-input."""
    from edge_app.agent.jobs import ALIAS

    out: dict[str, Path] = {}
    for v in values:
        alias, sep, folder = v.partition("=")
        alias = alias.strip()
        if not sep or not folder.strip():
            raise click.BadParameter(f"{v!r} is not ALIAS=DIR", param=param)
        if not ALIAS.match(alias):
            raise click.BadParameter(f"alias {alias!r}: a letter, then letters, digits, '_', '.' or '-' (64 at most)", param=param)
        if alias in out:
            raise click.BadParameter(f"alias {alias!r} is given twice", param=param)
        path = Path(folder.strip()).expanduser()
        if not path.is_dir():
            raise click.BadParameter(f"{path}: no such folder (for alias {alias!r})", param=param)
        out[alias] = path.resolve()
    return out


def _token(ctx, token: str | None, token_file: Path | None) -> str | None:
    if token is not None and token_file is not None:
        raise click.UsageError("give --token or --token-file, not both")
    if token_file is None:
        return token
    try:
        text = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {token_file} ({exc})", param_hint="--token-file") from None
    return TOKEN.convert(text, next(p for p in ctx.command.params if p.name == "token_file"), ctx)


def _on_loopback(listen: str) -> bool:
    from edge_app.camera.serve import is_loopback, parse_address
    from edge_app.errors import ServeError

    try:
        return is_loopback(parse_address(listen)[0])
    except ServeError:
        return True  # the agent says what is wrong with the address


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nin-edge" / "agent"


@click.command(name="agent")
@click.option(
    "--listen",
    "listen",
    default=str(DEFAULT_PORT),
    show_default=True,
    metavar="[HOST:]PORT",
    help="Where to serve; binds 127.0.0.1 unless HOST is given (off loopback a token is required). Port 0: any free one.",
)
@click.option(
    "--token",
    type=TOKEN,
    default=None,
    envvar=TOKEN_ENV,
    metavar="TEXT",
    help="The token every request must carry (env EDGE_APP_AGENT_TOKEN). Off loopback one is made up and printed if not given.",
)
@click.option(
    "--token-file",
    type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the token from this file (the bundle's `./install.sh --agent` makes one, mode 600).",
)
@click.option(
    "--data",
    multiple=True,
    callback=data_aliases,
    metavar="ALIAS=DIR",
    help="A labelled folder (DIR/<class>/*.jpg) a host may evaluate on, by its alias (repeatable).",
)
@click.option(
    "--cache-dir",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="Where uploaded models are kept (default: ~/.cache/nin-edge/agent).",
)
@click.option("--max-model-mb", type=click.IntRange(1, 1 << 16), default=64, show_default=True, help="The largest model an upload may be.")
@click.option(
    "--cache-mb", type=click.IntRange(1, 1 << 24), default=512, show_default=True, help="Models kept, at most (the least recently used go)."
)
@click.option("--job-timeout", type=POSITIVE_FLOAT, default=600.0, show_default=True, help="Seconds a job may take before it is stopped.")
@click.option("--client-timeout", type=POSITIVE_FLOAT, default=30.0, show_default=True, help="Seconds a client may stall mid-request.")
@click.pass_context
def agent_cmd(
    ctx,
    listen: str,
    token: str | None,
    token_file: Path | None,
    data: dict[str, Path],
    cache_dir: Path | None,
    max_model_mb: int,
    cache_mb: int,
    job_timeout: float,
    client_timeout: float,
) -> None:
    """Serve this device's runtime to a host: it uploads a model (by sha256) and runs bench, eval (on a
    folder given here with --data), check-target, info or check-input on it, one job at a time, each in a
    child process with a time limit. Answers JSON with the device's identity. No TensorFlow."""
    import logging
    import sys

    from edge_app.agent.server import Agent, AgentConfig

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    if cache_mb < max_model_mb:
        raise click.BadParameter(f"{cache_mb} MB holds no model of --max-model-mb {max_model_mb}", param_hint="--cache-mb")
    token = _token(ctx, token, token_file)
    if token is None and not _on_loopback(listen):  # as for `run --serve`: one is made up, and said once
        token = secrets.token_urlsafe(24)
        click.echo(f"edge-app agent: reachable from other machines, so it wants this token (give it to the host): {token}", err=True)
    config = AgentConfig(
        listen=listen,
        token=token,
        cache_dir=(cache_dir or default_cache_dir()).expanduser(),
        data=data,
        max_model_bytes=max_model_mb << 20,
        cache_bytes=cache_mb << 20,
        job_timeout=job_timeout,
        client_timeout=client_timeout,
    )
    agent = Agent(config)
    aliases = ", ".join(f"{k}={v}" for k, v in sorted(data.items())) or "none"
    click.echo(
        f"edge-app agent: serving {agent.url} ({'token required' if config.token else 'no token: loopback only'}); "
        f"models in {config.cache_dir} (at most {cache_mb} MB); data: {aliases}",
        err=True,
    )
    try:
        agent.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from systemctl stop (edge_app.errors.Terminated)
        click.echo("edge-app agent: stopped", err=True)
    finally:
        agent.close()
