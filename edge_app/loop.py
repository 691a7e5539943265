"""The camera loop: frame -> resize -> quantise -> invoke -> dequantise -> top-k -> JSON line.

numpy, OpenCV and a TFLite runtime only. Each stage is timed (capture, pre, invoke, post) so
the loop's own cost is visible next to the model's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .runtime import Classifier, ModelLoadError, make_delegate, median_p95
from .sidecar import SIDECAR_NAME, Sidecar, SidecarError, read_sidecar
from .sources import SourceError

log = logging.getLogger("edge_app")

RESIZE_MODES = ("crop", "letterbox", "stretch")
STAGES = ("capture", "pre", "invoke", "post")
TIMING_WINDOW = 10_000  # frames kept for the summary's median and p95


@dataclass
class LoadedModel:
    classifier: Classifier
    labels: list[str]
    sidecar: Sidecar | None
    path: Path
    delegate: str


def resolve_model_path(model: str | os.PathLike, delegate: str = "cpu") -> Path:
    """A run folder means its model_int8.tflite (model_int8_edgetpu.tflite for the Edge TPU, when present)."""
    p = Path(model)
    if p.is_dir():
        if delegate == "edgetpu" and (p / "model_int8_edgetpu.tflite").is_file():
            return p / "model_int8_edgetpu.tflite"
        p = p / "model_int8.tflite"
    if not p.is_file():
        raise ModelLoadError(f"no model at {p}: give a run folder from `nin-pipeline build` or a .tflite file")
    return p


def open_model(model: str | os.PathLike, *, runtime: str = "auto", delegate: str = "cpu", threads: int | None = None,
               delegate_lib: str | None = None, delegate_options: dict[str, str] | None = None,
               fallback_cpu: bool = False) -> LoadedModel:
    """Load the model with its sidecar (if any), on the delegate asked for; check they agree."""
    from .runtime import DelegateError, _interpreter_class

    resolve_model_path(model, delegate)  # a wrong path is the first thing to say
    _, runtime_name = _interpreter_class(runtime)
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
    kwargs: dict[str, Any] = {}
    if sidecar is not None:
        kwargs = {"pixel_scale": sidecar.input.pixel_scale, "mean": sidecar.input.mean, "std": sidecar.input.std,
                  "output_kind": sidecar.output("scores").kind}
    clf = Classifier(path, runtime=runtime_name, num_threads=threads, delegates=[dlg] if dlg else None, **kwargs)
    if sidecar is not None:
        _check_agrees(clf, sidecar, path)
        labels = list(sidecar.labels)
    else:
        log.warning("no model.json beside %s: input settings come from the model itself and labels are class indices",
                    path.name)
        labels = [str(i) for i in range(clf.num_classes)]
    return LoadedModel(clf, labels, sidecar, path, used)


def _check_agrees(clf: Classifier, sc: Sidecar, path: Path) -> None:
    problems = []
    if tuple(clf.input.shape) != tuple(sc.input.shape):
        problems.append(f"input shape {list(clf.input.shape)} vs {list(sc.input.shape)}")
    if clf.input.dtype.name != sc.input.dtype:
        problems.append(f"input dtype {clf.input.dtype.name} vs {sc.input.dtype}")
    if clf.num_classes != sc.num_classes:
        problems.append(f"{clf.num_classes} classes vs {sc.num_classes} labels")
    if problems:
        raise SidecarError(f"{path.name} and its model.json disagree ({'; '.join(problems)}): "
                           "copy the run folder again, or rebuild it with `nin-pipeline convert`")


Box = tuple[int, int, int, int]  # x0, y0, width, height


def layout(frame_h: int, frame_w: int, height: int, width: int, mode: str = "crop") -> tuple[Box, Box]:
    """Which part of the frame goes to which part of the model input, for each resize mode.

    Returns (frame box, input box): the frame box is resized into the input box.
    crop: the centre of the frame at the input's aspect ratio fills the whole input (what the
    training images looked like); letterbox: the whole frame, fitted inside the input, black
    bars around it; stretch: the whole frame into the whole input, aspect ratio lost."""
    if mode == "crop":
        scale = max(height / frame_h, width / frame_w)
        ch, cw = min(frame_h, round(height / scale)), min(frame_w, round(width / scale))
        return ((frame_w - cw) // 2, (frame_h - ch) // 2, cw, ch), (0, 0, width, height)
    if mode == "letterbox":
        scale = min(height / frame_h, width / frame_w)
        nh, nw = max(1, round(frame_h * scale)), max(1, round(frame_w * scale))
        return (0, 0, frame_w, frame_h), ((width - nw) // 2, (height - nh) // 2, nw, nh)
    if mode == "stretch":
        return (0, 0, frame_w, frame_h), (0, 0, width, height)
    raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def fit_to_input(rgb: np.ndarray, height: int, width: int, channels: int, mode: str = "crop") -> np.ndarray:
    """Resize a frame to the model's input (see :func:`layout` for the modes); INTER_AREA
    averages the pixels it shrinks, as the training images' own downscaling did."""
    import cv2

    (fx, fy, fw, fh), (ix, iy, iw, ih) = layout(rgb.shape[0], rgb.shape[1], height, width, mode)
    small = cv2.resize(rgb[fy:fy + fh, fx:fx + fw], (iw, ih), interpolation=cv2.INTER_AREA)
    if (iw, ih) == (width, height):
        out = small
    else:
        out = np.zeros((height, width, 3), np.uint8)
        out[iy:iy + ih, ix:ix + iw] = small
    if channels == 1:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None]
    return out


@dataclass(frozen=True)
class MapPlacement:
    """Where a class map's cells fall on the frame: cell (u, v) -> frame pixel
    (a * u + b, c * v + d), cell and pixel centres matched; ``box`` is the part of the
    frame the model saw (the map says nothing about the rest)."""

    a: float
    b: float
    c: float
    d: float
    box: Box

    def to_frame(self, u: float, v: float) -> tuple[int, int]:
        return round(self.a * u + self.b), round(self.c * v + self.d)


def map_placement(frame_shape: tuple[int, ...], map_shape: tuple[int, ...], height: int, width: int,
                  mode: str = "crop") -> MapPlacement:
    """Place an [mh, mw] class map, computed on a ``height`` x ``width`` input, on the frame."""
    (fx, fy, fw, fh), (ix, iy, iw, ih) = layout(frame_shape[0], frame_shape[1], height, width, mode)
    sx, sy = fw / iw, fh / ih  # frame pixels per input pixel
    mh, mw = map_shape[:2]
    # map cell centre u+0.5 covers input x = (u+0.5) * width/mw; input x -> frame fx + (x - ix) * sx
    a, c = width / mw * sx, height / mh * sy
    return MapPlacement(a, fx + (0.5 * width / mw - ix) * sx - 0.5, c, fy + (0.5 * height / mh - iy) * sy - 0.5,
                        (fx, fy, fw, fh))


def heatmap_peak(maps: np.ndarray, index: int, placement: MapPlacement) -> dict[str, Any]:
    """Where class ``index``'s map is highest, in frame pixels, and its value there."""
    m = maps[..., index]
    # int8 maps saturate: when several cells share the top value, take the one nearest their middle
    vs, us = np.nonzero(m == m.max())
    k = int(np.argmin((vs - vs.mean()) ** 2 + (us - us.mean()) ** 2))
    v, u = int(vs[k]), int(us[k])
    return {"index": int(index), "peak": list(placement.to_frame(u, v)), "value": round(float(m[v, u]), 4)}


def top_k(scores: np.ndarray, labels: list[str], k: int, threshold: float = 0.0) -> list[dict[str, Any]]:
    idx = np.argsort(-scores)[:k]
    return [{"index": int(i), "label": labels[i], "score": round(float(scores[i]), 5)} for i in idx if scores[i] >= threshold]


def require_class_maps(model: LoadedModel) -> None:
    if not model.classifier.has_class_maps:
        raise ModelLoadError(f"{model.path.name} has no class-maps output, so --heatmap has nothing to show: rebuild it "
                             "with `nin-pipeline convert RUN` (class maps are exported unless --no-class-maps)")


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    stopped_by: str = "end of source"
    skipped: int = 0
    source: str = ""
    runtime: str = ""
    delegate: str = ""
    error: str = ""  # set when the source failed for good mid-run
    # The most recent TIMING_WINDOW frames per stage: a camera loop runs for days, so the lists
    # behind the median and p95 must not grow with it.
    ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=TIMING_WINDOW) for s in STAGES})

    def to_dict(self) -> dict[str, Any]:
        stats = {}
        for stage, v in self.ms.items():
            if v:
                median, p95 = median_p95(v)
                stats[stage] = {"median": round(median, 3), "p95": round(p95, 3)}
        return {"frames": self.frames, "seconds": round(self.seconds, 3),
                "fps": round(self.frames / self.seconds, 2) if self.seconds else 0.0,
                "stopped_by": self.stopped_by, "skipped": self.skipped, "source": self.source,
                "runtime": self.runtime, "delegate": self.delegate, "error": self.error, "ms": stats}


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class Prefetcher:
    """Capture and pre-processing of frame n+1 in a second thread while frame n is invoked.

    OpenCV's decode and resize and the interpreter's invoke all release the GIL, so on two or
    more cores the loop runs at the speed of its slowest half instead of the sum of both.
    Yields (frame, input tensor, capture ms, pre ms). At most one prepared frame waits, so
    nothing piles up; a source error is re-raised in the loop's thread."""

    def __init__(self, source, prepare) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._source, self._prepare = source, prepare
        self._thread = threading.Thread(target=self._run, name="edge-app-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in _prepared(self._source, self._prepare):
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001  (handed to the loop's thread, which re-raises it)
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.exc
        return item

    def close(self) -> None:
        import queue

        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        # wait out a read in progress (a camera's retries last up to its max_wait): releasing a
        # capture while another thread still reads from it can crash OpenCV
        self._thread.join(timeout=getattr(self._source, "max_wait", 0.0) + 2.0)


def _prepared(source, prepare):
    """(frame, input tensor, capture ms, pre ms) for each frame of ``source``, in this thread."""
    frames = source.frames()
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            return
        t1 = time.perf_counter()
        x = prepare(frame.rgb)
        yield frame, x, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3


def run_loop(model: LoadedModel, source, *, out: IO[str] | None, top: int = 3, threshold: float = 0.0,
             max_frames: int | None = None, resize: str = "crop", sink=None, window=None,
             heatmap: bool = False, preview=None, max_fps: float | None = None, prefetch: bool = True) -> Summary:
    """Classify every frame of ``source``; one JSON line per frame to ``out``. Ctrl-C ends it cleanly.

    ``sink`` (draw.VideoSink) and ``window`` (draw.Window) get the annotated frame; their cost
    is counted in the "post" stage. ``heatmap``: the top class's confidence map is overlaid
    on the annotated frame and its peak (frame pixels) added to each JSON line. ``preview``
    (serve.Preview) is handed each frame's data; the HTTP threads draw it only if someone
    watches. ``max_fps`` caps the frame rate (a video file at its real speed, a Pi kept cool).
    ``prefetch``: capture and pre-process the next frame in a second thread (see Prefetcher)."""
    from functools import partial

    from .draw import render

    if preview is not None:
        from .serve import frame_status

    clf = model.classifier
    h, w, c = clf.input_size
    if heatmap:
        require_class_maps(model)
    placement, placed_for = None, None
    summary = Summary(source=getattr(source, "label", ""), runtime=clf.runtime, delegate=model.delegate)

    def prepare(rgb: np.ndarray) -> np.ndarray:
        return clf.preprocess(fit_to_input(rgb, h, w, c, resize))

    t_start = time.perf_counter()
    feed = Prefetcher(source, prepare) if prefetch else _prepared(source, prepare)
    starts: deque[float] = deque(maxlen=31)  # the shown FPS is over the last 30 frames, not since the start
    try:
        while max_frames is None or summary.frames < max_frames:
            t0 = time.perf_counter()
            starts.append(t0)
            item = next(feed, None)
            if item is None:
                break
            frame, x, capture_ms, pre_ms = item
            t2 = time.perf_counter()
            clf.interpreter.set_tensor(clf.input.index, x)
            clf.interpreter.invoke()
            t3 = time.perf_counter()
            scores = clf.postprocess(clf.interpreter.get_tensor(clf.output.index)[0])
            best = top_k(scores, model.labels, top, threshold)
            record: dict[str, Any] = {}
            if heatmap:
                maps = clf.class_maps()
                if placed_for != frame.rgb.shape:  # frames of a folder of images differ in size
                    placed_for = frame.rgb.shape
                    placement = map_placement(placed_for, maps.shape, h, w, resize)
                record["heatmap"] = heatmap_peak(maps, int(np.argmax(scores)), placement)
            fps = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
            if sink is not None or window is not None or preview is not None:  # drawn now (sink, window) or on demand
                draw = partial(render, frame.rgb, best, (t3 - t2) * 1e3, fps,
                               maps[..., record["heatmap"]["index"]] if heatmap else None, placement)
            if sink is not None or window is not None:
                bgr = draw()
                if sink is not None:
                    sink.write(bgr)
                if window is not None and not window.show(bgr):
                    summary.stopped_by = "window closed"
                    break
            t4 = time.perf_counter()
            ms = {"capture": capture_ms, "pre": pre_ms, "invoke": (t3 - t2) * 1e3, "post": (t4 - t3) * 1e3}
            for k, v in ms.items():
                summary.ms[k].append(v)
            summary.frames += 1
            if out is not None:
                out.write(json.dumps({"frame": frame.index, "time": round(time.time(), 3), "source": frame.name,
                                      "top": best, "ms": {k: round(v, 3) for k, v in ms.items()}, **record}) + "\n")
            if preview is not None:
                preview.publish(draw, frame_status(frame.index, frame.name, best, ms, fps, model.path.name, clf.runtime,
                                                   model.delegate, record.get("heatmap")))
            if max_fps:
                time.sleep(max(0.0, t0 + 1.0 / max_fps - time.perf_counter()))
        else:
            summary.stopped_by = f"--max-frames {max_frames}"
    except KeyboardInterrupt:
        summary.stopped_by = "Ctrl-C"
    except SourceError as exc:  # e.g. a camera that stopped delivering frames, after retries
        summary.stopped_by, summary.error = "source failure", str(exc)
    finally:
        summary.seconds = time.perf_counter() - t_start
        if isinstance(feed, Prefetcher):
            feed.close()
        summary.skipped = getattr(source, "skipped", 0)
        source.close()
        for closer in (sink, window):
            if closer is not None:
                closer.close()
    return summary


def bench(model: LoadedModel, runs: int = 300, warmup: int = 20, width: int = 640, height: int = 480,
          resize: str = "crop") -> dict[str, Any]:
    """Invoke-only latency, then the whole loop on synthetic in-memory frames of width x height,
    with and without prefetching: each loop's FPS over the invoke-only FPS is what the loop's own
    work (resize, quantise, dequantise, top-k) costs."""
    from .sources import SyntheticSource

    clf = model.classifier
    h, w, c = clf.input_size
    invoke = clf.invoke_latency(fit_to_input(SyntheticSource(width, height, 1).pool[0], h, w, c, resize), runs, warmup)
    loop = run_loop(model, SyntheticSource(width, height, runs), out=None, resize=resize).to_dict()
    seq = run_loop(model, SyntheticSource(width, height, runs), out=None, resize=resize, prefetch=False).to_dict()
    ratio = (lambda r: r["fps"] / invoke["fps"] if invoke["fps"] else float("nan"))
    return {"runs": runs, "frame": f"{width}x{height}", "invoke_ms": invoke, "loop": loop, "loop_no_prefetch": seq,
            "loop_over_invoke_fps": ratio(loop), "loop_no_prefetch_over_invoke_fps": ratio(seq)}
