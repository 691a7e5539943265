"""End to end: `nin-pipeline build` through the CLI on a small stratified subset of the real
CIFAR-10 copy, interrupted once with Ctrl-C and resumed, then every file of the run folder
checked and the int8 model run on the device runtime with TensorFlow blocked."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from test_cli import BLOCK_TF

pytestmark = pytest.mark.slow

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_resumed_instead_of_starting_over(run_dir):
    log = (run_dir / "train.log").read_text()
    assert "train: resuming from the checkpoint after epoch" in log
    history = (run_dir / "history_train.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 3  # header + 3 epochs, none duplicated


def test_every_file_of_the_run_folder(run_dir):
    from edge_app.fsutil import sha256_file
    from edge_app.contract.sidecar import read_sidecar

    for name in ("model_int8.tflite", "model_float32.tflite", "model_int8_ptq.tflite", "model_float.keras",
                 "model_qat.weights.h5", "labels.txt", "model.json", "report.json", "config.json", "train.log",
                 "state.json", "history_train.csv", "history_qat.csv"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "tensorboard" / "train").rglob("events.out.tfevents.*"))
    assert list((run_dir / "checkpoints" / "train" / "chief").glob("ckpt-*.index"))  # the last backup is kept
    assert not list(run_dir.glob(".*tmp*")), "temporary files left behind"
    assert (run_dir / "labels.txt").read_text().split() == CIFAR10

    sc = read_sidecar(run_dir)
    assert list(sc.labels) == CIFAR10 and sc.dataset == "cifar10" and sc.arch == "nin-cifar" and sc.width == 0.25
    assert sc.input.shape == (1, 32, 32, 3) and sc.input.dtype == "int8" and sc.input.color_order == "RGB"
    assert sc.output("scores").dtype == "int8" and sc.output("scores").kind == "probabilities"
    for name, digest in sc.files.items():
        assert sha256_file(run_dir / name) == digest, name
    st = sc.input_stats  # what `edge-app check-input` compares a camera with: CIFAR-10's training images
    assert st.images == 256 and 100 < st.pixel_mean[0] < 140 and st.pixel_mean[0] > st.pixel_mean[2]
    assert np.allclose(np.array(st.value_mean) * 255, st.pixel_mean, atol=0.01) and st.brightness_p5 < st.brightness_p95

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["width"] == 0.25 and cfg["data"]["limit_test"] == 500

    report = json.loads((run_dir / "report.json").read_text())
    assert report["test_images"] == 500
    assert set(report["variants"]) == {"float_keras", "float_tflite", "ptq_int8", "qat_int8"}
    for v in report["variants"].values():
        assert 0.0 <= v["top1"] <= 1.0
        assert v["bytes"] == (run_dir / v["file"]).stat().st_size
    # float Keras and float TFLite are the same network: near-identical accuracy
    assert abs(report["variants"]["float_keras"]["top1"] - report["variants"]["float_tflite"]["top1"]) <= 0.01
    assert report["variants"]["qat_int8"]["bytes"] < 0.4 * report["variants"]["float_tflite"]["bytes"]


def test_int8_model_runs_on_the_edge_runtime_without_tensorflow(run_dir, tmp_path):
    from pipeline.runs.config import BuildConfig
    from pipeline.data.splits import make_splits

    cfg = BuildConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    splits = make_splits(cfg.data, progress=False)
    np.save(tmp_path / "x.npy", splits.x_test)
    np.save(tmp_path / "y.npy", splits.y_test)
    code = BLOCK_TF + f"""
import numpy as np
from edge_app.runtime import Classifier
from edge_app.contract.sidecar import read_sidecar
sc = read_sidecar({str(run_dir)!r})
clf = Classifier({str(run_dir / 'model_int8.tflite')!r}, pixel_scale=sc.input.pixel_scale,
                 mean=sc.input.mean, std=sc.input.std, output_kind=sc.output('scores').kind)
x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})
acc = float((clf.predict_batch(x).argmax(1) == y).mean())
assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')]
print(clf.runtime, acc)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runtime, acc = out.stdout.split()[-2:]
    assert runtime == "ai-edge-litert"
    report = json.loads((run_dir / "report.json").read_text())
    assert float(acc) == pytest.approx(report["variants"]["qat_int8"]["top1"], abs=1e-9)  # same images, same code
    assert float(acc) > 0.2, f"int8 accuracy {acc} is not above chance (0.10)"


def test_int8_model_loads_in_tflite_runtime_2_14(run_dir, tflite_runtime_214, tmp_path):
    from pipeline.runs.config import BuildConfig
    from pipeline.data.splits import make_splits

    cfg = BuildConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    splits = make_splits(cfg.data, progress=False)
    np.save(tmp_path / "x.npy", splits.x_test[:200])
    code = f"""
import numpy as np
from edge_app.runtime import Classifier
x = np.load({str(tmp_path / 'x.npy')!r})
for name in ('model_int8.tflite', 'model_int8_ptq.tflite', 'model_float32.tflite'):
    clf = Classifier({str(run_dir)!r} + '/' + name, runtime='tflite-runtime', num_threads=1)
    np.save({str(tmp_path)!r} + '/' + name + '.npy', clf.predict_batch(x))
print(np.__version__)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([str(tflite_runtime_214), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1].startswith("1.")  # numpy<2, as on Raspberry Pi OS
    from edge_app.runtime import Classifier

    for name in ("model_int8.tflite", "model_int8_ptq.tflite", "model_float32.tflite"):
        old = np.load(tmp_path / f"{name}.npy")
        new = Classifier(run_dir / name, runtime="ai-edge-litert", num_threads=1).predict_batch(splits.x_test[:200])
        agree = (old.argmax(1) == new.argmax(1)).mean()
        if "float32" in name:
            assert agree == 1.0 and np.abs(old - new).max() < 1e-4
        else:
            # The two runtimes' int8 kernels round differently: measured on the quick model, up to
            # 9 output steps (1/256) on single images, 0.1% of the probability mass on average, and
            # 99.4% top-1 agreement. A tiny barely-trained model has more near-ties, so allow 95%.
            assert agree >= 0.95, (name, agree)
            assert np.abs(old - new).mean() < 0.01, name
