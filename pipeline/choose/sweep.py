"""`nin-pipeline sweep`: which model for this device? Candidates (architecture x width x input size)
built as normal run folders under one sweep folder, then the accuracy-vs-latency Pareto front.

- Every candidate is an ordinary run folder (``SWEEP/<arch>-w<width>[-s<size>]``) built with the
  same flags; a sweep started again resumes: finished candidates are skipped, an interrupted one
  resumes from its last epoch (the build's own resume).
- Latency comes from this host's report, or from the device itself: ``edge-app bench MODEL --json F``
  run on the device records the model's sha256 beside its milliseconds, and ``--device-latency F...``
  puts those figures in place of the host's (a file whose model is none of the candidates is an error);
  or ``--device URL`` asks the device's `edge-app agent` for each candidate (pipeline.choose.device), kept
  as the candidate's device_bench.json and read the same way.
- ``--latency-budget MS`` / ``--size-budget KB`` pick the most accurate candidate within both, and say
  what the next more accurate one would cost.
- Writes ``sweep.json``, ``sweep.md`` and a self-contained ``sweep.html`` (table and plot inline).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.contract.files import INT8_TFLITE, RunFiles

from pipeline.errors import RunError

log = logging.getLogger("pipeline")

SWEEP_JSON, SWEEP_MD, SWEEP_HTML, SWEEP_PNG = "sweep.json", "sweep.md", "sweep.html", "sweep.png"


@dataclass(frozen=True)
class Candidate:
    arch: str
    width: float
    input_size: int | None = None  # None: the data's own size

    @property
    def name(self) -> str:
        return f"{self.arch}-w{self.width:g}" + (f"-s{self.input_size}" if self.input_size else "")


def candidates(archs: list[str], widths: list[float], sizes: list[int | None]) -> list[Candidate]:
    return [Candidate(a, w, s) for a in archs for w in widths for s in (sizes or [None])]


def finished(folder: Path, expected=None) -> bool:
    """Every stage done and nothing changed since (a damaged output makes the build redo its stage).
    ``expected`` (a BuildConfig): a finished folder built with other training settings is an error,
    not a result to reuse."""
    from pipeline.runs.config import diff_configs, format_diffs
    from pipeline.runs.folder import STAGES, RunFolder

    if not RunFiles(folder).is_built():
        return False
    try:
        run = RunFolder.open(folder)
        diffs = diff_configs(run.load_config().to_dict(), expected.to_dict()) if expected is not None else []
    except RunError:
        return False
    if diffs:
        raise RunError(
            f"{folder} was built with other settings ({format_diffs(diffs)})",
            "run the sweep with the settings it was started with, or give a new --out",
        )
    return all(run.done(s) and not run.damaged_outputs(s) for s in STAGES)


def run_sweep(
    out: Path, cands: list[Candidate], build_one: Callable[[Candidate, Path], Any], expected: Callable[[Candidate], Any] | None = None
) -> list[Path]:
    """Build every candidate not finished yet (``build_one(candidate, folder)``); return their folders.
    ``expected(candidate)``: the BuildConfig its folder must have been built with."""
    folders = []
    for i, c in enumerate(cands, 1):
        folder = out / c.name
        folders.append(folder)
        if finished(folder, expected(c) if expected else None):
            log.info("sweep %d/%d: %s finished before, skipped", i, len(cands), c.name)
            continue
        log.info("sweep %d/%d: %s %s", i, len(cands), c.name, "(resuming)" if folder.exists() else "")
        build_one(c, folder)
    return folders


def device_latencies(files: list[Path]) -> dict[str, dict[str, Any]]:
    """sha256 of a model -> its figures, from `edge-app bench --json` files (one model each)."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
            sha, ms = d["model_sha256"], float(d["invoke_ms"]["median"])
        except OSError as exc:
            raise RunError(f"--device-latency {f}: {exc.strerror or exc}", "give the file `edge-app bench MODEL --json F` wrote") from None
        except (ValueError, KeyError, TypeError):
            raise RunError(
                f"--device-latency {f} is not an `edge-app bench --json` file (no model_sha256 and invoke_ms)",
                "on the device, run `edge-app bench MODEL --json F` with this version of edge-app",
            ) from None
        if not math.isfinite(ms) or ms < 0:  # JSON readers take NaN, Infinity and 1e309; a Pareto front of them is no answer
            raise RunError(
                f"--device-latency {f}: its invoke_ms median is {ms!r}, not a number of milliseconds",
                "measure again on the device (`edge-app bench MODEL --json F`), or leave that file out",
            )
        if sha in out:
            raise RunError(
                f"--device-latency {out[sha]['file']} and {f} measured the same model",
                "give one file per model (e.g. the thread count the device will run with)",
            )
        out[sha] = {
            "ms": ms,
            "file": str(f),
            "device": d.get("device", {}),
            "runtime": d.get("runtime"),
            "delegate": d.get("delegate"),
            "threads": d.get("threads"),
        }
    return out


def with_device_latency(recs: list[dict], folders: list[Path], device: dict[str, dict]) -> list[dict]:
    """Each record's latency becomes the device's where a file measured its int8 model; a file that
    measured none of them is an error (a model from another sweep, or rebuilt since)."""
    from edge_app.fsutil import sha256_file

    # the int8 model, or its Edge TPU-compiled form (what `edge-app bench --delegate edgetpu` runs)
    sha_of = {sha256_file(p): r["run"] for r, f in zip(recs, folders) for p in RunFiles(f).shipped_models()}
    unknown = [v["file"] for k, v in device.items() if k not in sha_of]
    if unknown:
        raise RunError(
            f"--device-latency {', '.join(unknown)}: measured a model that is none of this sweep's {len(recs)} candidates (by sha256)",
            f"bench the {INT8_TFLITE} files of this sweep's run "
            "folders (or their Edge TPU models) on the device (a rebuilt model has another sha256)",
        )
    by_run: dict[str, dict] = {}
    for sha, run in sha_of.items():
        if sha in device:
            if run in by_run:  # its int8 model and its Edge TPU model both measured: which is the figure?
                raise RunError(
                    f"--device-latency {by_run[run]['file']} and {device[sha]['file']} both measured {run}",
                    "give one file per candidate: the model the device will run",
                )
            by_run[run] = device[sha]
    out = []
    for r in recs:
        v = by_run.get(r["run"])
        if v is None:
            log.warning("sweep: no device latency for %s: left out of the device's front", r["run"])
            continue
        out.append(
            dict(
                r,
                int8_ms_1_thread=v["ms"],
                int8_ms_all=None,
                latency_source=(f"device {v['device'].get('hostname', '?')} ({v['runtime']}, {v['delegate']}, {v['threads']} threads)"),
                latency_device=v["device"].get("hostname", "?"),
                # this host's own figures stay beside the device's (the table shows both)
                host_int8_ms_1_thread=r.get("int8_ms_1_thread"),
                host_int8_ms_all=r.get("int8_ms_all"),
            )
        )
    return out


def pick(recs: list[dict], latency_ms: float | None, size_kb: float | None) -> dict[str, Any]:
    """The most accurate candidate within both budgets, why, and what the next more accurate one costs."""

    def fits(r: dict) -> list[str]:
        why = []
        if latency_ms is not None and r["int8_ms_1_thread"] > latency_ms:
            why.append(f"{r['int8_ms_1_thread']:.2f} ms > {latency_ms:g} ms")
        if size_kb is not None and r["int8_bytes"] / 1024 > size_kb:
            why.append(f"{r['int8_bytes'] / 1024:.0f} KB > {size_kb:g} KB")
        return why

    # records without the figures a budget needs cannot be judged (e.g. a report written with --no-latency);
    # equal accuracy: the faster, then the smaller, wins
    needed = ["qat_int8_top1"] + (["int8_ms_1_thread"] if latency_ms is not None else []) + (["int8_bytes"] if size_kb is not None else [])
    ranked = sorted(
        (r for r in recs if all(r.get(k) is not None for k in needed)),
        key=lambda r: (-r["qat_int8_top1"], r.get("int8_ms_1_thread") or 0, r.get("int8_bytes") or 0),
    )
    winner = next((r for r in ranked if not fits(r)), None)
    if winner is None:
        return {"winner": None, "why": "no candidate meets the budget: " + "; ".join(f"{r['run']} {', '.join(fits(r))}" for r in ranked[:3])}
    better = [r for r in ranked if r["qat_int8_top1"] > winner["qat_int8_top1"]]
    nxt = better[-1] if better else None
    ms = "-" if winner.get("int8_ms_1_thread") is None else f"{winner['int8_ms_1_thread']:.2f}"
    kb = "-" if winner.get("int8_bytes") is None else f"{winner['int8_bytes'] / 1024:.0f}"
    why = f"{winner['run']}: QAT int8 top-1 {100 * winner['qat_int8_top1']:.2f}%, {ms} ms, {kb} KB — the most accurate within the budget"
    if nxt:
        why += (
            f"; the next more accurate, {nxt['run']} ({100 * nxt['qat_int8_top1']:.2f}%, +"
            f"{100 * (nxt['qat_int8_top1'] - winner['qat_int8_top1']):.2f} points), would cost {', '.join(fits(nxt))}"
        )
    else:
        why += "; none is more accurate"
    return {"winner": winner["run"], "why": why, "next_better": nxt["run"] if nxt else None}


def write_outputs(out: Path, recs: list[dict], settings: dict[str, Any], choice: dict | None) -> list[str]:
    """sweep.json, sweep.md, sweep.png and sweep.html; returns the Pareto front (run names, fastest first)."""
    from edge_app.fsutil import atomic_write_bytes, atomic_write_text

    from pipeline.choose import compare

    device = next((r["latency_source"] for r in recs if r.get("latency_source", "host") != "host"), None)
    plot = compare.plot(recs, xlabel=f"QAT int8 ms per image on {device} (log scale)" if device else None)
    front = [r["run"] for r in compare.front(recs)]
    atomic_write_text(
        out / SWEEP_JSON, json.dumps({"settings": settings, "candidates": recs, "pareto": front, "pick": choice}, indent=2, default=str) + "\n"
    )
    atomic_write_bytes(out / SWEEP_PNG, plot)
    md = compare.markdown(recs) + f"\nPareto front (fastest first): {', '.join(front) or '-'}\n"
    if choice:
        md += f"\nPick: {choice['why']}\n"
    atomic_write_text(out / SWEEP_MD, md)
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in compare.rows(recs))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in compare.header(recs))
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sweep {html.escape(out.name)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ccc;text-align:right}td:first-child{text-align:left}</style>"
        f"</head><body><h1>sweep {html.escape(out.name)}</h1><p>Pareto front (fastest first): "
        f"{html.escape(', '.join(front) or '-')}</p>"
        + (f"<p><b>Pick:</b> {html.escape(choice['why'])}</p>" if choice else "")
        + f"<img alt='accuracy vs latency' src='data:image/png;base64,{base64.b64encode(plot).decode()}'>"
        f"<table><tr>{head}</tr>{table}</table></body></html>\n"
    )
    atomic_write_text(out / SWEEP_HTML, page)
    return front
