"""The model for MediaPipe Tasks' ImageClassifier and the TFLite Task Library (`nin-pipeline clients`)."""

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli.main import cli


def _cifar_test_jpgs(cifar_jpg, dest, n=40):
    """The first ``n`` JPEGs of the real CIFAR-10 test split (32x32: no client resizes them)."""
    import tarfile

    dest.mkdir()
    with tarfile.open(cifar_jpg) as tar:
        for m in tar:
            if m.isfile() and "/test/" in f"/{m.name}" and m.name.endswith(".jpg"):
                (dest / f"{len(list(dest.iterdir())):03d}.jpg").write_bytes(tar.extractfile(m).read())
                if len(list(dest.iterdir())) == n:
                    break
    return dest


@pytest.mark.slow
def test_mediapipe_and_the_task_library_give_the_top1_of_our_runtime(run_dir, cifar_jpg, tmp_path, mediapipe_python,
                                                                     task_library_python):
    import shutil

    run = Path(shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "tensorboard")))
    images = _cifar_test_jpgs(cifar_jpg, tmp_path / "test")
    res = CliRunner().invoke(cli, ["clients", str(run), "--writer-python", str(mediapipe_python),
                                   "--check", str(images), "--task-python", str(task_library_python)])
    assert res.exit_code == 0, res.output
    r = json.loads((run / "clients.json").read_text())
    c = r["check"]
    assert c["images"] == 40 and c["mediapipe_same_top1"] == 40 and c["task_library_same_top1"] == 40
    assert c["same_top1_as_model_int8.tflite"] == 40  # the same network as the run's own int8 model
    labels = (run / "labels.txt").read_text().split()
    assert {m[1] for m in c["mediapipe"]} <= set(labels) and len({m[1] for m in c["mediapipe"]}) > 1  # labels from the metadata
    model = run / "model_uint8_metadata.tflite"
    from edge_app.runtime import load_interpreter

    interp, _ = load_interpreter(model, num_threads=1)
    (inp,), outs = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"].__name__ == "uint8" and tuple(inp["quantization"]) == (pytest.approx(1 / 255), 0)
    assert [list(o["shape"]) for o in outs] == [[1, len(labels)]]  # the scores only: no class maps to misread
    with zipfile.ZipFile(model) as z:  # TFLite Metadata packs its associated files as a zip at the end
        (name,) = z.namelist()
        assert z.read(name).decode().split() == labels


def test_without_a_writer_it_says_how_to_get_one(fast_run_copy, monkeypatch):
    monkeypatch.delenv("NIN_METADATA_PYTHON", raising=False)
    res = CliRunner().invoke(cli, ["clients", str(fast_run_copy)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "MediaPipe's metadata writer is not importable here" in res.output and "pip install 'mediapipe==0.10.21'" in res.output
    res = CliRunner().invoke(cli, ["clients", str(fast_run_copy), "--task-python", "/bin/sh"])
    assert res.exit_code == 2 and "--task-python goes with --check DIR" in res.output
