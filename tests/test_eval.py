"""`edge-app eval`: accuracy on the device through its own runtime and preprocessing, on a labelled folder."""

import json

import numpy as np
from click.testing import CliRunner
from conftest import png_bytes

from edge_app.cli.main import cli


def _tree(root, classes, per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        d = root / cls / ("nested" if ci % 2 else "")  # images are found below a class folder at any depth
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (d / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)))
    return root


def test_eval_on_a_labelled_folder_matches_the_runtime_and_writes_eval_json(edge_model, tmp_path):
    from edge_app.frames.geometry import fit_to_input
    from edge_app.model import open_model

    src = _tree(tmp_path / "data", ["cat", "dog", "ship"])
    (src / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(src), "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert (r["images"], r["skipped"], r["classes_found"]) == (9, 1, ["cat", "dog", "ship"])
    assert {"model_sha256", "runtime", "delegate", "threads", "device"} <= set(r) and r["threads"] == 1
    # the same answers as the runtime gives image by image, with the loop's preprocessing
    import cv2

    m = open_model(edge_model, threads=1)
    h, w, c = m.classifier.input_size
    labels = list(m.labels)
    right = 0
    for cls in ("cat", "dog", "ship"):
        for f in sorted((src / cls).rglob("*.png")):
            rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            right += labels[int(np.argmax(m.classifier.predict(fit_to_input(rgb, h, w, c, "crop"))))] == cls
    assert r["top1"] == right / 9
    assert np.array(r["confusion_matrix"]).sum() == 9 and set(r["per_class_recall"]) == set(labels)
    assert r["per_class_recall"]["frog"] is None  # no images of it: no recall, not 0
    assert "top-1" in res.output and "skipped 1 unreadable" in res.output


def test_eval_refuses_unknown_classes_and_empty_folders_in_one_line(edge_model, tmp_path):
    src = _tree(tmp_path / "data", ["cat", "kat"])
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(src)])
    assert res.exit_code == 1 and "kat" in res.output and "none of the model's 10 labels" in res.output
    assert "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no class subfolders" in res.output
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "no such folder" in res.output


def test_a_folder_source_finds_images_in_subfolders(tmp_path):
    from edge_app.frames.sources import open_source

    src = _tree(tmp_path / "data", ["cat", "dog"], per_class=2)
    assert len(open_source(str(src)).paths) == 4  # used to be "no images found" for a labelled tree


def test_compare_shows_the_device_s_top1_beside_the_host_s(fast_run_copy, fast_tree):
    from pipeline.cli.main import cli as pipeline_cli

    res = CliRunner().invoke(cli, ["eval", str(fast_run_copy), "--source", str(fast_tree / "test"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    device = json.loads((fast_run_copy / "eval.json").read_text())  # the run folder's own, by default
    host = json.loads((fast_run_copy / "report.json").read_text())["variants"]["qat_int8"]["top1"]
    res = CliRunner().invoke(pipeline_cli, ["compare", str(fast_run_copy)])
    assert res.exit_code == 0 and "device int8 top-1" in res.output
    assert f"{100 * device['top1']:.2f}% ({100 * (device['top1'] - host):+.2f}, {device['images']} images)" in res.output
    # the same images, the same int8 model and preprocessing as the host's report: the same top-1
    assert device["images"] == host_images(fast_run_copy) and abs(device["top1"] - host) < 1e-9


def host_images(run):
    return json.loads((run / "report.json").read_text())["test_images"]


def test_bench_all_is_one_table_and_a_delegate_that_fails_is_a_row(fast_run_copy, fast_tree, tmp_path, monkeypatch):
    import edge_app.runtime as runtime
    from edge_app.errors import DelegateError

    real = runtime.make_delegate

    def fake(kind, runtime_name, **kw):
        if kind == "gpu":
            raise DelegateError("the gpu delegate (fake.so) failed to load: made up by the test")
        return real(kind, runtime_name, **kw)

    monkeypatch.setattr(runtime, "make_delegate", fake)
    out = tmp_path / "all.json"
    res = CliRunner().invoke(cli, ["bench", str(fast_run_copy), "--all", "--runs", "10", "--threads", "1",
                                   "--data", str(fast_tree / "test"), "--limit", "20", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["model"] for r in ok} == {"float32", "QAT int8", "PTQ int8"} and all(r["threads"] == 1 for r in ok)
    assert all(r["ms_median"] > 0 and 0 <= r["top1"] <= 1 and r["bytes"] > 0 for r in ok)
    gpu = [r for r in rows if r["delegate"] == "gpu"]
    assert gpu and all("made up by the test" in r["status"] for r in gpu)
    assert any("no model_int8_edgetpu.tflite" in r["status"] for r in rows if r["delegate"] == "edgetpu")
    assert "skipped: the gpu delegate (fake.so)" in res.output and "ms median" in res.output
    res = CliRunner().invoke(cli, ["bench", str(fast_run_copy / "model_int8.tflite"), "--all"])
    assert res.exit_code == 2 and "--all takes a run folder" in res.output


def test_bench_all_names_classes_from_labels_txt_lines_not_words(edge_model, tmp_path):
    """A folder without model.json: labels.txt's lines are the classes, spaces and all."""
    import shutil

    from edge_app.measure.bench import bench_all

    folder = tmp_path / "bare"
    folder.mkdir()
    shutil.copy(edge_model / "model_int8.tflite", folder)
    names = [f"class {i}" for i in range(10)]  # "class 0" is one class, not two words
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    data = tmp_path / "data" / "class 3"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    rows = bench_all(folder, runs=10, delegates=("cpu",), data=tmp_path / "data", max_threads=1)
    assert [r["status"] for r in rows] == ["ok"] and 0 <= rows[0]["top1"] <= 1
