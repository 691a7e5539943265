"""The main job: data -> float training -> QAT -> TFLite conversion -> evaluation, into a run folder
(the stages themselves are in ``pipeline.stages.steps``).

Each stage records its completion (and seconds) in ``state.json``; re-running a build on the
same run folder skips finished stages and resumes an unfinished training stage from its last
epoch checkpoint. The run folder's files are read and written through ``pipeline.runs.folder``.
The functions at the end are what the ``nin-pipeline`` commands call, one each.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import time
from pathlib import Path
from typing import Any

from edge_app.contract.files import CHECKPOINTS, CONFIG_JSON, INT8_TFLITE, REPORT_HTML

from pipeline import __version__
from pipeline.errors import RunError
from pipeline.runs.config import BuildConfig, BuildRequest, with_target
from pipeline.runs.folder import STAGES, RunFolder, run_lock
from pipeline.stages.cluster import Cluster
from pipeline.stages.inputs import load_data
from pipeline.stages.steps import evaluate_and_report, setup_logging, stage_convert, stage_qat, stage_train

log = logging.getLogger("pipeline")


# --------------------------------------------------------------------------- orchestration


@contextlib.contextmanager
def stage_errors():
    """TensorFlow's runtime errors inside a stage, raised as the one error hierarchy's (cluster.failure)."""
    import tensorflow as tf

    from pipeline.stages import cluster

    try:
        yield
    except tf.errors.OpError as exc:
        raise cluster.failure(exc) from None


STAGE_FUNCTIONS = {"train": stage_train, "qat": stage_qat, "convert": stage_convert, "evaluate": evaluate_and_report}


def run_stages(
    run: RunFolder,
    stages: tuple[str, ...] = STAGES,
    force: tuple[str, ...] = (),
    *,
    workers: Cluster | None = None,
    worker_timeout: float = 600.0,
    collective_timeout: float = 0.0,
) -> dict[str, Any]:
    """Run ``stages`` in order, skipping those already done unless forced; each is marked done with its seconds.
    With ``workers`` (several machines) training and QAT run under MultiWorkerMirroredStrategy; only
    the chief goes on to conversion and evaluation."""
    from pipeline.stages import cluster
    from pipeline.train.devices import configure_devices

    cfg = run.load_config()
    if workers is not None:
        strategy = cluster.start(workers, collective_s=collective_timeout, startup_s=worker_timeout)  # TF's first call
        cluster.check_batch_sizes(strategy, {"--batch-size": cfg.train.batch_size, "the QAT batch size": cfg.qat.batch_size})
        if not workers.is_chief:
            stages = tuple(s for s in stages if s in ("train", "qat"))
    info = configure_devices()
    log.info("run folder %s (nin-pipeline %s, TensorFlow %s)", run.root, __version__, info["tensorflow"])
    for stage in STAGES:  # a done stage whose outputs are gone or changed (a truncated copy, an edit) is redone
        bad = run.damaged_outputs(stage) if run.done(stage) else []
        if bad:
            log.warning("stage %s was done, but %s: doing it again, and the stages after it", stage, "; ".join(bad))
            run.forget(stage)
            break
    todo = [s for s in stages if s in force or not run.done(s)]
    cluster.agree([int(s in todo) for s in ("train", "qat")], "the training stages still to run")
    ok, t0 = False, time.time()
    try:
        splits = load_data(cfg, run) if todo else None
        if not todo:
            log.info("every stage is already done; nothing to do")
        for stage in STAGES if todo else ():
            # re-checked each time: redoing a stage makes every later stage stale (RunFolder.mark)
            if stage not in stages or not (stage in force or not run.done(stage)):
                continue
            t = time.time()
            log.info("stage %s ...", stage)
            with stage_errors():
                STAGE_FUNCTIONS[stage](cfg, run, splits)
            log.info("stage %s done in %.0f s", stage, time.time() - t)
            run.mark(stage, seconds=time.time() - t)
        ok = True
    finally:
        cluster.chief_finished(ok)
    cluster.wait_for_chief()
    log.info("finished in %.0f s; run folder: %s", time.time() - t0, run.root)
    return run.read_report_if_any()


def resolve_build(request: BuildRequest, out: Path | None, *, resume: bool = False, workers: Cluster | None = None) -> tuple[BuildConfig, Path]:
    """Where the run goes and with which settings: the one place `build`'s flags become a BuildConfig.
    ``resume`` alone (no setting given): the run folder's own settings (the newest matching run in
    artifacts/ without ``out``); else the request's, which an existing folder must match. ``workers``: one
    of several machines, all given the same ``out`` (see ``pipeline.stages.cluster``)."""
    from pipeline.data.formats import resolve_source

    if workers is not None and out is None:
        from pipeline.stages.cluster import ClusterError

        raise ClusterError("a multi-worker build needs --out", "give every worker the same --out, on storage they all see")
    if resume and out is None:
        runs = sorted(p for p in Path("artifacts").glob(f"{request.dataset}-{request.arch}-*") if (p / CONFIG_JSON).exists())
        if not runs:
            raise RunError(f"--resume: no run folder artifacts/{request.dataset}-{request.arch}-* to resume", "pass --out RUN")
        out = runs[-1]
    if resume and not (Path(out) / CONFIG_JSON).is_file():
        if workers is not None and not workers.is_chief:
            from pipeline.stages.cluster import ClusterError

            raise ClusterError(
                f"{workers.describe()}: --resume, but the chief's run folder {out} is not visible here (no {CONFIG_JSON})",
                "every worker needs the chief's --out on storage they all see (NFS, a ReadWriteMany "
                "volume); if the chief never started it, leave out --resume on every worker",
            )
        raise RunError(f"--resume: {out} is not a run folder (no {CONFIG_JSON})", "leave out --resume to start it")
    if resume and not request.overrides:
        return request.with_data_place(RunFolder.open(out).load_config()), Path(out)
    resolve_source(request.dataset, request.data_dir)  # a wrong --data-dir fails before any folder is made
    out = out or Path("artifacts") / f"{request.dataset}-{request.arch}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return request.config(), Path(out)


def build(
    cfg: BuildConfig, out: Path, *, workers: Cluster | None = None, worker_timeout: float = 600.0, collective_timeout: float = 0.0
) -> RunFolder:
    """`nin-pipeline build`: the run folder at ``out`` with ``cfg`` (made, or reopened when it was started
    with the same settings), every stage to the end. A worker of several (``workers``, not the chief)
    trains in its own folder beside the chief's, which only the chief writes."""
    if workers is not None and not workers.is_chief:
        from pipeline.stages.cluster import worker_folder

        with worker_folder(out, cfg, workers) as run:
            setup_logging(run.root)
            run_stages(run, workers=workers, worker_timeout=worker_timeout, collective_timeout=collective_timeout)
            log.info("%s: training and QAT done; the chief converts and reports into %s", workers.describe(), out)
        return RunFolder(out)
    folder_was_there = Path(out).exists()  # (the lock makes it)
    with run_lock(out, "nin-pipeline build"):
        config_was_there = (Path(out) / CONFIG_JSON).exists()
        run = RunFolder.create(out, cfg)
        setup_logging(run.root)
        try:
            run_stages(run, workers=workers, worker_timeout=worker_timeout, collective_timeout=collective_timeout)
        except BaseException:
            if not config_was_there:
                run.discard_unstarted(folder_was_there)
            raise
    return run


def redo_stage(run_dir: Path, stage: str, target: str | None = None) -> RunFolder:
    """`nin-pipeline train|qat|convert RUN`: redo one stage (from scratch), then every later one.
    ``target`` (convert only) converts for another target from now on."""
    import shutil

    run = RunFolder.open(run_dir)
    with run_lock(run.root, f"nin-pipeline {stage}"):
        setup_logging(run.root)
        if target is not None:
            run.save_config(with_target(run.load_config(), target))
        if run.done(stage) and stage in ("train", "qat"):
            shutil.rmtree(run.path(CHECKPOINTS) / stage, ignore_errors=True)  # redo from scratch
        # the stage itself is forced; the later ones run because redoing it made them stale
        run_stages(run, STAGES[STAGES.index(stage) :], force=(stage,))
    return run


def rewrite_report(run_dir: Path, *, rerun: bool = False, latency: bool = True) -> Path:
    """`nin-pipeline report RUN`: the report files again, from saved predictions unless ``rerun``."""
    run = RunFolder.open(run_dir)
    cfg = run.load_config()
    if not run.path(INT8_TFLITE).exists():
        raise RunError(f"{run_dir} has no models yet", f"finish it with `nin-pipeline build --resume --out {run_dir}`")
    with run_lock(run.root, "nin-pipeline report"):
        setup_logging(run.root)
        t = time.time()
        with stage_errors():
            evaluate_and_report(cfg, run, load_data(cfg, run), rerun=rerun, latency=latency)
        if run.done("convert"):
            run.mark("evaluate", seconds=time.time() - t)  # its new outputs are the recorded ones
    return run.path(REPORT_HTML)
