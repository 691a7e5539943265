"""The run folder: every file a build writes, and the only code that reads or writes them.

A run folder holds ``config.json`` (the settings), ``state.json`` (finished stages with their
seconds), the models, the reports and the logs. The names the device reads (the int8
model, its sidecar, the labels) come from ``edge_app.contract.files``, so both sides agree.
Every write is atomic (a temporary name, then a rename).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from edge_app.contract.files import (
    CHECKPOINTS,
    CONFIG_JSON,
    EDGETPU_JSON,
    FLOAT_KERAS,
    FLOAT_TFLITE,
    INT8_TFLITE,
    LABELS_TXT,
    LAYER_ERRORS_JSON,
    LOCK_FILE,
    PREDICTIONS,
    PTQ_TFLITE,
    QAT_WEIGHTS,
    REPORT_JSON,
    SIDECAR_NAME,
    STATE_JSON,
    TARGET_JSON,
    TENSORBOARD,
    TRAIN_LOG,
)
from edge_app.fsutil import atomic_write_bytes

from pipeline.errors import ReportError, RunError
from pipeline.runs.config import BuildConfig
from pipeline.runs.lock import now, run_lock, writing

log = logging.getLogger("pipeline")

STAGES = ("train", "qat", "convert", "evaluate")


# what each stage leaves that later stages and the device need; their sha256 is recorded when the
# stage is marked done, and a resumed build redoes a stage whose outputs are gone or changed
STAGE_OUTPUTS = {
    "train": (FLOAT_KERAS,),
    "qat": (QAT_WEIGHTS,),
    "convert": (FLOAT_TFLITE, PTQ_TFLITE, INT8_TFLITE, SIDECAR_NAME),
    "evaluate": (REPORT_JSON, PREDICTIONS),
}

__all__ = ["STAGES", "RunError", "RunFolder", "run_lock", "writing"]


class RunFolder:
    """One build's folder. ``create`` makes it (or reopens it with the same settings); ``open``
    reopens an existing one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state: dict[str, Any] = {}
        self.state_lost: str | None = None  # "missing" or "unreadable": state.json could not say which stages finished
        self.notes: list[str] = []  # what opening it decided, for the command to log once its log is set up
        # where the training backups live: this folder, except on a multi-worker build's other
        # workers, whose own folder is temporary and who restore from the chief's backups
        self.shared = self.root

    # ---------------------------------------------------------------- opening

    @classmethod
    def create(cls, root: Path, cfg: BuildConfig) -> RunFolder:
        """A new run folder with ``cfg``; an existing one is reopened if it was started with the same settings."""
        from pipeline.runs.config import diff_configs, format_diffs

        root = Path(root)
        run = cls(root)
        if run.path(CONFIG_JSON).exists():
            saved = run.load_config()
            cfg = cfg.planned_as(saved)
            run.load_state()
            pending = run.pending_config()
            diffs = diff_configs((pending or saved).to_dict(), cfg.to_dict())
            if diffs and run.nothing_finished():
                # e.g. a build killed (kill -9, out of memory) before its first epoch, which could not clean up
                run.notes.append(f"{root}: nothing had finished with its earlier settings ({format_diffs(diffs)}): starting it with these")
                run.state = {}
                run._save_state()
                run.save_config(cfg)
            elif diffs:
                raise RunError(
                    f"{root} was started with other settings ({format_diffs(diffs)})",
                    "resume it with the same options (or `--resume` alone), or choose a new --out",
                )
            elif pending and pending != cfg:  # only settings that change no result (e.g. --data-cache): take the new ones
                run.set_pending(run.state["pending"]["stage"], cfg)
            elif not pending and saved != cfg:
                run.save_config(cfg)
        else:
            root.mkdir(parents=True, exist_ok=True)
            run.save_config(cfg)
            run.load_state()
        return run

    @classmethod
    def open(cls, root: Path) -> RunFolder:
        """An existing run folder (one with a config.json)."""
        run = cls(root)
        if not run.path(CONFIG_JSON).is_file():
            raise RunError(f"{root} is not a run folder (no {CONFIG_JSON})", "create one with `nin-pipeline build`")
        run.load_state()
        return run

    def path(self, name: str) -> Path:
        return self.root / name

    # ---------------------------------------------------------------- config and state

    def load_config(self) -> BuildConfig:
        p = self.path(CONFIG_JSON)
        if not p.exists():
            raise RunError(f"{self.root} is not a run folder (no {CONFIG_JSON})", f"run `nin-pipeline build --out {self.root}`")
        try:
            return BuildConfig.from_dict(json.loads(p.read_text()))
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as exc:
            # not JSON, binary bytes, or JSON of another shape (e.g. a list): all the same to the user
            raise RunError(f"{p} is corrupt ({type(exc).__name__}: {exc})", "start a new run folder") from None

    def save_config(self, cfg: BuildConfig) -> None:
        self.write_json(CONFIG_JSON, cfg.to_dict())

    def load_state(self) -> None:
        """state.json; where it is missing or unreadable, ``state_lost`` says so (what that means is the command's to say)."""
        p = self.path(STATE_JSON)
        self.state, self.state_lost = {}, None
        if not p.exists():
            self.state_lost = "missing"
            return
        try:
            state = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            state = None
        if isinstance(state, dict) and all(isinstance(v, dict) for v in state.values()):
            self.state = state
        else:  # unreadable, or JSON of another shape (e.g. [1])
            self.state_lost = "unreadable"

    def _save_state(self) -> None:
        self.write_json(STATE_JSON, self.state)
        self.state_lost = None

    def finished_outputs(self) -> list[str]:
        """The files in this folder that only a finished stage writes (the models, the report)."""
        return [n for stage in STAGES for n in STAGE_OUTPUTS[stage] if self.path(n).is_file()]

    def nothing_finished(self) -> bool:
        """No stage done, no epoch backed up and no stage's output here: nothing to lose by starting over."""
        if any(self.done(s) for s in STAGES) or self.finished_outputs():
            return False
        return not any(self.path(CHECKPOINTS).glob("*/*/checkpoint"))  # BackupAndRestore's index, written with an epoch

    # Settings a command changes (`convert --target`) are kept aside until the stage that honours them is
    # done, so config.json always describes the models in the folder, and a resume finishes the request.

    def pending_config(self) -> BuildConfig | None:
        """The settings a stage that has not finished yet was asked to run with (None: config.json's)."""
        pending = self.state.get("pending")
        return BuildConfig.from_dict(pending["config"]) if isinstance(pending, dict) and "config" in pending else None

    def effective_config(self) -> BuildConfig:
        """The settings the next stage runs with: the pending ones, else config.json's."""
        return self.pending_config() or self.load_config()

    def set_pending(self, stage: str, cfg: BuildConfig) -> None:
        """Run ``stage`` (and the later ones) with ``cfg``; config.json takes it when ``stage`` is done."""
        if cfg == self.load_config():
            self.state.pop("pending", None)
        else:
            self.state["pending"] = {"stage": stage, "config": cfg.to_dict()}
        self._save_state()

    def done(self, stage: str) -> bool:
        return bool(self.state.get(stage, {}).get("done"))

    def mark(self, stage: str, seconds: float | None = None, **info: Any) -> None:
        """Record a finished stage (with its seconds). A redone stage makes every later stage stale."""
        from edge_app.fsutil import sha256_file

        outputs = {n: sha256_file(self.path(n)) for n in STAGE_OUTPUTS.get(stage, ()) if self.path(n).is_file()}
        self.state[stage] = {
            "done": True,
            "at": now(),
            **info,
            **({"seconds": round(seconds, 1)} if seconds is not None else {}),
            "outputs": outputs,
        }
        for later in STAGES[STAGES.index(stage) + 1 :]:
            self.state.pop(later, None)
        pending = self.state.get("pending")
        if isinstance(pending, dict) and pending.get("stage") == stage:  # config.json first: a crash between the two redoes the stage
            self.save_config(BuildConfig.from_dict(pending["config"]))
            self.state.pop("pending")
        self._save_state()

    def damaged_outputs(self, stage: str) -> list[str]:
        """The outputs of a done ``stage`` that are missing or not what the stage wrote (by sha256).
        A stage recorded before outputs were kept is checked for missing files only."""
        from edge_app.fsutil import sha256_file

        recorded = self.state.get(stage, {}).get("outputs")
        bad = []
        for name in STAGE_OUTPUTS.get(stage, ()):
            p = self.path(name)
            if not p.is_file():
                bad.append(f"{name} is missing")
            elif isinstance(recorded, dict) and name in recorded and sha256_file(p) != recorded[name]:
                bad.append(f"{name} changed")
        return bad

    def forget(self, stage: str) -> None:
        """Mark ``stage`` and every later one not done."""
        for s in STAGES[STAGES.index(stage) :]:
            self.state.pop(s, None)
        self._save_state()

    def discard_unstarted(self, folder_was_there: bool) -> bool:
        """A new build that failed (or was stopped) before its first epoch was backed up leaves nothing
        behind: the next attempt, with the problem fixed, starts clean instead of being refused. (A build
        that could not get here, killed with -9, leaves its config: ``create`` takes new settings over it.)
        True when it removed the folder's files."""
        import shutil

        if not self.nothing_finished():
            return False
        root = logging.getLogger("pipeline")
        for h in list(root.handlers):  # stop writing train.log (the terminal keeps the messages)
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == self.root.resolve():
                root.removeHandler(h)
                h.close()
        log.info("%s removed: the build stopped before its first epoch was saved, so there is nothing to resume", self.root)
        if not folder_was_there:
            shutil.rmtree(self.root, ignore_errors=True)
            return True
        for name in (CONFIG_JSON, STATE_JSON, TRAIN_LOG, LABELS_TXT, TENSORBOARD, LOCK_FILE, CHECKPOINTS):
            p = self.path(name)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return True

    def check_data(self, fingerprint: str, source: str) -> None:
        """Record the data's fingerprint on first load; later loads (a resume, ``report``) must give the
        same data. Where the data lives may change (another --data-dir); what it is may not."""
        saved = self.state.get("data", {}).get("fingerprint")
        if saved is None:
            self.state["data"] = {"fingerprint": fingerprint, "source": source}
            self._save_state()
        elif saved != fingerprint:
            raise RunError(
                f"the data from {source} is not the data {self.root} was made with (its labels, splits or "
                f"images differ: fingerprint {fingerprint}, recorded {saved})",
                "point --data-dir at the same data, or start a new run folder",
            )

    # ---------------------------------------------------------------- files

    def record_model_file(self, model: Path) -> None:
        """A model made later in this folder (compiled, the clients' one): its sha256 into model.json, so a
        device checks it as it checks the others (a model that model.json records nothing for is refused)."""
        from edge_app.contract.sidecar import read_sidecar, write_sidecar
        from edge_app.fsutil import sha256_file

        sidecar_path = self.path(SIDECAR_NAME)
        if model.parent.resolve() == self.root.resolve() and sidecar_path.is_file():
            sc = read_sidecar(sidecar_path)
            with writing(sidecar_path):
                write_sidecar(sidecar_path, dataclasses.replace(sc, files={**sc.files, model.name: sha256_file(model)}))

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        with writing(self.path(name)):
            return atomic_write_bytes(self.path(name), data)

    def write_labels(self, labels: tuple[str, ...]) -> None:
        self.write_text(LABELS_TXT, "\n".join(labels) + "\n")

    def read_report(self) -> dict[str, Any]:
        """report.json, checked to hold what the tables need."""
        p = self.path(REPORT_JSON)
        if not p.exists():
            raise ReportError(f"{self.root} has no {REPORT_JSON}", f"run `nin-pipeline report {self.root}`")
        try:
            rep = json.loads(p.read_text())
            if not isinstance(rep, dict) or not isinstance(rep.get("variants"), dict):
                raise ValueError("no 'variants' object")
            for v in rep["variants"].values():
                float(v["top1"]), int(v["bytes"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{p} is corrupt ({exc})", f"rewrite it with `nin-pipeline report {self.root}`") from None
        return rep

    def read_report_if_any(self) -> dict[str, Any]:
        return self.read_report() if self.path(REPORT_JSON).exists() else {}

    def _read_optional_json(self, name: str, if_unreadable: str) -> dict[str, Any]:
        """A JSON object the run folder may hold; {} when it is absent or unreadable (said once)."""
        p = self.path(name)
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            log.warning("%s is unreadable; %s", p, if_unreadable)
            return {}
        return data if isinstance(data, dict) else {}

    def read_layer_errors(self) -> dict[str, Any]:
        """layer_errors.json (each int8 model's per-layer error, written by the convert stage)."""
        return self._read_optional_json(LAYER_ERRORS_JSON, "the report leaves the per-layer errors out (re-run the convert stage)")

    def read_edgetpu(self) -> dict[str, Any]:
        """edgetpu.json (the Edge TPU check and compile summaries)."""
        return self._read_optional_json(EDGETPU_JSON, "starting it again")

    def read_target(self) -> dict[str, Any]:
        """target.json (will the int8 model load on the target runtimes)."""
        return self._read_optional_json(TARGET_JSON, "re-run `nin-pipeline check-target RUN`")

    def model_digests(self) -> dict[str, str]:
        """sha256 of each model the evaluation runs (those present)."""
        from edge_app.fsutil import sha256_file

        return {n: sha256_file(self.path(n)) for n in (FLOAT_KERAS, FLOAT_TFLITE, PTQ_TFLITE, INT8_TFLITE) if self.path(n).is_file()}

    def save_predictions(
        self, preds: dict[str, np.ndarray], y: np.ndarray, labels: tuple[str, ...], models: dict[str, str] | None = None
    ) -> None:
        """The test predictions, with the sha256 of the models that made them (``models``)."""
        buf = io.BytesIO()
        # cast: the keys are the variants' names, never savez_compressed's own keyword allow_pickle
        np.savez_compressed(buf, y=y, labels=np.asarray(labels), _models=np.asarray(json.dumps(models or {})), **cast(dict[str, Any], preds))
        self.write_bytes(PREDICTIONS, buf.getvalue())

    def predictions_made_by(self) -> dict[str, str]:
        """The model digests recorded with predictions.npz ({} when absent, unreadable or from before they were kept)."""
        try:
            with np.load(self.path(PREDICTIONS), allow_pickle=False) as z:
                made_by = json.loads(str(z["_models"])) if "_models" in z.files else {}
        except (KeyError, ValueError, OSError, EOFError):
            return {}
        return made_by if isinstance(made_by, dict) else {}

    def load_predictions(self, variants: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[str, ...]]:
        p = self.path(PREDICTIONS)
        if not p.exists():
            raise ReportError(f"{self.root} has no {PREDICTIONS}", f"run `nin-pipeline report {self.root} --rerun`")
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in variants}, z["y"], tuple(str(v) for v in z["labels"])
        except (KeyError, ValueError, OSError) as exc:
            raise ReportError(f"{p} is corrupt ({exc})", f"rewrite it with `nin-pipeline report {self.root} --rerun`") from None

    # ---------------------------------------------------------------- Keras models

    def save_float(self, model) -> None:
        _atomic_save(self.path(FLOAT_KERAS), ".keras", model.save)

    def save_qat(self, model) -> None:
        _atomic_save(self.path(QAT_WEIGHTS), ".weights.h5", model.save_weights)

    def load_float(self):
        import tf_keras as keras

        p = self.path(FLOAT_KERAS)
        if not p.exists():
            raise RunError(f"{self.root} has no {FLOAT_KERAS}", f"run `nin-pipeline train {self.root}` first")
        try:
            return keras.models.load_model(p, compile=False)
        except Exception as exc:  # h5py/zip/keras raise many kinds for a damaged file
            raise RunError(f"{p} is unreadable ({type(exc).__name__})", f"redo it with `nin-pipeline train {self.root}`") from None

    def load_qat(self):
        """The QAT model: the float model with BatchNorm frozen, wrapped, with the fine-tuned weights."""
        from pipeline.export.convert import freeze_batch_norm, quantize

        p = self.path(QAT_WEIGHTS)
        if not p.exists():
            raise RunError(f"{self.root} has no {QAT_WEIGHTS}", f"run `nin-pipeline qat {self.root}` first")
        float_model = self.load_float()
        freeze_batch_norm(float_model)  # the same structure as when the weights were saved
        model = quantize(float_model)
        try:
            model.load_weights(p)
        except Exception as exc:
            raise RunError(f"{p} is unreadable ({type(exc).__name__})", f"redo it with `nin-pipeline qat {self.root}`") from None
        return model


def _atomic_save(path: Path, suffix: str, save: Callable[[Path], None]) -> None:
    """Keras picks the file format from the name's ending, so the temporary name keeps it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        with writing(path):
            save(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
