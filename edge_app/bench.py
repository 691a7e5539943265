"""`edge-app bench`: invoke-only latency next to the whole loop's, on synthetic in-memory frames."""

from __future__ import annotations

from typing import Any

from .geometry import fit_to_input
from .loop import LoopOptions, run_loop
from .model import LoadedModel
from .sources import SyntheticSource


def bench(model: LoadedModel, runs: int = 300, warmup: int = 20, width: int = 640, height: int = 480,
          resize: str = "crop", threads: int | None = None) -> dict[str, Any]:
    """Invoke-only latency, then the whole loop on synthetic in-memory frames of width x height,
    with and without prefetching: each loop's FPS over the invoke-only FPS is what the loop's own
    work (resize, quantise, dequantise, top-k) costs."""
    clf = model.classifier
    h, w, c = clf.input_size
    invoke = clf.invoke_latency(fit_to_input(SyntheticSource(width, height, 1).pool[0], h, w, c, resize), runs, warmup)
    loop = run_loop(model, SyntheticSource(width, height, runs), LoopOptions(resize=resize)).to_dict()
    seq = run_loop(model, SyntheticSource(width, height, runs), LoopOptions(resize=resize, prefetch=False)).to_dict()
    def ratio(r: dict) -> float:
        return r["fps"] / invoke["fps"] if invoke["fps"] else float("nan")

    return {**measured_on(model, threads), "runs": runs, "frame": f"{width}x{height}", "invoke_ms": invoke, "loop": loop,
            "loop_no_prefetch": seq, "loop_over_invoke_fps": ratio(loop), "loop_no_prefetch_over_invoke_fps": ratio(seq)}


def measured_on(model: LoadedModel, threads: int | None) -> dict[str, Any]:
    """What a latency figure was measured with: the model (its sha256 ties the figure to one file, e.g.
    for `nin-pipeline sweep --device-latency`), the device, the runtime, the delegate and the threads."""
    import os
    import platform
    import socket

    from .fsutil import sha256_file

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(("model name", "Model"))), "")
    except OSError:
        pass
    return {"model": model.path.name, "model_sha256": sha256_file(model.path),
            "device": {"hostname": socket.gethostname(), "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count()},
            "runtime": model.classifier.runtime, "delegate": model.delegate, "threads": threads or os.cpu_count()}
