"""The device side's inputs and models, the third adversarial pass (issue 28): an image too large to
decode, a model.json that records no checksum or cannot be parsed, a model that loads but cannot run,
a camera number out of range, an empty --source, and the runtimes named by --runtime."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST_CLASSES, make_image_tree, png_bytes

from edge_app.cli.main import cli
from edge_app.errors import SourceError
from edge_app.frames.sources import open_source

cv2 = pytest.importorskip("cv2")


def _one_line_error(res, *needles: str) -> None:
    """Exit 1 with one `Error:` line holding every needle, and no traceback (CliRunner keeps an uncaught one in res.exception)."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(line) == 1, res.output
    for needle in needles:
        assert needle in line[0], line[0]


# --------------------------------------------------------------------------- images too large to decode


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG of black 1-bit grey pixels, built by hand: its IDAT is the zlib stream of zero rows, so a
    20000x20000 image (1.2 GB once decoded to BGR) is some 60 KB of file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the row's bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_the_hand_built_png_is_a_real_png():
    small = cv2.imdecode(np.frombuffer(huge_png(64, 48), np.uint8), cv2.IMREAD_COLOR)
    assert small is not None and small.shape == (48, 64, 3) and not small.any()
    assert len(huge_png()) < 2_000_000


@pytest.fixture
def decodes(monkeypatch):
    """Every path cv2.imread is asked to decode; a huge one is not decoded even before the fix (the test
    would take gigabytes), it only shows up here."""
    seen: list[str] = []
    real = cv2.imread

    def spy(path, *args):
        seen.append(Path(path).name)
        return None if Path(path).name == "huge.png" else real(path, *args)

    monkeypatch.setattr(cv2, "imread", spy)
    return seen


@pytest.fixture
def huge_folder(tmp_path):
    """A labelled folder (class `cat`): one 20000x20000 PNG and one ordinary image."""
    d = tmp_path / "images" / "cat"
    d.mkdir(parents=True)
    (d / "huge.png").write_bytes(huge_png())
    (d / "small.png").write_bytes(png_bytes(np.full((40, 40, 3), 90, np.uint8)))
    return d.parent


def test_a_huge_image_is_skipped_by_run_with_a_warning_and_never_decoded(edge_model, huge_folder, decodes, caplog):
    res = CliRunner().invoke(cli, ["run", str(edge_model), "--source", str(huge_folder), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.count('"frame"') == 1 and "small.png" in res.output and "skipped 1" in res.output
    assert "20000x20000" in caplog.text and "megapixel limit" in caplog.text
    assert "huge.png" not in decodes and "small.png" in decodes
    res = CliRunner().invoke(cli, ["run", str(edge_model), "--source", str(huge_folder / "cat" / "huge.png")])
    _one_line_error(res, "no frame was processed")


def test_a_huge_image_is_skipped_by_eval_and_check_input(edge_model, huge_folder, decodes, caplog, tmp_path):
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(huge_folder), "--threads", "1", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["images"] == 1 and r["skipped"] == 1 and r["skipped_files"] == [str(huge_folder / "cat" / "huge.png")]
    res = CliRunner().invoke(
        cli, ["check-input", str(edge_model), "--source", str(huge_folder / "cat" / "huge.png"), "--out", str(tmp_path / "ci")]
    )
    _one_line_error(res, "no frame came from")
    assert caplog.text.count("megapixel limit") == 2
    assert "huge.png" not in decodes and "small.png" in decodes


def _jpeg_with_exif_thumbnail(img: np.ndarray) -> bytes:
    """A JPEG whose APP1 segment holds a thumbnail with a start-of-frame of its own (60000x60000):
    the reader must skip the segment, not take the thumbnail's size."""
    ok, buf = cv2.imencode(".jpg", img)
    data = buf.tobytes()
    fake_sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60000, 60000) + bytes(12)
    app1 = b"Exif\x00\x00" + b"\xff\xd8" + fake_sof + b"\xff\xd9"
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_image_size_reads_each_format_from_its_header(tmp_path):
    from edge_app.frames.imagesize import image_size

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    cases = [
        (".png", img, []),
        (".jpg", img, []),
        (".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".bmp", img, []),
        (".webp", img, []),
        (".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: the VP8L chunk
        (".tif", img, []),
        (".ppm", img, []),
        (".pgm", img[..., 0], []),
        (".pam", img, []),
    ]
    for i, (ext, pixels, params) in enumerate(cases):
        ok, buf = cv2.imencode(ext, pixels, params)
        path = tmp_path / f"{i}.img"  # by content, not by name: OpenCV decodes it whatever its extension
        path.write_bytes(buf.tobytes())
        assert image_size(path) == (53, 37), (ext, params)
    path = tmp_path / "exif.jpg"
    path.write_bytes(_jpeg_with_exif_thumbnail(img))
    assert image_size(path) == (53, 37) and cv2.imread(str(path)).shape == (37, 53, 3)
    gif = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, 30000, 20000, 0)
    (tmp_path / "frame.gif").write_bytes(gif)  # a frame far beyond its small logical screen
    assert image_size(tmp_path / "frame.gif") == (30000, 20000)
    big = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2)
    big += struct.pack("<HHQQ", 256, 4, 1, 70000) + struct.pack("<HHQQ", 257, 16, 1, 80000)  # BigTIFF: LONG, LONG8
    (tmp_path / "big.tif").write_bytes(big)
    assert image_size(tmp_path / "big.tif") == (70000, 80000)
    for junk in (b"", b"\xff\xd8 not a jpeg", b"\x89PNG\r\n\x1a\n", b"P6\n# only a comment\n", b"\xff\xd8" + b"\xff" * 5000):
        (tmp_path / "junk").write_bytes(junk)
        assert image_size(tmp_path / "junk") is None, junk[:12]


def test_a_video_whose_frames_are_too_large_is_refused(tmp_path, monkeypatch):
    class HugeCapture:
        def __init__(self, target):
            self.released = False

        def isOpened(self):
            return True

        def set(self, prop, value):
            return True

        def get(self, prop):
            return 20000.0 if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT) else 0.0

        def release(self):
            self.released = True

    monkeypatch.setattr(cv2, "VideoCapture", HugeCapture)
    (tmp_path / "clip.avi").write_bytes(b"not looked at: the capture is faked")
    with pytest.raises(SourceError, match="20000x20000 is 400 megapixels"):
        open_source(str(tmp_path / "clip.avi"))


# --------------------------------------------------------------------------- model.json without the model's checksum


def test_a_sidecar_that_records_no_checksum_for_the_model_is_refused(edge_model_copy, tmp_path, caplog):
    img = tmp_path / "one.png"
    img.write_bytes(png_bytes(np.full((32, 32, 3), 100, np.uint8)))
    sidecar = edge_model_copy / "model.json"
    sc = json.loads(sidecar.read_text())
    for files in (None, {"labels.txt": "0" * 64}):  # no `files` at all; `files` without the model's entry
        edited = {k: v for k, v in sc.items() if k != "files"} if files is None else {**sc, "files": files}
        sidecar.write_text(json.dumps(edited))
        for args in (
            ["run", str(edge_model_copy), "--source", str(img)],
            ["bench", str(edge_model_copy), "--runs", "10"],
            ["info", str(edge_model_copy)],
        ):
            _one_line_error(CliRunner().invoke(cli, args), "records no sha256 for it", "--ignore-checksum")
    res = CliRunner().invoke(cli, ["run", str(edge_model_copy), "--source", str(img), "--ignore-checksum"])
    assert res.exit_code == 0 and res.output.count('"frame"') == 1, res.output
    assert "records no sha256" in caplog.text and "running it anyway (--ignore-checksum)" in caplog.text


def test_the_bundle_refuses_a_run_whose_sidecar_records_no_checksum(edge_model_copy, tmp_path):
    from pipeline.cli.main import cli as pipeline_cli

    sc = json.loads((edge_model_copy / "model.json").read_text())
    sc["files"] = {}
    (edge_model_copy / "model.json").write_text(json.dumps(sc))
    res = CliRunner().invoke(pipeline_cli, ["package", str(edge_model_copy), "--out", str(tmp_path / "dist")])
    _one_line_error(res, "model_int8.tflite")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 10-class test split of 32x32 images, as the edge model takes."""
    return make_image_tree(tmp_path_factory.mktemp("tree") / "t", classes=FAST_CLASSES, per_class=(1, 1), size=32)


def test_nin_pipeline_evaluate_refuses_a_model_whose_checksum_is_wrong(edge_model_copy, tree, tmp_path):
    from conftest import make_edge_model

    from pipeline.cli.main import cli as pipeline_cli

    other = make_edge_model(tmp_path / "other", seed=1)
    (edge_model_copy / "model_int8.tflite").write_bytes((other / "model_int8.tflite").read_bytes())
    args = ["evaluate", str(edge_model_copy / "model_int8.tflite"), "--dataset", "folder", "--data-dir", str(tree)]
    _one_line_error(CliRunner().invoke(pipeline_cli, args), "is not the model its model.json describes", "--ignore-checksum")
    res = CliRunner().invoke(pipeline_cli, [*args, "--ignore-checksum"])
    assert res.exit_code == 0 and "top-1" in res.output, res.output


def test_the_demo_model_records_its_checksum():
    from edge_app.contract.files import DEMO_DIR
    from edge_app.contract.sidecar import read_sidecar
    from edge_app.fsutil import sha256_file
    from edge_app.model import open_model

    assert read_sidecar(DEMO_DIR).files["model_int8.tflite"] == sha256_file(DEMO_DIR / "model_int8.tflite")
    assert open_model("demo", threads=1).sidecar is not None


# --------------------------------------------------------------------------- a model.json that does not parse


@pytest.mark.parametrize(
    "kind, needle",
    [("digits", "an integer of more digits"), ("deep", "nested too deep"), ("large", "larger than 1 MB"), ("files-list", "malformed value")],
)
def test_a_sidecar_that_python_cannot_parse_is_one_clear_line(edge_model_copy, kind, needle):
    path = edge_model_copy / "model.json"
    text = path.read_text()
    if kind == "digits":
        text = text.replace('"schema_version": 1', '"schema_version": ' + "1" * 5000)
    elif kind == "deep":
        text = text.rstrip().rstrip("}") + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif kind == "large":
        text = text + " " * 2**20
    else:
        sc = json.loads(text)
        sc["files"] = [sc["files"]]
        text = json.dumps(sc)
    path.write_text(text)
    _one_line_error(CliRunner().invoke(cli, ["info", str(edge_model_copy)]), needle, "model.json")


# --------------------------------------------------------------------------- a model that loads and cannot run


def _lacks_data(model: Path, out: Path) -> Path:
    """The model with its first constant tensor pointed at the empty buffer 0: it loads, and its invoke
    fails ("Input tensor N lacks data")."""
    from edge_app.checks.targets import _Buf

    data = bytearray(model.read_bytes())
    b = _Buf(bytes(data))
    root = b.u32(0)
    buffers = b.tables(root, 4)  # Model.buffers
    for tensor in b.tables(b.tables(root, 2)[0], 0):  # subgraph 0's tensors
        pos = b.field(tensor, 2)  # Tensor.buffer
        if pos is not None and b.u32(pos) and b.field(buffers[b.u32(pos)], 0) is not None:
            struct.pack_into("<I", data, pos, 0)
            out.write_bytes(bytes(data))
            return out
    raise AssertionError("no constant tensor")


def test_a_model_that_loads_but_cannot_run_is_one_line_everywhere(edge_model, tree, tmp_path):
    from pipeline.cli.main import cli as pipeline_cli

    bad = _lacks_data(edge_model / "model_int8.tflite", tmp_path / "bad.tflite")  # no model.json beside it
    needles = ("loaded but cannot run", "lacks data", "rebuild it")
    img = next((tree / "test").rglob("*.png"))
    _one_line_error(CliRunner().invoke(cli, ["run", str(bad), "--source", str(img), "--threads", "1"]), *needles)
    _one_line_error(CliRunner().invoke(cli, ["bench", str(bad), "--runs", "10", "--threads", "1"]), *needles)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(FAST_CLASSES) + "\n")
    res = CliRunner().invoke(
        cli, ["eval", str(bad), "--source", str(tree / "test"), "--labels", str(labels), "--json", str(tmp_path / "e.json")]
    )
    _one_line_error(res, *needles)
    res = CliRunner().invoke(pipeline_cli, ["evaluate", str(bad), "--dataset", "folder", "--data-dir", str(tree)])
    _one_line_error(res, *needles)


# --------------------------------------------------------------------------- --source


@pytest.mark.parametrize("command", ["run", "check-input"])
@pytest.mark.parametrize("source", ["", "   ", "99999999999999999999", "9" * 5000])
def test_an_empty_source_or_a_camera_number_out_of_range_is_refused(edge_model, tmp_path, monkeypatch, command, source):
    (tmp_path / "here.png").write_bytes(png_bytes(np.full((32, 32, 3), 100, np.uint8)))
    monkeypatch.chdir(tmp_path)  # '' was the current folder: this image would have been classified
    extra = ["--out", str(tmp_path / "o")] if command == "check-input" else []
    res = CliRunner().invoke(cli, [command, str(edge_model), "--source", source, *extra])
    if source.strip():
        _one_line_error(res, "no camera has that number", "ls /dev/video")
    else:
        _one_line_error(res, "is empty", "a camera number (0)", "a folder of images")
    assert '"frame"' not in res.output


# --------------------------------------------------------------------------- --runtime


def test_a_forced_runtime_that_is_missing_is_named_with_what_is_installed(edge_model, monkeypatch):
    for name in ("tflite_runtime", "tflite_runtime.interpreter"):  # absent, whatever this machine has
        monkeypatch.setitem(sys.modules, name, None)
    res = CliRunner().invoke(cli, ["info", str(edge_model), "--runtime", "tflite-runtime"])
    _one_line_error(res, "the tflite-runtime runtime is not installed", "pip install tflite-runtime", "installed here: ai-edge-litert")
    assert "no TFLite runtime is installed" not in res.output


def test_runtime_tensorflow_runs_tf_lite_interpreter(edge_model):
    pytest.importorskip("tensorflow")
    res = CliRunner().invoke(cli, ["info", str(edge_model), "--runtime", "tensorflow"])
    assert res.exit_code == 0 and "runtime: tensorflow" in res.output, res.output


def test_the_auto_runtime_never_picks_tensorflow(monkeypatch):
    """ "auto" is the device's runtimes only: with none of them importable it says so (and that --runtime
    tensorflow would do) rather than start TensorFlow, now that --runtime tensorflow works."""
    pytest.importorskip("tensorflow")
    from edge_app.errors import RuntimeNotFound
    from edge_app.runtime import interpreter_class

    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeNotFound, match="no TFLite runtime is installed.*--runtime tensorflow runs its tf.lite.Interpreter"):
        interpreter_class("auto")


def test_a_runtime_version_compares_as_a_version(edge_model, tmp_path):
    from edge_app.checks.specs import same_version
    from edge_app.checks.targets import runtime_spec

    assert same_version("2.14", "2.14.0") and same_version("2.5.post1", "2.5.0.post1") and not same_version("2.14", "2.14.1")
    assert runtime_spec("tflite-runtime==2.14") == runtime_spec("TFLite_Runtime == 2.14.0") == "tflite-runtime==2.14.0"
    model = tmp_path / "m.tflite"
    shutil.copy(edge_model / "model_int8.tflite", model)
    out = {}
    for spec in ("tflite-runtime==2.14", "tflite-runtime==2.14.0"):
        res = CliRunner().invoke(cli, ["check-target", str(model), "--runtime", spec, "--json", str(tmp_path / "t.json")])
        assert res.exit_code in (0, 3), res.output
        out[spec] = [t for t in json.loads((tmp_path / "t.json").read_text())["targets"] if t["runtime"].startswith("tflite-runtime")]
    assert out["tflite-runtime==2.14"] == out["tflite-runtime==2.14.0"] and out["tflite-runtime==2.14"]


def test_bench_all_checks_every_model_it_runs(edge_model_copy):
    """`bench --all` runs every model of the folder: a swapped PTQ model is refused, not only the int8 one."""
    import shutil

    from edge_app.contract.files import PTQ_TFLITE

    shutil.copy(edge_model_copy / "model_int8.tflite", edge_model_copy / PTQ_TFLITE)  # model.json records nothing for it
    res = CliRunner().invoke(cli, ["bench", str(edge_model_copy), "--all", "--runs", "10"])
    _one_line_error(res, PTQ_TFLITE, "--ignore-checksum")
