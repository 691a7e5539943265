"""Opening a model for the loop: the .tflite a run folder means, its sidecar, the delegate, and
the checks that they agree. numpy and a TFLite runtime only."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.contract.files import LABELS_TXT, SIDECAR_NAME, resolve_model_path
from edge_app.contract.sidecar import Sidecar, read_sidecar
from edge_app.errors import DelegateError, ModelLoadError, SidecarError
from edge_app.fsutil import sha256_file
from edge_app.runtime import Classifier, interpreter_class, load_interpreter, make_delegate

log = logging.getLogger("edge_app")


@dataclass
class LoadedModel:
    classifier: Classifier
    labels: list[str]
    sidecar: Sidecar | None
    path: Path
    delegate: str


def open_model(
    model: str | os.PathLike,
    *,
    runtime: str = "auto",
    delegate: str = "cpu",
    threads: int | None = None,
    delegate_lib: str | None = None,
    delegate_options: dict[str, str] | None = None,
    fallback_cpu: bool = False,
    ignore_checksum: bool = False,
    labels_file: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load the model with its sidecar (if any), on the delegate asked for; check they agree (the
    file's sha256 against the sidecar's record of it too, as the device bundle does)."""
    resolve_model_path(model, delegate)  # a wrong path is the first thing to say
    _, runtime_name = interpreter_class(runtime)
    used = "cpu" if delegate == "cpu" and not delegate_lib else (delegate if not delegate_lib else f"external:{delegate_lib}")
    try:
        dlg = make_delegate(delegate, runtime_name, library=delegate_lib, options=delegate_options)
    except DelegateError as exc:
        if not fallback_cpu:
            raise
        log.warning("%s; continuing on the CPU because of --fallback-cpu", exc)
        dlg, used = None, "cpu (fallback)"
    # an Edge TPU-compiled model holds a custom op only the Edge TPU runs: on the CPU, use the plain one
    path = resolve_model_path(model, delegate if dlg is not None else "cpu")
    sidecar_path = path.parent / SIDECAR_NAME
    sidecar = read_sidecar(sidecar_path) if sidecar_path.is_file() else None
    if sidecar is not None:
        check_checksum(path, sidecar, ignore_checksum)
    kwargs: dict[str, Any] = {}
    if sidecar is not None:
        kwargs = {
            "pixel_scale": sidecar.input.pixel_scale,
            "mean": sidecar.input.mean,
            "std": sidecar.input.std,
            "output_kind": sidecar.output("scores").kind,
        }
    clf = Classifier(path, runtime=runtime_name, num_threads=threads, delegates=[dlg] if dlg else None, **kwargs)
    if sidecar is not None:
        _check_agrees(clf, sidecar, path)
    beside = path.parent / LABELS_TXT
    if labels_file is not None or (sidecar is None and beside.is_file()):
        labels = read_labels(Path(labels_file) if labels_file is not None else beside, clf.num_classes)
    elif sidecar is not None:
        labels = list(sidecar.labels)
    else:
        log.warning(
            "no model.json or labels.txt beside %s: input settings come from the model itself and labels are "
            "class indices (--labels FILE names them)",
            path.name,
        )
        labels = [str(i) for i in range(clf.num_classes)]
    return LoadedModel(clf, labels, sidecar, path, used)


def read_labels(path: Path, num_classes: int) -> list[str]:
    """One class name per line (blank lines at the end ignored), as many as the model has classes."""
    try:
        labels = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read the labels file {path} ({exc})", "give a UTF-8 text file, one class per line") from None
    labels = [ln.rstrip("\r") for ln in labels]
    if len(labels) != num_classes:
        raise ModelLoadError(
            f"{path} names {len(labels)} classes but the model has {num_classes}", "give one class name per line, in the model's class order"
        )
    return labels


def _not_recorded(sc: Sidecar, path: Path) -> str:
    """Why ``path`` is not the file model.json records ("" when its sha256 is the one recorded)."""
    recorded = sc.files.get(path.name)
    if not recorded:
        # a sidecar without the entry proves nothing about the file beside it (deleting `files` must not
        # turn the check off)
        return f"the model.json beside {path.name} records no sha256 for it, so nothing shows it is the model model.json describes"
    if sha256_file(path) != recorded:
        return f"{path.name} is not the model its model.json describes (its sha256 differs from the one recorded there)"
    return ""


def changed_files(sc: Sidecar, folder: Path, names) -> list[str]:
    """Those of ``names`` present in ``folder`` that are not what model.json records: a sha256 that differs,
    or a model (.tflite) it records none for. Other files it records nothing for (model.json itself,
    labels.txt) and absent ones are not judged. One rule for the device and the bundle."""
    return [n for n in names if (folder / n).is_file() and (sc.files.get(n) or n.endswith(".tflite")) and _not_recorded(sc, folder / n)]


def check_checksum(path: Path, sc: Sidecar, ignore: bool) -> None:
    """Refuse the model at ``path`` unless model.json beside it records its sha256 (``ignore``: warn and go on)."""
    msg = _not_recorded(sc, path)  # whatever the file's name: this is the model about to run
    if not msg:
        return
    if ignore:
        log.warning("%s; running it anyway (--ignore-checksum)", msg)
        return
    raise SidecarError(msg, "copy the run folder again or re-run `nin-pipeline convert RUN`; --ignore-checksum runs it anyway")


def _check_agrees(clf: Classifier, sc: Sidecar, path: Path) -> None:
    problems = []
    if tuple(clf.input.shape) != tuple(sc.input.shape):
        problems.append(f"input shape {list(clf.input.shape)} vs {list(sc.input.shape)}")
    if clf.input.dtype.name != sc.input.dtype:
        problems.append(f"input dtype {clf.input.dtype.name} vs {sc.input.dtype}")
    if clf.num_classes != sc.num_classes:
        problems.append(f"{clf.num_classes} classes vs {sc.num_classes} labels")
    if problems:
        raise SidecarError(
            f"{path.name} and its model.json disagree ({'; '.join(problems)})",
            "copy the run folder again, or rebuild it with `nin-pipeline convert`",
        )


def require_class_maps(model: LoadedModel) -> None:
    """--heatmap needs the class-maps output: say so before anything else is opened."""
    if not model.classifier.has_class_maps:
        arch = model.sidecar.arch if model.sidecar else ""
        if arch and not arch.startswith("nin-"):
            raise ModelLoadError(
                f"{model.path.name} is a {arch}: it has no per-class maps, so --heatmap has nothing to show",
                "leave out --heatmap; only NiN (its global average pooling head) has them",
            )
        raise ModelLoadError(
            f"{model.path.name} has no class-maps output, so --heatmap has nothing to show",
            "rebuild it with `nin-pipeline convert RUN` (class maps are exported unless --no-class-maps; "
            "a NiN built with --head fc or fc-dropout has none)",
        )


def _output_role(shape: list[int], sidecar) -> str:
    """Which output this is. The .tflite's output order is the converter's choice, so outputs are
    told apart by shape (the sidecar's, where there is one): [1, classes] scores, [1, H, W, classes] maps."""
    maps = "  <- class_maps (per-class confidence maps, before global average pooling)"
    for out in sidecar.outputs if sidecar is not None else ():
        if list(out.shape) == shape:
            return maps if out.kind == "class_maps" else f"  <- {out.name} ({out.kind})"
    return "  <- scores" if len(shape) == 2 else maps if len(shape) == 4 else ""


def describe_model(model: str | os.PathLike, runtime: str = "auto", loaded: LoadedModel | None = None) -> list[str]:
    """What `edge-app info` prints: the file and runtime, each input and output tensor, and the sidecar
    (of ``loaded`` when given: the model as opened, delegate and all, not loaded again)."""
    if loaded is not None:
        tflite, interp, name = loaded.path, loaded.classifier.interpreter, loaded.classifier.runtime
    else:
        tflite = resolve_model_path(model)
        interp, name = load_interpreter(tflite, runtime=runtime, num_threads=1)
    sidecar_path = tflite.parent / SIDECAR_NAME
    sidecar = read_sidecar(sidecar_path) if sidecar_path.exists() else None
    lines = [f"model: {tflite} ({tflite.stat().st_size:,} bytes), runtime: {name}"]
    for kind, details in (("input", interp.get_input_details()), ("output", interp.get_output_details())):
        for d in details:
            scale, zp = d["quantization"]
            shape = [int(v) for v in d["shape"]]  # plain ints: numpy 2 would print np.int32(1)
            lines.append(
                f"  {kind} {d['name']}: shape {shape} {d['dtype'].__name__} scale={float(scale):.6g} "
                f"zero_point={int(zp)}{_output_role(shape, sidecar) if kind == 'output' else ''}"
            )
    if sidecar is None:
        lines.append("no model.json beside it: labels would be class indices")
    else:
        lines.append(
            f"sidecar: {sidecar.dataset} / {sidecar.arch} width {sidecar.width:g}, {sidecar.num_classes} labels: "
            + ", ".join(sidecar.labels[:10])
            + (" ..." if sidecar.num_classes > 10 else "")
        )
    return lines


def model_io(loaded: LoadedModel) -> dict[str, Any]:
    """`edge-app info --json`: the model as opened and its tensors (what describe_model prints, as data)."""
    interp = loaded.classifier.interpreter
    out: dict[str, Any] = {"model": str(loaded.path), "runtime": loaded.classifier.runtime, "delegate": loaded.delegate}
    for kind, details in (("inputs", interp.get_input_details()), ("outputs", interp.get_output_details())):
        out[kind] = [
            {"name": t["name"], "shape": [int(v) for v in t["shape"]], "dtype": t["dtype"].__name__, "scale": float(t["quantization"][0]),
             "zero_point": int(t["quantization"][1])}
            for t in details
        ]  # fmt: skip
    return out
