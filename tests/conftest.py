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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
CIFAR_JPG = Path(os.environ.get("NIN_SHARED", REPO.parent / "shared")) / "datasets" / "cifar10-jpg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.keras or ~/.cache from tests."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras_home"))
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nin_cache"))
    monkeypatch.delenv("NIN_DATA_DIR", raising=False)


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
                    corrupt: int = 0) -> Path:
    """train/<class>/*.png and test/<class>/*.png with a class-coloured square; ``corrupt`` bad files in train."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[..., ci % 3] += 150
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


# --------------------------------------------------------------------------- the tiny real run
# One `nin-pipeline build` through the CLI on a stratified subset of the real CIFAR-10 copy,
# shared by the end-to-end and report tests. It is interrupted with Ctrl-C after its first
# epoch and then resumed, as a user would.

def build_cmd(cifar_jpg, out):
    return [sys.executable, "-m", "pipeline.cli", "build", "--dataset", "cifar10", "--data-dir", str(cifar_jpg),
            "--out", str(out), "--width", "0.25", "--epochs", "3", "--qat-epochs", "1", "--batch-size", "64",
            "--limit-train", "3000", "--limit-test", "500", "--seed", "1"]


@pytest.fixture(scope="session")
def run_dir(cifar_jpg, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    out = base / "run"
    env = {**os.environ, "NIN_CACHE_DIR": str(base / "cache"), "KERAS_HOME": str(base / "keras")}
    cmd = build_cmd(cifar_jpg, out)
    # 1. start, wait for the first epoch's checkpoint, then Ctrl-C
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt_index = out / "checkpoints" / "train" / "checkpoint"
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


