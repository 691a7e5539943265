"""Every float option of both commands refuses NaN and infinity at the command line (exit 2, naming the
option): found by walking every command of `edge-app` and `nin-pipeline`, so a new float option without
edge_app.cli.params.FiniteFloat fails here. And a device latency file holding NaN or infinity is refused."""

import click
import pytest
from click.testing import CliRunner

from edge_app.cli.main import cli as edge_cli

from pipeline.cli.main import cli as pipeline_cli

BAD = ("nan", "inf", "-inf", "1e309", "NaN", "-Infinity")


def _is_float(t: click.ParamType) -> bool:
    """A float type: click's (FloatParamType), or any other that turns "0.5" (or a list of it) into floats."""
    if isinstance(t, click.types.FloatParamType) or isinstance(getattr(t, "item", None), click.types.FloatParamType):
        return True
    for probe in ("0.5", "1.5", "50.5", "1000.5"):
        try:
            v = t.convert(probe, None, None)
        except Exception:  # noqa: BLE001  (out of its range, or no number at all)
            continue
        values = v if isinstance(v, list) else [v]
        if values and all(isinstance(x, float) for x in values):
            return True
    return False


def _float_options(group: click.Group, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _float_options(command, (*path, name))
            continue
        for p in command.params:
            if _is_float(p.type):
                yield (*path, name), p


FLOAT_OPTIONS = [(cli, path, p) for cli in (edge_cli, pipeline_cli) for path, p in _float_options(cli)]


def test_the_walk_finds_the_float_options():
    found = {("edge-app" if c is edge_cli else "nin-pipeline", " ".join(path), p.opts[0]) for c, path, p in FLOAT_OPTIONS}
    for expected in (
        ("edge-app", "run", "--fps"),
        ("edge-app", "run", "--threshold"),
        ("edge-app", "run", "--max-fps"),
        ("nin-pipeline", "build", "--lr"),
        ("nin-pipeline", "build", "--memory-budget"),
        ("nin-pipeline", "sweep", "--widths"),
        ("nin-pipeline", "sweep", "--size-budget"),
        ("nin-pipeline", "edgetpu compile", "--timeout"),
        ("nin-pipeline", "describe", "--width"),
        ("nin-pipeline", "build", "--collective-timeout"),
    ):
        assert expected in found, expected
    assert len(found) >= 18


@pytest.mark.parametrize("cli, path, option", FLOAT_OPTIONS, ids=[f"{' '.join(p)} {o.opts[0]}" for _, p, o in FLOAT_OPTIONS])
def test_every_float_option_refuses_nan_and_infinity(cli, path, option):
    flag = option.opts[0]
    for bad in BAD:
        res = CliRunner().invoke(cli, [*path, flag, bad])
        assert res.exit_code == 2, (flag, bad, res.output)
        assert flag in res.output and "not a finite number" in res.output, (flag, bad, res.output)
    from edge_app.cli.params import FiniteFloat

    t = option.type
    assert isinstance(getattr(t, "item", t), FiniteFloat)


def test_finite_float_keeps_the_bounds_and_their_words():
    from edge_app.cli.params import POSITIVE_FLOAT, FiniteFloat

    assert FiniteFloat(0, 1).convert("0.5", None, None) == 0.5
    assert POSITIVE_FLOAT.convert("1e308", None, None) == 1e308
    with pytest.raises(click.BadParameter, match="must be greater than 0, got -1"):
        POSITIVE_FLOAT.convert("-1", None, None)
    with pytest.raises(click.BadParameter, match="must be 0 or more"):
        FiniteFloat(0).convert("-0.5", None, None)
    with pytest.raises(click.BadParameter, match=r"1.5 is not in the range 0<=x<=1"):
        FiniteFloat(0, 1).convert("1.5", None, None)
    with pytest.raises(click.BadParameter, match="is not a valid float"):
        FiniteFloat().convert("abc", None, None)


def test_width_nan_is_not_called_a_bad_input_size():
    res = CliRunner().invoke(pipeline_cli, ["describe", "--width", "nan"])
    assert res.exit_code == 2 and "--width" in res.output and "--input-size" not in res.output


@pytest.mark.parametrize("median", ["NaN", "Infinity", "-Infinity", "1e309", "-1"])
def test_a_device_latency_file_with_nan_or_infinity_is_refused_naming_it(tmp_path, median):
    from pipeline.choose.sweep import device_latencies
    from pipeline.errors import RunError

    f = tmp_path / "bench.json"
    f.write_text('{"model_sha256": "ab", "invoke_ms": {"median": ' + median + "}}")
    with pytest.raises(RunError, match="not a number of milliseconds") as err:
        device_latencies([f])
    assert str(f) in str(err.value)
    f.write_text('{"model_sha256": "ab", "invoke_ms": {"median": 2.5}}')
    assert device_latencies([f])["ab"]["ms"] == 2.5
