"""Shared fixtures. TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported:
tfmot needs tf_keras (Keras 2); the CLI's entry point does the same for users."""

from __future__ import annotations

import io
import os
import tarfile
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


def tar_tree(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(src / split, arcname=f"images/{split}")
    return dest
