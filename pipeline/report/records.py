"""What a run folder records once its models exist: the report files, the Edge TPU check and
compile summaries (in edgetpu.json, the report and the sidecar), the target check (target.json)
and the clients' model. Used by ``pipeline.stages.orchestrator`` and by the `nin-pipeline edgetpu` and
`check-target` commands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_app.contract.files import EDGETPU_JSON, INT8_TFLITE, REPORT_HTML, REPORT_JSON, REPORT_MD, TARGET_JSON

from pipeline.errors import ReportError
from pipeline.runs.folder import RunFolder

log = logging.getLogger("pipeline")


def write_report(run: RunFolder, report: dict[str, Any], pngs: dict[str, bytes] | None = None) -> None:
    """The plots (when given), then report.json, report.md and report.html, each written atomically.
    Without ``pngs`` the plots already in the folder are inlined into the HTML."""
    from pipeline.report.render import render_html, render_markdown

    if pngs is not None:
        for name, data in pngs.items():
            run.write_bytes(name, data)
        report["plots"] = {name.removesuffix(".png"): name for name in pngs}
    names = report.get("plots", {}).values()
    images = {n: run.path(n).read_bytes() for n in names if run.path(n).is_file()}
    run.write_json(REPORT_JSON, report)
    run.write_text(REPORT_MD, render_markdown(report))
    run.write_text(REPORT_HTML, render_html(report, images))


def edgetpu_stage(run: RunFolder) -> None:
    """--target edgetpu: check model_int8.tflite against the Edge TPU's rules, then compile it when
    edgetpu_compiler is installed (x86-64 Linux); without it, say how to finish elsewhere."""
    from edge_app.checks.edgetpu import check_model, verdict

    from pipeline.export.edgetpu import EdgeTpuError, compile_model

    result = check_model(run.path(INT8_TFLITE))
    record_edgetpu(run, "check", result.to_dict())
    log.info("edgetpu check: %s", verdict(result))
    try:
        compiled = compile_model(run.path(INT8_TFLITE))
    except EdgeTpuError as exc:
        log.warning("edgetpu: not compiled here (%s). Then: nin-pipeline edgetpu compile %s", exc, run.root)
        return
    record_compiled(run, compiled)


def record_edgetpu(run: RunFolder, key: str, value: dict[str, Any]) -> None:
    """Keep a check/compile summary in edgetpu.json and in the report files (when there is a report)."""
    data = {**run.read_edgetpu(), key: value}
    run.write_json(EDGETPU_JSON, data)
    _into_report(run, "edgetpu", data)


def _into_report(run: RunFolder, key: str, value: Any) -> None:
    """``value`` (already in its own file of the run) as the report's ``key``, when there is a report."""
    if run.path(REPORT_JSON).is_file():
        try:
            report = run.read_report()
        except ReportError:
            return  # a damaged report is rebuilt by `nin-pipeline report`, which reads the file again
        report[key] = value
        write_report(run, report)


def record_compiled(run: RunFolder, compiled) -> None:
    """The compiler's summary into edgetpu.json and the report; the compiled model's hash into model.json."""

    record_edgetpu(run, "compile", {k: v for k, v in compiled.to_dict().items() if k != "log"})
    out = Path(compiled.output)
    run.record_model_file(out)
    log.info("edgetpu: %s of %s operations mapped to the Edge TPU -> %s", compiled.ops_on_tpu, compiled.ops_total, out)


def edgetpu_check(model: Path):
    """`nin-pipeline edgetpu check`: a .tflite, or a run folder's int8 model (the run then records the result)."""
    from edge_app.checks.edgetpu import check_model
    from edge_app.contract.files import resolve_model_path

    result = check_model(resolve_model_path(model))
    if Path(model).is_dir():
        record_edgetpu(RunFolder(model), "check", result.to_dict())
    return result


def edgetpu_compile(model: Path, out_dir: Path | None = None, *, compiler: str | None = None, timeout: float = 600.0):
    """`nin-pipeline edgetpu compile`: like :func:`edgetpu_check`, the run folder records the compiler's summary."""
    from edge_app.contract.files import resolve_model_path

    from pipeline.export.edgetpu import compile_model

    result = compile_model(resolve_model_path(model), out_dir, compiler=compiler, timeout=timeout)
    if Path(model).is_dir():
        record_compiled(RunFolder(model), result)
    return result


def target_check(
    model: Path, runtimes: tuple[str, ...] = (), pythons: tuple[str, ...] = (), *, here: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The build's own `check-target` (the command is edge_app.cli.checks'): will the int8 model load on each
    target runtime (edge_app.checks.targets), plus the Edge TPU's mapping (edge_app.checks.edgetpu, Coral's
    rules). A run folder records it in target.json and its report."""
    from edge_app.checks.edgetpu import with_edgetpu
    from edge_app.checks.targets import LOADABLE, check_target, table_runtimes
    from edge_app.contract.files import resolve_model_path

    path = resolve_model_path(model)
    result = check_target(path, runtimes or tuple(table_runtimes()), pythons, here=here or LOADABLE)
    with_edgetpu(result, path)
    if Path(model).is_dir():
        RunFolder(model).write_json(TARGET_JSON, result)
        record_target(Path(model), result)
    return result


def record_target(run_dir: Path, result: dict[str, Any]) -> None:
    """A run folder's target check (already in its target.json) into its report, when it has one."""
    _into_report(RunFolder(run_dir), "target", result)


def after_convert(run: RunFolder) -> None:
    """What the convert stage records beside the models: target.json (will it load on the target
    runtimes), and, when a metadata writer is configured (NIN_METADATA_PYTHON), the clients' model."""
    import os

    target = target_check(run.path(INT8_TFLITE))
    run.write_json(TARGET_JSON, target)
    log.info(
        "target: %s",
        "; ".join(f"{t['runtime']} {({True: 'loads', False: 'WILL NOT LOAD', None: 'unknown'})[t['loads']]}" for t in target["targets"]),
    )
    if os.environ.get("NIN_METADATA_PYTHON"):  # the model for MediaPipe / the Task Library (pipeline/report/clients.py)
        from edge_app.contract.files import CLIENTS_TFLITE

        from pipeline.errors import ClientsError
        from pipeline.report.clients import build_clients_model

        try:
            build_clients_model(run.root)
        except ClientsError as exc:  # optional: the run's own models stand without it
            log.warning("clients: %s not made (%s; %s)", CLIENTS_TFLITE, exc.message, exc.hint)
            return
        log.info("clients: %s written (uint8, scores only, TFLite Metadata)", CLIENTS_TFLITE)
