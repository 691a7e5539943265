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


# ----------------------------------------------------------------------------- holding to the budget


def test_the_deadline_cuts_only_when_the_pace_of_the_last_epochs_would_end_late():
    d = plan.Deadline(end=1000.0, float_epoch_s=10.0, after_training_s=50.0)
    # 10 s epochs as planned: 20 done at t=200, 60 left end at 800 + 50 after: on time
    assert d.epochs(20, [12.0] + [10.0] * 19, 80, now=200.0) is None
    # the first epoch carries the tracing, and a cut is for good: nothing is judged before three epochs after it
    assert d.epochs(1, [50.0], 80, now=60.0) is None
    assert d.epochs(3, [20.0, 60.0, 60.0], 80, now=140.0) is None
    assert d.epochs(4, [20.0, 60.0, 60.0, 60.0], 80, now=200.0) is not None
    # one slow epoch among on-time ones is outvoted (median of the last three)
    assert d.epochs(20, [12.0] + [10.0] * 17 + [40.0, 10.0], 80, now=230.0) is None
    # 20 s epochs: 60 left would end at 200 + 1200 + 100 (after, slowed down alike); what fits: (1000-200-100)*0.95/20
    assert d.epochs(10, [20.0] * 10, 70, now=200.0) == 10 + int((1000 - 200 - 100) * plan.CUT_MARGIN / 20) == 43
    # nothing more fits: one more epoch still runs, the rate annealed to its floor in it (not left high mid-schedule)
    assert d.epochs(10, [20.0] * 10, 70, now=950.0) == 11
    assert d.late_by(10, [20.0] * 10, 11, now=950.0) == 950 + 20 + 100 - 1000
    assert d.epochs(10, [20.0] * 10, 11, now=950.0) is None  # the next epoch is the last already: nothing to shorten
    assert d.epochs(10, [20.0] * 10, 10, now=950.0) is None  # done already
    # a plan's epoch figure rounded to 0 (a tiny subset on a fast machine) is no division by zero
    assert plan.Deadline(end=100.0, float_epoch_s=0.0, after_training_s=5.0).epochs(5, [1.0] * 5, 50, now=90.0) == 5 + 4


def test_a_shortened_schedule_goes_on_from_its_rate_and_ends_at_the_floor_and_replays_from_its_record():
    import numpy as np

    from pipeline.train.fit import LR_FLOOR, TrainConfig, make_schedule

    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1)
    base = make_schedule(cfg, steps_per_epoch=10)
    live = make_schedule(cfg, steps_per_epoch=10, cuttable=True)
    before = [float(live(s)) for s in range(101)]
    assert before == [float(base(s)) for s in range(101)]  # uncut, the same rates as the plain schedule
    live.cut(40, 70)  # after 4 of 10 epochs: 7 in all
    rates = np.array([float(live(s)) for s in range(101)])
    assert rates[:41].tolist() == before[:41]  # the steps before the cut are untouched, and step 40 too
    assert np.all(np.diff(rates[40:71]) < 0) and rates[70] == pytest.approx(0.1 * LR_FLOOR) and rates[80] == rates[70]
    replayed = make_schedule(TrainConfig(epochs=7, lr=0.1, warmup_epochs=1, cuts=[[4, 10, 7]]), steps_per_epoch=10)
    assert [float(replayed(s)) for s in range(101)] == rates.tolist()  # config.json's record gives the same rates
    live.cut(50, 60)  # a second cut (after 5 epochs, 6 in all) goes on from the rate the first gave there
    twice = np.array([float(live(s)) for s in range(101)])
    # (only the steps from a cut on are trained with it: the schedule keeps the latest cut, the record all of them)
    assert twice[50] == rates[50] and np.all(np.diff(twice[50:61]) < 0) and twice[60] == pytest.approx(0.1 * LR_FLOOR)
    replayed = make_schedule(TrainConfig(epochs=6, lr=0.1, warmup_epochs=1, cuts=((4, 10, 7), (5, 7, 6))), steps_per_epoch=10)
    assert [float(replayed(s)) for s in range(101)] == twice.tolist()


def test_cuts_edited_by_hand_into_config_json_are_refused_with_a_message():
    from pipeline.runs.config import BuildConfig
    from pipeline.train.fit import TrainConfig

    assert TrainConfig(epochs=12, cuts=([4, 20, 16], [9, 16, 12])).cuts == ((4, 20, 16), (9, 16, 12))
    for bad in ([[2, 4]], [[5, 4, 3]], [[2, 4, 2]], [[4, 20, 16], [9, 18, 12]], [["two", 4, 3]], [3]):
        with pytest.raises(TypeError):
            TrainConfig(cuts=bad)
    edited = json.loads(json.dumps(_a_config().to_dict()))
    edited["train"]["cuts"] = [[2, 4]]
    with pytest.raises(RunError, match="does not describe a build"):  # the loader's message, not a traceback
        BuildConfig.from_dict(edited)


def _a_config():
    from pipeline.runs.config import BuildRequest

    return BuildRequest(dataset="cifar10").config()


def test_a_build_that_falls_behind_shortens_its_schedule_records_the_cut_and_a_rerun_of_the_record_repeats_it(tree, tmp_path, monkeypatch):
    import shutil

    # the plan: 4 epochs; then "the machine slows down": after epoch 2 the deadline asks for 3 in all
    monkeypatch.setattr(plan, "measure_speeds", lambda cfg, splits: plan.Speeds(len(splits.y_train) / 60, 1e9, 1e9))
    monkeypatch.setattr(plan, "AFTER_FIXED_S", 0.0)
    monkeypatch.setattr(plan, "QAT_FIXED_S", 0.0)
    asked: list[tuple[int, int]] = []

    def slower(self, done, seconds, planned, now):
        asked.append((done, planned))
        return 3 if (done, planned) == (2, 4) else None

    monkeypatch.setattr(plan.Deadline, "epochs", slower)
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    cut = tmp_path / "cut"
    res = runner.invoke(cli, ["build", *FLAGS, "--data-dir", str(tree), "--out", str(cut), "--time-budget", "5"])
    assert res.exit_code == 0, res.output
    assert asked == [(1, 4), (2, 4)]  # asked after each epoch, and not once training is at its (new) end
    cfg = json.loads((cut / "config.json").read_text())
    assert cfg["plan"]["epochs"] == 4 and cfg["train"]["epochs"] == 3 and cfg["train"]["cuts"] == [[2, 4, 3]]
    assert len((cut / "history_train.csv").read_text().splitlines()) == 1 + 3
    log = (cut / "train.log").read_text()
    assert "shortened to 3 epochs" in log and "train epoch 3/3" in log and "train epoch 4" not in log
    # the same command on a folder holding only that config.json: the recorded plan and cut, no new deadline
    monkeypatch.setattr(plan.Deadline, "epochs", lambda *a: pytest.fail("a recorded plan is not re-planned"))
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    shutil.copy(cut / "config.json", rerun / "config.json")
    res = runner.invoke(cli, ["build", *FLAGS, "--data-dir", str(tree), "--out", str(rerun), "--time-budget", "5"])
    assert res.exit_code == 0, res.output
    for name in ("model_float32.tflite", "model_int8.tflite"):
        assert (cut / name).read_bytes() == (rerun / name).read_bytes(), name
