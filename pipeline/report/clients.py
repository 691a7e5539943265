"""The model for the clients people already use: MediaPipe Tasks' ImageClassifier (Python, Android,
iOS, web) and the TFLite Task Library.

What they need, found by trying them (mediapipe 0.10.21): uint8 or float32 input (model_int8.tflite's
int8 input is refused); the scores as the only or first output (the class-maps output first is read as
H*W*classes "classes", silently wrong); TFLite Metadata giving the labels and the input normalisation
(the float model without it is refused). So `nin-pipeline clients RUN` converts the QAT model again
without the class maps, with uint8 input and output (q = pixel exactly: scale 1/255, zero point 0), and
writes the metadata with MediaPipe's own metadata writer (``mediapipe.tasks.python.metadata.
metadata_writers.image_classifier``): labels from labels.txt, normalisation mean 0 and std 255.

The writer cannot live beside TensorFlow 2.21: the mediapipe releases whose writer works (0.10.21) pin
protobuf 4 and numpy 1, TensorFlow 2.21 needs protobuf 7, and the newer mediapipe wheels (0.10.35,
1.2.3) ship the writer without its native part (``_pywrap_metadata_version``). It runs in another
Python (``--writer-python``, or NIN_METADATA_PYTHON), which also classifies the check images with
MediaPipe's ImageClassifier, so the file is proven in the client before it is called done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.contract.files import CLIENTS_JSON, CLIENTS_TFLITE, INT8_TFLITE, LABELS_TXT
from edge_app.subpython import ask

from pipeline.errors import ClientsError
from pipeline.runs.folder import RunFolder


@dataclass(frozen=True)
class ClientAnswers:
    """One client's answers for the check images: its own output per image, and how many of its
    top-1 classes are the ones this project's runtime gives on the same file."""

    client: str  # "mediapipe" or "task_library"
    answers: list
    same_top1: int


@dataclass(frozen=True)
class ClientsCheck:
    """The check images through each client and through edge_app (on the clients' file, and on
    the run's own int8 model as ``reference``)."""

    images: int
    edge_app: list[int]
    clients: tuple[ClientAnswers, ...]
    reference: str | None = None
    same_top1_as_reference: int | None = None

    def all_agree(self) -> bool:
        return all(c.same_top1 == self.images for c in self.clients)

    def to_json(self) -> dict[str, Any]:
        """clients.json's "check" object, in the keys it has always had."""
        r: dict[str, Any] = {"images": self.images, "edge_app": self.edge_app}
        for c in self.clients:
            r[c.client] = c.answers
            r[f"{c.client}_same_top1"] = c.same_top1
        if self.reference is not None:
            r[f"same_top1_as_{self.reference}"] = self.same_top1_as_reference
        return r


@dataclass(frozen=True)
class ClientsModel:
    """What `nin-pipeline clients` made: the file and how it was written, with the check when asked."""

    file: str
    bytes: int
    writer: str
    writer_python: str
    check: ClientsCheck | None = None
    described: dict[str, Any] = field(
        default_factory=lambda: {
            "input": "uint8 (pixels as they are: scale 1/255, zero point 0)",
            "outputs": "scores only",
            "normalisation": {"mean": [0.0], "std": [255.0]},
        }
    )

    def to_json(self) -> dict[str, Any]:
        r = {"file": self.file, "bytes": self.bytes, "writer": self.writer, "writer_python": self.writer_python, **self.described}
        if self.check is not None:
            r["check"] = self.check.to_json()
        return r


WRITER = "mediapipe==0.10.21"
PROBE_S, RUN_S = 120, 600  # time limits (s): an import probe; writing the metadata or classifying the check images
WRITER_RECIPE = (
    f"python3.11 -m venv ~/.venvs/nin-metadata && ~/.venvs/nin-metadata/bin/pip install '{WRITER}', then "
    "--writer-python ~/.venvs/nin-metadata/bin/python (or set NIN_METADATA_PYTHON)"
)

_WRITE = r"""
import json, sys
from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer
src, dest, labels_file = sys.argv[1:4]
labels = open(labels_file, encoding="utf-8").read().rstrip("\n").split("\n")
writer = image_classifier.MetadataWriter.create(open(src, "rb").read(), input_norm_mean=[0.0], input_norm_std=[255.0],
                                                labels=metadata_writer.Labels().add(labels))
model, meta = writer.populate()
open(dest, "wb").write(model)
import mediapipe
print("@@" + json.dumps({"writer": "mediapipe " + mediapipe.__version__, "metadata": json.loads(meta)}))
"""

_CLASSIFY = r"""
import json, sys
import mediapipe as mp
from mediapipe.tasks import python as mp_tasks
from mediapipe.tasks.python import vision
opts = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=sys.argv[1]), max_results=1)
out = []
with vision.ImageClassifier.create_from_options(opts) as clf:
    for p in sys.argv[2:]:
        top = clf.classify(mp.Image.create_from_file(p)).classifications[0].categories[0]
        out.append([top.index, top.category_name, round(float(top.score), 4)])
print("@@" + json.dumps(out))
"""


_CLASSIFY_TASKLIB = r"""
import json, sys
from tflite_support.task import core, processor, vision
opts = vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=sys.argv[1]),
                                     classification_options=processor.ClassificationOptions(max_results=1))
clf = vision.ImageClassifier.create_from_options(opts)
out = []
for p in sys.argv[2:]:
    top = clf.classify(vision.TensorImage.create_from_file(p)).classifications[0].categories[0]
    out.append([top.index, top.category_name, round(float(top.score), 4)])
print("@@" + json.dumps(out))
"""


def writer_python(given: str | None) -> str:
    """The Python that has MediaPipe's metadata writer: --writer-python, NIN_METADATA_PYTHON, or this one."""
    py = given or os.environ.get("NIN_METADATA_PYTHON")
    if py:
        if not Path(py).is_file():
            raise ClientsError(f"--writer-python {py}: no such file", WRITER_RECIPE)
        return py
    probe = ask(sys.executable, "from mediapipe.tasks.python.metadata.metadata_writers import image_classifier; print('@@1')", timeout=PROBE_S)
    if not probe.ok:
        raise ClientsError(
            "MediaPipe's metadata writer is not importable here (it cannot share an environment with TensorFlow 2.21: protobuf 4 vs 7)"
            + (f" ({probe.why})" if probe.timed_out else ""),
            WRITER_RECIPE,
        )
    return sys.executable


def _libusb_dir(python: str, folder: Path) -> str | None:
    """tflite-support's native part links libusb-1.0.so.0. Where the system has none, the `libusb-package`
    wheel in that Python carries one (as libusb-1.0.so): a link with the expected name in ``folder``."""
    p = ask(python, "import json, libusb_package, os; print('@@' + json.dumps(os.path.dirname(libusb_package.__file__)))", timeout=PROBE_S)
    lib = Path(str(p.answer)) / "libusb-1.0.so"
    if not p.ok or not lib.is_file():
        return None
    (folder / "libusb-1.0.so.0").symlink_to(lib)
    return str(folder)


def _run(python: str, code: str, args: list[str], what: str, timeout: float = RUN_S, libusb: str | None = None):
    env = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if libusb:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libusb, os.environ.get("LD_LIBRARY_PATH")]))
    reply = ask(python, code, args, timeout=timeout, env=env)  # past the limit it is killed, with what it started
    if reply.timed_out:
        raise ClientsError(f"{what} in {python} gave no answer within {timeout:g} s (stopped it)", WRITER_RECIPE)
    if not reply.ok:
        raise ClientsError(f"{what} failed in {python}: {reply.why}", f"is {WRITER} installed there? {WRITER_RECIPE}")
    return reply.answer


def scores_model_uint8(run: RunFolder) -> bytes:
    """The QAT model converted again: scores only, uint8 input and output.

    The converter insists on a representative dataset for full-integer output, but a QAT model carries
    every activation range itself, so noise images give the same .tflite bytes as training images
    (docs/clients.md): no dataset is needed here."""
    import numpy as np

    from pipeline.export.convert import to_tflite_int8

    model = run.load_qat()
    noise = np.random.default_rng(0).integers(0, 256, (16, *model.input_shape[1:]), dtype=np.uint8)
    return to_tflite_int8(model, noise, "uint8")


def build_clients_model(
    run_dir: Path, python: str | None = None, check_images: Sequence[Path] = (), task_python: str | None = None
) -> ClientsModel:
    """Write CLIENTS_TFLITE (with metadata) and CLIENTS_JSON in the run folder; with ``check_images``,
    classify them with MediaPipe's ImageClassifier and with this project's runtime on the same file."""
    import tempfile

    run = RunFolder(run_dir)
    py = writer_python(python)
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "scores_uint8.tflite"
        bare.write_bytes(scores_model_uint8(run))
        out = Path(tmp) / CLIENTS_TFLITE
        written = _run(py, _WRITE, [str(bare), str(out), str(run.path(LABELS_TXT))], "writing the metadata")
        run.write_bytes(CLIENTS_TFLITE, out.read_bytes())
    run.record_model_file(run.path(CLIENTS_TFLITE))
    check = (
        check_in_clients(run.path(CLIENTS_TFLITE), list(check_images), py, task_python, reference=run.path(INT8_TFLITE))
        if check_images
        else None
    )
    result = ClientsModel(CLIENTS_TFLITE, run.path(CLIENTS_TFLITE).stat().st_size, written["writer"], py, check)
    run.write_json(CLIENTS_JSON, result.to_json())
    return result


def check_in_clients(
    model: Path, images: list[Path], python: str, task_python: str | None = None, reference: Path | None = None
) -> ClientsCheck:
    """The top-1 MediaPipe's ImageClassifier gives for each image (and the Task Library's, with
    ``task_python``, a Python with tflite-support 0.4.4) beside this project's runtime's on the same file
    and on ``reference`` (the run's own int8 model). Images are taken at the model's input size as
    the camera loop's "stretch" resize does (INTER_AREA); the clients resize themselves, so give images
    already at the input size for a like-for-like comparison."""
    import cv2
    import numpy as np

    from edge_app.frames.geometry import fit_to_input
    from edge_app.frames.sources import read_image
    from edge_app.runtime import Classifier

    pixels = []
    for p in images:
        bgr = read_image(cv2, p, warn=False)  # the header's size first: a small file may decode to gigabytes
        if bgr is None:
            raise ClientsError(f"{p} is not a readable image, or is too large to decode", "give --check a folder of JPEG or PNG images")
        pixels.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def top1(path: Path) -> list[int]:
        clf = Classifier(path, num_threads=1)
        h, w, c = clf.input_size
        return [int(np.argmax(clf.predict(fit_to_input(rgb, h, w, c, "stretch")))) for rgb in pixels]

    ours = top1(model)
    answers = []
    clients: dict[str, tuple[str, str, str | None]] = {"mediapipe": (python, _CLASSIFY, None)}
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nin-libusb-") as libs:
        if task_python:
            clients["task_library"] = (task_python, _CLASSIFY_TASKLIB, _libusb_dir(task_python, Path(libs)))
        for name, (py, code, libusb) in clients.items():
            got = _run(py, code, [str(model), *map(str, images)], f"{name}'s ImageClassifier", libusb=libusb)
            answers.append(ClientAnswers(name, got, sum(int(g[0]) == o for g, o in zip(got, ours))))
    if reference is not None and reference.is_file():
        return ClientsCheck(len(images), ours, tuple(answers), reference.name, sum(a == b for a, b in zip(top1(reference), ours)))
    return ClientsCheck(len(images), ours, tuple(answers))
