"""The orchestrator and its commands on the fast run (the real stages on a synthetic tree):
state.json written by one writer, a finished run left alone, `python -m pipeline` (a redone stage:
test_edgetpu.test_convert_target_edgetpu)."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner
from conftest import REPO

from pipeline.cli import cli
from pipeline.run import STAGES

FAST_FLAGS = ["--dataset", "folder", "--data-cache", "none", "--width", "0.125", "--epochs", "1", "--qat-epochs", "1", "--batch-size", "32",
              "--seed", "0"]


def test_state_records_every_stage_once_with_its_seconds(fast_run):
    log = (fast_run / "train.log").read_text()
    assert "--data-cache none -> none" in log and "skipped 1 unreadable image(s)" in log  # streamed, the bad file counted
    state = json.loads((fast_run / "state.json").read_text())
    assert list(state) == list(STAGES)
    for stage in STAGES:
        assert state[stage]["done"] is True and state[stage]["seconds"] > 0, stage


def test_rerun_of_a_finished_run_does_nothing(fast_run_copy, fast_tree):
    before = {p.name: p.stat().st_mtime_ns for p in fast_run_copy.iterdir() if p.is_file() and p.name != "train.log"}
    res = CliRunner().invoke(cli, ["build", *FAST_FLAGS, "--data-dir", str(fast_tree), "--out", str(fast_run_copy)])
    assert res.exit_code == 0, res.output
    assert "every stage is already done" in (fast_run_copy / "train.log").read_text()
    after = {p.name: p.stat().st_mtime_ns for p in fast_run_copy.iterdir() if p.is_file() and p.name != "train.log"}
    assert after == before
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(fast_run_copy)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["build", *FAST_FLAGS, "--data-dir", str(fast_tree), "--out", str(fast_run_copy),
                                   "--epochs", "2"])
    assert res.exit_code == 1 and "was started with other settings (train.epochs: 1 then, 2 now)" in res.output


def test_python_dash_m_pipeline_reaches_every_command():
    """`python -m pipeline` (and the older `python -m pipeline.cli`) see every command, the Edge TPU group included."""
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in cli.commands:
        assert f"  {name} " in out.stdout, name
    for args in (["-m", "pipeline", "edgetpu", "check", "--help"], ["-m", "pipeline.cli", "package", "--help"]):
        out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "Usage:" in out.stdout, out.stderr
