"""The main job: data -> float training -> QAT -> TFLite conversion -> evaluation, into a run folder
(the stages themselves are in ``pipeline.stages.steps``).

Each stage records its completion (and seconds) in ``state.json``; re-running a build on the
same run folder skips finished stages and resumes an unfinished training stage from its last
epoch checkpoint. The run folder's files are read and written through ``pipeline.runs.folder``.
The functions at the end are what the ``nin-pipeline`` commands call, one each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_app.contract.files import CHECKPOINTS, CONFIG_JSON, INT8_TFLITE, REPORT_HTML, STATE_JSON

from pipeline import __version__
from pipeline.errors import RunError
from pipeline.runs.config import BuildConfig, BuildRequest, with_target
from pipeline.runs.folder import STAGE_OUTPUTS, STAGES, RunFolder, run_lock
from pipeline.stages.cluster import Cluster
from pipeline.stages.inputs import load_data
from pipeline.stages.steps import evaluate_and_report, setup_logging, stage_convert, stage_qat, stage_train

if TYPE_CHECKING:
    from pipeline.data.splits import Splits

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


STAGE_FUNCTIONS: dict[str, Callable[[BuildConfig, RunFolder, Splits], object]] = {
    "train": stage_train,
    "qat": stage_qat,
    "convert": stage_convert,
    "evaluate": evaluate_and_report,
}


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

    started = time.time()
    cfg = run.effective_config()  # with the settings a redone stage was asked for (`convert --target`), until it is done
    settle_lost_state(run, force)
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
    deadline = None  # the time budget, held to while training, by the process that planned it
    try:
        if todo:
            splits = load_data(cfg, run)
            if cfg.time_budget_min is not None and cfg.plan is None and "train" in todo and (workers is None or workers.is_chief):
                from pipeline.stages.plan import plan_build

                cfg, deadline = plan_build(cfg, run, splits, started)  # once: recorded in config.json
            elif cfg.plan is not None and "train" in todo:
                # replayed, not re-planned: the same model as the planned build's (bit for bit), so no new cut
                log.info(
                    "time budget: the plan and cuts recorded in config.json are replayed (%d float epochs); the budget is "
                    "not held to again in this process",
                    cfg.train.epochs,
                )
        else:
            log.info("every stage is already done; nothing to do")
        for stage in STAGES if todo else ():
            # re-checked each time: redoing a stage makes every later stage stale (RunFolder.mark)
            if stage not in stages or not (stage in force or not run.done(stage)):
                continue
            if any(s in run.state for s in STAGES[STAGES.index(stage) :]):
                run.forget(stage)  # before it starts: a stage stopped half-way is never left marked done
            t = time.time()
            log.info("stage %s ...", stage)
            try:
                with stage_errors():
                    if stage == "train" and deadline is not None:
                        stage_train(cfg, run, splits, deadline=deadline)
                        cfg = dataclasses.replace(cfg, train=run.load_config().train)  # with the epochs the deadline left
                    else:
                        STAGE_FUNCTIONS[stage](cfg, run, splits)
            except KeyboardInterrupt as exc:
                exc.stage = getattr(exc, "stage", stage)  # type: ignore[attr-defined]  # for the hint that says how to finish it
                raise
            log.info("stage %s done in %.0f s", stage, time.time() - t)
            run.mark(stage, seconds=time.time() - t)
        ok = True
    finally:
        cluster.chief_finished(ok)
    cluster.wait_for_chief()
    log.info("finished in %.0f s; run folder: %s", time.time() - t0, run.root)
    return run.read_report_if_any()


def settle_lost_state(run: RunFolder, force: tuple[str, ...] = ()) -> None:
    """A run folder whose state.json is missing or unreadable is never resumed silently. Holding models
    (finished stages), a build is refused with the commands that go on from them; a stage command
    (``force``) takes the outputs of the stages before it, where they are all there, as those stages done."""
    lost, found = run.state_lost, run.finished_outputs()
    if not lost:
        return
    what = f"{run.root / STATE_JSON} is {lost}: which stages finished is unknown"
    kept: list[str] = []  # the first stages whose outputs are all in the folder
    for s in STAGES[: min(STAGES.index(f) for f in force) if force else 2]:
        if not all(run.path(n).is_file() for n in STAGE_OUTPUTS[s]):
            break
        kept.append(s)
    if found and not force:
        go_on = f"`nin-pipeline {STAGES[len(kept)]} {run.root}` takes the {' and '.join(kept)} outputs as they are and redoes the rest; "
        raise RunError(
            f"{what} (the folder holds {', '.join(found)})",
            (go_on if kept else "") + f"`nin-pipeline train {run.root}` redoes every stage (training from its last saved epoch, if any)",
        )
    if found:
        for s in kept:
            run.mark(s, found=True)
        taken = f"taking the folder's outputs of {' and '.join(kept)} as those stages done" if kept else "every stage is redone"
        log.warning("%s; %s", what, taken)
    elif any(run.path(CHECKPOINTS).glob("*/*/checkpoint")):
        log.warning("%s; no stage had finished (no model in the folder): training resumes from its last saved epoch", what)
    elif lost == "unreadable":
        log.warning("%s; no stage had finished (no model in the folder): starting from the first", what)


def resolve_build(request: BuildRequest, out: Path | None, *, resume: bool = False, workers: Cluster | None = None) -> tuple[BuildConfig, Path]:
    """Where the run goes and with which settings: the one place `build`'s flags become a BuildConfig.
    ``resume`` alone (no setting given): the run folder's own settings (the newest matching run in
    artifacts/ without ``out``); else the request's, which an existing folder must match. ``workers``: one
    of several machines, all given the same ``out`` (see ``pipeline.stages.cluster``)."""
    from pipeline.data.formats import resolve_source
    from pipeline.runs.config import format_diffs

    if workers is not None and out is None:
        from pipeline.stages.cluster import ClusterError

        raise ClusterError("a multi-worker build needs --out", "give every worker the same --out, on storage they all see")
    if resume:
        if out is None:
            runs = sorted(p for p in Path("artifacts").glob(f"{request.dataset}-{request.arch}-*") if (p / CONFIG_JSON).exists())
            if not runs:
                raise RunError(f"--resume: no run folder artifacts/{request.dataset}-{request.arch}-* to resume", "pass --out RUN")
            out = runs[-1]
        if not (Path(out) / CONFIG_JSON).is_file():
            if workers is not None and not workers.is_chief:
                from pipeline.stages.cluster import ClusterError

                raise ClusterError(
                    f"{workers.describe()}: --resume, but the chief's run folder {out} is not visible here (no {CONFIG_JSON})",
                    "every worker needs the chief's --out on storage they all see (NFS, a ReadWriteMany "
                    "volume); if the chief never started it, leave out --resume on every worker",
                )
            raise RunError(f"--resume: {out} is not a run folder (no {CONFIG_JSON})", "leave out --resume to start it")
        own = RunFolder.open(out).effective_config()
        changes = request.changes_to(own) if request.overrides or request.given else []
        if changes:
            retarget = any(c.startswith("convert.target:") for c in changes)
            raise RunError(
                f"--resume: {out} was started with other settings ({format_diffs(changes)})",
                "leave those options out to resume it as it was, or choose a new --out to build with them"
                + (f"; to convert it for another target: `nin-pipeline convert {out} --target {request.target}`" if retarget else ""),
            )
        return request.with_data_place(own), Path(out)
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
        for note in run.notes:
            log.warning("%s", note)
        try:
            run_stages(run, workers=workers, worker_timeout=worker_timeout, collective_timeout=collective_timeout)
        except BaseException as exc:
            discarded = not config_was_there and run.discard_unstarted(folder_was_there)
            at, again = getattr(exc, "stage", None), f"run the same command again (or `nin-pipeline build --resume --out {run.root}`)"
            if discarded:
                _hint(exc, "nothing had finished, so nothing was kept; run the same command again to start over")
            elif at in ("train", "qat"):
                _hint(exc, f"finished epochs are checkpointed; {again} to continue")
            elif at:
                _hint(exc, f"stage {at} did not finish and is redone next time (the stages before it are kept); {again} to finish it")
            else:
                _hint(exc, f"the finished stages and epochs are kept; {again} to continue")
            raise
    return run


def _hint(exc: BaseException, hint: str) -> None:
    """What the CLI says after Ctrl-C or SIGTERM: how to finish the work that was stopped (the innermost command's word)."""
    if isinstance(exc, KeyboardInterrupt) and not hasattr(exc, "resume_hint"):
        exc.resume_hint = hint  # type: ignore[attr-defined]


def redo_stage(run_dir: Path, stage: str, target: str | None = None) -> RunFolder:
    """`nin-pipeline train|qat|convert RUN`: redo one stage (from scratch), then every later one.
    ``target`` (convert only) converts for another target from now on."""
    import shutil

    run = RunFolder.open(run_dir)
    with run_lock(run.root, f"nin-pipeline {stage}"):
        setup_logging(run.root)
        settle_lost_state(run, (stage,))
        saved = run.load_config().convert.target
        if target is not None:  # config.json takes it when the stage is done (see RunFolder.set_pending)
            run.set_pending(stage, with_target(run.effective_config(), target))
        if run.done(stage) and stage in ("train", "qat"):
            shutil.rmtree(run.path(CHECKPOINTS) / stage, ignore_errors=True)  # redo from scratch
        run.forget(stage)  # until it is done again: a resume after an interruption redoes it
        try:
            # the stage itself is forced; the later ones run because redoing it made them stale
            run_stages(run, STAGES[STAGES.index(stage) :], force=(stage,))
        except KeyboardInterrupt as exc:
            at = getattr(exc, "stage", None) or stage
            epochs = "finished epochs are checkpointed; " if at in ("train", "qat") else ""
            if at == stage:
                keeps = f" (config.json keeps target {saved} until it does)" if target not in (None, saved) else ""
                flag = f" --target {target}" if target else ""
                again = f"`nin-pipeline {stage} {run.root}{flag}` again, or `nin-pipeline build --resume --out {run.root}`,"
                _hint(exc, f"stage {stage} did not finish{keeps}; {epochs}run {again} to finish it")
            else:
                _hint(exc, f"stage {at} did not finish; {epochs}run `nin-pipeline build --resume --out {run.root}` to finish it")
            raise
    return run


def rewrite_report(run_dir: Path, *, rerun: bool = False, latency: bool = True) -> Path:
    """`nin-pipeline report RUN`: the report files again, from saved predictions unless ``rerun``."""
    run = RunFolder.open(run_dir)
    cfg = run.load_config()
    if not run.path(INT8_TFLITE).exists():
        raise RunError(f"{run_dir} has no models yet", f"finish it with `nin-pipeline build --resume --out {run_dir}`")
    with run_lock(run.root, "nin-pipeline report"):
        setup_logging(run.root)
        if run.state_lost:
            log.warning("%s is %s: the report is rewritten, but which stages finished stays unknown", STATE_JSON, run.state_lost)
        run.forget("evaluate")  # until the report is whole again
        t = time.time()
        try:
            with stage_errors():
                evaluate_and_report(cfg, run, load_data(cfg, run), rerun=rerun, latency=latency)
        except KeyboardInterrupt as exc:
            _hint(exc, f"the report was not rewritten; run `nin-pipeline report {run.root}{' --rerun' if rerun else ''}` again to write it")
            raise
        if run.done("convert"):
            run.mark("evaluate", seconds=time.time() - t)  # its new outputs are the recorded ones
    return run.path(REPORT_HTML)
