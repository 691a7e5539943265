"""`edge-app bench`: invoke-only latency next to the whole loop's, on synthetic in-memory frames."""

from __future__ import annotations

from typing import Any

from edge_app.camera.loop import LoopOptions, run_loop
from edge_app.frames.geometry import fit_to_input
from edge_app.frames.sources import SyntheticSource
from edge_app.model import LoadedModel
from edge_app.runtime import DELEGATES


def bench(
    model: LoadedModel, runs: int = 300, warmup: int = 20, width: int = 640, height: int = 480, resize: str = "crop", threads: int | None = None
) -> dict[str, Any]:
    """Invoke-only latency, then the whole loop on synthetic in-memory frames of width x height,
    with and without prefetching: each loop's FPS over the invoke-only FPS is what the loop's own
    work (resize, quantise, dequantise, top-k) costs."""
    clf = model.classifier
    h, w, c = clf.input_size
    invoke = clf.invoke_latency(fit_to_input(SyntheticSource(width, height, 1).pool[0], h, w, c, resize), runs, warmup)
    loop = run_loop(model, SyntheticSource(width, height, runs), LoopOptions(resize=resize, input_check=False)).to_dict()
    seq = run_loop(model, SyntheticSource(width, height, runs), LoopOptions(resize=resize, prefetch=False, input_check=False)).to_dict()

    def ratio(r: dict) -> float:
        return r["fps"] / invoke["fps"] if invoke["fps"] else float("nan")

    return {
        **measured_on(model, threads),
        "runs": runs,
        "frame": f"{width}x{height}",
        "invoke_ms": invoke,
        "loop": loop,
        "loop_no_prefetch": seq,
        "loop_over_invoke_fps": ratio(loop),
        "loop_no_prefetch_over_invoke_fps": ratio(seq),
    }


def measured_on(model: LoadedModel, threads: int | None) -> dict[str, Any]:
    """What a latency figure was measured with: the model (its sha256 ties the figure to one file, e.g.
    for `nin-pipeline sweep --device-latency`), the device, the runtime, the delegate and the threads."""
    import os
    import platform
    import socket

    from edge_app.fsutil import sha256_file
    from edge_app.runtime import usable_cores

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(("model name", "Model"))), "")
    except OSError:
        pass
    return {
        "model": model.path.name,
        "model_sha256": sha256_file(model.path),
        "device": {"hostname": socket.gethostname(), "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count()},
        "runtime": model.classifier.runtime,
        "delegate": model.delegate,
        "threads": threads or usable_cores(),
    }


def bench_all(
    folder,
    *,
    runs: int = 100,
    delegates: tuple[str, ...] = DELEGATES,
    data=None,
    limit: int | None = None,
    max_threads: int | None = None,
    runtime: str = "auto",
    ignore_checksum: bool = False,
) -> list[dict[str, Any]]:
    """Every model of a run folder x every runtime installed x threads 1..cores (CPU) x every delegate
    that loads: bytes, invoke ms median/p95, FPS, and top-1 on a labelled folder (``data``) when given.
    A delegate or model that does not load is a row with the reason, not an error."""
    from pathlib import Path

    # the run folder's models in the order a table shows them (the float model and the PTQ one are the
    # training side's comparisons; the Edge TPU-compiled one runs only with the edgetpu delegate)
    from edge_app.contract.files import EDGETPU_INT8, INT8_TFLITE, LABELS_TXT, MODEL_VARIANTS, QAT_INT8, SIDECAR_NAME
    from edge_app.contract.sidecar import read_sidecar
    from edge_app.errors import EdgeAppError
    from edge_app.frames.geometry import fit_to_input
    from edge_app.frames.sources import SyntheticSource
    from edge_app.measure.evaluate import labelled_images
    from edge_app.model import LoadedModel, check_checksum, read_labels
    from edge_app.runtime import RUNTIMES, Classifier, interpreter_class, make_delegate, usable_cores

    folder = Path(folder)
    sc = read_sidecar(folder / SIDECAR_NAME) if (folder / SIDECAR_NAME).is_file() else None
    if sc is not None:  # every model the table runs, by the same rule as run and bench
        for v in MODEL_VARIANTS:
            if (folder / v.file).is_file():
                check_checksum(folder / v.file, sc, ignore_checksum)
    settings: dict[str, Any] = (
        {"pixel_scale": sc.input.pixel_scale, "mean": sc.input.mean, "std": sc.input.std, "output_kind": sc.output("scores").kind} if sc else {}
    )
    labels: list[str] = []
    if sc is not None:
        labels = list(sc.labels)
    elif data is not None:
        if not (folder / LABELS_TXT).is_file():
            raise EdgeAppError(
                f"--data: {folder} has no model.json or labels.txt, so its classes have no names", "give a run folder from `nin-pipeline build`"
            )
        # checked against the model's own class count (a word count would split "traffic light" in two)
        first = next((folder / v.file for v in MODEL_VARIANTS if (folder / v.file).is_file() and v != EDGETPU_INT8), None)
        if first is None:
            raise EdgeAppError(
                f"--data: {folder} has no model that runs on the CPU to count its classes",
                f"give a run folder with {INT8_TFLITE} (or {SIDECAR_NAME} beside the Edge TPU model)",
            )
        labels = read_labels(folder / LABELS_TXT, Classifier(first, num_threads=1).num_classes)
    items = labelled_images(Path(data), labels, "--data")[0] if data is not None else None  # said before anything is measured
    installed = []
    for name in RUNTIMES if runtime == "auto" else (runtime,):
        try:
            interpreter_class(name)
            installed.append(name)
        except EdgeAppError:
            continue
    cores = max_threads or usable_cores()
    rows: list[dict[str, Any]] = []
    frame = SyntheticSource(640, 480, 1).pool[0]
    for v in MODEL_VARIANTS:
        variant, file = v.label, v.file
        path = folder / file
        if not path.is_file():
            continue
        for runtime in installed:
            for delegate in delegates:
                if (v == EDGETPU_INT8) != (delegate == "edgetpu"):
                    # the compiled model needs the Edge TPU; the Edge TPU runs only the compiled one
                    if delegate == "edgetpu" and v == QAT_INT8 and not (folder / EDGETPU_INT8.file).is_file():
                        rows.append(
                            {
                                "model": EDGETPU_INT8.label,
                                "file": EDGETPU_INT8.file,
                                "bytes": 0,
                                "runtime": runtime,
                                "delegate": delegate,
                                "threads": cores,
                                "status": f"skipped: no {EDGETPU_INT8.file} "
                                "(compile one with `nin-pipeline edgetpu compile RUN` on x86-64 Linux)",
                            }
                        )
                    continue
                for threads in range(1, cores + 1) if delegate == "cpu" else (cores,):
                    row = {
                        "model": variant,
                        "file": file,
                        "bytes": path.stat().st_size,
                        "runtime": runtime,
                        "delegate": delegate,
                        "threads": threads,
                    }
                    try:
                        dlg = make_delegate(delegate, runtime)
                        clf = Classifier(path, runtime=runtime, num_threads=threads, delegates=[dlg] if dlg else None, **settings)
                    except EdgeAppError as exc:
                        rows.append({**row, "status": f"skipped: {' '.join(str(exc).split())}"})
                        break  # the other thread counts would fail the same way
                    h, w, c = clf.input_size
                    lat = clf.invoke_latency(fit_to_input(frame, h, w, c), runs, min(20, runs))
                    row.update(ms_median=lat["median"], ms_p95=lat["p95"], fps=lat["fps"], status="ok")
                    if data is not None and threads == (1 if delegate == "cpu" else cores):  # once per model x runtime x delegate
                        from edge_app.measure.evaluate import evaluate_folder

                        loaded = LoadedModel(clf, labels, sc, path, delegate)
                        row["top1"] = evaluate_folder(loaded, Path(data), limit=limit, option="--data", items=items)["top1"]
                    rows.append(row)
    return rows


def bench_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as an aligned text table (top-1 only when measured)."""
    with_top1 = any("top1" in r for r in rows)
    head = ["model", "bytes", "runtime", "delegate", "threads", "ms median", "ms p95", "FPS"] + (["top-1"] if with_top1 else [])
    body = []
    for r in rows:
        if r["status"] != "ok":
            body.append([r["model"], f"{r['bytes']:,}", r["runtime"], r["delegate"], str(r["threads"]), r["status"]])
            continue
        body.append(
            [
                r["model"],
                f"{r['bytes']:,}",
                r["runtime"],
                r["delegate"],
                str(r["threads"]),
                f"{r['ms_median']:.3f}",
                f"{r['ms_p95']:.3f}",
                f"{r['fps']:.1f}",
            ]
            + ([f"{100 * r['top1']:.2f}%" if "top1" in r else "-"] if with_top1 else [])
        )
    measured = [head] + [b for b in body if not (len(b) == 6 and b[5].startswith("skipped"))]
    widths = [max(len(x[i]) for x in measured + ([b[:5] for b in body] if i < 5 else []) if len(x) > i) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.ljust(widths[i]) if i < 5 else c.rjust(widths[i]) for i, c in enumerate(cells))  # noqa: E731
    out = [fmt(head)]
    for b in body:
        out.append(fmt(b[:5]) + "  " + b[5] if len(b) == 6 and b[5].startswith("skipped") else fmt(b))
    return out
