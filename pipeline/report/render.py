"""The report for people: the terminal table, report.md, a self-contained report.html, and the
cross-run comparison table. Formatting of report dicts: nothing is computed or written here."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipeline.report.figures import TITLES


def table_rows(report: dict) -> list[list[str]]:
    """variant, top-1, top-5, delta vs float, agreement, bytes, ms/image (1 thread, all cores)."""
    rows = []
    for key, v in report["variants"].items():
        lat = v.get("latency_ms") or {}
        ms = " / ".join(f"{d['median']:.2f}" for d in lat.values()) if lat else "-"
        rows.append(
            [
                TITLES.get(key, key),
                f"{100 * v['top1']:.2f}%",
                f"{100 * v['top5']:.2f}%" if v.get("top5") is not None else "-",
                f"{100 * v['delta_vs_float']:+.2f}",
                f"{100 * v['agreement_with_float']:.2f}%",
                f"{v['bytes']:,}",
                ms,
            ]
        )
    return rows


def significance_lines(report: dict) -> list[str]:
    """One sentence per tested pair: the change, the images behind it, McNemar's p and the verdict."""
    out = []
    for t in (report.get("significance") or {}).values():
        a, b = TITLES.get(t["a"], t["a"]), TITLES.get(t["b"], t["b"])
        verdict = f"significant at {t['alpha']:g}" if t["significant"] else f"not significant at {t['alpha']:g} (read it as noise)"
        out.append(
            f"{b} vs {a}: {t['difference_points']:+.2f} points ({t['b_only_correct']} images right only in {b}, "
            f"{t['a_only_correct']} only in {a}; McNemar p = {t['p_value']:.3g}): {verdict}"
        )
    return out


def layer_error_lines(report: dict, n: int = 5) -> list[str]:
    """Markdown: per int8 variant, the layers that add the most error against the model it came from."""
    from pipeline.export.quant_debug import short_name

    out = []
    for key, e in (report.get("int8_layer_errors") or {}).items():
        title = f"## Which layers lose it: {TITLES.get(key, key)}"
        if "error" in e:
            out += [title, "", f"Not measured: {e['error']}", ""]
            continue
        out += [
            title,
            "",
            f"Each int8 tensor against the same layer of the {e['reference']} on representative training images. "
            f"RMSE / scale is in quantisation steps (rounding alone gives {e['rounding_rmse_steps']:.2f}); "
            f"noise / signal is RMSE / the float activations' spread; *added* is what this layer adds to the worst "
            f"before it. Largest additions first ({min(n, len(e['worst']))} of {e['layers']} layers):",
            "",
            "| layer | int8 tensor | RMSE / scale | noise / signal | added |",
            "|---|---|---|---|---|",
            *(
                f"| {r['layer']} | `{short_name(r['tensor'])}` | {r['rmse_steps']:.2f} | {r['nsr']:.3f} | {r['added_nsr']:+.3f} |"
                for r in e["worst"][:n]
            ),
            "",
        ]
    return out


HEADER = ["variant", "top-1", "top-5", "Δ vs float", "agreement", "bytes", "ms/image 1 thread / all"]


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{report.get('dataset', '')} {report.get('arch', '')} width {report.get('width', '')}: {report['test_images']:,} test images"
    )
    for i, h in enumerate(HEADER):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in table_rows(report):
        t.add_row(*r)
    from edge_app.quiet import stderr_is_tty

    # stderr may be the quiet filter's pipe in front of a terminal: ask what it was
    console = Console(stderr=True, force_terminal=stderr_is_tty() or None)
    if not console.is_terminal:
        console.width = 120  # a log file: do not wrap the table at 80 columns
    console.print(t)
    for line in significance_lines(report):
        console.print(line, highlight=False, markup=False)


def int8_losses(report: dict, most: int = 5) -> list[dict]:
    """The classes int8 is less accurate on, worst first (gains and unchanged classes are not losses)."""
    return [c for c in report["int8_losses"]["classes_by_accuracy_change"] if c["change"] < 0][:most]


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
        *(f"| {c['class']} | {100 * c['float']:.1f}% | {100 * c['int8']:.1f}% | {100 * c['change']:+.1f} |" for c in int8_losses(report)),
        *([] if int8_losses(report) else ["| (no class is less accurate in int8) | | | |"]),
        "",
        f"{report['int8_losses']['flipped_count']} test images changed their top-1 between float and QAT int8.",
        "",
    ]
    sig = significance_lines(report)
    if sig:
        lines.extend(["## Is the difference real?", "", *(f"- {x}" for x in sig), ""])
    lines.extend(layer_error_lines(report))
    lines.extend(edgetpu_lines(report))
    lines.extend(target_lines(report))
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
        out.append(
            f"- check (Coral's documented rules, no compiler): {c['on_tpu']} of {c['total']} operations would run "
            f"on the Edge TPU ({Path(c['model']).name}, input {c['input_dtype']})"
        )
    if "compile" in e:
        c = e["compile"]
        out.append(
            f"- edgetpu_compiler {c['compiler_version']}: {c['ops_on_tpu']} of {c['ops_total']} operations mapped "
            f"to the Edge TPU, {c['subgraphs']} subgraph(s) -> {Path(c['output']).name}"
        )
    return out + [""]


def target_lines(report: dict) -> list[str]:
    """Will it load on the device's runtime: one line per target (`check-target`, run by `build`)."""
    t = report.get("target") or {}
    if not t:
        return []
    out = ["## Target runtimes", "", "Ops: " + ", ".join(f"{o['name']} v{o['version']}" for o in t["ops"]), ""]
    for x in t["targets"]:
        state = {True: "loads", False: "**will not load**", None: "unknown"}[x["loads"]]
        out.append(f"- {x['runtime']}: {state} ({x['how']})" + "".join(f"; {p['op']} v{p['version']}: {p['advice']}" for p in x["problems"]))
    if t.get("edgetpu"):
        out.append(f"- Edge TPU (Coral's rules, no compiler): {t['edgetpu']['verdict']}")
    return out + [""]


def render_html(report: dict, images: dict[str, bytes]) -> str:
    """One self-contained page: inline CSS, PNGs (``images``: file name -> bytes) inlined as data
    URIs, no external URL."""

    def img(name: str) -> str:
        data = base64.b64encode(images[name]).decode()
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table_rows(report))
    drops = "".join(
        f"<tr><td>{esc(c['class'])}</td><td>{100 * c['float']:.1f}%</td><td>{100 * c['int8']:.1f}%</td><td>{100 * c['change']:+.1f}</td></tr>"
        for c in int8_losses(report)
    ) or ('<tr><td colspan="4">no class is less accurate in int8</td></tr>')
    plots = report.get("plots", {})
    sections = [
        ("Training curves", "plot_training"),
        ("Confusion matrices", "plot_confusion"),
        ("Per-class accuracy", "plot_per_class"),
        ("Images whose prediction flipped", "plot_flipped"),
    ]
    figs = "".join(f"<h2>{esc(t)}</h2>{img(plots[k])}" for t, k in sections if k in plots and plots[k] in images)
    title = f"Float vs int8: {report.get('dataset', '')} / {report.get('arch', '')} width {report.get('width', '')}"
    sig = significance_lines(report)
    significance = "<h2>Is the difference real?</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in sig) + "</ul>" if sig else ""
    tpu = edgetpu_lines(report)
    edgetpu = "<h2>Edge TPU</h2><ul>" + "".join(f"<li>{esc(x[2:])}</li>" for x in tpu if x.startswith("- ")) + "</ul>" if tpu else ""
    tgt = target_lines(report)
    edgetpu += (
        "<h2>Target runtimes</h2><ul>" + "".join(f"<li>{esc(x[2:].replace('**', ''))}</li>" for x in tgt if x.startswith("- ")) + "</ul>"
        if tgt
        else ""
    )
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
<p class="note">{report["test_images"]:,} test images. The QAT int8 model is {100 * report["int8_bytes_ratio"]:.1f}% of the
float .tflite's bytes. Latency is invoke-only through the edge runtime on the build host
({report["machine"]["cpus"]} cores), median over {_runs(report)} runs.</p>
<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Where int8 loses</h2>
<table id="drops"><thead><tr><th>class</th><th>float</th><th>int8</th><th>change (pts)</th></tr></thead>
<tbody>{drops}</tbody></table>
<p>{report["int8_losses"]["flipped_count"]} test images changed their top-1 between float and QAT int8.</p>
{significance}{edgetpu}{figs}
</body></html>
"""


def _runs(report: dict) -> int:
    for v in report["variants"].values():
        for d in (v.get("latency_ms") or {}).values():
            return int(d["runs"])
    return 0
