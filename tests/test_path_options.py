"""Every path option and argument of both commands refuses an empty value (exit 2): click turns ``''``
into the current folder, so `edge-app run --source ''` read every image under it. Found by walking
every command, so a new path option with plain click.Path fails here."""

import click
import pytest
from click.testing import CliRunner

from edge_app.cli.main import cli as edge_cli

from pipeline.cli.main import cli as pipeline_cli


def _path_params(group: click.Group, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _path_params(command, (*path, name))
            continue
        for p in command.params:
            if isinstance(p.type, click.Path):
                yield (*path, name), p


PATHS = [(cli, path, p) for cli in (edge_cli, pipeline_cli) for path, p in _path_params(cli)]


def test_the_walk_finds_the_path_options():
    found = {(" ".join(path), p.name) for _, path, p in PATHS}
    for expected in (("eval", "source"), ("run", "output"), ("build", "data_dir"), ("package", "run_dir")):
        assert expected in found, expected


@pytest.mark.parametrize("cli, path, param", PATHS, ids=[f"{' '.join(p)}:{q.name}" for _, p, q in PATHS])
def test_every_path_refuses_an_empty_value(cli, path, param):
    from edge_app.cli.params import NonEmptyPath

    assert isinstance(param.type, NonEmptyPath), f"{' '.join(path)} {param.name}: use edge_app.cli.params.NonEmptyPath"
    with pytest.raises(click.BadParameter, match="empty"):
        param.type.convert("  ", param, None)


def test_eval_source_empty_is_refused(edge_model):
    res = CliRunner().invoke(edge_cli, ["eval", str(edge_model), "--source", ""])
    assert res.exit_code == 2 and "empty" in res.output, res.output
