"""The command line: bad values end in one clear message and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import REPO, make_image_tree

from pipeline.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("args, needle", [
    (["build", "--dataset", "imagenet"], "'imagenet' is not one of"),
    (["build", "--width", "-1"], "must be greater than 0"),
    (["build", "--epochs", "0"], "must be greater than 0"),
    (["build", "--profile", "slow"], "'slow' is not one of 'quick', 'paper'"),
    (["build", "--io-type", "fp16"], "'fp16' is not one of"),
    (["describe", "--arch", "vgg"], "'vgg' is not one of"),
    (["build", "--label-smoothing", "0.9"], "0.9 is not in the range 0<=x<=0.5"),
    (["build", "--ema", "1"], "1.0 is not in the range 0<=x<=0.9999"),
    (["build", "--qat-lr", "0"], "must be greater than 0"),
])
def test_bad_option_values(runner, args, needle):
    res = runner.invoke(cli, args)
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_missing_data_dir_is_a_clear_error(runner, tmp_path):
    res = runner.invoke(cli, ["build", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert "does not exist" in res.output and "Traceback" not in res.output


def test_folder_without_test_split(runner, tmp_path):
    tree = make_image_tree(tmp_path / "tree")
    (tree / "test").rename(tree / "later")
    res = runner.invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "holds no image tree" in res.output


def test_stage_command_on_a_non_run_folder(runner, tmp_path):
    res = runner.invoke(cli, ["convert", str(tmp_path)])
    assert res.exit_code == 1 and "is not a run folder" in res.output


def test_resume_with_nothing_to_resume(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli, ["build", "--resume"])
    assert res.exit_code == 1 and "no run folder artifacts/cifar10-nin-cifar-*" in res.output


def test_rerun_with_other_settings_is_refused(runner, tmp_path):
    tree = make_image_tree(tmp_path / "tree")
    out = tmp_path / "run"
    out.mkdir()
    from pipeline.runs.config import BuildRequest

    cfg = BuildRequest(dataset="folder", data_dir=tree, arch="nin-cifar", overrides={"epochs": 1}, io_type="int8").config()
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    # a folder where something finished (with nothing finished, new settings are taken: test_run_safety)
    (out / "state.json").write_text(json.dumps({"train": {"done": True, "seconds": 1.0}}))
    res = runner.invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(out), "--epochs", "2"])
    assert res.exit_code == 1
    assert "train.epochs: 1 then, 2 now" in res.output


def test_training_flags_reach_the_stage_configs(runner, tmp_path, monkeypatch):
    seen = {}

    def fake_build(cfg, out, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("pipeline.stages.orchestrator.build", fake_build)
    runner.invoke(cli, ["build", "--label-smoothing", "0.1", "--qat-lr", "0.0002", "--ema", "0.999", "--out", str(tmp_path / "r")])
    cfg = seen["cfg"]
    assert cfg.train.label_smoothing == 0.1 and cfg.qat.lr == 0.0002 and cfg.train.ema == 0.999
    from pipeline.runs.profiles import PROFILES

    assert cfg.train.lr == PROFILES["quick"].lr  # the profile's own where no flag is given


def test_sigterm_stops_a_build_like_ctrl_c(runner, tmp_path, monkeypatch):
    """SIGTERM (docker stop, a Kubernetes pod's end) becomes Terminated, which the CLI ends like
    Ctrl-C: the resume hint and exit 143 (128 + SIGTERM), no traceback."""
    import os
    import signal

    from edge_app.errors import Terminated, stop_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    finally:
        signal.signal(signal.SIGTERM, before)

    def terminated(*a, **kw):
        raise Terminated()

    monkeypatch.setattr("pipeline.stages.orchestrator.build", terminated)
    res = runner.invoke(cli, ["build", "--out", str(tmp_path / "r")])
    assert res.exit_code == 143
    assert "stopped by SIGTERM: finished epochs are checkpointed" in res.output and "Traceback" not in res.output


def test_describe_prints_layers(runner):
    res = runner.invoke(cli, ["describe", "--arch", "nin-cifar", "--input-size", "32", "--width", "1"])
    assert res.exit_code == 0, res.output
    assert "block1_1_conv" in res.output and "(32, 32, 192)" in res.output
    assert "total parameters: 971,240" in res.output
    res = runner.invoke(cli, ["describe"])  # the width `build` uses by default, said in the header
    assert res.exit_code == 0 and "width 0.25 (the quick profile's" in res.output and "(32, 32, 48)" in res.output
    res = runner.invoke(cli, ["describe", "--arch", "nin-imagenet", "--input-size", "32"])
    assert res.exit_code == 2 and "at least 67x67" in res.output


BLOCK_TF = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization', 'pipeline'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_edge_app_imports_no_tensorflow():
    code = BLOCK_TF + """
import edge_app, edge_app.contract.sidecar, edge_app.runtime, edge_app.cli.main, edge_app.fsutil
bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'pipeline')]
assert not bad, bad
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_importing_pipeline_imports_no_tensorflow():
    code = "import sys, pipeline, pipeline.cli.main, pipeline.data.splits, pipeline.models.nin, pipeline.stages.orchestrator\n" \
           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_entry_point_turns_onednn_on_unless_the_user_said_otherwise():
    """oneDNN's kernels (2x the training speed on an AVX2 CPU) are on before TensorFlow starts; a
    user's TF_ENABLE_ONEDNN_OPTS=0 is kept. Checked through TensorFlow's own answer."""
    code = ("import os, pipeline.cli.main; pipeline.cli.main._legacy_keras_env(); import tensorflow\n"
            "from pipeline.train.devices import onednn_enabled; print(os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled())")
    for given, want in ((None, "1 True"), ("0", "0 False")):
        env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_USE_LEGACY_KERAS")}
        if given is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = given
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-2:] == want.split()


def test_arch_that_does_not_fit_the_data_is_a_clear_error(runner, tmp_path):
    tree = make_image_tree(tmp_path / "tree", size=16)
    res = runner.invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--arch", "nin-imagenet",
                              "--input-size", "32", "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert res.exit_code == 1, res.output
    assert "at least 67x67" in res.output and "--input-size" in res.output and "Traceback" not in res.output
    # nothing was trained: nothing is left behind, so the same --out with the fix is not refused
    assert not (tmp_path / "run").exists()
    kept = tmp_path / "mine"
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("the user's")
    res = runner.invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--arch", "nin-imagenet",
                              "--input-size", "32", "--out", str(kept), "--epochs", "1"])
    assert res.exit_code == 1 and sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # only ours removed


def test_the_data_may_move_but_not_change(tmp_path):
    """Where the data lives is not a training setting (a resumed run may get another --data-dir);
    what the data is, is: a run folder records its fingerprint and refuses other data."""
    from pipeline.runs.config import BuildRequest, diff_configs
    from pipeline.errors import RunError
    from pipeline.runs.folder import RunFolder

    a = BuildRequest(dataset="folder", data_dir=tmp_path / "a", arch="nin-cifar").config()
    b = BuildRequest(dataset="folder", data_dir=tmp_path / "b", arch="nin-cifar").config()
    assert a.data.data_dir != b.data.data_dir and diff_configs(a.to_dict(), b.to_dict()) == []
    run = RunFolder.create(tmp_path / "run", a)
    run.check_data("f00d", "a")
    run.check_data("f00d", "b")  # the same data somewhere else
    with pytest.raises(RunError, match="is not the data .* was made with"):
        RunFolder.open(tmp_path / "run").check_data("beef", "c")


def test_a_tensorflow_runtime_error_in_training_is_one_line(runner, tmp_path, monkeypatch):
    """Out of memory (or an image gone unreadable mid-epoch) surfaces from fit as a TensorFlow error:
    one line that says what and that the run resumes, not a traceback."""
    import tensorflow as tf

    import pipeline.stages.orchestrator

    def oom(*args):
        raise tf.errors.ResourceExhaustedError(None, None, "Graph execution error:\n\nDetected at node x\n"
                                               "  File \"a.py\", line 1\nOOM when allocating tensor with shape[128,96,32,32]")

    tree = make_image_tree(tmp_path / "tree")
    args = ["build", "--dataset", "folder", "--data-dir", str(tree), "--epochs", "1"]
    monkeypatch.setitem(pipeline.stages.orchestrator.STAGE_FUNCTIONS, "train", oom)
    res = runner.invoke(cli, [*args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "ResourceExhaustedError: OOM when allocating tensor" in res.output and "run the same command again" in res.output
    monkeypatch.setitem(pipeline.stages.orchestrator.STAGE_FUNCTIONS, "train", lambda *a: 1 / 0)  # a bug stays a traceback
    res = runner.invoke(cli, [*args, "--out", str(tmp_path / "r2")])
    assert isinstance(res.exception, ZeroDivisionError)


def test_pool2_is_refused_for_an_arch_without_the_choice(runner, tmp_path):
    tree = make_image_tree(tmp_path / "tree", size=16)
    res = runner.invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--arch", "lenet", "--pool2", "max",
                              "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert res.exit_code != 0 and "--pool2 max: lenet has avg only" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--pool2", "mean", "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "'mean' is not one of 'avg', 'max', 'depthwise'" in res.output


def test_a_run_recorded_before_pool2_existed_is_the_papers_average():
    from pipeline.runs.config import BuildConfig, BuildRequest

    d = BuildRequest(overrides={"pool2": "max"}).config().to_dict()
    assert d["model"]["pool2"] == "max"
    del d["model"]["pool2"]
    assert BuildConfig.from_dict(d).model.pool2 == "avg"
