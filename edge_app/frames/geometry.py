"""Frame geometry: which part of a camera frame becomes the model's input, and where the
model's class maps fall back on the frame. numpy and OpenCV only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RESIZE_MODES = ("crop", "letterbox", "stretch")

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
    small = cv2.resize(rgb[fy : fy + fh, fx : fx + fw], (iw, ih), interpolation=cv2.INTER_AREA)
    if (iw, ih) == (width, height):
        out = small
    else:
        out = np.zeros((height, width, 3), np.uint8)
        out[iy : iy + ih, ix : ix + iw] = small
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


def map_placement(frame_shape: tuple[int, ...], map_shape: tuple[int, ...], height: int, width: int, mode: str = "crop") -> MapPlacement:
    """Place an [mh, mw] class map, computed on a ``height`` x ``width`` input, on the frame."""
    (fx, fy, fw, fh), (ix, iy, iw, ih) = layout(frame_shape[0], frame_shape[1], height, width, mode)
    sx, sy = fw / iw, fh / ih  # frame pixels per input pixel
    mh, mw = map_shape[:2]
    # map cell centre u+0.5 covers input x = (u+0.5) * width/mw; input x -> frame fx + (x - ix) * sx
    a, c = width / mw * sx, height / mh * sy
    return MapPlacement(a, fx + (0.5 * width / mw - ix) * sx - 0.5, c, fy + (0.5 * height / mh - iy) * sy - 0.5, (fx, fy, fw, fh))


def heatmap_peak(maps: np.ndarray, index: int, placement: MapPlacement) -> dict[str, Any]:
    """Where class ``index``'s map is highest, in frame pixels, and its value there."""
    m = maps[..., index]
    # int8 maps saturate: when several cells share the top value, take the one nearest their middle
    vs, us = np.nonzero(m == m.max())
    k = int(np.argmin((vs - vs.mean()) ** 2 + (us - us.mean()) ** 2))
    v, u = int(vs[k]), int(us[k])
    return {"index": int(index), "peak": list(placement.to_frame(u, v)), "value": round(float(m[v, u]), 4)}
