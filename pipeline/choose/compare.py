"""`nin-pipeline compare RUN...`: run folders side by side — the columns that matter when choosing a
model for a device across architectures: size (params, MACs, int8 bytes), accuracy (float, QAT
int8, PTQ int8, agreement), int8 speed on this host (1 thread and all cores) and the Edge TPU check
— as a terminal table, markdown, JSON and a plot (accuracy vs int8 latency, marker area = bytes).
With ``--device URL`` the int8 speed is the device's (pipeline.choose.device), this host's beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADER = [
    "run",
    "arch",
    "width",
    "params",
    "MACs",
    "float top-1",
    "QAT int8 top-1",
    "PTQ int8 top-1",
    "agreement",
    "int8 bytes",
    "int8 ms 1 thread / all",
    "Edge TPU ops",
]


def _edgetpu(run) -> str:
    """ "on_tpu/total" from edgetpu.json (a check or compile made after the report counts too)."""
    check = (run.read_edgetpu() or {}).get("check") or (run.read_report().get("edgetpu") or {}).get("check")
    if not check:
        return "-"
    return f"{check.get('on_tpu', 0)}/{check.get('total', 0)}"


def record(name: str, run_dir: Path) -> dict[str, Any]:
    """One run folder's figures for the comparison (from report.json, config.json and edgetpu.json)."""
    from pipeline.runs.folder import RunFolder

    run = RunFolder(run_dir)
    rep = run.read_report()
    v = rep["variants"]
    q = v.get("qat_int8", {})
    lat = q.get("latency_ms") or {}
    many = [k for k in lat if k != "1_thread"]
    head = ""
    try:
        head = run.load_config().model.head
    except Exception:  # noqa: BLE001  (a report copied without its config: the head is then unknown)
        pass

    def top1(key: str) -> float | None:
        return v.get(key, {}).get("top1")

    return {
        "run": name,
        "arch": rep.get("arch", ""),
        "width": rep.get("width"),
        "head": head,
        "params": q.get("params"),
        "macs": q.get("macs"),
        "test_images": rep.get("test_images"),
        "float_top1": top1("float_keras"),
        "qat_int8_top1": top1("qat_int8"),
        "ptq_int8_top1": top1("ptq_int8"),
        "agreement": q.get("agreement_with_float"),
        "int8_bytes": q.get("bytes"),
        "int8_ms_1_thread": (lat.get("1_thread") or {}).get("median"),
        "int8_ms_all": (lat[many[-1]] or {}).get("median") if many else None,
        "all_threads": many[-1].split("_")[0] if many else None,
        "edgetpu_ops": _edgetpu(run),
        **_device_eval(run_dir, top1("qat_int8")),
    }


def _device_eval(run_dir: Path, host_top1: float | None) -> dict[str, Any]:
    """``edge-app eval``'s eval.json in the run folder (the model measured on a device): its top-1 beside the host's."""
    import json

    from edge_app.contract.files import RunFiles
    from edge_app.fsutil import sha256_file

    files = RunFiles(Path(run_dir))
    try:
        d = json.loads(files.eval.read_text())
        top1 = float(d["top1"])
        ours = {sha256_file(p) for p in files.shipped_models()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if d.get("model_sha256") not in ours:  # measured a model this folder no longer holds
        return {}
    return {
        "device_top1": top1,
        "device_images": d.get("images"),
        "device": (d.get("device") or {}).get("hostname"),
        "device_vs_host_points": None if host_top1 is None else round(100 * (top1 - host_top1), 2),
    }


def records(runs: list[Path]) -> list[dict[str, Any]]:
    names = [Path(r).name for r in runs]
    if len(set(names)) < len(names):  # the folder names alone would not tell them apart
        names = [str(r) for r in runs]
    return [record(n, Path(r)) for n, r in zip(names, runs)]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _arch(r: dict) -> str:
    return r["arch"] + (f" ({r['head']})" if r.get("head") and r["head"] != "gap" else "")


LATENCY = "int8 ms 1 thread / all"


def _on_device(recs: list[dict[str, Any]]) -> bool:
    """Latency measured on a device (sweep.with_device_latency): its column, and this host's beside it."""
    return any("host_int8_ms_1_thread" in r for r in recs)


def header(recs: list[dict[str, Any]]) -> list[str]:
    h = list(HEADER)
    if _on_device(recs):
        names = sorted({r.get("latency_device") or "?" for r in recs})
        h[h.index(LATENCY) : h.index(LATENCY) + 1] = [f"int8 ms on {', '.join(names)}", f"host {LATENCY}"]
    return h + (["device int8 top-1 (Δ vs host)"] if any("device_top1" in r for r in recs) else [])


def _ms(one: float | None, many: float | None) -> str:
    return ("-" if one is None else f"{one:.2f}") + ("" if many is None else f" / {many:.2f}")


def rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    device = any("device_top1" in r for r in recs)
    out = []
    for r in recs:
        ms = [_ms(r["int8_ms_1_thread"], r["int8_ms_all"])]
        if _on_device(recs):
            ms.append(_ms(r.get("host_int8_ms_1_thread"), r.get("host_int8_ms_all")))
        out.append(
            [
                r["run"],
                _arch(r),
                f"{r['width']:g}" if isinstance(r["width"], (int, float)) else str(r["width"] or ""),
                f"{r['params']:,}" if r["params"] is not None else "-",
                f"{r['macs'] / 1e6:.1f}M" if r["macs"] is not None else "-",
                _pct(r["float_top1"]),
                _pct(r["qat_int8_top1"]),
                _pct(r["ptq_int8_top1"]),
                _pct(r["agreement"]),
                f"{r['int8_bytes']:,}" if r["int8_bytes"] is not None else "-",
                *ms,
                r["edgetpu_ops"],
            ]
        )
        if device:
            if "device_top1" not in r:
                out[-1].append("-")
            else:
                delta = "" if r["device_vs_host_points"] is None else f"{r['device_vs_host_points']:+.2f}, "
                out[-1].append(f"{_pct(r['device_top1'])} ({delta}{r['device_images'] or 0:,} images)")
    return out


def markdown(recs: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(header(recs)) + " |", "|" + "---|" * len(header(recs))]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows(recs)]) + "\n"


def print_table(recs: list[dict[str, Any]]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table()
    for i, h in enumerate(header(recs)):
        # a long cell wraps onto a second line (never cut to "…"); headers wrap at spaces
        t.add_column(h, justify="left" if i < 2 else "right", overflow="fold")
    for r in rows(recs):
        t.add_row(*r)
    # in a pipe or a file rich would assume 80 columns: give the table the width it needs instead
    Console(width=None if sys.stdout.isatty() else 220).print(t)


def plot(recs: list[dict[str, Any]], xlabel: str | None = None) -> bytes:
    """QAT int8 top-1 against int8 ms per image (1 thread, this host), marker area proportional to the
    int8 file's bytes; the runs no other run beats on both axes (the Pareto front) joined by a line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in recs if r["qat_int8_top1"] is not None and r["int8_ms_1_thread"] is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    if pts:
        biggest = max(r["int8_bytes"] or 1 for r in pts)
        for r in pts:
            x, y = r["int8_ms_1_thread"], 100 * r["qat_int8_top1"]
            ax.scatter([x], [y], s=40 + 1500 * (r["int8_bytes"] or 0) / biggest, alpha=0.45)
            ax.annotate(f"{r['run']}\n{(r['int8_bytes'] or 0) / 1024:.0f} KB", (x, y), fontsize=8, xytext=(6, 4), textcoords="offset points")
        best = pareto(pts)
        ax.plot(
            [r["int8_ms_1_thread"] for r in best],
            [100 * r["qat_int8_top1"] for r in best],
            "k--",
            lw=1,
            label="Pareto front (nothing else is both faster and more accurate)",
        )
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or "QAT int8 ms per image, 1 thread, this host (log scale)")
    ax.set_ylabel("QAT int8 test top-1 (%)")
    ax.set_title("accuracy vs int8 latency (marker area: int8 bytes)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def front(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pareto front of the records that have both figures."""
    return pareto([r for r in recs if r["qat_int8_top1"] is not None and r["int8_ms_1_thread"] is not None])


def pareto(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records no other beats on both latency (lower) and QAT int8 top-1 (higher), fastest first."""
    front, best = [], -1.0
    for r in sorted(recs, key=lambda r: (r["int8_ms_1_thread"], -r["qat_int8_top1"])):
        if r["qat_int8_top1"] > best:
            front.append(r)
            best = r["qat_int8_top1"]
    return front
