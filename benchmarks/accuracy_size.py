"""Benchmark: accuracy per size in one picture (issue 30, item 5) — QAT int8 top-1 on the CIFAR-10 test
split against parameters and against MACs, for finished builds of the NiN widths, with reference points.

    nin-pipeline build --dataset cifar10 --data-dir ../shared/datasets/cifar10-jpg.tar.gz --time-budget 25 --out artifacts/b25-dw
    nin-pipeline build ... --time-budget 25 --width 0.125 --out artifacts/b25-w0.125
    python benchmarks/accuracy_size.py artifacts/b25-w0.125 artifacts/b25-dw [--name accuracy_size-25min]

Every point is a run folder measured here (its report.json: the test split's 10,000 images, the
parameters and MACs the build counted). Marked beside them, not measured here: the MLPerf Tiny image
classification reference (ResNet-8, 78,666 parameters, 12.5 M MACs; quality target 85% top-1, its int8
model ~87%, as issue 30 quotes them) and the paper's full-width NiN (Lin et al. 2013, CIFAR-10 test error
10.41% without augmentation, 8.81% with), at the parameters and MACs this repository's nin-cifar has at
width 1 (counted here, the same layer shapes). Writes benchmarks/results/<name>-<date>.json and .md, and
docs/benchmarks/figures/<name>-<date>.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from quick_build import tf_env, write_result  # noqa: E402

MLPERF_TINY = {"label": "MLPerf Tiny IC reference (ResNet-8): 85% bar, ~87% int8 (quoted)", "params": 78_666, "macs": 12_500_000,
               "bar": 85.0, "int8": 87.0}
PAPER_TOP1 = {"no augmentation": 100 - 10.41, "flips + translations": 100 - 8.81}


def full_width_size() -> tuple[int, int]:
    """Parameters and MACs of this repository's nin-cifar at width 1 (the paper's layer shapes)."""
    tf_env()
    from pipeline.models.nin import ModelConfig, build_model, count_macs

    m = build_model(ModelConfig(arch="nin-cifar", num_classes=10, input_shape=(32, 32, 3), width=1.0))
    return int(m.count_params()), int(count_macs(m))


def run_row(run: Path) -> dict:
    report = json.loads((run / "report.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    v = report["variants"]
    state = json.loads((run / "state.json").read_text())
    return {
        "run": str(run),
        "width": cfg["model"]["width"],
        "pool2": cfg["model"].get("pool2", "avg"),
        "epochs": cfg["train"]["epochs"],
        "time_budget_min": cfg.get("time_budget_min"),
        "params": v["qat_int8"]["params"],
        "macs": v["qat_int8"]["macs"],
        "float_top1": round(100 * v["float_keras"]["top1"], 2),
        "qat_int8_top1": round(100 * v["qat_int8"]["top1"], 2),
        "int8_bytes": v["qat_int8"]["bytes"],
        "agreement": v["qat_int8"].get("agreement_with_float"),
        "build_seconds": round(sum(s.get("seconds") or 0 for s in state.values() if isinstance(s, dict)), 1),
        "test_images": report.get("test_images") or report.get("n_test"),
    }


def plot(rows: list[dict], full: tuple[int, int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, key, xlabel in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per image")):
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["qat_int8_top1"] for r in rows], "-o", color="C0", label="nin-cifar QAT int8 (measured here)")
        ax.plot(xs, [r["float_top1"] for r in rows], ":", marker=".", color="C0", alpha=0.6, label="float (measured here)")
        for r in rows:
            ax.annotate(f"w{r['width']:g}: {r['qat_int8_top1']:.1f}%", (r[key], r["qat_int8_top1"]), textcoords="offset points",
                        xytext=(5, -12), fontsize=8)
        ref = MLPERF_TINY[key]
        ax.plot([ref], [MLPERF_TINY["int8"]], "s", color="C3", label=MLPERF_TINY["label"])
        ax.axhline(MLPERF_TINY["bar"], color="C3", ls="--", lw=0.8)
        fx = full[0] if key == "params" else full[1]
        for (name, top1), marker in zip(PAPER_TOP1.items(), ("^", "v")):
            ax.plot([fx], [top1], marker, color="C2", label=f"paper, full width, {name} (float)")
        if key == "params":
            ax.axvline(80_000, color="grey", ls=":", lw=0.8)
            ax.text(80_000, 0.02, " 80k cap", transform=ax.get_xaxis_transform(), fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("CIFAR-10 test top-1 (%)")
    low = min(min(r["qat_int8_top1"], r["float_top1"]) for r in rows)
    axes[0].set_ylim(min(low, MLPERF_TINY["bar"]) - 2, max(PAPER_TOP1.values()) + 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(rows: list[dict], full: tuple[int, int]) -> str:
    lines = ["| run | width | params | MACs | epochs | stages s | float top-1 | QAT int8 top-1 | agreement | int8 bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = f"{100 * r['agreement']:.2f}%" if r["agreement"] is not None else "-"
        lines.append(f"| {Path(r['run']).name} | {r['width']:g} | {r['params']:,} | {r['macs'] / 1e6:.1f}M | {r['epochs']} | "
                     f"{r['build_seconds']:,.0f} | {r['float_top1']:.2f}% | {r['qat_int8_top1']:.2f}% | {agree} | {r['int8_bytes']:,} |")
    lines.append(f"| *MLPerf Tiny IC reference, ResNet-8 (quoted)* | | {MLPERF_TINY['params']:,} | {MLPERF_TINY['macs'] / 1e6:.1f}M | | | | "
                 f"~{MLPERF_TINY['int8']:.0f}% (bar {MLPERF_TINY['bar']:.0f}%) | | |")
    lines.append(f"| *paper, full width (quoted; params/MACs of nin-cifar w1 counted here)* | 1 | {full[0]:,} | {full[1] / 1e6:.1f}M | | | "
                 f"{PAPER_TOP1['no augmentation']:.2f}% / {PAPER_TOP1['flips + translations']:.2f}% | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders of nin-cifar (any order)")
    ap.add_argument("--name", default="accuracy_size")
    ap.add_argument("--title", default="nin-cifar at the quick recipe: QAT int8 top-1 per size (2-core CPU)")
    args = ap.parse_args()
    for run in args.runs:
        if not (run / "report.json").is_file():
            raise SystemExit(f"{run} has no report.json: finish the build first (`nin-pipeline build --resume --out {run}`)")
    rows = sorted((run_row(r) for r in args.runs), key=lambda r: r["params"])
    full = full_width_size()
    stamp = dt.date.today().isoformat()
    png = REPO / "docs" / "benchmarks" / "figures" / f"{args.name}-{stamp}.png"
    plot(rows, full, png, args.title)
    table = markdown(rows, full)
    (HERE / "results" / f"{args.name}-{stamp}.md").write_text(table)
    print(table)
    write_result(args.name, {"runs": rows, "full_width": {"params": full[0], "macs": full[1]}, "mlperf_tiny": MLPERF_TINY,
                             "paper_top1": PAPER_TOP1, "figure": str(png.relative_to(REPO))})


if __name__ == "__main__":
    main()
