"""The device bundle on arm64 (Raspberry Pi OS is Debian for arm64), under qemu-user-static: `nin-pipeline
package`'s bundle installed by its own install.sh in a Debian root (12 bookworm: Python 3.11; 13 trixie:
Python 3.13), then `edge-app eval` there on 1,000 real CIFAR-10 test JPEGs, answer by answer against this
host's. Emulation gives real installs and numerics, no meaningful timing.

The roots are built once by scripts/arm64_root.py and kept under $NIN_ARM64_CACHE (default
~/.cache/nin-pipeline/arm64; on purpose outside the tests' own caches: debootstrap under emulation takes
minutes); each test installs into a fresh copy. Without root, binfmt/qemu or debootstrap these skip and
say why; in CI (CI set) they fail instead, as they do without the CIFAR-10 copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO

from pipeline.export.bundle import INSTALL_SH

_spec = importlib.util.spec_from_file_location("arm64_root", REPO / "scripts" / "arm64_root.py")
arm64 = importlib.util.module_from_spec(_spec)
sys.modules["arm64_root"] = arm64
_spec.loader.exec_module(arm64)

DEMO = REPO / "edge_app" / "demo"
PER_CLASS = 100
INSTALL_TIMEOUT = 1500  # pip under emulation: numpy, OpenCV and the runtime (minutes the first time, downloading)
EVAL_TIMEOUT = 900
NO_WHEEL = (
    "install.sh: tflite-runtime 2.14 has no wheel for Python {v} (only 3.8 to 3.11): use ai-edge-litert instead, "
    "./install.sh without --tflite-runtime"
)


def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the arm64 tests: {why}")
    pytest.skip(why)


# --------------------------------------------------------------------------- fast: install.sh, --predictions, the cache


def _fake_python(tmp_path: Path, version: str) -> tuple[Path, Path]:
    """A `python3` that reports ``version`` and logs every other call (`-m venv`, pip) instead of doing it."""
    log = tmp_path / "calls.log"
    py = tmp_path / "python3"
    py.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then echo {version}; exit 0; fi\necho "$@" >> "{log}"\nexit 3\n')
    py.chmod(0o755)
    return py, log


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_install_sh_stops_before_pip_where_tflite_runtime_has_no_wheel(tmp_path, version):
    (tmp_path / "install.sh").write_text(INSTALL_SH)
    py, log = _fake_python(tmp_path, version)
    proc = subprocess.run(
        ["sh", str(tmp_path / "install.sh"), "--tflite-runtime"],
        env={**os.environ, "PYTHON": str(py)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [NO_WHEEL.format(v=version)]
    assert not log.exists() and not (tmp_path / ".venv").exists()  # neither venv nor pip was started


@pytest.mark.parametrize(("version", "flags"), [("3.11", ["--tflite-runtime"]), ("3.13", []), ("3.13", ["--display"])])
def test_install_sh_goes_on_where_the_runtime_has_a_wheel(tmp_path, version, flags):
    (tmp_path / "install.sh").write_text(INSTALL_SH)
    (tmp_path / "requirements-edge.txt").write_text("numpy\n")
    py, log = _fake_python(tmp_path, version)
    proc = subprocess.run(
        ["sh", str(tmp_path / "install.sh"), *flags], env={**os.environ, "PYTHON": str(py)}, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 3 and "no wheel" not in proc.stderr  # our fake venv's failure: it got that far
    assert log.read_text().startswith("-m venv")


def test_eval_predictions_are_each_image_s_answer(edge_model, tmp_path):
    from test_eval import _tree

    from edge_app.cli.main import cli

    src = _tree(tmp_path / "data", ["cat", "dog", "ship"], per_class=4)
    out, pred = tmp_path / "eval.json", tmp_path / "answers.jsonl"
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(src), "--json", str(out), "--predictions", str(pred)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    lines = [json.loads(ln) for ln in pred.read_text().splitlines()]
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*.png"))
    assert sorted(a["file"] for a in lines) == files and len(lines) == r["images"] == 12
    assert all(a["truth"] == a["file"].split("/")[0] and a["predicted"] in r["labels"] for a in lines)
    assert r["top1"] == sum(a["truth"] == a["predicted"] for a in lines) / 12
    assert "predictions" not in r  # eval.json keeps its shape
    res = CliRunner().invoke(cli, ["eval", str(edge_model), "--source", str(src), "--json", str(out), "--predictions", str(out)])
    assert res.exit_code != 0 and "--json and --predictions both name" in res.output and "Traceback" not in res.output


def test_a_root_is_taken_only_when_whole_and_built_as_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_ARM64_CACHE", str(tmp_path))
    base = tmp_path / "bookworm"
    (base / "root" / "usr" / "bin").mkdir(parents=True)
    (base / "root" / "usr" / "bin" / "python3").write_text("")
    assert arm64.cache_dir() == tmp_path and arm64.ready("bookworm") is None  # no READY: half-built
    (base / "READY").write_text(json.dumps({**arm64._key("bookworm"), "python": "3.11.2"}))
    assert arm64.ready("bookworm")["python"] == "3.11.2"
    (base / "READY").write_text(json.dumps({**arm64._key("bookworm"), "packages": ["python3"]}))
    assert arm64.ready("bookworm") is None  # built with other packages: built again
    (base / "READY").write_text("{not json")
    assert arm64.ready("bookworm") is None


def test_emulation_problem_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(arm64.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(arm64.os, "geteuid", lambda: 1000)
    assert "need root" in arm64.emulation_problem()
    monkeypatch.setattr(arm64.os, "geteuid", lambda: 0)
    monkeypatch.setattr(arm64.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(arm64, "BINFMT", tmp_path)
    assert "mount -t binfmt_misc" in arm64.emulation_problem()
    (tmp_path / "status").write_text("enabled\n")
    assert "apt-get install qemu-user-static" in arm64.emulation_problem()
    (tmp_path / "qemu-aarch64").write_text("disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n")
    assert "update-binfmts --enable qemu-aarch64" in arm64.emulation_problem()
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n")
    assert arm64.emulation_problem() is None


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="bind mounts need root")
def test_removing_a_copy_never_deletes_through_its_wheels_mount(tmp_path):
    wheels, copy = tmp_path / "wheels", tmp_path / "copy"
    (wheels / "sub").mkdir(parents=True)
    (wheels / "sub" / "numpy.whl").write_text("kept")
    (copy / "root" / "wheelhouse").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(wheels), str(copy / "root" / "wheelhouse")], check=True, timeout=30)
    arm64.remove_copy(copy)
    assert not copy.exists() and (wheels / "sub" / "numpy.whl").read_text() == "kept"


# --------------------------------------------------------------------------- slow: the bundle in Debian arm64 roots


@pytest.fixture(scope="module")
def emulation():
    problem = arm64.emulation_problem()
    if problem:
        _unavailable(f"no arm64 emulation here: {problem}")
    return arm64


def make_demo_bundle(dest: Path) -> Path:
    """`nin-pipeline package` (a subprocess: this may run in a thread beside other tests) on a run folder holding
    the demo model (a real quick CIFAR-10 build)."""
    run = dest / "run"
    run.mkdir(parents=True)
    for f in ("model_int8.tflite", "model.json", "labels.txt"):
        shutil.copy2(DEMO / f, run / f)
    cmd = [sys.executable, "-m", "pipeline", "package", str(run), "--out", str(dest / "dist")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (archive,) = (dest / "dist").glob("*.tar.gz")
    return archive


def extract_cifar_1000(cifar_jpg: Path, dest: Path) -> Path:
    """The first 100 test JPEGs of each CIFAR-10 class, as test/<class>/NNNN.jpg."""
    dest = dest / "test"
    chosen: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(cifar_jpg) as tar:
        members = [m for m in tar if m.isfile() and re.fullmatch(r"test/[^/]+/[^/]+\.jpg", m.name)]
        for m in sorted(members, key=lambda m: m.name):
            chosen.setdefault(m.name.split("/")[1], []).append(m)
        for cls, ms in chosen.items():
            (dest / cls).mkdir(parents=True)
            for m in ms[:PER_CLASS]:
                (dest / cls / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    assert len(chosen) == 10 and sum(1 for _ in dest.rglob("*.jpg")) == 10 * PER_CLASS
    return dest


@pytest.fixture(scope="module")
def cifar_1000(cifar_jpg, tmp_path_factory) -> Path:
    return extract_cifar_1000(cifar_jpg, tmp_path_factory.mktemp("cifar1000"))


def _answers(eval_json: Path, predictions: Path) -> tuple[dict, dict[str, str]]:
    lines = [json.loads(ln) for ln in predictions.read_text().splitlines()]
    return json.loads(eval_json.read_text()), {a["file"]: a["predicted"] for a in lines}


@pytest.fixture(scope="module")
def host_answers(cifar_1000, tmp_path_factory):
    """This host's `edge-app eval` (its own runtime) of the demo model on the same files."""
    from edge_app.cli.main import cli

    out = tmp_path_factory.mktemp("host")
    res = CliRunner().invoke(
        cli, ["eval", str(DEMO), "--source", str(cifar_1000), "--json", str(out / "eval.json"), "--predictions", str(out / "answers.jsonl")]
    )
    assert res.exit_code == 0, res.output
    return _answers(out / "eval.json", out / "answers.jsonl")


def _on_device(emulation, release: str, archive: Path, images: Path | None, flags: list[str]):
    """Install ``archive`` with ``./install.sh flags`` in a fresh copy of the ``release`` root and, when that worked
    and ``images`` are given, run `edge-app eval` there. (install.sh's result, whether edge-app is installed,
    eval.json, {file: answer}, seconds of each step); eval.json and the answers are None when eval did not run."""
    t0 = time.monotonic()
    try:
        emulation.ensure_root(release)  # the first time: debootstrap under emulation (minutes)
    except emulation.RootError as exc:
        _unavailable(f"no {release} arm64 root: {exc}")
    times = {"root": time.monotonic() - t0}
    with emulation.fresh_copy(release) as copy:
        work = copy / "opt" / "nin"
        work.mkdir(parents=True)
        shutil.copy2(archive, work / archive.name)
        top = archive.name.removesuffix(".tar.gz")
        req = "requirements-tflite-runtime.txt" if "--tflite-runtime" in flags else "requirements-edge.txt"
        with tarfile.open(archive) as tar:  # unpacked natively, as `tar xzf` on the device would
            tar.extractall(work, filter="tar")
        # every wheel kept from an earlier run: pip takes them from there alone (20 s less per install here)
        offline = {"PIP_NO_INDEX": "1"} if emulation.wheels_kept(copy, f"/opt/nin/{top}/{req}", release) else {}
        t0 = time.monotonic()
        install = emulation.in_root(
            copy, f"cd /opt/nin/{top} && ./install.sh {' '.join(flags)}", INSTALL_TIMEOUT, env={"PIP_ROOT_USER_ACTION": "ignore", **offline}
        )
        times["install"] = time.monotonic() - t0
        installed = (work / top / ".venv" / "bin" / "edge-app").exists()
        if install.returncode != 0 or images is None:
            return install, installed, None, None, times
        t0 = time.monotonic()  # the first time only: keep the wheels, for the next run to take them from the cache
        emulation.keep_wheels(copy, f"/opt/nin/{top}/.venv/bin/python", f"/opt/nin/{top}/{req}", release)
        times["keep wheels"] = time.monotonic() - t0
        shutil.copytree(images, work / "cifar")
        t0 = time.monotonic()
        ev = emulation.in_root(
            copy,
            f"cd /opt/nin/{top} && .venv/bin/edge-app eval model --source /opt/nin/cifar "
            "--json /opt/nin/eval.json --predictions /opt/nin/answers.jsonl",
            EVAL_TIMEOUT,
        )
        times["eval"] = time.monotonic() - t0
        assert ev.returncode == 0, ev.stdout[-3000:]
        result, answers = _answers(work / "eval.json", work / "answers.jsonl")
    print(
        f"\n{release} {' '.join(flags) or '(ai-edge-litert)'}: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + "; "
        + next((ln for ln in ev.stdout.splitlines() if "top-1" in ln), "")
    )
    return install, installed, result, answers, times


def _same_as_host(result: dict, answers: dict[str, str], host, runtime: str):
    host_result, host_ans = host
    assert result["device"]["machine"] == "aarch64" and result["runtime"] == runtime, (result["device"], result["runtime"])
    assert result["images"] == host_result["images"] == 10 * PER_CLASS and set(answers) == set(host_ans)
    assert abs(result["top1"] - host_result["top1"]) <= 0.003, (result["top1"], host_result["top1"])
    same = sum(answers[f] == host_ans[f] for f in answers) / len(answers)
    print(f"top-1 {100 * result['top1']:.2f}% (host {100 * host_result['top1']:.2f}%), {100 * same:.1f}% of the answers the host's")
    assert same >= 0.99, f"only {100 * same:.1f}% of the answers are the host's"


# (release, install.sh's options): the installs that work, and the one that must stop with a message
CASES = {
    "bookworm-litert": ("bookworm", []),
    "trixie-litert": ("trixie", []),
    "bookworm-tflite-runtime": ("bookworm", ["--tflite-runtime"]),
    "trixie-tflite-runtime": ("trixie", ["--tflite-runtime"]),
}
WORKS = ["bookworm-litert", "trixie-litert", "bookworm-tflite-runtime"]


_BACKGROUND: dict[str, Future] = {}
_POOL: list[ThreadPoolExecutor] = []


def start_in_background(items: list[pytest.Item], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Called by conftest once the tests are collected: the selected cases' emulated installs and evals start
    at once, one at a time in a thread, beside the rest of the suite (an emulated install keeps one core busy,
    and most other tests leave the second core idle); the tests here run last (conftest) and wait for theirs.
    Nothing starts where emulation is not available: the tests then skip, or fail in CI, saying why."""
    mine = {i.callspec.params.get("case") for i in items if i.module.__name__ == __name__ and hasattr(i, "callspec")}
    cases = [c for c in CASES if c in mine]
    if not cases or arm64.emulation_problem():
        return
    from conftest import CIFAR_JPG

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arm64")
    _POOL.append(pool)
    bundle = pool.submit(make_demo_bundle, tmp_path_factory.mktemp("demo"))
    needs_images = set(cases) & set(WORKS) and CIFAR_JPG.is_file()  # without the copy the test says so (cifar_jpg)
    images = pool.submit(extract_cifar_1000, CIFAR_JPG, tmp_path_factory.mktemp("cifar1000-device")) if needs_images else None

    def case(c: str):
        release, flags = CASES[c]
        return _on_device(arm64, release, bundle.result(), images.result() if (images and c in WORKS) else None, flags)

    for c in cases:
        _BACKGROUND[c] = pool.submit(case, c)


def stop_background() -> None:
    """At the end of the session (conftest): what has not started is dropped (e.g. after a failure with -x)."""
    for pool in _POOL:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def device_runs(emulation):
    """{case: Future of _on_device's result}, started by start_in_background."""
    return _BACKGROUND


@pytest.mark.slow
@pytest.mark.parametrize("case", WORKS)
def test_the_bundle_on_arm64_answers_as_this_host(case, device_runs, host_answers):
    install, installed, result, answers, _ = device_runs[case].result()
    assert install.returncode == 0 and installed, install.stdout[-3000:]
    _same_as_host(result, answers, host_answers, "tflite-runtime" if "--tflite-runtime" in CASES[case][1] else "ai-edge-litert")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["trixie-tflite-runtime"])
def test_tflite_runtime_on_trixie_ends_in_one_message_naming_the_alternative(case, device_runs):
    install, installed, *_ = device_runs[case].result()
    assert install.returncode == 1 and not installed
    assert install.stdout.strip().splitlines() == [NO_WHEEL.format(v=arm64.RELEASES["trixie"])], install.stdout[-2000:]
