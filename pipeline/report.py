"""Float-vs-int8 accuracy reports: metrics, plots, report.json / report.md / report.html.

Metrics are plain numpy on saved predictions (``predictions.npz``), so a report can be
rewritten without running the models again. Plots are matplotlib PNGs; the HTML inlines
them (base64) so the file opens offline with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import topk

REPORT_SCHEMA_VERSION = 2
VARIANTS = ("float_keras", "float_tflite", "ptq_int8", "qat_int8")
TITLES = {"float_keras": "float Keras", "float_tflite": "float TFLite", "ptq_int8": "PTQ int8", "qat_int8": "QAT int8"}
PREDICTIONS = "predictions.npz"


class ReportError(Exception):
    """A report input the user can fix (missing models, corrupt report.json, mismatched data)."""


# --------------------------------------------------------------------------- metrics

def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(y * n + pred, minlength=n * n).reshape(n, n)


def variant_metrics(probs: np.ndarray, y: np.ndarray, float_probs: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    n = len(labels)
    pred = probs.argmax(1)
    cm = confusion(y, pred, n)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), np.nan)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)
    float_pred = float_probs.argmax(1)
    rows = np.arange(len(y))
    out: dict[str, Any] = {
        "top1": float(np.mean(pred == y)),
        "top5": topk(probs, y, 5) if n > 5 else None,
        "agreement_with_float": float(np.mean(pred == float_pred)),
        # how far the probability of the float model's top-1 class moved
        "mean_abs_top1_prob_change": float(np.mean(np.abs(probs[rows, float_pred] - float_probs[rows, float_pred]))),
        "per_class": {
            labels[i]: {"precision": _nan_none(precision[i]), "recall": _nan_none(recall[i]), "support": int(cm[i].sum())}
            for i in range(n)
        },
        "confusion_matrix": cm.tolist(),
    }
    return out


def _nan_none(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def latency_ms(model_path: Path, image: np.ndarray, threads: int, runs: int = 200) -> dict[str, float]:
    """Invoke-only latency per image through the edge runtime (median and p95, milliseconds)."""
    from edge_app.runtime import Classifier

    return Classifier(model_path, num_threads=threads).invoke_latency(image, runs)


# --------------------------------------------------------------------------- building the report

def evaluate_run(run_root: Path, x: np.ndarray, y: np.ndarray, labels: tuple[str, ...], progress: bool = True) -> dict[str, np.ndarray]:
    """Predictions of every variant on the test split, saved to predictions.npz."""
    from edge_app.fsutil import atomic_write_bytes

    from .build import RunFolder, load_float
    from .evaluate import predict_keras, predict_tflite

    run = RunFolder(run_root)
    files = variant_files()
    missing = [f for f in files.values() if not (run_root / f).exists()]
    if missing:
        raise ReportError(f"{run_root} lacks {', '.join(missing)}: finish the run with `nin-pipeline build --resume --out {run_root}`")
    preds = {"float_keras": predict_keras(load_float(run), x)}
    for key in VARIANTS[1:]:
        preds[key] = predict_tflite(run_root / files[key], x, progress=progress, desc=TITLES[key])
    buf = io.BytesIO()
    np.savez_compressed(buf, y=y, labels=np.asarray(labels), **preds)
    atomic_write_bytes(run_root / PREDICTIONS, buf.getvalue())
    return preds


def variant_files() -> dict[str, str]:
    from .build import FLOAT_KERAS, FLOAT_TFLITE, INT8_TFLITE, PTQ_TFLITE

    return {"float_keras": FLOAT_KERAS, "float_tflite": FLOAT_TFLITE, "ptq_int8": PTQ_TFLITE, "qat_int8": INT8_TFLITE}


def load_predictions(run_root: Path) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[str, ...]]:
    p = run_root / PREDICTIONS
    if not p.exists():
        raise ReportError(f"{run_root} has no {PREDICTIONS}: run `nin-pipeline report {run_root} --rerun`")
    try:
        with np.load(p, allow_pickle=False) as z:
            preds = {k: z[k] for k in VARIANTS}
            return preds, z["y"], tuple(str(v) for v in z["labels"])
    except (KeyError, ValueError, OSError) as exc:
        raise ReportError(f"{p} is corrupt ({exc}); rewrite it with `nin-pipeline report {run_root} --rerun`") from None


def build_report(run_root: Path, preds: dict[str, np.ndarray], y: np.ndarray, labels: tuple[str, ...],
                 x: np.ndarray | None = None, meta: dict[str, Any] | None = None, latency: bool = True) -> dict[str, Any]:
    """Compute every figure, write report.json, report.md, report.html and the PNG plots."""
    from .build import RunFolder, load_float
    from .models import count_macs

    files = variant_files()
    meta = dict(meta or {})
    float_probs = preds["float_keras"]
    float_model = load_float(RunFolder(run_root))
    params, macs = int(float_model.count_params()), count_macs(float_model)
    variants: dict[str, dict[str, Any]] = {}
    threads = os.cpu_count() or 1
    for key in VARIANTS:
        v = variant_metrics(preds[key], y, float_probs, labels)
        v["file"] = files[key]
        v["bytes"] = (run_root / files[key]).stat().st_size
        v["params"], v["macs"] = params, macs
        v["delta_vs_float"] = v["top1"] - variants.get("float_keras", v)["top1"]
        if latency and key != "float_keras" and x is not None and len(x):
            v["latency_ms"] = {"1_thread": latency_ms(run_root / files[key], x[0], 1),
                               f"{threads}_threads": latency_ms(run_root / files[key], x[0], threads)}
        variants[key] = v
    f_pred, q_pred = float_probs.argmax(1), preds["qat_int8"].argmax(1)
    flipped = np.flatnonzero(f_pred != q_pred)
    class_drop = sorted(
        ((labels[i], variants["float_keras"]["per_class"][labels[i]]["recall"] or 0.0,
          variants["qat_int8"]["per_class"][labels[i]]["recall"] or 0.0) for i in range(len(labels))),
        key=lambda r: r[2] - r[1],
    )
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        **meta,
        "test_images": int(len(y)), "split": "test", "labels": list(labels),
        "variants": variants,
        "int8_bytes_ratio": variants["qat_int8"]["bytes"] / variants["float_tflite"]["bytes"],
        "int8_losses": {
            "classes_by_accuracy_change": [
                {"class": c, "float": a, "int8": b, "change": b - a} for c, a, b in class_drop
            ],
            "flipped": [
                {"index": int(i), "true": labels[y[i]], "float": labels[f_pred[i]], "int8": labels[q_pred[i]]}
                for i in flipped[:200]
            ],
            "flipped_count": int(len(flipped)),
        },
        "machine": {"platform": platform.platform(), "cpus": threads},
        "created": _now(),
    }
    edgetpu = run_root / "edgetpu.json"  # written by `nin-pipeline edgetpu check/compile` and --target edgetpu
    if edgetpu.is_file():
        report["edgetpu"] = json.loads(edgetpu.read_text())
    plots = write_plots(run_root, report, preds, y, labels, x, flipped)
    report["plots"] = plots
    write_report_files(run_root, report)
    return report


def write_report_files(run_root: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and report.html from one report dict (each written atomically)."""
    from edge_app.fsutil import atomic_write_text

    atomic_write_text(run_root / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(run_root / "report.md", render_markdown(report))
    atomic_write_text(run_root / "report.html", render_html(report, run_root))


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_report(run_root: Path) -> dict[str, Any]:
    p = run_root / "report.json"
    if not p.exists():
        raise ReportError(f"{run_root} has no report.json: run `nin-pipeline report {run_root}`")
    try:
        rep = json.loads(p.read_text())
        if not isinstance(rep, dict) or not isinstance(rep.get("variants"), dict):
            raise ValueError("no 'variants' object")
        for v in rep["variants"].values():
            float(v["top1"]), int(v["bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{p} is corrupt ({exc}); rewrite it with `nin-pipeline report {run_root}`") from None
    return rep


# --------------------------------------------------------------------------- plots

def write_plots(run_root: Path, report: dict, preds: dict[str, np.ndarray], y: np.ndarray, labels: tuple[str, ...],
                x: np.ndarray | None, flipped: np.ndarray) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_app.fsutil import atomic_write_bytes

    out: dict[str, str] = {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(run_root / name, buf.getvalue())
        out[name.removesuffix(".png")] = name

    # training curves: float and QAT, loss and accuracy, train vs validation
    hist = {tag: _read_csv(run_root / f"history_{tag}.csv") for tag in ("train", "qat")}
    if any(hist.values()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        offset = len(hist["train"].get("epoch", []))
        for tag, h in hist.items():
            if not h:
                continue
            ep = np.arange(len(h["loss"])) + 1 + (offset if tag == "qat" else 0)
            name = "float" if tag == "train" else "QAT"
            for ax, metric in zip(axes, ("loss", "accuracy")):
                ax.plot(ep, h[metric], "-o", ms=3, label=f"{name} train")
                if f"val_{metric}" in h:
                    ax.plot(ep, h[f"val_{metric}"], "--s", ms=3, label=f"{name} validation")
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "plot_training.png")

    # confusion matrices, float vs QAT int8
    n = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    for ax, key in zip(axes, ("float_keras", "qat_int8")):
        cm = np.asarray(report["variants"][key]["confusion_matrix"])
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{TITLES[key]}: top-1 {100 * report['variants'][key]['top1']:.2f}%")
        if n <= 20:
            ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(n), labels, fontsize=8)
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                                color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    save(fig, "plot_confusion.png")

    # per-class accuracy (recall) bars, float vs int8
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * n + 2), 3.6))
    idx = np.arange(n)
    for key, w in (("float_keras", -0.2), ("qat_int8", 0.2)):
        vals = [report["variants"][key]["per_class"][c]["recall"] or 0 for c in labels]
        ax.bar(idx + w, vals, width=0.4, label=TITLES[key])
    ax.set_xticks(idx, labels if n <= 30 else [""] * n, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (recall)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save(fig, "plot_per_class.png")

    # thumbnails of images whose top-1 flipped between float and int8
    if x is not None and len(flipped):
        # a few of every true class rather than the first 24 (which would all be class 0)
        rank: dict[int, int] = {}
        ranked = []
        for i in flipped:
            r = rank.get(int(y[i]), 0)
            rank[int(y[i])] = r + 1
            ranked.append((r, int(y[i]), int(i)))
        show = [i for _, _, i in sorted(ranked)][:24]
        cols = min(8, len(show))
        rows = int(np.ceil(len(show) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
        fp, qp = preds["float_keras"].argmax(1), preds["qat_int8"].argmax(1)
        for ax in axes.flat:
            ax.axis("off")
        for ax, i in zip(axes.flat, show):
            img = x[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_title(f"true {labels[y[i]]}\nfloat {labels[fp[i]]}\nint8 {labels[qp[i]]}", fontsize=6)
        save(fig, "plot_flipped.png")
    return out


def _read_csv(path: Path) -> dict[str, list[float]]:
    from .train import read_history

    return read_history(path)


# --------------------------------------------------------------------------- rendering

def table_rows(report: dict) -> list[list[str]]:
    """variant, top-1, top-5, delta vs float, agreement, bytes, ms/image (1 thread, all cores)."""
    rows = []
    for key, v in report["variants"].items():
        lat = v.get("latency_ms") or {}
        ms = " / ".join(f"{d['median']:.2f}" for d in lat.values()) if lat else "-"
        rows.append([
            TITLES.get(key, key), f"{100 * v['top1']:.2f}%",
            f"{100 * v['top5']:.2f}%" if v.get("top5") is not None else "-",
            f"{100 * v['delta_vs_float']:+.2f}", f"{100 * v['agreement_with_float']:.2f}%",
            f"{v['bytes']:,}", ms,
        ])
    return rows


HEADER = ["variant", "top-1", "top-5", "Δ vs float", "agreement", "bytes", "ms/image 1 thread / all"]


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report.get('dataset', '')} {report.get('arch', '')} width {report.get('width', '')}: "
                    f"{report['test_images']:,} test images")
    for i, h in enumerate(HEADER):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in table_rows(report):
        t.add_row(*r)
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 120  # a log file: do not wrap the table at 80 columns
    console.print(t)


def render_markdown(report: dict) -> str:
    lines = [
        f"# Float vs int8: {report.get('dataset', '')} / {report.get('arch', '')} width {report.get('width', '')}",
        "",
        f"{report['test_images']:,} test images; int8 model is {100 * report['int8_bytes_ratio']:.1f}% of the float "
        f".tflite's bytes. Latency: invoke only, through the edge runtime on this host ({report['machine']['cpus']} cores).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r) + " |" for r in table_rows(report)),
        "",
        "## Where int8 loses",
        "",
        "| class | float | int8 | change (pts) |",
        "|---|---|---|---|",
        *(f"| {c['class']} | {100 * c['float']:.1f}% | {100 * c['int8']:.1f}% | {100 * c['change']:+.1f} |"
          for c in report["int8_losses"]["classes_by_accuracy_change"][:5]),
        "",
        f"{report['int8_losses']['flipped_count']} test images changed their top-1 between float and QAT int8.",
        "",
    ]
    lines.extend(edgetpu_lines(report))
    for name in report.get("plots", {}).values():
        lines.append(f"![{name}]({name})")
    return "\n".join(lines) + "\n"


def edgetpu_lines(report: dict) -> list[str]:
    """The Edge TPU section: our check's prediction and the compiler's own count, when there are any."""
    e = report.get("edgetpu") or {}
    if not e:
        return []
    out = ["## Edge TPU", ""]
    if "check" in e:
        c = e["check"]
        out.append(f"- check (Coral's documented rules, no compiler): {c['on_tpu']} of {c['total']} operations would run "
                   f"on the Edge TPU ({Path(c['model']).name}, input {c['input_dtype']})")
    if "compile" in e:
        c = e["compile"]
        out.append(f"- edgetpu_compiler {c['compiler_version']}: {c['ops_on_tpu']} of {c['ops_total']} operations mapped "
                   f"to the Edge TPU, {c['subgraphs']} subgraph(s) -> {Path(c['output']).name}")
    return out + [""]


def render_html(report: dict, run_root: Path) -> str:
    """One self-contained page: inline CSS, PNGs inlined as data URIs, no external URL."""
    def img(name: str) -> str:
        data = base64.b64encode((run_root / name).read_bytes()).decode()
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table_rows(report))
    drops = "".join(
        f"<tr><td>{esc(c['class'])}</td><td>{100 * c['float']:.1f}%</td><td>{100 * c['int8']:.1f}%</td>"
        f"<td>{100 * c['change']:+.1f}</td></tr>" for c in report["int8_losses"]["classes_by_accuracy_change"][:5])
    plots = report.get("plots", {})
    sections = [
        ("Training curves", "plot_training"), ("Confusion matrices", "plot_confusion"),
        ("Per-class accuracy", "plot_per_class"), ("Images whose prediction flipped", "plot_flipped"),
    ]
    figs = "".join(f"<h2>{esc(t)}</h2>{img(plots[k])}" for t, k in sections if k in plots)
    title = f"Float vs int8: {report.get('dataset', '')} / {report.get('arch', '')} width {report.get('width', '')}"
    tpu = edgetpu_lines(report)
    edgetpu = ("<h2>Edge TPU</h2><ul>" + "".join(f"<li>{esc(x[2:])}</li>" for x in tpu if x.startswith("- ")) + "</ul>"
               if tpu else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }}
.note {{ color: #555; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p class="note">{report['test_images']:,} test images. The QAT int8 model is {100 * report['int8_bytes_ratio']:.1f}% of the
float .tflite's bytes. Latency is invoke-only through the edge runtime on the build host
({report['machine']['cpus']} cores), median over {_runs(report)} runs.</p>
<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Where int8 loses</h2>
<table id="drops"><thead><tr><th>class</th><th>float</th><th>int8</th><th>change (pts)</th></tr></thead>
<tbody>{drops}</tbody></table>
<p>{report['int8_losses']['flipped_count']} test images changed their top-1 between float and QAT int8.</p>
{edgetpu}{figs}
</body></html>
"""


def _runs(report: dict) -> int:
    for v in report["variants"].values():
        for d in (v.get("latency_ms") or {}).values():
            return int(d["runs"])
    return 0


def compare_rows(reports: list[tuple[str, dict]]) -> list[list[str]]:
    rows = []
    for name, rep in reports:
        v = rep["variants"]
        q = v.get("qat_int8", {})
        lat = (q.get("latency_ms") or {}).get("1_thread", {})
        rows.append([
            name, str(rep.get("arch", "")), str(rep.get("width", "")),
            f"{100 * v['float_keras']['top1']:.2f}%", f"{100 * q.get('top1', float('nan')):.2f}%",
            f"{100 * v.get('ptq_int8', {}).get('top1', float('nan')):.2f}%",
            f"{q.get('bytes', 0):,}", f"{q.get('params', 0):,}", f"{q.get('macs', 0) / 1e6:.1f}M",
            f"{lat['median']:.2f}" if lat else "-",
        ])
    return rows


COMPARE_HEADER = ["run", "arch", "width", "float top-1", "QAT int8 top-1", "PTQ int8 top-1", "int8 bytes", "params",
                  "MACs", "int8 ms (1 thread)"]
