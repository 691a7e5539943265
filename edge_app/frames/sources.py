"""Frame sources for the camera loop: cameras (OpenCV/V4L2 or picamera2), video files, streams,
images, folders and globs. Every source yields RGB uint8 frames (OpenCV's BGR is converted here)."""

from __future__ import annotations

import glob as _glob
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.errors import SourceError
from edge_app.frames.imagesize import MAX_PIXELS, image_size, over_limit

log = logging.getLogger("edge_app")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Frame:
    rgb: np.ndarray
    name: str
    index: int


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _cv2():
    try:
        import cv2
    except ImportError:
        raise SourceError("OpenCV is not installed", "pip install opencv-python-headless (or the `edge` extra)") from None
    return cv2


def read_image(cv2, path: Path, warn: bool = True) -> np.ndarray | None:
    """An image file as BGR pixels, or None when it is unreadable or too large to decode: its size is read
    from its header first (a small file can hold an image of gigabytes), and one above MAX_PIXELS is
    refused with a warning that says so."""
    size = image_size(path)
    if size is None:  # none of the formats whose size the header gives: decoding it could take any memory
        return None
    too_large = over_limit(size)
    if too_large:
        if warn:
            log.warning("skipped %s: %s", path, too_large)
        return None
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


class ImageSource:
    """An image file, a folder of images or a glob. Unreadable files, and images too large to decode
    (see read_image), are skipped and counted."""

    def __init__(self, paths: list[Path], label: str, loop: bool = False):
        self.paths, self.label, self.skipped, self.loop = paths, label, 0, loop
        if not paths:
            raise SourceError(f"{label}: no images found", f"give images with one of the extensions {', '.join(sorted(IMAGE_EXTS))}")

    def frames(self) -> Iterator[Frame]:
        """Each image once, or over and over with ``loop`` (its frame index keeps counting)."""
        cv2 = _cv2()
        i, first = 0, True
        while True:
            shown = 0
            for p in self.paths:
                bgr = read_image(cv2, p, warn=first)  # warned of once, not once per pass
                if bgr is None:
                    self.skipped += first  # counted once, not once per pass
                    continue
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), str(p), i)
                i, shown = i + 1, shown + 1
            first = False
            if not self.loop or not shown:
                return

    def close(self) -> None:
        pass


class CaptureSource:
    """cv2.VideoCapture over a camera, a video file or a stream URL.

    A camera or stream that stops delivering frames is retried with backoff (0.1 s doubling
    to ``max_wait``); a video file simply ends.
    """

    def __init__(
        self,
        target,
        label: str,
        *,
        live: bool,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        max_wait: float = 5.0,
        loop: bool = False,
    ):
        cv2 = _cv2()
        self.cv2, self.label, self.live, self.max_wait, self.skipped = cv2, label, live, max_wait, 0
        self.loop = loop and not live  # a video file replays from its first frame
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            camera = isinstance(target, int) or str(target).startswith("/dev/")
            hint = (
                ("is it connected and free? `ls /dev/video*` lists cameras; a Raspberry Pi camera module needs --source picamera")
                if camera
                else "check the path or URL"
            )
            raise SourceError(f"could not open {label}", hint)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height), (cv2.CAP_PROP_FPS, fps)):
            if value:
                self.cap.set(prop, value)
        size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))  # 0 where unknown
        too_large = over_limit(size, MAX_PIXELS)
        if too_large:  # as for an image: each frame would be decoded, converted and resized at that size
            self.cap.release()
            raise SourceError(f"{label}: its frame size {too_large}", "give a video of a smaller frame size")
        self.retries = 0

    def frames(self) -> Iterator[Frame]:
        i, since_start = 0, 0
        while True:
            ok, bgr = self.cap.read()
            if not ok or bgr is None:
                if not self.live:
                    if not (self.loop and since_start and self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)):
                        return
                    since_start = 0
                    continue
                bgr = self._retry()
            since_start += 1
            yield Frame(self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB), self.label, i)
            i += 1

    def _retry(self) -> np.ndarray:
        wait, deadline = 0.1, time.monotonic() + self.max_wait
        while time.monotonic() < deadline:
            time.sleep(wait)
            self.retries += 1
            ok, bgr = self.cap.read()
            if ok and bgr is not None:
                return bgr
            wait = min(wait * 2, 1.0)
        raise SourceError(f"{self.label} stopped delivering frames (nothing for {self.max_wait:.0f} s)")

    def close(self) -> None:
        self.cap.release()


class PiCameraSource:
    """A Raspberry Pi camera module through picamera2 (libcamera); OpenCV cannot open it on Bookworm."""

    def __init__(self, width: int | None = None, height: int | None = None):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "--source picamera needs picamera2",
                "on Raspberry Pi OS `sudo apt install python3-picamera2` and create the venv with --system-site-packages so it can see it",
            ) from None
        self.label, self.skipped, self.cam = "picamera", 0, None
        try:
            self.cam = Picamera2()
            # "RGB888" is B, G, R in memory (OpenCV's order), hence the conversion in frames().
            cfg = self.cam.create_video_configuration(main={"format": "RGB888", "size": (width or 640, height or 480)})
            self.cam.configure(cfg)
            self.cam.start()
        except Exception as exc:  # noqa: BLE001  (libcamera raises several kinds when no camera is attached)
            raise SourceError(f"the Pi camera did not start ({_one_line(exc)})", "check the ribbon cable and `rpicam-hello`") from None

    def frames(self) -> Iterator[Frame]:
        i = 0
        while True:
            try:
                if self.cam is None:  # close() was called
                    raise RuntimeError("the camera is closed")
                bgr = self.cam.capture_array()
            except Exception as exc:  # noqa: BLE001  (libcamera's errors have no common type)
                raise SourceError(f"the Pi camera stopped delivering frames ({_one_line(exc)})") from None
            yield Frame(np.ascontiguousarray(bgr[..., ::-1]), self.label, i)
            i += 1

    def close(self) -> None:
        if self.cam is not None:
            cam, self.cam = self.cam, None
            cam.stop()


SOURCE_FORMS = "a camera number (0), /dev/videoN, picamera, a video or image file, a folder of images, a glob or an RTSP/HTTP URL"
# cv2 reads an index as a camera number plus a backend's id in the hundreds (200: V4L2's camera 0), up to
# a few thousand; a larger one overflows its int
MAX_CAMERA_INDEX = 9999


def open_source(spec: str, *, width: int | None = None, height: int | None = None, fps: float | None = None, loop: bool = False):
    """Pick the source kind from ``--source``; ``loop`` replays a video file, image, folder or glob."""
    if not spec.strip():  # Path("") is the current folder: every image below it would be classified
        raise SourceError(f"--source {spec!r} is empty", f"give {SOURCE_FORMS}")
    if spec == "picamera":
        return PiCameraSource(width, height)
    if spec.isascii() and spec.isdigit():
        number = spec.lstrip("0") or "0"
        if len(number) > len(str(MAX_CAMERA_INDEX)) or int(number) > MAX_CAMERA_INDEX:  # int() of 5000 digits fails too
            raise SourceError(
                f"--source {spec if len(spec) <= 30 else spec[:30] + '...'}: no camera has that number (cv2 takes 0-{MAX_CAMERA_INDEX})",
                "`ls /dev/video*` lists the cameras: /dev/video0 is --source 0",
            )
        return CaptureSource(int(number), f"camera {number}", live=True, width=width, height=height, fps=fps)
    if spec.startswith("/dev/video"):
        return CaptureSource(spec, spec, live=True, width=width, height=height, fps=fps)
    if "://" in spec:
        return CaptureSource(spec, spec, live=True)
    p = Path(spec).expanduser()
    if p.is_dir():
        # recursively: a labelled tree (DIR/<class>/*.jpg) is a folder of images too
        return ImageSource(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()), str(p), loop)
    if p.is_file():
        if p.suffix.lower() in IMAGE_EXTS:
            return ImageSource([p], str(p), loop)
        return CaptureSource(str(p), str(p), live=False, loop=loop)
    if any(c in spec for c in "*?["):
        return ImageSource(sorted(Path(f) for f in _glob.glob(spec) if Path(f).suffix.lower() in IMAGE_EXTS), spec, loop)
    raise SourceError(f"--source {spec}: no such camera, file, folder, glob or URL", f"give {SOURCE_FORMS}")


class SyntheticSource:
    """Frames already in memory (a few noise frames, cycled): measures the loop without capture cost."""

    def __init__(self, width: int = 640, height: int = 480, count: int = 300, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pool = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
        self.count, self.label, self.skipped = count, f"synthetic {width}x{height}", 0

    def frames(self) -> Iterator[Frame]:
        for i in range(self.count):
            yield Frame(self.pool[i % len(self.pool)], self.label, i)

    def close(self) -> None:
        pass
