"""Annotating frames for --display and --save-video (OpenCV only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_app.errors import OutputError

if TYPE_CHECKING:
    import cv2


def annotate(bgr: np.ndarray, top: list[dict], invoke_ms: float, fps: float) -> np.ndarray:
    """Draw the top-k labels and scores, inference ms and FPS on a BGR frame, in place."""
    import cv2

    scale = max(0.4, bgr.shape[0] / 720)
    lines = [f"{t['label']}: {t['score']:.2f}" for t in top] + [f"invoke {invoke_ms:.1f} ms  {fps:.1f} FPS"]
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, max(1, round(1.5 * scale))
    step = int(30 * scale)
    width = max(cv2.getTextSize(t, font, size, thick)[0][0] for t in lines) + 20
    # a dark panel behind the text keeps it readable on any scene
    panel = bgr[: step * len(lines) + 10, :width]
    panel[:] = (panel * 0.35).astype(np.uint8)
    y = int(24 * scale)
    for i, text in enumerate(lines):
        colour = (80, 255, 80) if i == 0 else (255, 255, 255)
        cv2.putText(bgr, text, (10, y), font, size, colour, thick, cv2.LINE_AA)
        y += step
    return bgr


def overlay_heatmap(bgr: np.ndarray, class_map: np.ndarray, placement, alpha: float = 0.45) -> np.ndarray:
    """Blend one class's confidence map, upsampled onto the part of the frame the model saw, in place.

    The map is scaled to its own maximum (the hottest cell is red in OpenCV's JET colour map),
    so it shows where the class is seen, not how sure the model is: the scores say that.
    ``placement`` is a geometry.MapPlacement; outside its box the frame is left as it is."""
    import cv2

    x0, y0, w, h = placement.box
    top = float(class_map.max())
    norm = (class_map / top if top > 0 else np.zeros_like(class_map)).astype(np.float32)
    # cell (u, v) -> box pixel (a*u + b - x0, c*v + d - y0); bilinear in between, edges held
    m = np.array([[placement.a, 0, placement.b - x0], [0, placement.c, placement.d - y0]], np.float32)
    up = cv2.warpAffine(norm, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    colour = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    bgr[y0 : y0 + h, x0 : x0 + w] = cv2.addWeighted(colour, alpha, bgr[y0 : y0 + h, x0 : x0 + w], 1 - alpha, 0)
    return bgr


def render(rgb: np.ndarray, top: list[dict], invoke_ms: float, fps: float, class_map: np.ndarray | None = None, placement=None) -> np.ndarray:
    """The annotated BGR frame: the heatmap (if given) under the text panel. A tiny frame (its longer side
    under 256 px, e.g. a 32x32 image) is first enlarged nearest-neighbour, by a whole factor, to 512 px or
    more, so that the text is drawn at a size people can read, on pixels shown as they are."""
    import cv2

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if class_map is not None:
        overlay_heatmap(bgr, class_map, placement)
    longer = max(bgr.shape[:2])
    if 0 < longer < 256:
        k = -(-512 // longer)
        bgr = cv2.resize(bgr, (bgr.shape[1] * k, bgr.shape[0] * k), interpolation=cv2.INTER_NEAREST)
    return annotate(bgr, top, invoke_ms, fps)


class VideoSink:
    """Writes annotated frames to a video file (.avi: MJPG, .mp4: mp4v), sized by the first frame.

    OpenCV's writer reports no failed write (a full disk): :meth:`close` reads the file back and
    raises :class:`~edge_app.errors.OutputError`, naming it, when no frame can be read from it."""

    writer: cv2.VideoWriter | None  # opened on the first frame

    def __init__(self, path: str, fps: float = 30.0):
        self.path, self.fps, self.writer, self.frames = path, fps, None, 0

    def write(self, bgr: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            # the stubs list only VideoWriter.fourcc; cv2 has the module-level function too
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.lower().endswith(".mp4") else "MJPG"))  # type: ignore[attr-defined]
            self.writer = cv2.VideoWriter(self.path, fourcc, self.fps, (bgr.shape[1], bgr.shape[0]))
            if not self.writer.isOpened():
                raise OutputError(f"cannot write video {self.path}", "use a .avi or .mp4 name in a writable folder")
        self.writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.release()
            self._check()

    def _check(self) -> None:
        import os

        from edge_app.fsutil import is_special

        if not self.frames or is_special(self.path) or _readable(self.path):  # a device or a pipe cannot be read back
            return
        try:
            full = os.statvfs(os.path.dirname(os.path.abspath(self.path))).f_bavail == 0
        except (OSError, AttributeError):  # no statvfs on Windows
            full = False
        reason = "No space left on device" if full else "no frame can be read back from it"
        raise OutputError(
            f"cannot write video {self.path}: {reason} ({self.frames} frame(s) written)", "free some space or give --save-video another disk"
        )


def _readable(path: str) -> bool:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


class Window:
    """An OpenCV window; needs a display and opencv-python (the -headless wheel has no GUI)."""

    def __init__(self, title: str = "edge-app"):
        import os
        import sys

        import cv2

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise OutputError("--display needs a screen (DISPLAY is not set)", "run headless (the default) or log in to the desktop")
        self.cv2, self.title = cv2, title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise OutputError("this OpenCV has no GUI (opencv-python-headless)", "pip install opencv-python for --display") from None

    def show(self, bgr: np.ndarray) -> bool:
        """Show a frame; False when the user pressed q or Esc."""
        self.cv2.imshow(self.title, bgr)
        return (self.cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        self.cv2.destroyAllWindows()
