"""The camera loop: frame -> resize -> quantise -> invoke -> dequantise -> top-k -> JSON line.

numpy, OpenCV and a TFLite runtime only. Each stage is timed (capture, pre, invoke, post) so
the loop's own cost is visible next to the model's.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge_app.checks.inputcheck import StartCheck
from edge_app.errors import OutputError, SourceError, Terminated
from edge_app.frames.geometry import RESIZE_MODES, fit_to_input, heatmap_peak, map_placement
from edge_app.model import LoadedModel, require_class_maps
from edge_app.runtime import median_p95

log = logging.getLogger("edge_app")
STAGES = ("capture", "pre", "invoke", "post")
TIMING_WINDOW = 10_000  # frames kept for the summary's median and p95


class Lines(Protocol):
    """Where the JSON lines go: a text stream, or fsutil's LineFile / NamedStream."""

    def write(self, text: str, /) -> int: ...


@dataclass(frozen=True)
class LoopOptions:
    """What the loop does with each frame (the `edge-app run` options that are not files or devices).

    ``top``/``threshold``: the classes kept per frame. ``max_frames``: stop after this many.
    ``resize``: one of RESIZE_MODES (see geometry.layout). ``heatmap``: add the top class's map
    peak to each JSON line and overlay the map on drawn frames. ``max_fps``: cap the frame rate
    (a video file at its real speed, a Pi kept cool). ``prefetch``: capture and pre-process the
    next frame in a second thread (see Prefetcher). ``input_check``: judge the first frames against the
    training images' statistics once (inputcheck.StartCheck; `bench`'s noise frames skip it)."""

    top: int = 3
    threshold: float = 0.0
    max_frames: int | None = None
    resize: str = "crop"
    heatmap: bool = False
    max_fps: float | None = None
    prefetch: bool = True
    input_check: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")


def top_k(scores: np.ndarray, labels: list[str], k: int, threshold: float = 0.0) -> list[dict[str, Any]]:
    idx = np.argsort(-scores, kind="stable")[:k]  # ties (common in int8) go to the lower index, as argmax
    return [{"index": int(i), "label": labels[i], "score": round(float(scores[i]), 5)} for i in idx if scores[i] >= threshold]


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    stopped_by: str = "end of source"
    skipped: int = 0
    source: str = ""
    runtime: str = ""
    delegate: str = ""
    error: str = ""  # set when the source failed for good mid-run, or an output could not be written
    # The most recent TIMING_WINDOW frames per stage: a camera loop runs for days, so the lists
    # behind the median and p95 must not grow with it.
    ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=TIMING_WINDOW) for s in STAGES})
    # from the moment a frame was read to the moment its result was out (JSON line written, frame
    # drawn, preview handed over): with prefetch it includes the wait in the queue, as a user sees it
    latency: deque = field(default_factory=lambda: deque(maxlen=TIMING_WINDOW))
    input_check: list[str] | None = None  # the start-up input check's finding kinds (None: not run)

    def to_dict(self) -> dict[str, Any]:
        stats = {}
        for stage, v in self.ms.items():
            if v:
                median, p95 = median_p95(v)
                stats[stage] = {"median": round(median, 3), "p95": round(p95, 3)}
        latency = {}
        if self.latency:
            median, p95 = median_p95(self.latency)
            latency = {"median": round(median, 3), "p95": round(p95, 3)}
        return {
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "capture_to_result_ms": latency,
            "fps": round(self.frames / self.seconds, 2) if self.seconds else 0.0,
            "stopped_by": self.stopped_by,
            "skipped": self.skipped,
            "source": self.source,
            "runtime": self.runtime,
            "delegate": self.delegate,
            "error": self.error,
            "ms": stats,
            "input_check": self.input_check,
        }


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class Prefetcher:
    """Capture and pre-processing of frame n+1 in a second thread while frame n is invoked.

    OpenCV's decode and resize and the interpreter's invoke all release the GIL, so on two or
    more cores the loop runs at the speed of its slowest half instead of the sum of both.
    Yields (frame, input tensor, capture ms, pre ms, when it was read). At most one prepared frame waits, so
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
    """(frame, input tensor, capture ms, pre ms, when it was read) for each frame of ``source``, in this thread."""
    frames = source.frames()
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            return
        t1 = time.perf_counter()
        x = prepare(frame.rgb)
        yield frame, x, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3, t1


def run_loop(
    model: LoadedModel, source, options: LoopOptions = LoopOptions(), *, out: Lines | None = None, sink=None, window=None, preview=None
) -> Summary:
    """Classify every frame of ``source``; one JSON line per frame to ``out``. Ctrl-C, SIGTERM, SIGHUP and
    an output that cannot be written (an OutputError from ``out`` or ``sink``) end it cleanly, said in the summary.

    ``sink`` (draw.VideoSink) and ``window`` (draw.Window) get the annotated frame; their cost
    is counted in the "post" stage. ``preview`` (serve.Preview) is handed each frame's data; the
    HTTP threads draw it only if someone watches. The source, sink and window are closed when
    the loop ends, however it ends."""
    from functools import partial

    from edge_app.camera.draw import render

    if preview is not None:
        from edge_app.camera.serve import frame_status

    opt = options
    clf = model.classifier
    h, w, c = clf.input_size
    if opt.heatmap:
        require_class_maps(model)
    placement, placed_for = None, None
    summary = Summary(source=getattr(source, "label", ""), runtime=clf.runtime, delegate=model.delegate)

    def checked(found, live) -> None:  # once, after the first frames: does the input look like training's?
        summary.input_check = [f.kind for f in found]
        for f in found:
            log.warning("input check: %s. %s (`edge-app check-input` saves the model's input as pictures)", f.message, f.hint)
        if not found:
            log.info("input check: the first %d frame(s) reach the model as the training images did", live.images)

    sc = model.sidecar
    check = StartCheck(
        sc.input_stats if sc else None,
        clf.input.scale,
        clf.input.zero_point,
        sc.input.color_order if sc else ("GRAY" if c == 1 else "RGB"),
        checked,
        value_range=sc.input.value_range if sc else (0.0, 1.0),
        frames=8 if opt.input_check else 0,
    )

    def prepare(rgb: np.ndarray) -> np.ndarray:
        pixels = fit_to_input(rgb, h, w, c, opt.resize)
        x = clf.preprocess(pixels)
        check.add(pixels, x)
        return x

    t_start = time.perf_counter()
    feed = Prefetcher(source, prepare) if opt.prefetch else _prepared(source, prepare)
    starts: deque[float] = deque(maxlen=31)  # the shown FPS is over the last 30 frames, not since the start
    try:
        while opt.max_frames is None or summary.frames < opt.max_frames:
            t0 = time.perf_counter()
            starts.append(t0)
            item = next(feed, None)
            if item is None:
                break
            frame, x, capture_ms, pre_ms, read_at = item
            t2 = time.perf_counter()
            raw = clf.invoke(x)
            t3 = time.perf_counter()
            scores = clf.postprocess(raw)
            best = top_k(scores, model.labels, opt.top, opt.threshold)
            record: dict[str, Any] = {}
            if opt.heatmap:
                maps = clf.class_maps()
                if placement is None or placed_for != frame.rgb.shape:  # frames of a folder of images differ in size
                    placed_for = frame.rgb.shape
                    placement = map_placement(placed_for, maps.shape, h, w, opt.resize)
                record["heatmap"] = heatmap_peak(maps, int(np.argmax(scores)), placement)
            fps = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
            if sink is not None or window is not None or preview is not None:  # drawn now (sink, window) or on demand
                draw = partial(
                    render, frame.rgb, best, (t3 - t2) * 1e3, fps, maps[..., record["heatmap"]["index"]] if opt.heatmap else None, placement
                )
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
            if out is not None:
                out.write(
                    json.dumps(
                        {
                            "frame": frame.index,
                            "time": round(time.time(), 3),
                            "source": frame.name,
                            "top": best,
                            "ms": {k: round(v, 3) for k, v in ms.items()},
                            **record,
                        }
                    )
                    + "\n"
                )
            summary.frames += 1  # counted once its line is out: a failed write (a full disk) is not a frame done
            if preview is not None:
                preview.publish(
                    draw,
                    frame_status(frame.index, frame.name, best, ms, fps, model.path.name, clf.runtime, model.delegate, record.get("heatmap")),
                )
            summary.latency.append((time.perf_counter() - read_at) * 1e3)
            if opt.max_fps:
                time.sleep(max(0.0, t0 + 1.0 / opt.max_fps - time.perf_counter()))
        else:
            summary.stopped_by = f"--max-frames {opt.max_frames}"
    except KeyboardInterrupt as exc:
        summary.stopped_by = exc.signal_name if isinstance(exc, Terminated) else "Ctrl-C"
    except SourceError as exc:  # e.g. a camera that stopped delivering frames, after retries
        summary.stopped_by, summary.error = "source failure", str(exc)
    except OutputError as exc:  # e.g. a full disk under --output or --save-video: the summary still says how far it got
        summary.stopped_by, summary.error = "output failure", str(exc)
    finally:
        summary.seconds = time.perf_counter() - t_start
        if isinstance(feed, Prefetcher):
            feed.close()
        try:
            check.finish()  # a source shorter than the check's frames
        except Exception as exc:  # a failing check must not hide how the loop ended
            log.debug("input check failed: %s", exc)
        summary.skipped = getattr(source, "skipped", 0)
        source.close()
        for closer in (sink, window):
            if closer is not None:
                try:
                    closer.close()
                except OutputError as exc:  # a video no frame reached (a full disk): said with the summary
                    summary.error = "; ".join(e for e in (summary.error, str(exc)) if e)
    return summary
