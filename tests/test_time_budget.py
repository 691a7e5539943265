"""`build --time-budget MINUTES`: the epochs planned from measured speed, recorded in config.json, reused by
the same command, and reproduced by `--epochs N` (pipeline.stages.plan)."""

import json

import pytest
from click.testing import CliRunner
from conftest import FAST_CLASSES, make_image_tree

from pipeline.cli.main import cli
from pipeline.errors import RunError
from pipeline.stages import plan


def test_the_plan_fills_what_is_left_after_qat_and_the_report():
    speeds = plan.Speeds(train_ips=100.0, qat_ips=50.0, eval_ips=1000.0)
    # an epoch: 1,000 / 100 + 100 / 1,000 = 10.1 s; QAT: 20 + 20.1 s; after: 20 + 4 x 500 / 1,000 = 22 s
    p = plan.plan_epochs(600, 30, speeds, n_train=1000, n_val=100, n_test=500, qat_epochs=1)
    assert (plan.QAT_FIXED_S, plan.AFTER_FIXED_S) == (20.0, 20.0)
    assert (p["float_epoch_s"], p["qat_s"], p["after_training_s"]) == (10.1, 40.1, 22.0)
    assert p["epochs"] == int((600 - 30 - 40.1 - 22) * plan.MARGIN / 10.1) == 42
    assert p["planned_total_min"] <= 10 and p["budget_min"] == 10


def test_tracing_the_train_functions_is_counted_once_not_per_epoch():
    fast, traced = plan.Speeds(100.0, 50.0, 1000.0), plan.Speeds(100.0, 50.0, 1000.0, trace_s=40.0)
    a = plan.plan_epochs(600, 30, fast, n_train=1000, n_val=100, n_test=500, qat_epochs=1)
    b = plan.plan_epochs(600, 30, traced, n_train=1000, n_val=100, n_test=500, qat_epochs=1)
    assert b["after_training_s"] == a["after_training_s"] + 40 and b["float_epoch_s"] == a["float_epoch_s"]
    assert b["epochs"] == int((600 - 30 - 40.1 - 22 - 40) * plan.MARGIN / 10.1) == 39 and b["tracing_s"] == 40.0


def test_the_probe_times_the_builds_own_fit_on_copies():
    """measure_speeds on a tiny split: positive rates, the tracing apart from them, nothing of the build touched."""
    import numpy as np

    from pipeline.data.splits import Splits
    from pipeline.runs.config import BuildRequest

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (160, 16, 16, 3), dtype=np.uint8)
    y = np.arange(160) % 4
    splits = Splits(x[:96], y[:96], x[128:], y[128:], ("a", "b", "c", "d"), "test", x_val=x[96:128], y_val=y[96:128])
    cfg = BuildRequest(overrides={"width": 0.125, "batch_size": 8, "qat_epochs": 1}, time_budget_min=10).config()
    speeds = plan.measure_speeds(cfg, splits, executions=2)
    assert speeds.train_ips > 0 and speeds.qat_ips > 0 and speeds.eval_ips > 0 and speeds.trace_s >= 0


def test_a_budget_too_small_for_one_epoch_says_what_would_do():
    speeds = plan.Speeds(train_ips=10.0, qat_ips=10.0, eval_ips=100.0)
    with pytest.raises(RunError, match="not even one epoch fits here") as e:
        plan.plan_epochs(120, 10, speeds, n_train=1000, n_val=0, n_test=1000, qat_epochs=1)
    assert "--time-budget" in e.value.hint and "--epochs N" in e.value.hint


def test_epochs_given_wins_and_a_recorded_plan_is_taken_by_the_same_budget():
    from pipeline.runs.config import BuildRequest

    assert BuildRequest(overrides={"epochs": 3}, time_budget_min=20).config().time_budget_min is None
    asked = BuildRequest(time_budget_min=20).config()
    saved = asked.__class__.from_dict({**asked.to_dict(), "plan": {"epochs": 31}, "train": {**asked.to_dict()["train"], "epochs": 31}})
    assert asked.planned_as(saved).train.epochs == 31 and asked.planned_as(saved).plan == {"epochs": 31}
    other = BuildRequest(time_budget_min=25).config()
    assert other.planned_as(saved) == other  # another budget is another plan: refused as other settings


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_tree(tmp_path_factory.mktemp("tb") / "tree", classes=FAST_CLASSES[:4], per_class=(12, 4), size=32, full_range=True)


FLAGS = ["--dataset", "folder", "--data-cache", "none", "--width", "0.125", "--qat-epochs", "1", "--batch-size", "16"]


def test_a_planned_build_records_its_plan_and_epochs_n_repeats_it(tree, tmp_path, monkeypatch):
    # measured speeds replaced by ones that make an epoch "take" 100 s, so the plan is 2 epochs whatever this machine does
    monkeypatch.setattr(plan, "measure_speeds", lambda cfg, splits: plan.Speeds(len(splits.y_train) / 100, 1e9, 1e9))
    monkeypatch.setattr(plan, "AFTER_FIXED_S", 0.0)
    monkeypatch.setattr(plan, "QAT_FIXED_S", 0.0)
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    planned = tmp_path / "planned"
    res = runner.invoke(cli, ["build", *FLAGS, "--data-dir", str(tree), "--out", str(planned), "--time-budget", "4.5"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((planned / "config.json").read_text())
    assert cfg["time_budget_min"] == 4.5 and cfg["plan"]["epochs"] == cfg["train"]["epochs"] == 2
    assert "planned 2 float epochs" in (planned / "train.log").read_text()
    assert len((planned / "history_train.csv").read_text().splitlines()) == 1 + 2
    again = runner.invoke(cli, ["build", *FLAGS, "--data-dir", str(tree), "--out", str(planned), "--time-budget", "4.5"])
    assert again.exit_code == 0 and "every stage is already done" in again.output, again.output  # the recorded plan, not a new one
    other = runner.invoke(cli, ["build", *FLAGS, "--data-dir", str(tree), "--out", str(planned), "--time-budget", "9"])
    assert other.exit_code != 0 and "other settings" in other.output
    by_hand = tmp_path / "by-hand"
    res = runner.invoke(cli, ["build", *FLAGS, "--data-dir", str(tree), "--out", str(by_hand), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((by_hand / "config.json").read_text())["plan"] is None
    for name in ("model_float32.tflite", "model_int8.tflite"):
        assert (planned / name).read_bytes() == (by_hand / name).read_bytes(), name
