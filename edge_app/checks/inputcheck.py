"""Is the camera frame what the model expects? The preprocessing self-check (numpy only).

Two places can go wrong between a camera and an int8 model, and each is checked where it happens:

* **the pixels** (after the resize, in the order the model's channels are fed): compared with the
  training images' statistics that `nin-pipeline build` stores in model.json (``input_stats``):
  a swapped channel order (BGR fed to an RGB model), a very dark or overexposed frame, a flat one;
* **the input tensor** (after scaling and quantisation): compared with the training tensor's
  values, which catches a wrong scale (0-255 where the model was trained on 0-1, or the
  reverse); for an int8/uint8 input, a tensor pinned at the ends of its range says the same.

The rules are simple and stated in :func:`findings`; a camera pointed at an unusual scene can trip
them, so every finding prints the numbers it was judged on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_app.contract.sidecar import InputStats
from edge_app.runtime import dequantize


@dataclass(frozen=True)
class Finding:
    kind: str  # channel_order | scale | saturated | dark | overexposed | flat
    message: str
    hint: str


def measure(pixels: np.ndarray, values: np.ndarray) -> InputStats:
    """Statistics of a batch: ``pixels`` uint8 [N, H, W, C] as fed, ``values`` the real-valued
    input tensor the same images make [N, H, W, C]."""
    n, c = len(pixels), pixels.shape[-1]
    # image by image in float32 (sums in float64): 256 images at 224x224 stay a few MB, not a GB
    psum, psq, vsum, vsq = (np.zeros(c) for _ in range(4))
    bright, contrast = np.empty(n), np.empty(n)
    for i in range(n):
        px = np.asarray(pixels[i], np.float32).reshape(-1, c)
        va = np.asarray(values[i], np.float32).reshape(-1, c)
        psum += px.sum(axis=0, dtype=np.float64)
        psq += np.square(px, dtype=np.float64).sum(axis=0)
        vsum += va.sum(axis=0, dtype=np.float64)
        vsq += np.square(va, dtype=np.float64).sum(axis=0)
        bright[i], contrast[i] = px.mean(), px.std(axis=0).mean()  # contrast: spatial, per channel
    count = n * (pixels.size // (n * c))
    pm, vm = psum / count, vsum / count
    ps, vs = np.sqrt(np.maximum(psq / count - pm**2, 0)), np.sqrt(np.maximum(vsq / count - vm**2, 0))
    return InputStats(
        images=int(n),
        pixel_mean=tuple(round(float(v), 3) for v in pm),
        pixel_std=tuple(round(float(v), 3) for v in ps),
        brightness_p5=round(float(np.percentile(bright, 5)), 3),
        brightness_p95=round(float(np.percentile(bright, 95)), 3),
        contrast=round(float(contrast.mean()), 3),
        value_mean=tuple(round(float(v), 6) for v in vm),
        value_std=tuple(round(float(v), 6) for v in vs),
    )


def tensor_values(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The real values an input tensor holds: dequantised when it is int8/uint8 (scale > 0)."""
    return dequantize(x, scale, zero_point) if scale > 0 else np.asarray(x, np.float32)


def saturated_fraction(x: np.ndarray) -> float:
    """Share of a quantised tensor's entries at its dtype's ends (values the quantiser had to clip)."""
    if not np.issubdtype(x.dtype, np.integer):
        return 0.0
    info = np.iinfo(x.dtype)
    return float(np.mean((x == info.min) | (x == info.max)))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def findings(
    live: InputStats, trained: InputStats | None, saturated: float, color_order: str = "RGB", value_range: tuple[float, float] = (0.0, 1.0)
) -> list[Finding]:
    """What looks wrong in ``live`` (frames from the real source) against ``trained`` (model.json's).

    Rules (pixel units 0..255; ``trained`` None: only the rules that need no training data):

    * channel order (3 channels): take each side's per-channel means minus their own average (the
      colour cast, without the brightness); if reversing the live channels brings the cast at least
      twice as close to the training one, and it was at least 6 levels off, the order looks swapped;
    * scale: the live tensor's mean is more than 20x above or below the training tensor's mean
      (without training data: above twice the top of model.json's value_range); or more than half of
      a quantised tensor's entries sit at the dtype's ends;
    * dark / overexposed: mean brightness below min(training 5th percentile, 50) or above
      max(training 95th percentile, 205) (without training data: below 40, above 215);
    * flat: the frames' own contrast is under a third of the training images' (lens cap, focus, fog).
    """
    out: list[Finding] = []
    m = np.asarray(live.pixel_mean)
    if trained is not None and len(m) == 3:
        t = np.asarray(trained.pixel_mean)
        same, swapped = np.linalg.norm((m - m.mean()) - (t - t.mean())), np.linalg.norm((m[::-1] - m.mean()) - (t - t.mean()))
        if same >= 6 and swapped <= same / 2:
            other = color_order[::-1] if color_order in ("RGB", "BGR") else "the other order"
            out.append(
                Finding(
                    "channel_order",
                    f"the channels look swapped: per-channel means {_fmt(m)} vs training {_fmt(t)} "
                    f"({color_order}); reversed they match {same / max(float(swapped), 1e-9):.1f}x better",
                    f"the model wants {color_order}; frames that arrive as {other} (OpenCV's imread and "
                    "VideoCapture, picamera2's RGB888) need a cvtColor. If the scene really is that colour, "
                    "point the camera at a typical one and check again",
                )
            )
    if trained is not None:
        lv, tv = float(np.mean(live.value_mean)), float(np.mean(trained.value_mean))
        ratio = (abs(lv) + 1e-9) / (abs(tv) + 1e-9)
        if abs(tv) > 1e-6 and (ratio > 20 or ratio < 1 / 20):
            out.append(
                Finding(
                    "scale",
                    f"the input tensor averages {lv:.4g} where training averaged {tv:.4g} "
                    f"({ratio:.3g}x): the pixels are on another scale than in training",
                    "scale pixels as model.json says (pixel_scale, mean, std: 0..1 for these models, not 0..255)",
                )
            )
    elif float(np.mean(live.value_mean)) > 2 * max(value_range[1], 1e-6):
        out.append(
            Finding(
                "scale",
                f"the input tensor averages {float(np.mean(live.value_mean)):.4g}, above the range "
                f"{list(value_range)} model.json gives for it: the pixels are on another scale",
                "scale pixels as model.json says (pixel_scale, mean, std)",
            )
        )
    if saturated > 0.5:
        out.append(
            Finding(
                "saturated",
                f"{100 * saturated:.0f}% of the int8 input tensor sits at its dtype's ends: "
                "the values are outside the range the model was quantised for",
                "scale pixels as model.json says before quantising (a 0..255 image fed where 0..1 was trained clips to the top)",
            )
        )
    b = float(m.mean())
    low = min(trained.brightness_p5, 50.0) if trained else 40.0
    high = max(trained.brightness_p95, 205.0) if trained else 215.0
    where = (
        (f"; training images' mean brightness ran {trained.brightness_p5:.0f}-{trained.brightness_p95:.0f} (5th-95th percentile)")
        if trained
        else ""
    )
    if b < low:
        out.append(
            Finding(
                "dark",
                f"the frames are very dark: mean brightness {b:.0f} of 255{where}",
                "add light, raise the camera's exposure or gain, or check the lens cap",
            )
        )
    elif b > high:
        out.append(
            Finding(
                "overexposed",
                f"the frames are overexposed: mean brightness {b:.0f} of 255{where}",
                "lower the exposure or gain, or move the camera out of direct light",
            )
        )
    if trained is not None and live.contrast < trained.contrast / 3:
        out.append(
            Finding(
                "flat",
                f"the frames are flat: contrast (std of a frame's pixels) {live.contrast:.1f} vs {trained.contrast:.1f} in training",
                "check the focus, the lens cap and the scene",
            )
        )
    return out


class StartCheck:
    """The run loop's once-at-start check: fed each prepared frame until it has ``frames``, then
    ``report`` is called once with the findings (a list, empty when nothing looks wrong)."""

    def __init__(
        self,
        trained: InputStats | None,
        scale: float,
        zero_point: int,
        color_order: str,
        report,
        frames: int = 8,
        value_range: tuple[float, float] = (0.0, 1.0),
    ):
        self.trained, self.scale, self.zero_point, self.color_order = trained, scale, zero_point, color_order
        self.report, self.frames, self.value_range = report, frames, value_range
        self.pixels: list[np.ndarray] = []
        self.tensors: list[np.ndarray] = []
        self.done = frames <= 0  # 0: no check

    def add(self, pixels: np.ndarray, x: np.ndarray) -> None:
        if self.done:
            return
        self.pixels.append(pixels)
        self.tensors.append(x[0])
        if len(self.pixels) >= self.frames:
            self.finish()

    def finish(self) -> list[Finding] | None:
        """Judge the frames gathered so far (at the end of a short source, fewer than ``frames``)."""
        if self.done or not self.pixels:
            return None
        self.done = True
        tensors = np.stack(self.tensors)
        live = measure(np.stack(self.pixels), tensor_values(tensors, self.scale, self.zero_point))
        found = findings(live, self.trained, saturated_fraction(tensors), self.color_order, self.value_range)
        self.report(found, live)
        self.pixels, self.tensors = [], []
        return found


def _picture(pixels: np.ndarray, color_order: str, min_side: int = 256) -> np.ndarray:
    """The model's input as a BGR image for cv2.imwrite, each input pixel a block (no smoothing):
    channel 0 is drawn as red for an RGB model, so a swapped order shows as swapped colours."""
    k = max(1, -(-min_side // max(pixels.shape[:2])))
    big = np.repeat(np.repeat(pixels, k, axis=0), k, axis=1)
    if big.shape[-1] == 1:
        return big[..., 0]
    return big[..., ::-1] if color_order == "RGB" else big


def check_source(model, source, *, frames: int = 8, resize: str = "crop", out_dir=None) -> dict:
    """Take up to ``frames`` frames from ``source`` (a sources.* object) through the loop's own
    resize and preprocessing; save each frame and the model's input as pictures in ``out_dir``;
    judge their statistics against model.json's. Returns what `check-input` prints and writes."""
    from pathlib import Path

    from edge_app.frames.geometry import fit_to_input
    from edge_app.frames.sources import _cv2
    from edge_app.fsutil import atomic_write_bytes

    cv2 = _cv2()
    clf = model.classifier
    h, w, c = clf.input_size
    order = model.sidecar.input.color_order if model.sidecar else ("GRAY" if c == 1 else "RGB")
    pixels, tensors, saved = [], [], []
    if out_dir is not None:  # pictures of an earlier check would be taken for this one's
        for old in [*Path(out_dir).glob("frame_*.jpg"), *Path(out_dir).glob("input_*.png")]:
            old.unlink()
    for frame in source.frames():
        px = fit_to_input(frame.rgb, h, w, c, resize)
        pixels.append(px)
        tensors.append(clf.preprocess(px)[0])
        if out_dir is not None:
            i = len(pixels) - 1
            for name, img in ((f"frame_{i}.jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)), (f"input_{i}.png", _picture(px, order))):
                ok, buf = cv2.imencode(Path(name).suffix, img)
                if ok:
                    saved.append(str(atomic_write_bytes(Path(out_dir) / name, buf.tobytes())))
        if len(pixels) >= frames:
            break
    if not pixels:
        return {"frames": 0, "skipped": getattr(source, "skipped", 0)}
    tensors_a = np.stack(tensors)
    live = measure(np.stack(pixels), tensor_values(tensors_a, clf.input.scale, clf.input.zero_point))
    trained = model.sidecar.input_stats if model.sidecar else None
    vrange = model.sidecar.input.value_range if model.sidecar else (0.0, 1.0)
    found = findings(live, trained, saturated_fraction(tensors_a), order, vrange)
    from dataclasses import asdict

    return {
        "frames": len(pixels),
        "skipped": getattr(source, "skipped", 0),
        "input": [h, w, c],
        "dtype": clf.input.dtype.name,
        "color_order": order,
        "resize": resize,
        "live": asdict(live),
        "training": asdict(trained) if trained else None,
        "findings": [asdict(f) for f in found],
        "saved": saved,
    }


def table(r: dict) -> list[str]:
    """The terminal table: live frames beside the training images, then the verdict."""
    live, tr = r["live"], r["training"]
    ch = r["color_order"] if r["color_order"] != "GRAY" else "Y"
    rows = [
        ("per-channel mean " + ",".join(ch), _fmt(live["pixel_mean"]), _fmt(tr["pixel_mean"]) if tr else "-"),
        ("per-channel std", _fmt(live["pixel_std"]), _fmt(tr["pixel_std"]) if tr else "-"),
        (
            "brightness",
            f"{np.mean(live['pixel_mean']):.0f}",
            f"{tr['brightness_p5']:.0f}-{tr['brightness_p95']:.0f} (5th-95th pct)" if tr else "-",
        ),
        ("contrast", f"{live['contrast']:.1f}", f"{tr['contrast']:.1f}" if tr else "-"),
        ("input tensor mean", _fmt(live["value_mean"]), _fmt(tr["value_mean"]) if tr else "-"),
    ]
    head = ("", f"these {r['frames']} frame(s)", f"training ({tr['images']} images)" if tr else "training")
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(3)]
    lines = ["  ".join(cell.ljust(wd) for cell, wd in zip(row, widths)).rstrip() for row in (head, *rows)]
    if tr is None:
        lines.append(
            "model.json has no training statistics (converted before they were kept): only the rules that "
            "need none ran (exposure; scale against model.json's value range and the int8 range); "
            "`nin-pipeline convert RUN` adds them"
        )
    for f in r["findings"]:
        lines.append(f"PROBLEM ({f['kind']}): {f['message']}. {f['hint']}")
    if not r["findings"]:
        lines.append(
            "OK: the frames reach the model as the training images did (channel order, scale, exposure)"
            if tr
            else "OK as far as scale and exposure go"
        )
    return lines
