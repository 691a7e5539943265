"""The generic trainer: checkpoints every epoch and resumes after an interruption."""

import numpy as np
import pytest

from pipeline.train.fit import TrainConfig, fit, read_history


def _data():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()


def _model():
    import tf_keras as keras

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp))
    return keras.Model(inp, out)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    import tf_keras as keras

    cfg = TrainConfig(epochs=3, lr=0.05, weight_decay=1e-4, warmup_epochs=0)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # after the second epoch's checkpoint
                raise KeyboardInterrupt

    m1 = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(m1, _data(), None, cfg, steps_per_epoch=4, run_dir=tmp_path, tag="t", verbose=0, extra_callbacks=[Crash()])
    assert len(read_history(tmp_path / "history_t.csv")["epoch"]) == 2

    m2 = _model()  # a fresh process would build a fresh model
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    hist = fit(m2, _data(), None, cfg, steps_per_epoch=4, run_dir=tmp_path, tag="t", verbose=0, extra_callbacks=[Spy()])
    assert seen == [2]  # only the missing epoch ran
    assert hist["epoch"] == [0.0, 1.0, 2.0]
    assert int(m2.optimizer.iterations.numpy()) == 12  # the step counter (and LR schedule) carried on
    # a third call has nothing left to do
    seen.clear()
    m3 = _model()
    fit(m3, _data(), None, cfg, steps_per_epoch=4, run_dir=tmp_path, tag="t", verbose=0, extra_callbacks=[Spy()])
    assert seen == []
    for a, b in zip(m2.get_weights(), m3.get_weights()):  # ... but the trained weights are restored
        np.testing.assert_array_equal(a, b)
    from pipeline.train.fit import backed_up_epochs

    assert backed_up_epochs(tmp_path / "checkpoints" / "t") == 3
    assert backed_up_epochs(tmp_path / "nowhere") == 0


def test_ema_ends_with_the_moving_average_of_the_weights_also_after_a_resume(tmp_path, monkeypatch):
    import tf_keras as keras

    from pipeline.train import fit as fit_module

    monkeypatch.setattr(fit_module, "STEPS_PER_EXECUTION", 1)  # so that the callback sees every step

    class Trail(keras.callbacks.Callback):  # the average done by hand: from the first weights, after each step
        def on_train_begin(self, logs=None):
            self.avg = [v.numpy() for v in self.model.trainable_variables]

        def on_train_batch_end(self, batch, logs=None):
            self.avg = [0.9 * a + 0.1 * v.numpy() for a, v in zip(self.avg, self.model.trainable_variables)]

    cfg = TrainConfig(epochs=2, lr=0.05, warmup_epochs=0, ema=0.9, weight_decay=0.0)
    m, trail = _model(), Trail()
    fit(m, _data(), None, cfg, steps_per_epoch=4, run_dir=tmp_path, tag="e", verbose=0, extra_callbacks=[trail])
    raw = [v.numpy() for v in m.trainable_variables]
    assert m.optimizer.use_ema
    for a, b in zip(raw, trail.avg):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    again = _model()  # a resumed process with every epoch backed up: the same averaged weights
    fit(again, _data(), None, cfg, steps_per_epoch=4, run_dir=tmp_path, tag="e", verbose=0)
    for a, b in zip(raw, (v.numpy() for v in again.trainable_variables)):
        np.testing.assert_array_equal(a, b)
    plain, no_ema = _model(), TrainConfig(epochs=2, lr=0.05, warmup_epochs=0, weight_decay=0.0)
    fit(plain, _data(), None, no_ema, steps_per_epoch=4, run_dir=tmp_path / "p", tag="e", verbose=0)
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(raw, plain.trainable_variables))


def test_schedules():
    from pipeline.train.fit import make_schedule

    cos = make_schedule(TrainConfig(epochs=10, lr=0.1, warmup_epochs=1), steps_per_epoch=10)
    assert float(cos(0)) == pytest.approx(0.01) and float(cos(10)) == pytest.approx(0.1, rel=0.02)
    assert float(cos(99)) < 0.01
    step = make_schedule(TrainConfig(epochs=10, lr=0.1, schedule="step"), steps_per_epoch=10)
    assert [round(float(step(s)), 4) for s in (0, 51, 80)] == [0.1, 0.01, 0.001]
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule(TrainConfig(schedule="linear"), 10)


def test_measure_throughput_leaves_the_model_untouched():
    from pipeline.train.fit import measure_throughput

    m = _model()
    before = [w.copy() for w in m.get_weights()]
    ips = measure_throughput(m, _data(), steps=3)
    assert ips > 0
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_distilled_targets_blend_the_teachers_answers_with_the_labels():
    """QAT's distillation targets: w x the float model's probabilities on the same batch + (1 - w) x one-hot."""
    import tensorflow as tf
    import tf_keras as keras

    from pipeline.stages.inputs import distillation_targets

    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = distillation_targets(teacher, 0.7, 3)(tf.data.Dataset.from_tensor_slices((x, y)).batch(3))
    xs, targets = zip(*[(a.numpy(), t.numpy()) for a, t in ds])
    got = np.concatenate(targets)
    want = 0.7 * teacher.predict(x, verbose=0) + 0.3 * np.eye(3)[y]
    assert np.allclose(got, want, atol=1e-6) and np.allclose(got.sum(1), 1.0, atol=1e-6)
    assert np.array_equal(np.concatenate(xs), x)  # the images are untouched


def test_the_epoch_log_line_comes_after_the_finished_progress_bar(tmp_path, capsys):
    """On a terminal the Keras bar ends its epoch line before the epoch's log line is written (the log
    line used to be glued onto the unfinished bar: ``5/5 [====] - ETA: 0s - loss: 2.27602:06:03 INFO``)."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stdout)  # where a terminal shows both
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logger = logging.getLogger("pipeline.train.fit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        fit(_model(), _data(), None, TrainConfig(epochs=2, lr=0.05, warmup_epochs=0), steps_per_epoch=4,
            run_dir=tmp_path, tag="t", verbose=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    out = capsys.readouterr().out
    epoch_lines = [i for i in range(len(out)) if out.startswith("LOG t epoch", i)]
    assert len(epoch_lines) == 2
    for i in epoch_lines:
        before = out[:i]
        assert before.endswith("\n"), out[max(0, i - 80):i + 20]
        assert "/step - loss" in before.rstrip("\n").rsplit("\n", 1)[-1]  # the bar's finished line, just before


def test_the_epoch_log_line_says_how_long_validation_took(tmp_path, caplog):
    """Each epoch's line gives its seconds and, of those, validation's (so training images/s can be told
    apart from the time spent validating, e.g. when comparing 1 and 2 workers)."""
    import logging
    import re
    import time

    import tf_keras as keras

    class SlowValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            time.sleep(0.3)

    caplog.set_level(logging.INFO, logger="pipeline.train.fit")
    fit(_model(), _data(), _data().take(2), TrainConfig(epochs=2, lr=0.05, warmup_epochs=0), steps_per_epoch=4,
        run_dir=tmp_path, tag="t", verbose=0, extra_callbacks=[SlowValidation()])
    found = [re.search(r"\(lr=[\d.]+, ([\d.]+) s, validation ([\d.]+) s\)", r.getMessage())
             for r in caplog.records if " epoch " in r.getMessage()]
    assert len(found) == 2 and all(found), [r.getMessage() for r in caplog.records]
    for m in found:
        assert 0.3 <= float(m.group(2)) <= float(m.group(1))
