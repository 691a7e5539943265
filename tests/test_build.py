"""The orchestrator and its commands on the fast run (the real stages on a synthetic tree):
state.json written by one writer, a finished run left alone, `python -m pipeline` (a redone stage:
test_edgetpu.test_convert_target_edgetpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST_CLASSES, REPO, make_image_tree

from pipeline.cli.main import cli
from pipeline.runs.folder import STAGES

FAST_FLAGS = ["--dataset", "folder", "--data-cache", "none", "--width", "0.125", "--epochs", "1", "--qat-epochs", "1", "--batch-size", "32",
              "--seed", "0"]


def test_state_records_every_stage_once_with_its_seconds(fast_run):
    log = (fast_run / "train.log").read_text()
    assert "--data-cache none -> none" in log and "skipped 1 unreadable image(s)" in log  # streamed, the bad file counted
    state = json.loads((fast_run / "state.json").read_text())
    assert [k for k in state if k != "data"] == list(STAGES) and len(state["data"]["fingerprint"]) == 16
    for stage in STAGES:
        assert state[stage]["done"] is True and state[stage]["seconds"] > 0, stage
        assert state[stage]["outputs"], stage  # the sha256 of what it wrote


def test_rerun_of_a_finished_run_does_nothing(fast_run_copy, fast_tree):
    mine = ("train.log", ".lock")  # every command appends to the log and takes the lock
    before = {p.name: p.stat().st_mtime_ns for p in fast_run_copy.iterdir() if p.is_file() and p.name not in mine}
    res = CliRunner().invoke(cli, ["build", *FAST_FLAGS, "--data-dir", str(fast_tree), "--out", str(fast_run_copy)])
    assert res.exit_code == 0, res.output
    assert "every stage is already done" in (fast_run_copy / "train.log").read_text()
    assert f"report: {fast_run_copy / 'report.html'}" in res.output and f"edge-app run {fast_run_copy}" in res.output
    after = {p.name: p.stat().st_mtime_ns for p in fast_run_copy.iterdir() if p.is_file() and p.name not in mine}
    assert after == before
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(fast_run_copy)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["build", *FAST_FLAGS, "--data-dir", str(fast_tree), "--out", str(fast_run_copy),
                                   "--epochs", "2"])
    assert res.exit_code == 1 and "was started with other settings (train.epochs: 1 then, 2 now)" in res.output
    # a truncated int8 model (a cut-off copy): state.json is not trusted; convert and evaluate are redone
    good = (fast_run_copy / "model_int8.tflite").read_bytes()
    (fast_run_copy / "model_int8.tflite").write_bytes(good[: len(good) // 2])
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(fast_run_copy)])
    assert res.exit_code == 0, res.output
    log = (fast_run_copy / "train.log").read_text()
    assert "stage convert was done, but model_int8.tflite changed: doing it again" in log
    assert len((fast_run_copy / "model_int8.tflite").read_bytes()) == len(good)


def test_python_dash_m_pipeline_reaches_every_command():
    """`python -m pipeline` (and the older `python -m pipeline.cli.main`) see every command, the Edge TPU group included."""
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in cli.commands:
        assert f"  {name} " in out.stdout, name
    for args in (["-m", "pipeline", "edgetpu", "check", "--help"], ["-m", "pipeline.cli.main", "package", "--help"]):
        out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "Usage:" in out.stdout, out.stderr


@pytest.mark.slow
def test_the_gpu_paths_run_on_two_logical_cpus_with_mixed_precision(tmp_path):
    """No GPU here: NIN_CPU_REPLICAS=2 splits the CPU into two devices, so float training runs under
    MirroredStrategy as on two GPUs, and NIN_MIXED_PRECISION=1 trains with mixed_float16 as on a GPU.
    The whole build — float training, QAT (one device, float32), conversion, report — must get
    through both. (This test found the optimizer and metrics made outside the strategy's scope.)"""
    tree = make_image_tree(tmp_path / "tree", classes=FAST_CLASSES, per_class=(8, 2), size=32, full_range=True)
    out = tmp_path / "run"
    env = {**os.environ, "NIN_CPU_REPLICAS": "2", "NIN_MIXED_PRECISION": "1", "NIN_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "pipeline", "build", *FAST_FLAGS, "--data-dir", str(tree), "--out", str(out),
                          "--batch-size", "16"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    log = (out / "train.log").read_text()
    assert "the CPU split into 2 logical devices" in log
    assert "2 replica(s) (MirroredStrategy), policy mixed_float16" in log and "qat: on one device, float32" in log
    from edge_app.runtime import load_interpreter

    interp, _ = load_interpreter(out / "model_int8.tflite", num_threads=1)
    assert interp.get_input_details()[0]["dtype"] == np.int8  # fully int8 after the float16 training
    assert json.loads((out / "state.json").read_text())["evaluate"]["done"]


HOLD_LOCK = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.runs.folder import run_lock\n"
             "with run_lock(Path(sys.argv[1]), 'nin-pipeline build'):\n    print('held', flush=True)\n    time.sleep(120)\n")


def test_a_run_folder_in_use_is_refused_and_a_dead_holders_lock_is_not(tmp_path):
    """Two commands writing one run folder corrupt it: the second is refused with the holder's PID;
    once the holder is gone (kill -9 included) the folder is free again."""
    from pipeline.runs.config import BuildRequest
    from pipeline.runs.folder import run_lock

    tree = make_image_tree(tmp_path / "tree")
    run = tmp_path / "run"
    run.mkdir()
    cfg = BuildRequest(dataset="folder", data_dir=tree, arch="nin-cifar", overrides={"epochs": 1}, io_type="int8").config()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["build", "--resume", "--out", str(run)], ["convert", str(run)]):
            res = CliRunner().invoke(cli, args)
            assert res.exit_code == 1, res.output
            assert f"is in use by PID {holder.pid} on " in res.output and "`nin-pipeline build`" in res.output
            assert "Traceback" not in res.output
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run, "test"):  # the kernel dropped the dead holder's lock
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


def test_a_lock_leaves_no_folder_behind_when_nothing_was_made(tmp_path):
    from pipeline.runs.folder import run_lock

    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "new", "test"):
            raise RuntimeError("failed before anything was written")
    assert not (tmp_path / "new").exists()
