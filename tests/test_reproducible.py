"""Reproducible builds: the same command and --seed on the same machine give the same figures and
byte-identical .tflite files; another seed gives other weights and other augmentation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_CLASSES, REPO, make_image_tree

FLAGS = ["--dataset", "folder", "--data-cache", "none", "--width", "0.125", "--epochs", "1", "--qat-epochs", "1",
         "--batch-size", "16", "--dropout", "0.3"]
MODELS = ("model_float32.tflite", "model_int8.tflite", "model_int8_ptq.tflite")


def _figures(run):
    """What a report says about accuracy (latency and dates change from run to run by nature)."""
    rep = json.loads((run / "report.json").read_text())
    keep = ("top1", "top5", "agreement_with_float", "mean_abs_top1_prob_change", "confusion_matrix")
    return {k: {f: v[f] for f in keep} for k, v in rep["variants"].items()}, rep["significance"]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    tree = make_image_tree(base / "tree", classes=FAST_CLASSES[:4], per_class=(12, 4), size=32, full_range=True)
    # the two builds run at the same time (half the wall time; each still gets the same thread settings,
    # and with op determinism on, how busy the machine is changes no result)
    procs = {}
    for name, seed in (("a", 0), ("b", 0)):
        env = {**os.environ, "NIN_CACHE_DIR": str(base / f"cache-{name}")}
        procs[name] = subprocess.Popen([sys.executable, "-m", "pipeline", "build", *FLAGS, "--seed", str(seed), "--data-dir",
                                        str(tree), "--out", str(base / name)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return {name: base / name for name in procs}


def test_the_same_seed_gives_the_same_figures_and_bytes(two_builds):
    a, b = two_builds["a"], two_builds["b"]
    assert _figures(a) == _figures(b)
    for name in MODELS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "history_train.csv").read_text() == (b / "history_train.csv").read_text()
    ha, hb = (np.load(r / "predictions.npz") for r in (a, b))
    for k in ha.files:
        if k != "_models":  # provenance (the models' sha256): a .keras zip records when it was written
            np.testing.assert_array_equal(ha[k], hb[k])


def test_another_seed_gives_other_weights():
    """(Another seed's augmentation: tests/test_data.py.) The weights a build starts from follow the seed."""
    from pipeline.models.nin import ModelConfig, build_model
    from pipeline.train.fit import seed_everything

    def initial(seed):
        seed_everything(seed, deterministic=True)
        return build_model(ModelConfig(width=0.125)).get_weights()

    w0, again, w1 = initial(0), initial(0), initial(1)
    assert all(np.array_equal(a, b) for a, b in zip(w0, again))
    assert not all(np.array_equal(a, b) for a, b in zip(w0, w1))


def test_the_flag_is_recorded(tmp_path):
    from pipeline.runs.config import BuildRequest

    on = BuildRequest(dataset="cifar10", arch="nin-cifar").config()
    off = BuildRequest(dataset="cifar10", arch="nin-cifar", overrides={"deterministic": False}).config()
    assert on.train.deterministic and not off.train.deterministic
    assert type(on).from_dict(off.to_dict()).train.deterministic is False
