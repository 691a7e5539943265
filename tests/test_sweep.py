"""`nin-pipeline sweep`: candidates as run folders, resume after an interruption, the Pareto front,
device latency files and the budget pick."""

import json

import pytest
from click.testing import CliRunner

from pipeline.cli.main import cli
from pipeline.choose.sweep import Candidate, candidates, pick


def _rec(run, ms, acc, kb):
    return {"run": run, "int8_ms_1_thread": ms, "qat_int8_top1": acc, "int8_bytes": kb * 1024}


def test_candidates_and_their_folder_names():
    cands = candidates(["nin-cifar", "lenet"], [0.125, 0.25], [24, 32])
    assert len(cands) == 8 and cands[0] == Candidate("nin-cifar", 0.125, 24)
    assert cands[0].name == "nin-cifar-w0.125-s24" and Candidate("lenet", 1.0).name == "lenet-w1"


def test_the_budget_pick_says_why_and_what_more_accuracy_would_cost():
    recs = [_rec("small", 0.5, 0.60, 40), _rec("mid", 1.0, 0.70, 80), _rec("big", 3.0, 0.75, 300)]
    choice = pick(recs, latency_ms=2.0, size_kb=None)
    assert choice["winner"] == "mid" and choice["next_better"] == "big"
    assert "3.00 ms > 2 ms" in choice["why"] and "+5.00 points" in choice["why"]
    assert pick(recs, latency_ms=None, size_kb=50)["winner"] == "small"
    assert pick(recs, latency_ms=5, size_kb=1000)["next_better"] is None
    none = pick(recs, latency_ms=0.1, size_kb=None)
    assert none["winner"] is None and "no candidate meets the budget" in none["why"]


def test_a_tiny_real_sweep_resumes_after_an_interruption_and_picks(lenet_sweep, tmp_path):
    """Two candidates on a CIFAR-10 subset (conftest.lenet_sweep): the sweep was interrupted while
    building the second; run again, it skipped the first and built the second. Then a device latency
    file and a budget."""
    import shutil

    shared, args, calls, first, second = lenet_sweep
    assert first.exit_code == 130 and "interrupted" in first.output
    assert calls == ["lenet-w0.25", "lenet-w0.5", "lenet-w0.5"]  # the finished candidate was skipped the second time
    res = second
    assert res.exit_code == 0, res.output
    out = tmp_path / "sweep"  # a copy: the runs below rewrite sweep.json
    shutil.copytree(shared, out)
    args = [a if a != str(shared) else str(out) for a in args]
    data = json.loads((out / "sweep.json").read_text())
    assert [c["run"] for c in data["candidates"]] == ["lenet-w0.25", "lenet-w0.5"] and data["pareto"]
    assert (out / "sweep.md").is_file() and b"data:image/png;base64," in (out / "sweep.html").read_bytes()
    assert "Pareto front" in res.output

    # the device's own latency (what `edge-app bench MODEL --json F` writes there) replaces this host's
    from click.testing import CliRunner as Runner

    from edge_app.cli.main import cli as edge_cli

    bench = tmp_path / "device.json"
    r = Runner().invoke(edge_cli, ["bench", str(out / "lenet-w0.5"), "--runs", "10", "--threads", "1", "--json", str(bench)])
    assert r.exit_code == 0, r.output
    measured = json.loads(bench.read_text())
    assert {"model_sha256", "device", "runtime", "delegate", "threads"} <= set(measured) and measured["threads"] == 1
    res = CliRunner().invoke(cli, [*args, "--device-latency", str(bench), "--latency-budget", "1000"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "sweep.json").read_text())
    assert [c["run"] for c in data["candidates"]] == ["lenet-w0.5"]  # only what the device measured
    assert data["candidates"][0]["int8_ms_1_thread"] == pytest.approx(measured["invoke_ms"]["median"])
    assert data["pick"]["winner"] == "lenet-w0.5" and "pick: lenet-w0.5" in res.output
    copy = tmp_path / "bench-copy.json"
    copy.write_text(bench.read_text())
    res = CliRunner().invoke(cli, [*args, "--device-latency", str(bench), "--device-latency", str(copy)])
    assert res.exit_code == 1 and "measured the same model" in res.output
    res = CliRunner().invoke(cli, [a if a != "1" else "2" for a in args])  # --epochs 2: not what the sweep was built with
    assert res.exit_code == 1 and "was built with other settings" in res.output and "Traceback" not in res.output

    # a file measuring a model that is not one of this sweep's is one clear message
    other = dict(measured, model_sha256="0" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    res = CliRunner().invoke(cli, [*args, "--device-latency", str(tmp_path / "other.json")])
    assert res.exit_code == 1 and "none of this sweep's" in res.output and "Traceback" not in res.output
    (tmp_path / "junk.json").write_text("{}")
    res = CliRunner().invoke(cli, [*args, "--device-latency", str(tmp_path / "junk.json")])
    assert res.exit_code == 1 and "is not an `edge-app bench --json` file" in res.output


def test_bad_sweep_arguments_are_one_clear_line(tmp_path):
    for bad, said in ((["--archs", "nope"], "--archs"), (["--widths", "0,1"], "--widths"), (["--widths", ","], "--widths")):
        res = CliRunner().invoke(cli, ["sweep", "--out", str(tmp_path / "s"), *bad])
        assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output
