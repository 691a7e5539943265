"""edge_app's loop, headless: JSON lines, summary, sources, delegates and every bad input.
Uses the tiny real run built once per session (conftest.edge_model)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, png_bytes, write_video
from test_cli import BLOCK_TF

from edge_app.cli.main import cli
from edge_app.errors import SourceError
from edge_app.frames.geometry import fit_to_input
from edge_app.camera.loop import LoopOptions, run_loop
from edge_app.model import open_model
from edge_app.frames.sources import ImageSource

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A synthetic 640x480 video: a bright moving square on a dark background."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", 400)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / f"img{i}.png").write_bytes(png_bytes(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return tmp_path


def _run(args):
    return CliRunner().invoke(cli, ["run", *args])


def test_json_lines_and_summary(edge_model, video, tmp_path):
    out, summ = tmp_path / "out.jsonl", tmp_path / "summary.json"
    res = _run(["--model", str(edge_model), "--source", str(video), "--max-frames", "12", "--top-k", "3",
                "--output", str(out), "--summary", str(summ)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12 and [x["frame"] for x in lines] == list(range(12))
    labels = (edge_model / "labels.txt").read_text().split()
    for x in lines:
        assert set(x) == {"frame", "time", "source", "top", "ms"} and set(x["ms"]) == {"capture", "pre", "invoke", "post"}
        scores = [t["score"] for t in x["top"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        assert all(t["label"] == labels[t["index"]] for t in x["top"])
    s = json.loads(summ.read_text())
    assert s["frames"] == 12 and s["stopped_by"] == "--max-frames 12" and s["fps"] > 0
    assert s["runtime"] == "ai-edge-litert" and s["delegate"] == "cpu"
    assert set(s["ms"]) == {"capture", "pre", "invoke", "post"} and all(v["median"] <= v["p95"] for v in s["ms"].values())
    assert "summary: 12 frames" in res.output


def test_loop_scores_match_the_classifier(edge_model, folder):
    """The loop's per-frame pipeline gives exactly what Classifier.predict gives on the resized image."""
    m = open_model(edge_model, threads=1)
    src = ImageSource(sorted(folder.glob("img*.png")), "imgs")
    lines = []

    class Sink:
        def write(self, s):
            lines.append(json.loads(s))

    summary = run_loop(m, src, LoopOptions(top=10), out=Sink())
    assert summary.frames == 4
    for line, p in zip(lines, sorted(folder.glob("img*.png"))):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        scores = m.classifier.predict(fit_to_input(rgb, 32, 32, 3, "crop"))
        assert [t["index"] for t in line["top"]][:3] == list(np.argsort(-scores)[:3])


def test_folder_skips_and_counts_unreadable_images(edge_model, folder, tmp_path):
    summ = tmp_path / "s.json"
    res = _run(["--model", str(edge_model / "model_int8.tflite"), "--source", str(folder), "--summary", str(summ)])
    assert res.exit_code == 0, res.output
    s = json.loads(summ.read_text())
    assert s["frames"] == 4 and s["skipped"] == 1 and s["stopped_by"] == "end of source"
    glob_res = _run(["--model", str(edge_model), "--source", str(folder / "img*.png")])
    assert glob_res.exit_code == 0 and glob_res.output.count('"frame"') == 4


def test_a_model_that_is_not_the_one_its_sidecar_describes_is_refused(edge_model_copy, tmp_path, caplog, video):
    """The device bundle refuses a model whose sha256 differs from model.json; so does `run` (and
    `bench`), unless --ignore-checksum, which warns."""
    from conftest import make_edge_model

    other = make_edge_model(tmp_path / "other", seed=1)
    (edge_model_copy / "model_int8.tflite").write_bytes((other / "model_int8.tflite").read_bytes())
    res = _run(["--model", str(edge_model_copy), "--source", str(video), "--max-frames", "1"])
    assert res.exit_code == 1 and "is not the model its model.json describes" in res.output
    assert "--ignore-checksum" in res.output and "Traceback" not in res.output
    res = _run(["--model", str(edge_model_copy), "--source", str(video), "--max-frames", "1", "--ignore-checksum"])
    assert res.exit_code == 0, res.output
    assert "running it anyway (--ignore-checksum)" in caplog.text


def test_a_bare_tflite_takes_the_labels_beside_it_or_from_labels(edge_model, folder, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "m.tflite").write_bytes((edge_model / "model_int8.tflite").read_bytes())
    names = [f"thing{i}" for i in range(10)]
    (bare / "labels.txt").write_text("\n".join(names) + "\n")
    res = _run(["--model", str(bare / "m.tflite"), "--source", str(folder), "--max-frames", "1"])
    assert res.exit_code == 0, res.output
    first = next(ln for ln in res.output.splitlines() if ln.startswith("{"))
    assert json.loads(first)["top"][0]["label"] in names
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    res = _run(["--model", str(bare / "m.tflite"), "--source", str(folder), "--labels", str(tmp_path / "three.txt")])
    assert res.exit_code == 1 and "names 3 classes but the model has 10" in res.output and "Traceback" not in res.output


def test_every_command_takes_the_model_either_way(edge_model, folder):
    r = CliRunner()
    assert r.invoke(cli, ["info", "--model", str(edge_model)]).output == r.invoke(cli, ["info", str(edge_model)]).output
    res = r.invoke(cli, ["bench", str(edge_model), "--runs", "10", "--threads", "1"])
    assert res.exit_code == 0 and "invoke" in res.output, res.output
    res = r.invoke(cli, ["run", str(edge_model), "--source", str(folder)])
    assert res.exit_code == 0 and res.output.count('"frame"') == 4, res.output
    for args in (["info"], ["bench"], ["run", "--source", str(folder)]):
        res = r.invoke(cli, args)
        assert res.exit_code == 2 and "which model?" in res.output
    res = r.invoke(cli, ["run", str(edge_model), "--model", str(folder), "--source", str(folder)])
    assert res.exit_code == 2 and "two models given" in res.output


def test_info_prints_plain_numbers_and_names_each_output(edge_model):
    res = CliRunner().invoke(cli, ["info", str(edge_model)])
    assert res.exit_code == 0, res.output
    assert "np.int" not in res.output and "np.float" not in res.output
    outputs = [ln for ln in res.output.splitlines() if ln.strip().startswith("output ")]
    assert outputs and all("<- " in ln for ln in outputs)
    assert any("<- scores" in ln and "shape [1, " in ln for ln in outputs)


def test_loop_replays_file_sources(edge_model, folder, tmp_path):
    short = write_video(tmp_path / "short.avi", 5)
    for source, skipped in ((short, 0), (folder, 1)):
        summ = tmp_path / "s.json"
        res = _run(["--model", str(edge_model), "--source", str(source), "--loop", "--max-frames", "12",
                    "--summary", str(summ)])
        assert res.exit_code == 0, res.output
        s = json.loads(summ.read_text())
        assert s["frames"] == 12 and s["stopped_by"] == "--max-frames 12" and s["skipped"] == skipped
        frames = [json.loads(ln)["frame"] for ln in res.output.splitlines() if ln.startswith("{")]
        assert frames == list(range(12))  # the index keeps counting across passes


def test_a_source_that_gives_no_frame_is_an_error(edge_model, tmp_path):
    only = tmp_path / "broken.jpg"
    only.write_bytes(b"\xff\xd8 not a jpeg")
    res = _run(["--model", str(edge_model), "--source", str(only)])
    assert res.exit_code == 1, res.output
    assert "no frame was processed: its 1 image(s) could not be read" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
def test_fit_to_input(mode):
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 255  # right half white
    out = fit_to_input(frame, 32, 32, 3, mode)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if mode == "letterbox":
        assert out[:4].max() == 0 and out[-4:].max() == 0  # black bars above and below
    assert out[16, 2].max() == 0 and out[16, 29].min() > 200  # left dark, right bright: colour order and geometry kept
    assert fit_to_input(frame, 32, 32, 1, mode).shape == (32, 32, 1)


def test_camera_that_stops_delivering_frames_ends_with_summary_and_error(edge_model):
    m = open_model(edge_model, threads=1)

    class Flaky:
        label, skipped = "camera 0", 0

        def frames(self):
            for i in range(5):
                yield type("F", (), {"rgb": np.zeros((480, 640, 3), np.uint8), "name": "camera 0", "index": i})()
            raise SourceError("camera 0 stopped delivering frames (nothing for 5 s)")

        def close(self):
            self.closed = True

    src = Flaky()
    summary = run_loop(m, src, out=None)
    assert summary.frames == 5 and summary.stopped_by == "source failure" and "stopped delivering" in summary.error
    assert src.closed


@pytest.mark.parametrize("args, needle", [
    (["--source", "7"], "could not open camera 7"),
    (["--source", "/no/such/clip.mp4"], "no such camera, file, folder, glob or URL"),
    (["--source", "picamera"], "python3-picamera2"),
    (["--delegate", "edgetpu"], "edgetpu delegate (libedgetpu.so.1) failed to load"),
    (["--delegate", "gpu"], "gpu delegate"),
    (["--delegate", "nnapi"], "NNAPI exists only on Android"),
    (["--delegate-lib", "/no/such/libdelegate.so"], "failed to load"),
])
def test_bad_inputs_are_clear_errors(edge_model, video, args, needle):
    base = ["--model", str(edge_model), "--source", str(video), "--max-frames", "2"]
    res = _run(base + args)
    assert res.exit_code == 1, res.output
    assert needle in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args, needle", [
    (["--delegate", "tpu"], "'tpu' is not one of"),
    (["--top-k", "0"], "0 is not in the range"),
    (["--resize", "zoom"], "'zoom' is not one of"),
    (["--delegate-option", "novalue"], "is not key=value"),
])
def test_bad_option_values(edge_model, args, needle):
    res = _run(["--model", str(edge_model)] + args)
    assert res.exit_code == 2 and needle in res.output


def test_fallback_cpu_is_opt_in_and_loud(edge_model, video):
    res = _run(["--model", str(edge_model), "--source", str(video), "--max-frames", "2", "--delegate", "edgetpu", "--fallback-cpu"])
    assert res.exit_code == 0, res.output
    assert "delegate cpu (fallback)" in res.output


def test_bad_models(edge_model, tmp_path, video, caplog):
    trunc = tmp_path / "trunc.tflite"
    trunc.write_bytes((edge_model / "model_int8.tflite").read_bytes()[:5000])
    rnd = tmp_path / "random.tflite"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    for bad in (trunc, rnd):
        res = _run(["--model", str(bad), "--source", str(video)])
        assert res.exit_code == 1 and "is not a TFLite model" in res.output, res.output
    res = _run(["--model", str(tmp_path / "missing"), "--source", str(video)])
    assert res.exit_code == 1 and "no model at" in res.output
    # a sidecar that disagrees with the model beside it
    other = tmp_path / "run"
    other.mkdir()
    (other / "model_int8.tflite").write_bytes((edge_model / "model_int8.tflite").read_bytes())
    sc = json.loads((edge_model / "model.json").read_text())
    sc["input"]["shape"] = [1, 64, 64, 3]
    (other / "model.json").write_text(json.dumps(sc))
    res = _run(["--model", str(other), "--source", str(video)])
    assert res.exit_code == 1 and "disagree" in res.output and "input shape" in res.output
    # no sidecar at all: runs, with class indices for labels and a warning
    (other / "model.json").unlink()
    res = _run(["--model", str(other / "model_int8.tflite"), "--source", str(video), "--max-frames", "1"])
    assert res.exit_code == 0 and "labels are class indices" in caplog.text
    assert '"frame": 0' in res.output


def test_headless_run_imports_no_tensorflow_and_stops_on_sigint(edge_model, video):
    code = BLOCK_TF + "from edge_app.cli.main import main\nmain()\n"
    cmd = [sys.executable, "-c", code, "run", "--model", str(edge_model), "--source", str(video), "--threads", "1"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()  # the first JSON line: the loop is running
    assert json.loads(first)["frame"] == 0, p.stderr.read()
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "stopped by Ctrl-C" in err and "Traceback" not in err
    assert "blocked:" not in err  # the meta-path finder would have refused any TensorFlow import


def test_sigterm_ends_the_loop_like_ctrl_c(edge_model, video):
    """systemctl stop / docker stop send SIGTERM: the loop ends with its summary and exit 0."""
    cmd = [sys.executable, "-m", "edge_app", "run", "--model", str(edge_model), "--source", str(video), "--threads", "1"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(p.stdout.readline())["frame"] == 0, p.stderr.read()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err


def test_the_demo_model_ships_with_the_package(folder, tmp_path, monkeypatch):
    """`--model demo` is the bundled quick CIFAR-10 int8 model (a real build's), usable before any training."""
    from edge_app.contract.files import DEMO_DIR

    assert {"model_int8.tflite", "model.json", "labels.txt", "README.md"} <= {p.name for p in DEMO_DIR.iterdir()}
    monkeypatch.chdir(tmp_path)  # no folder named demo here
    res = CliRunner().invoke(cli, ["info", "demo"])
    assert res.exit_code == 0 and "cifar10 / nin-cifar" in res.output and "airplane" in res.output, res.output
    res = _run(["--model", "demo", "--source", str(folder), "--max-frames", "2"])
    assert res.exit_code == 0 and res.output.count('"frame"') == 2, res.output


def test_the_readme_python_example_runs_without_tensorflow(edge_model, folder):
    text = (REPO / "README.md").read_text()
    code = text.split("## On the device", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("artifacts/<run>", str(edge_model)).replace("photo.jpg", str(folder / "img0.png"))
    out = subprocess.run([sys.executable, "-c", BLOCK_TF + code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    label, score = out.stdout.split()
    assert label in (edge_model / "labels.txt").read_text().split() and 0 <= float(score) <= 1


def test_python_dash_m_edge_app(edge_model, folder):
    out = subprocess.run([sys.executable, "-m", "edge_app", "run", "--model", str(edge_model), "--source", str(folder)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4


def test_save_video_writes_annotated_frames(edge_model, video, tmp_path):
    out = tmp_path / "annotated.avi"
    res = _run(["--model", str(edge_model), "--source", str(video), "--max-frames", "10", "--save-video", str(out)])
    assert res.exit_code == 0, res.output
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 10 and frames[0].shape == (480, 640, 3)
    src = cv2.VideoCapture(str(video)).read()[1]
    # labels are drawn in the top-left corner; the rest of the frame is the source frame
    assert np.abs(frames[0][5:40, 5:100].astype(int) - src[5:40, 5:100]).mean() > 10
    assert abs(float(frames[0][400:, 400:].mean()) - float(src[400:, 400:].mean())) < 3
    res = _run(["--model", str(edge_model), "--source", str(video), "--save-video", str(tmp_path / "no" / "dir.avi")])
    assert res.exit_code == 1 and "cannot write video" in res.output


def test_display_without_a_screen_is_a_clear_error(edge_model, video, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    res = _run(["--model", str(edge_model), "--source", str(video), "--display"])
    assert res.exit_code == 1 and "--display needs a screen" in res.output


def test_bench_reports_invoke_and_loop(edge_model, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli, ["bench", "--model", str(edge_model), "--runs", "30", "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["runs"] == 30 and r["loop"]["frames"] == 30 and r["frame"] == "640x480"
    assert 0 < r["invoke_ms"]["median"] <= r["invoke_ms"]["p95"]
    assert r["loop_over_invoke_fps"] == pytest.approx(r["loop"]["fps"] / r["invoke_ms"]["fps"])
    assert "loop / invoke FPS" in res.output


def test_unwritable_outputs_are_clear_errors(edge_model, video, tmp_path):
    nowhere = tmp_path / "a-file"  # a regular file: nothing can be created below it
    nowhere.write_text("")
    for flag in ("--output", "--summary"):
        res = _run(["--model", str(edge_model), "--source", str(video), "--max-frames", "2", flag, str(nowhere / "x.json")])
        assert res.exit_code == 1 and "cannot write" in res.output and "Traceback" not in res.output, res.output


def test_summary_timings_are_bounded():
    from edge_app.camera.loop import TIMING_WINDOW, Summary

    s = Summary()
    for i in range(TIMING_WINDOW + 500):
        s.ms["invoke"].append(float(i))
    assert len(s.ms["invoke"]) == TIMING_WINDOW  # a days-long camera run does not grow memory
    assert s.to_dict()["ms"]["invoke"]["median"] >= 500


def test_p95_is_never_below_the_median():
    from edge_app.runtime import median_p95

    assert median_p95([1.382, 3.27]) == (pytest.approx(2.326), 3.27)
    assert median_p95(range(100)) == (49.5, 94)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not __import__("shutil").which("taskset"),
                    reason="needs Linux's taskset (util-linux)")
def test_threads_default_to_the_cores_the_process_may_use():
    """Pinned to one core (taskset, a container's cpuset), the default is 1 thread, not the machine's core count."""
    code = "from edge_app.runtime import usable_cores; print(usable_cores())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.strip() == "1"


def test_prefetch_changes_nothing_but_speed(edge_model, video, tmp_path):
    """Frames prepared in the second thread give the same predictions, in the same order."""
    outs = {}
    for flag in ("--prefetch", "--no-prefetch"):
        out = tmp_path / f"{flag}.jsonl"
        res = _run(["--model", str(edge_model), "--source", str(video), "--max-frames", "60", "--output", str(out), flag])
        assert res.exit_code == 0, res.output
        outs[flag] = [(x["frame"], x["top"]) for x in map(json.loads, out.read_text().splitlines())]
    assert outs["--prefetch"] == outs["--no-prefetch"] and len(outs["--prefetch"]) == 60
