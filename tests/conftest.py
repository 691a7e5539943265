"""Shared fixtures. TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported:
tfmot needs tf_keras (Keras 2); the CLI's entry point does the same for users."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the CLI does (pipeline/cli/main.py)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
FAST_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_JPG = Path(os.environ.get("NIN_SHARED", REPO.parent / "shared")) / "datasets" / "cifar10-jpg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.keras or ~/.cache from tests."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras_home"))
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nin_cache"))
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_children():
    """The Ctrl-C tests send SIGINT to the commands they start. A shell that starts a job in the
    background without job control (``cmd &`` in a script, some CI runners) starts it with SIGINT
    ignored, and an ignored signal stays ignored across exec: those commands would never see it.
    Found when this suite, so launched, saw builds ignore the test's SIGINT and run to the end."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(autouse=True)
def _no_cluster():
    """No TF_CONFIG during a test, and none after it: an in-process `build --workers` writes one
    (that is its job), and a leaked one would make every later build wait for peers."""
    saved = os.environ.pop("TF_CONFIG", None)
    yield
    os.environ.pop("TF_CONFIG", None)
    if saved is not None:
        os.environ["TF_CONFIG"] = saved


@pytest.fixture(scope="session")
def cifar_jpg() -> Path:
    """The real CIFAR-10 copy in ../shared. In CI it must be there; on a user's clone the test skips."""
    if not CIFAR_JPG.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real CIFAR-10 copy at {CIFAR_JPG}")
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR_JPG} (../shared is absent in a user's clone)")
    return CIFAR_JPG


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_image_tree(root: Path, classes=("cat", "dog", "fox"), per_class=(6, 3), size=16, seed=0,
                    corrupt: int = 0, full_range: bool = False) -> Path:
    """train/<class>/*.png and test/<class>/*.png with a class-coloured square; ``corrupt`` bad files in train.
    ``full_range``: a white and a black corner in every image, so pixels span 0..255 as photos do."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[..., ci % 3] += 150
                if full_range:
                    img[:2, :2], img[-2:, -2:] = 255, 0
                (d / f"{i:03d}.png").write_bytes(png_bytes(img))
    for i in range(corrupt):
        (root / "train" / classes[0] / f"bad{i}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return root


def write_video(path: Path, frames: int, step: int = 1) -> Path:
    """A synthetic 640x480 MJPG video: a bright square moving ``step`` pixels a frame on a dark background."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for i in range(frames):
        f = np.full((480, 640, 3), 30, np.uint8)
        x = 50 + (step * i) % 300
        f[100:300, x:x + 200] = (40, 180, 220)
        w.write(f)
    w.release()
    return path


def tar_tree(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(src / split, arcname=f"images/{split}")
    return dest


# --------------------------------------------------------------------------- the edge model
# What the device side reads, made in seconds: a random-weight nin-cifar (width 0.125, 10
# classes, class maps) converted to int8 with its model.json and labels.txt, plus the float32
# .tflite. Its scores mean nothing; its tensors, quantisation and sidecar are real.


def make_edge_model(folder: Path, seed: int = 0) -> Path:
    import tf_keras as keras

    from edge_app.contract.files import INT8_TFLITE, LABELS_TXT, SIDECAR_NAME
    from edge_app.contract.sidecar import write_sidecar
    from pipeline.export.convert import describe_tflite, to_tflite_float, to_tflite_int8, training_input_stats
    from pipeline.models.nin import ModelConfig, build_model, with_class_maps
    from edge_app.contract.files import FLOAT_TFLITE

    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = with_class_maps(build_model(ModelConfig(width=0.125, dropout=0.0, num_classes=len(FAST_CLASSES))))
    rep = np.random.default_rng(seed).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    (folder / INT8_TFLITE).write_bytes(to_tflite_int8(model, rep))
    (folder / FLOAT_TFLITE).write_bytes(to_tflite_float(model))
    (folder / LABELS_TXT).write_text("\n".join(FAST_CLASSES) + "\n")
    write_sidecar(folder / SIDECAR_NAME, describe_tflite(folder / INT8_TFLITE, FAST_CLASSES, dataset="cifar10",
                                                         arch="nin-cifar", width=0.125, hashed=[folder / INT8_TFLITE, folder / FLOAT_TFLITE],
                                                         input_stats=training_input_stats(rep)))
    return folder


@pytest.fixture(scope="session")
def edge_model(tmp_path_factory) -> Path:
    """A folder with model_int8.tflite, model.json, labels.txt and model_float32.tflite (never changed by a test)."""
    return make_edge_model(tmp_path_factory.mktemp("edge") / "model")


@pytest.fixture
def edge_model_copy(edge_model, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(edge_model, tmp_path / "model"))


# --------------------------------------------------------------------------- the fast run
# A complete run folder in about a minute: the real `build` stages (1 float epoch, 1 QAT epoch,
# conversion with class maps, evaluation and report) on a synthetic 10-class image tree with one
# corrupt file, streamed from the files (--data-cache none).
# Its accuracy means nothing; its files are real. Session-scoped and shared: a test that changes
# a run folder takes `fast_run_copy`.


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory) -> Path:
    from pipeline.runs.config import BuildRequest
    from pipeline.stages.orchestrator import build

    base = tmp_path_factory.mktemp("fast")
    tree = make_image_tree(base / "tree", classes=FAST_CLASSES, per_class=(8, 4), size=32, full_range=True, corrupt=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIN_CACHE_DIR", str(base / "cache"))
        mp.setenv("KERAS_HOME", str(base / "keras"))
        request = BuildRequest(dataset="folder", data_dir=tree, overrides={"width": 0.125, "epochs": 1, "qat_epochs": 1,
                                                                            "batch_size": 32}, class_maps=True, data_cache="none")
        run = build(request.config(), base / "run")
    return run.root


@pytest.fixture
def fast_run_copy(fast_run, tmp_path) -> Path:
    """A private copy of the fast run, for tests that change a run folder."""
    import shutil

    return Path(shutil.copytree(fast_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "tensorboard")))


@pytest.fixture(scope="session")
def fast_tree(fast_run) -> Path:
    """The image tree the fast run was built from (10 classes, 4 test images each)."""
    return fast_run.parent / "tree"


# --------------------------------------------------------------------------- the tiny real run
# One `nin-pipeline build` through the CLI on a stratified subset of the real CIFAR-10 copy,
# used only where real accuracy matters (tests marked slow); never changed by a test (copy it
# first). It is interrupted with Ctrl-C after its first epoch and then resumed, as a user would.

def build_cmd(cifar_jpg, out):
    return [sys.executable, "-m", "pipeline.cli.main", "build", "--dataset", "cifar10", "--data-dir", str(cifar_jpg),
            "--out", str(out), "--width", "0.25", "--epochs", "3", "--qat-epochs", "1", "--batch-size", "64",
            "--limit-train", "3000", "--limit-test", "500", "--seed", "1"]


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    """One NIN_CACHE_DIR for the builds on the real CIFAR-10 copy (subprocesses): the archive's
    60,000 JPEGs are decoded once per session, by whichever build comes first."""
    return tmp_path_factory.mktemp("cifar_cache")


@pytest.fixture(scope="session")
def run_dir(cifar_jpg, cifar_cache, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    out = base / "run"
    env = {**os.environ, "NIN_CACHE_DIR": str(cifar_cache), "KERAS_HOME": str(base / "keras")}
    cmd = build_cmd(cifar_jpg, out)
    # 1. start, wait for the first epoch's checkpoint, then Ctrl-C
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt_index = out / "checkpoints" / "train" / "chief" / "checkpoint"  # Keras BackupAndRestore
    deadline = time.time() + 600
    while not ckpt_index.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert ckpt_index.exists(), "no checkpoint after the first epoch"
    proc.send_signal(signal.SIGINT)
    first_out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, first_out[-3000:]
    assert "interrupted" in first_out and "Traceback" not in first_out
    assert not (out / "model_float.keras").exists()
    # 2. the same command again resumes and finishes
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out




# --------------------------------------------------------------------------- a tiny real sweep
# `nin-pipeline sweep` over two LeNet widths on a CIFAR-10 subset, interrupted (Ctrl-C) as the second
# candidate's build starts and then run again: test_sweep checks that the finished candidate is
# skipped (resuming inside one build is the build's own, tested with `run_dir`); test_zoo uses a
# candidate as a seed architecture's run folder. Never changed by a test: they copy it.

@pytest.fixture(scope="session")
def lenet_sweep(cifar_jpg, cifar_cache, tmp_path_factory):
    from click.testing import CliRunner

    import pipeline.stages.orchestrator as build_module
    from pipeline.cli.main import cli

    out = tmp_path_factory.mktemp("sweep") / "sweep"
    args = ["sweep", "--out", str(out), "--archs", "lenet", "--widths", "0.25,0.5", "--data-dir", str(cifar_jpg),
            "--epochs", "1", "--qat-epochs", "0", "--limit-train", "200", "--limit-test", "100"]
    real_build, calls = build_module.build, []

    def counted(interrupt_at: int | None):
        def build(cfg, out, **kw):
            calls.append(out.name)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            return real_build(cfg, out, **kw)
        return build

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIN_CACHE_DIR", str(cifar_cache))
        mp.setattr(build_module, "build", counted(2))
        first = CliRunner().invoke(cli, args)
        mp.setattr(build_module, "build", counted(None))
        second = CliRunner().invoke(cli, args)
    return out, args, calls, first, second


# --------------------------------------------------------------------------- tflite-runtime 2.14

def tool_venv(tmp_path_factory, name: str, packages: list[str], why: str, no_deps: tuple[str, ...] = ()) -> Path:
    """A venv of its own with ``packages`` from the package index (for runtimes and clients that cannot
    share TensorFlow 2.21's environment), and ``no_deps`` without their dependencies; its python.
    Skipped with the reason where pip cannot get them, but not in CI."""
    venv = tmp_path_factory.mktemp(name) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    for args in ([*packages], ["--no-deps", *no_deps]) if no_deps else ([*packages],):
        # --no-compile: no .pyc for the few modules a test imports once (the two client venvs: 36 s -> 21 s here, warm pip cache)
        pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", *args], capture_output=True, text=True,
                             timeout=900)
        if pip.returncode != 0:
            msg = f"could not install {' '.join(args)} ({why}): {pip.stderr[-500:]}"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
    return py


@pytest.fixture(scope="session")
def tflite_runtime_214(tmp_path_factory):
    """A venv with tflite-runtime 2.14 and numpy<2: what Raspberry Pi OS users have."""
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-runtime 2.14 has wheels for Python <= 3.11 only")
    return tool_venv(tmp_path_factory, "tfl214", ["tflite-runtime==2.14.0", "numpy<2"], "Raspberry Pi OS's runtime")


@pytest.fixture(scope="session")
def mediapipe_python(tmp_path_factory):
    """A venv with mediapipe 0.10.21: its metadata writer and ImageClassifier (protobuf 4: not beside TensorFlow).
    Without jax, jaxlib, sentencepiece and sounddevice, which these two never import (412 MB instead of 990)."""
    from pipeline.report.clients import WRITER

    return tool_venv(tmp_path_factory, "mediapipe", ["absl-py", "attrs", "flatbuffers", "numpy<2", "protobuf>=4.25,<5",
                                                     "opencv-python-headless<4.11", "matplotlib"], "MediaPipe Tasks",
                     no_deps=(WRITER,))


@pytest.fixture(scope="session")
def task_library_python(tmp_path_factory):
    """A venv with the TFLite Task Library (tflite-support 0.4.4) and a libusb for its native part."""
    return tool_venv(tmp_path_factory, "tasklib", ["tflite-support==0.4.4", "libusb-package"], "the TFLite Task Library")


# --------------------------------------------------------------------------- the arm64 tests, beside the rest

def pytest_collection_modifyitems(session, config, items):
    """tests/test_arm64.py's emulated installs run in the background from the start (start_in_background):
    its slow tests go last, to wait as little as possible for them."""
    last = [i for i in items if i.module.__name__ == "test_arm64" and i.get_closest_marker("slow")]
    if last:
        ids = {id(i) for i in last}
        items[:] = [i for i in items if id(i) not in ids] + last


def pytest_collection_finish(session):
    module = sys.modules.get("test_arm64")
    if module is not None and session.items and not session.config.option.collectonly:
        module.start_in_background(session.items, session.config._tmp_path_factory)


def pytest_sessionfinish(session, exitstatus):
    module = sys.modules.get("test_arm64")
    if module is not None:
        module.stop_background()
