"""The device side's outputs: none may be a file the command reads, a run folder's own file or another
output; SIGHUP ends a run as SIGTERM does; a full disk names the file and leaves only whole lines."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, make_image_tree, png_bytes, write_video

from edge_app.cli.main import cli

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", 30)


@pytest.fixture
def photos(tmp_path):
    import numpy as np

    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        (d / f"frame_{i}.jpg").write_bytes(png_bytes(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)))
    return d


def _edge(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _refused(res, *needles):
    assert res.exit_code == 1, res.output
    assert all(n in res.output for n in needles), res.output
    assert "Traceback" not in res.output


def _fingerprint(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ 1. an output is no input, no run file, no other output


@pytest.mark.parametrize("flag", ["--output", "--summary", "--save-video"])
@pytest.mark.parametrize(
    "name, needle",
    [
        ("model_int8.tflite", "the model"),
        ("model.json", "sidecar"),
        ("labels.txt", "the labels"),
        ("report.json", "run folder's own report.json"),
    ],
)
def test_run_refuses_to_write_over_the_run_folder(edge_model_copy, photos, flag, name, needle):
    before = _fingerprint(edge_model_copy)
    res = _edge("run", "--model", edge_model_copy, "--source", photos, "--max-frames", 2, flag, edge_model_copy / name)
    _refused(res, flag, needle)
    assert _fingerprint(edge_model_copy) == before and not (edge_model_copy / "report.json").exists()


def test_a_bare_tflite_keeps_its_sidecar_and_labels_too(edge_model_copy, photos, tmp_path):
    labels = tmp_path / "names.txt"
    labels.write_text((edge_model_copy / "labels.txt").read_text())
    model = edge_model_copy / "model_int8.tflite"
    _refused(_edge("run", "--model", model, "--source", photos, "--summary", edge_model_copy / "model.json"), "sidecar")
    _refused(_edge("run", "--model", model, "--source", photos, "--labels", labels, "--output", labels), "--labels")
    assert labels.read_text() == (edge_model_copy / "labels.txt").read_text()


def test_two_outputs_that_are_one_file_are_refused(edge_model, photos, tmp_path):
    s = tmp_path / "s.json"
    _refused(_edge("run", "--model", edge_model, "--source", photos, "--output", s, "--summary", s), "--output and --summary both name")
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)  # one file through a symlinked folder
    _refused(_edge("run", "--model", edge_model, "--source", photos, "--output", s, "--summary", tmp_path / "link" / "s.json"), "one file")
    s.write_text("old\n")
    os.link(s, tmp_path / "hard.json")  # and through a hard link
    _refused(_edge("run", "--model", edge_model, "--source", photos, "--summary", s, "--save-video", tmp_path / "hard.json"), "one file")
    assert s.read_text() == "old\n"
    # a device is no file to lose: the lines and the summary may both be thrown away
    res = _edge("run", "--model", edge_model, "--source", photos, "--output", os.devnull, "--summary", os.devnull)
    assert res.exit_code == 0, res.output


def test_an_output_is_never_the_source(edge_model, photos, clip, tmp_path):
    video = tmp_path / "clip.avi"
    video.write_bytes(clip.read_bytes())
    _refused(_edge("run", "--model", edge_model, "--source", video, "--save-video", video), "would overwrite --source")
    assert video.read_bytes() == clip.read_bytes()
    before = _fingerprint(photos)
    _refused(_edge("run", "--model", edge_model, "--source", photos, "--output", photos / "frame_1.jpg"), "an image of --source")
    _refused(_edge("run", "--model", edge_model, "--source", str(photos / "*.jpg"), "--summary", photos / "frame_0.jpg"), "--source")
    # check-input deletes the frame_*.jpg of its --out: not the source's own pictures
    _refused(_edge("check-input", edge_model, "--source", photos, "--frames", 2, "--out", photos), "--out", "--source")
    assert _fingerprint(photos) == before
    for _ in range(2):  # what the source does not read may sit beside its images, again and again
        assert _edge("run", "--model", edge_model, "--source", photos, "--summary", photos / "s.json").exit_code == 0


def test_bench_eval_and_check_target_refuse_the_run_folder(edge_model_copy, photos):
    before = _fingerprint(edge_model_copy)
    _refused(_edge("eval", edge_model_copy, "--source", photos, "--json", edge_model_copy / "model.json"), "--json", "sidecar")
    _refused(_edge("bench", edge_model_copy, "--runs", 10, "--json", edge_model_copy / "model_int8.tflite"), "the model")
    _refused(_edge("bench", edge_model_copy, "--all", "--runs", 10, "--json", edge_model_copy / "model_float32.tflite"), "model_float32")
    _refused(_edge("check-target", edge_model_copy, "--json", edge_model_copy / "labels.txt"), "labels")
    _refused(_edge("check-target", edge_model_copy, "--json", edge_model_copy / "target.json"), "--json and the run's own target.json")
    assert _fingerprint(edge_model_copy) == before


def test_the_training_side_commands_refuse_their_inputs(edge_model_copy, tmp_path):
    from pipeline.cli.main import cli as pipeline_cli

    def nin(*args):
        return CliRunner().invoke(pipeline_cli, [str(a) for a in args])

    before = _fingerprint(edge_model_copy)
    model = edge_model_copy / "model_int8.tflite"
    _refused(nin("evaluate", model, "--json", model), "--json", "MODEL")
    _refused(nin("edgetpu", "check", edge_model_copy, "--json", model), "run folder's own model_int8.tflite")
    _refused(nin("compare", edge_model_copy, "--json", tmp_path / "c.txt", "--markdown", tmp_path / "c.txt"), "--markdown and --json")
    _refused(nin("compare", edge_model_copy, "--plot", edge_model_copy / "model.json"), "--plot")
    assert _fingerprint(edge_model_copy) == before
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text("{}\n")  # an earlier sweep's, handed back as the device's latencies
    tree = make_image_tree(tmp_path / "tree")
    _refused(nin("sweep", "--out", out, "--dataset", "folder", "--data-dir", tree, "--device-latency", out), "--device-latency")
    assert (out / "sweep.json").read_text() == "{}\n"


# ------------------------------------------------------------------ 2. SIGHUP ends a run as SIGTERM does


def _frames(video: Path) -> int:
    cap, n = cv2.VideoCapture(str(video)), 0
    while cap.read()[0]:
        n += 1
    return n


def test_sighup_ends_a_run_with_its_summary_and_a_readable_video(edge_model, clip, tmp_path):
    """An ssh session that drops sends SIGHUP: the run ends as on SIGTERM, the summary and the video complete."""
    video, summary = tmp_path / "v.avi", tmp_path / "s.json"
    cmd = [
        sys.executable,
        "-m",
        "edge_app",
        "run",
        "--model",
        str(edge_model),
        "--source",
        str(clip),
        "--loop",
        "--max-frames",
        "10000000",
        "--save-video",
        str(video),
        "--summary",
        str(summary),
        "--threads",
        "1",
    ]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(p.stdout.readline())["frame"] == 0, p.stderr.read()
        p.send_signal(signal.SIGHUP)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "stopped by SIGHUP" in err and "Traceback" not in err
    assert json.loads(summary.read_text())["stopped_by"] == "SIGHUP"
    assert _frames(video) > 0


def test_an_ignored_sighup_stays_ignored(edge_model, clip, tmp_path):
    """Started under nohup (SIGHUP ignored), a run outlives its terminal as it asked to."""
    summary = tmp_path / "s.json"
    code = "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\nfrom edge_app.cli.main import main\nmain()\n"
    cmd = [
        sys.executable,
        "-c",
        code,
        "run",
        "--model",
        str(edge_model),
        "--source",
        str(clip),
        "--loop",
        "--max-frames",
        "90",
        "--summary",
        str(summary),
        "--threads",
        "1",
    ]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(p.stdout.readline())["frame"] == 0, p.stderr.read()
        p.send_signal(signal.SIGHUP)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert json.loads(summary.read_text())["stopped_by"] == "--max-frames 90" and out.count("\n") == 89  # the first line read above


def test_sighup_raises_terminated_naming_it():
    from edge_app.errors import Terminated, stop_on_sigterm

    def untouched(signum, frame):  # not SIG_DFL: a SIGHUP left alone would end pytest itself
        raise AssertionError("stop_on_sigterm left SIGHUP alone")

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, untouched)
        stop_on_sigterm()
        with pytest.raises(Terminated) as caught:
            os.kill(os.getpid(), signal.SIGHUP)  # the handler runs before the next bytecode
        assert caught.value.signal_name == "SIGHUP" and caught.value.exit_code == 128 + signal.SIGHUP
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_the_training_side_names_sighup(tmp_path, monkeypatch):
    from edge_app.errors import Terminated

    from pipeline.cli.main import cli as pipeline_cli

    def hung_up(*a, **kw):
        raise Terminated("SIGHUP")

    monkeypatch.setattr("pipeline.stages.orchestrator.build", hung_up)
    res = CliRunner().invoke(pipeline_cli, ["build", "--out", str(tmp_path / "r")])
    assert res.exit_code == 128 + signal.SIGHUP
    assert "stopped by SIGHUP: finished epochs are checkpointed" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------ 3. a full disk names the file, keeps whole lines


def _full(tmp_path) -> Path:
    """A name for /dev/full (writes fail with ENOSPC): a rename over it replaces the link, never the device."""
    if not Path("/dev/full").is_char_device():
        pytest.skip("needs /dev/full (Linux)")
    link = tmp_path / "full.json"
    link.symlink_to("/dev/full")
    return link


def test_a_full_output_names_the_file_and_the_summary_is_still_written(edge_model, photos, tmp_path):
    full, summary = _full(tmp_path), tmp_path / "s.json"
    res = _edge("run", "--model", edge_model, "--source", photos, "--output", full, "--summary", summary)
    _refused(res, f"cannot write {full}: No space left on device")
    assert "summary: 0 frames" in res.stderr  # on stderr as well as in its file
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "output failure" and str(full) in s["error"]


def test_a_disk_that_fills_up_leaves_complete_lines(edge_model, clip, tmp_path, monkeypatch):
    from edge_app.fsutil import LineFile

    left = {"bytes": 1500}  # then a short write (the disk's last blocks), then ENOSPC
    real = LineFile._write_some

    def filling(self, data):
        if left["bytes"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(self, data[: left["bytes"]])
        left["bytes"] -= n
        return n

    monkeypatch.setattr(LineFile, "_write_some", filling)
    out, summary = tmp_path / "o.jsonl", tmp_path / "s.json"
    res = _edge("run", "--model", edge_model, "--source", clip, "--output", out, "--summary", summary)
    _refused(res, f"cannot write {out}: No space left on device")
    text = out.read_text()
    assert text.endswith("\n") and 0 < len(text) <= 1500
    lines = [json.loads(x) for x in text.splitlines()]  # every line whole
    s = json.loads(summary.read_text())
    assert [x["frame"] for x in lines] == list(range(len(lines))) and s["frames"] == len(lines)


def test_a_full_summary_disk_names_the_file_and_the_summary_reaches_stderr(edge_model, photos, tmp_path):
    full = _full(tmp_path)
    res = _edge("run", "--model", edge_model, "--source", photos, "--summary", full)
    _refused(res, f"cannot write {full}: No space left on device")
    assert "summary: 3 frames" in res.stderr, res.stderr
    assert res.stdout.count('"frame"') == 3


def test_a_video_no_frame_reached_is_an_error_naming_it(edge_model, photos, tmp_path, monkeypatch):
    class SilentlyFull:  # OpenCV's writer on a full disk: opened, every write "succeeds", nothing lands
        def __init__(self, path, *args):
            Path(path).write_bytes(b"")

        def isOpened(self):
            return True

        def write(self, frame):
            return True

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoWriter", SilentlyFull)
    video, summary = tmp_path / "v.avi", tmp_path / "s.json"
    res = _edge("run", "--model", edge_model, "--source", photos, "--save-video", video, "--summary", summary)
    _refused(res, f"cannot write video {video}", "3 frame(s) written")
    assert str(video) in json.loads(summary.read_text())["error"]


def test_atomic_writes_name_the_file_and_leave_nothing_behind(edge_model, tmp_path, monkeypatch):
    from edge_app.fsutil import atomic_write_text

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write_text(tmp_path / "x.json", "{}")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "x.json")
    res = _edge("bench", edge_model, "--runs", 10, "--threads", 1, "--json", tmp_path / "b.json")
    _refused(res, f"cannot write {tmp_path / 'b.json'}: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left
    monkeypatch.undo()
    full = _full(tmp_path)
    with pytest.raises(OSError) as caught:  # a device is written to as it is, not renamed over
        atomic_write_text(full, "{}")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(full) and full.is_symlink()


def test_stdout_that_fails_is_named_and_a_broken_pipe_stays_one():
    from edge_app.errors import OutputError
    from edge_app.fsutil import NamedStream

    class Failing:
        def __init__(self, code):
            self.code = code

        def write(self, text):
            raise OSError(self.code, os.strerror(self.code))

    with pytest.raises(OutputError, match="cannot write stdout: No space left on device"):
        NamedStream(Failing(errno.ENOSPC)).write("{}\n")
    with pytest.raises(BrokenPipeError):
        NamedStream(Failing(errno.EPIPE)).write("{}\n")
