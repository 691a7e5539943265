"""A run folder stays true to what it holds however a command ends: an interrupted stage is redone (and its
new settings reach config.json only with it), the Ctrl-C hint names the command that finishes the work, a
size the machine cannot hold is refused up front, a build that never trained blocks no retry, a resume with
flags names exactly what they change, a dataset name must fit the data, a lost state.json is said, a
package takes only a whole nin_edge wheel, and a full disk names the file."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image_tree, png_bytes

import pipeline.stages.orchestrator as orchestrator
from pipeline.cli.main import cli
from pipeline.errors import DataError, PackageError, RunError
from pipeline.runs.config import BuildRequest
from pipeline.runs.folder import STAGES

TINY = ["--width", "0.125", "--epochs", "1", "--qat-epochs", "0", "--batch-size", "8", "--data-cache", "none"]


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _no_stages(monkeypatch, calls: list | None = None) -> None:
    """Every stage a no-op that says it ran: the orchestration under test, no training."""
    for stage in STAGES:
        monkeypatch.setitem(
            orchestrator.STAGE_FUNCTIONS, stage, lambda cfg, run, splits, s=stage: calls.append(s) if calls is not None else None
        )


def _stop(*args, **kwargs):
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- interrupted stages (item 4)


def test_an_interrupted_convert_for_the_edge_tpu_keeps_config_and_is_redone_by_resume(fast_run_copy, monkeypatch):
    from edge_app.runtime import load_interpreter

    run = fast_run_copy
    before = _state(run)
    with monkeypatch.context() as mp:
        mp.setitem(orchestrator.STAGE_FUNCTIONS, "convert", _stop)
        res = CliRunner().invoke(cli, ["convert", str(run), "--target", "edgetpu"])
    assert res.exit_code == 130, res.output
    assert "interrupted: stage convert did not finish (config.json keeps target cpu until it does)" in res.output
    assert f"`nin-pipeline convert {run} --target edgetpu` again, or `nin-pipeline build --resume --out {run}`" in res.output
    assert _config(run)["convert"]["target"] == "cpu" and _config(run)["convert"]["io_type"] == "int8"  # what the models are
    state = _state(run)
    assert "convert" not in state and "evaluate" not in state and state["train"] == before["train"] and state["qat"] == before["qat"]
    assert state["pending"]["stage"] == "convert" and state["pending"]["config"]["convert"]["target"] == "edgetpu"
    log = (run / "train.log").read_text()
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "stage convert done" in (run / "train.log").read_text()[len(log) :]
    assert _config(run)["convert"]["target"] == "edgetpu" and _config(run)["convert"]["io_type"] == "uint8"
    interp, _ = load_interpreter(run / "model_int8.tflite", num_threads=1)
    assert interp.get_input_details()[0]["dtype"] == np.uint8
    state = _state(run)
    assert state["convert"]["done"] and state["evaluate"]["done"] and "pending" not in state


def test_an_interrupted_report_is_not_left_done_and_the_hint_names_report(fast_run_copy, monkeypatch):
    run = fast_run_copy
    monkeypatch.setattr(orchestrator, "evaluate_and_report", _stop)
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 130 and f"the report was not rewritten; run `nin-pipeline report {run}` again" in res.output
    assert "evaluate" not in _state(run) and _state(run)["convert"]["done"]
    calls: list[str] = []
    _no_stages(monkeypatch, calls)
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert calls == ["evaluate"]  # the resume redoes what was cut off, and only that


def test_a_build_stopped_before_its_first_epoch_says_nothing_was_kept(tmp_path, monkeypatch):
    from edge_app.errors import Terminated

    def term(*a):
        raise Terminated("SIGTERM")

    tree = make_image_tree(tmp_path / "tree")
    monkeypatch.setitem(orchestrator.STAGE_FUNCTIONS, "train", term)
    res = CliRunner().invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 143 and "stopped by SIGTERM: nothing had finished, so nothing was kept" in res.output
    assert not (tmp_path / "r").exists()


def test_an_interrupted_stage_that_was_done_is_redone_by_resume(fast_run_copy, monkeypatch):
    """`qat RUN` stopped half-way: qat is no longer recorded as done, so `build --resume` redoes it."""
    run = fast_run_copy
    with monkeypatch.context() as mp:
        mp.setitem(orchestrator.STAGE_FUNCTIONS, "qat", _stop)
        res = CliRunner().invoke(cli, ["qat", str(run)])
    assert res.exit_code == 130 and "finished epochs are checkpointed" in res.output and f"`nin-pipeline qat {run}` again" in res.output
    assert _state(run)["train"]["done"] and "qat" not in _state(run)
    calls: list[str] = []
    _no_stages(monkeypatch, calls)
    assert CliRunner().invoke(cli, ["build", "--resume", "--out", str(run)]).exit_code == 0
    assert calls == ["qat", "convert", "evaluate"]


# --------------------------------------------------------------------------- sizes the machine cannot hold (item 5)


def test_an_input_size_the_machine_cannot_hold_is_refused_before_anything_is_decoded(tmp_path, monkeypatch):
    import pipeline.stages.budget as budget

    tree = make_image_tree(tmp_path / "tree")
    _no_stages(monkeypatch)
    monkeypatch.setattr(budget, "machine_ram", lambda: 2e8)  # a 200 MB machine
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(out), *TINY, "--input-size", "256"])
    assert res.exit_code == 1, res.output
    assert "--input-size 256: training nin-cifar on 27 images of 256x256x3 needs about" in res.output
    assert "more than the 0.2 GB this machine has" in res.output and "pass --input-size " in res.output and "Traceback" not in res.output
    assert not out.exists()  # nothing is left to block the corrected command


def test_a_decoded_cache_larger_than_the_disk_is_refused(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    tree = make_image_tree(tmp_path / "tree")
    _no_stages(monkeypatch)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=1000, total=1000, used=0))
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))  # a cache of this tree made by another test would be reused
    args = ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(tmp_path / "r"), *TINY, "--data-cache", "disk"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "the decoded-image cache of" in res.output and "--data-cache none" in res.output, res.output


def test_a_build_killed_before_its_first_epoch_does_not_block_a_retry(tmp_path, monkeypatch):
    """kill -9 (the OOM killer) leaves config.json behind: with nothing finished, other settings are taken."""
    tree = make_image_tree(tmp_path / "tree")
    out = tmp_path / "r"
    out.mkdir()
    killed = BuildRequest(dataset="folder", data_dir=tree, overrides={"input_size": 100000}).config()
    (out / "config.json").write_text(json.dumps(killed.to_dict()))
    (out / "train.log").write_text("12:00:00 INFO stage train ...\n")
    _no_stages(monkeypatch)
    res = CliRunner().invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(out), "--input-size", "16"])
    assert res.exit_code == 0, res.output
    assert _config(out)["data"]["input_size"] == 16 and "nothing had finished with its earlier settings" in (out / "train.log").read_text()


# --------------------------------------------------------------------------- what a resume with flags changes (item 14)


def _recorded(tmp_path: Path, **overrides) -> Path:
    tree = make_image_tree(tmp_path / "tree")
    out = tmp_path / "run"
    out.mkdir()
    settings = {"width": 0.125, "epochs": 1, "qat_epochs": 1, "batch_size": 32, **overrides}
    cfg = BuildRequest(dataset="folder", data_dir=tree, overrides=settings, class_maps=True, data_cache="none").config()
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    (out / "state.json").write_text(json.dumps({"train": {"done": True}}))  # a stage finished: settings are held to
    return out


def test_a_resume_with_a_flag_names_exactly_what_it_changes(tmp_path, monkeypatch):
    out = _recorded(tmp_path)
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(out), "--no-deterministic"])
    assert res.exit_code == 1, res.output
    assert "was started with other settings (train.deterministic: True then, False now)" in res.output
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(out), "--target", "edgetpu", "--seed", "3"])
    assert res.exit_code == 1
    assert "(convert.target: 'cpu' then, 'edgetpu' now; train.seed: 0 then, 3 now)" in res.output  # io_type and data.seed follow
    assert f"`nin-pipeline convert {out} --target edgetpu`" in res.output
    seen = {}

    def fake_build(cfg, out, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(orchestrator, "build", fake_build)
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(out), "--epochs", "1", "--dataset", "folder"])  # what it was
    assert res.exit_code == 0, res.output
    assert json.loads(json.dumps(seen["cfg"].to_dict())) == _config(out)


def test_many_differences_are_all_counted(tmp_path):
    out = _recorded(tmp_path, lr=0.5, dropout=0.3, label_smoothing=0.1, qat_lr=0.01, limit_train=5)
    res = CliRunner().invoke(cli, ["build", "--out", str(out)])  # none of the flags: every one of them differs
    assert res.exit_code == 1
    shown = res.output.split("other settings (")[1].split(")")[0]
    assert shown.count(" then, ") == 6 and "data.dataset: 'folder' then, 'cifar10' now" in shown
    # dataset, width, epochs, batch size (QAT's follows it), lr, dropout, label smoothing, QAT lr, limit_train
    assert shown.endswith("; and 3 more")


# --------------------------------------------------------------------------- a dataset name that is not the data (item 15a)


def test_a_builtin_dataset_name_on_other_data_is_refused(tmp_path, monkeypatch):
    from pipeline.data.splits import DataConfig, make_splits

    tree = make_image_tree(tmp_path / "tree", size=16)
    for dataset in ("mnist", "cifar10"):
        with pytest.raises(DataError, match=rf"holds 16x16x3 images, but {dataset} is .*pass --dataset folder"):
            make_splits(DataConfig(dataset=dataset, data_dir=str(tree), cache="none"), progress=False)
    _no_stages(monkeypatch)
    res = CliRunner().invoke(cli, ["build", "--dataset", "mnist", "--data-dir", str(tree), "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 1 and "but mnist is 28x28x1 (grayscale)" in res.output and not (tmp_path / "r").exists()
    digits = tmp_path / "digits"  # a real MNIST-shaped tree is taken
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("0", "1"):
            (digits / split / c).mkdir(parents=True)
            for i in range(3):
                (digits / split / c / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 255, (28, 28), dtype=np.uint8)))
    assert make_splits(DataConfig(dataset="mnist", data_dir=str(digits), cache="none"), progress=False).input_shape == (28, 28, 1)


# --------------------------------------------------------------------------- a lost state.json (item 15b)


def test_a_lost_state_json_is_said_and_never_resumed_silently(fast_run_copy, monkeypatch):
    run = fast_run_copy
    (run / "state.json").unlink()
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(run)])
    assert res.exit_code == 1 and "state.json is missing: which stages finished is unknown" in res.output, res.output
    assert f"`nin-pipeline convert {run}` takes the train and qat outputs as they are" in res.output
    (run / "state.json").write_text("[1")
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(run)])
    assert res.exit_code == 1 and "state.json is unreadable" in res.output
    calls: list[str] = []
    _no_stages(monkeypatch, calls)
    res = CliRunner().invoke(cli, ["convert", str(run)])  # the way on that the refusal named
    assert res.exit_code == 0, res.output
    state = _state(run)
    assert calls == ["convert", "evaluate"] and state["train"]["found"] and state["qat"]["found"] and state["evaluate"]["done"]
    assert "taking the folder's outputs of train and qat as those stages done" in (run / "train.log").read_text()


# --------------------------------------------------------------------------- the wheel of a bundle (item 15c)


def _wheel(path: Path, files: dict[str, bytes], name="nin-edge", version="0.1.0", record=True, how=zipfile.ZIP_DEFLATED) -> Path:
    info = f"nin_edge-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    lines = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}" for n, d in files.items()]
    if record:
        files[f"{info}/RECORD"] = ("\n".join(lines) + f"\n{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(path, "w", how) as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


def test_package_takes_only_a_whole_nin_edge_wheel(edge_model, tmp_path):
    from pipeline.export.bundle import check_wheel

    edge = {"edge_app/__init__.py": b"", "edge_app/cli/main.py": b"def main():\n    pass\n" * 50}
    good = _wheel(tmp_path / "nin_edge-0.1.0-py3-none-any.whl", edge)
    assert check_wheel(good) == good
    bad = tmp_path / "bad"
    bad.mkdir()
    noise = bad / "nin_edge-0.1.0-py3-none-any.whl"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    cases = {
        "not a readable zip": noise,
        "has no nin_edge-0.1.1.dist-info/RECORD": _wheel(bad / "nin_edge-0.1.1-py3-none-any.whl", edge, version="0.1.1", record=False),
        "its METADATA names other": _wheel(bad / "nin_edge-0.2.0-py3-none-any.whl", edge, name="other", version="0.2.0"),
    }
    damaged = bad / "nin_edge-0.3.0-py3-none-any.whl"  # one member's bytes changed after it was written: its CRC fails
    blob = bytearray(_wheel(damaged, edge, version="0.3.0", how=zipfile.ZIP_STORED).read_bytes())
    with zipfile.ZipFile(damaged) as z:
        member = z.getinfo("edge_app/cli/main.py")
    blob[member.header_offset + 30 + len(member.filename) + len(member.extra) + 3] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    cases["is damaged"] = damaged
    tampered = bad / "nin_edge-0.4.0-py3-none-any.whl"  # a file that is not what RECORD says
    with zipfile.ZipFile(_wheel(bad / "src.whl", edge, version="0.4.0")) as src, zipfile.ZipFile(tampered, "w") as z:
        for n in src.namelist():
            z.writestr(n, b"import os\n" if n == "edge_app/__init__.py" else src.read(n))
    cases["edge_app/__init__.py is not what its RECORD says"] = tampered
    for why, whl in cases.items():
        with pytest.raises(PackageError, match=f"{whl.name} is not a nin_edge wheel .*{why}"):
            check_wheel(whl)
    res = CliRunner().invoke(cli, ["package", str(edge_model), "--out", str(tmp_path / "dist"), "--wheel", str(noise)])
    assert res.exit_code == 1 and "is not a nin_edge wheel (not a readable zip" in res.output and not list((tmp_path / "dist").glob("*"))


# --------------------------------------------------------------------------- a full disk (item 3)


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    import pipeline.runs.folder as folder

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it: no file name

    tree = make_image_tree(tmp_path / "tree")
    monkeypatch.setattr(folder, "atomic_write_bytes", full)
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tree), "--out", str(out), *TINY])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"cannot write {out / 'config.json'}: No space left on device" in res.output and "free some space on that disk" in res.output

    class Model:
        def save(self, path):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunError, match="cannot write .*model_float.keras: No space left"):
        folder.RunFolder(tmp_path / "other").save_float(Model())
