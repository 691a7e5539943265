"""`nin-pipeline package`: the device bundle, installed into a fresh venv without TensorFlow
from the bundle alone, and its launcher run on a video — same predictions as the repo's loop.
The bundle's wheel is nin-edge's alone (edge/pyproject.toml: edge_app, edge-app), never the
training side's."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, write_video

from pipeline.cli.main import cli

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def bundle(edge_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    res = CliRunner().invoke(cli, ["package", str(edge_model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    archives = list(out.glob("*.tar.gz"))
    assert len(archives) == 1 and "bundle:" in res.output
    return archives[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", 30, step=5)


def _extract(archive, dest):
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    (top,) = list(dest.iterdir())
    return top


def test_bundle_contents_and_manifest(bundle, tmp_path):
    top = _extract(bundle, tmp_path)
    names = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}
    assert {"model/model_int8.tflite", "model/model.json", "model/labels.txt", "requirements-edge.txt",
            "requirements-tflite-runtime.txt", "install.sh", "run.sh", "edge-app.env", "nin-edge.service.in", "README.md",
            "MANIFEST.json"} <= names
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert len(wheels) == 1 and wheels[0].startswith("wheels/nin_edge-") and wheels[0].endswith("-py3-none-any.whl"), wheels
    assert not any("nin_pipeline" in n for n in names)
    manifest = json.loads((top / "MANIFEST.json").read_text())
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((top / rel).read_bytes()).hexdigest() == digest, rel
    assert os.access(top / "install.sh", os.X_OK) and os.access(top / "run.sh", os.X_OK)
    assert "tensorflow" not in (top / "requirements-edge.txt").read_text().lower()
    assert "numpy<2" in (top / "requirements-tflite-runtime.txt").read_text()
    unit = (top / "nin-edge.service.in").read_text()
    assert "ExecStart=@DIR@/run.sh" in unit and "Restart=on-failure" in unit and "WantedBy=multi-user.target" in unit
    assert "systemctl enable --now nin-edge" in (top / "README.md").read_text()
    # the wheel holds the device side's code, not the training side, the tests or the run's training files
    whl = next(top.glob("wheels/*.whl"))
    inside = zipfile.ZipFile(whl).namelist()
    assert "edge_app/camera/loop.py" in inside and not any(n.startswith("tests/") for n in inside)
    assert not any(n.startswith("pipeline/") for n in inside), [n for n in inside if n.startswith("pipeline/")][:5]
    assert "edge_app/checks/op_versions.json" in inside  # check-target's tables travel with the device side
    source = {str(f.relative_to(REPO)) for f in (REPO / "edge_app").rglob("*") if f.is_file() and "__pycache__" not in f.parts}
    assert source <= set(inside), sorted(source - set(inside))  # every module, the demo model's files
    assert {n.split("/")[0] for n in inside} == {"edge_app", whl.name.split("-py3")[0] + ".dist-info"}
    entry = next(n for n in inside if n.endswith(".dist-info/entry_points.txt"))
    assert "edge-app = edge_app.cli.main:main" in zipfile.ZipFile(whl).read(entry).decode()
    assert "nin-pipeline" not in zipfile.ZipFile(whl).read(entry).decode()
    assert "edge-app check-target model" in (top / "README.md").read_text()


def _metadata(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode().splitlines()


def test_the_bundled_wheel_requires_no_tensorflow_nor_the_training_side(bundle, tmp_path):
    top = _extract(bundle, tmp_path)
    meta = _metadata(next(top.glob("wheels/nin_edge-*.whl")))
    assert "Name: nin-edge" in meta
    requires = [ln.split(":", 1)[1].strip().lower() for ln in meta if ln.startswith("Requires-Dist:")]
    names = {r.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip() for r in requires}
    assert {"numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime"} <= names, requires
    assert not [r for r in requires if "tensorflow" in r or "tf-keras" in r or "pipeline" in r], requires
    extras = {ln.split(":", 1)[1].strip() for ln in meta if ln.startswith("Provides-Extra:")}
    assert extras == {"litert", "tflite-runtime"}


def test_the_two_distributions_share_one_version_and_the_pin():
    tomllib = pytest.importorskip("tomllib")
    root = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edge = tomllib.loads((REPO / "edge" / "pyproject.toml").read_text())["project"]
    assert edge["name"] == "nin-edge" and edge["version"] == root["version"]
    assert f"nin-edge=={edge['version']}" in root["dependencies"]
    assert root["optional-dependencies"]["edge"] == [f"nin-edge[litert]=={edge['version']}"]
    assert "edge-app" not in root["scripts"] and edge["scripts"] == {"edge-app": "edge_app.cli.main:main"}
    assert (REPO / "edge" / "edge_app").resolve() == (REPO / "edge_app").resolve()  # the symlink: one source


def test_package_takes_a_nin_edge_wheel_and_refuses_any_other(bundle, edge_model, tmp_path):
    top = _extract(bundle, tmp_path / "x")
    edge_whl = next(top.glob("wheels/nin_edge-*.whl"))
    dist = tmp_path / "d"
    res = CliRunner().invoke(cli, ["package", str(edge_model), "--out", str(dist), "--wheel", str(edge_whl)])
    assert res.exit_code == 0, res.output
    with tarfile.open(next(dist.glob("*.tar.gz"))) as tar:
        wheels = [n for n in tar.getnames() if "/wheels/" in n]
        assert len(wheels) == 1 and wheels[0].endswith(edge_whl.name)
        assert tar.extractfile(wheels[0]).read() == edge_whl.read_bytes()
    # the training side's wheel (or a wheel by that name holding pipeline/) is refused, saying what to pass instead
    other = tmp_path / "nin_pipeline-0.1.0-py3-none-any.whl"
    shutil.copy(edge_whl, other)
    fake = tmp_path / "w" / edge_whl.name  # named nin_edge but holding the training side
    fake.parent.mkdir()
    with zipfile.ZipFile(edge_whl) as src, zipfile.ZipFile(fake, "w") as z:
        for n in src.namelist():
            z.writestr(n, src.read(n))
        z.writestr("pipeline/__init__.py", "")
    refused = tmp_path / "refused"
    for whl in (other, fake):
        res = CliRunner().invoke(cli, ["package", str(edge_model), "--out", str(refused), "--wheel", str(whl)])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert f"{whl.name} is not a nin_edge wheel" in res.output and "pip wheel --no-deps -w DIR ./edge" in res.output
    assert not refused.exists() or list(refused.iterdir()) == []


def test_bundle_installs_without_tensorflow_and_predicts_like_the_repo(bundle, clip, edge_model, tmp_path):
    from edge_app.cli.main import cli as edge_cli

    top = _extract(bundle, tmp_path)
    res = subprocess.run([str(top / "run.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "run" in res.stderr and "install.sh first" in res.stderr
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    inst = subprocess.run([str(top / "install.sh")], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    py = top / ".venv" / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import importlib.util as u, edge_app; "
                            "print(u.find_spec('tensorflow') is None, edge_app.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    no_tf, location = probe.stdout.split()
    assert no_tf == "True" and str(top / ".venv") in location  # installed from the wheel, not this checkout
    target = subprocess.run([str(top / ".venv" / "bin" / "edge-app"), "check-target", str(top / "model")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert target.returncode == 0 and "tflite-runtime==2.14.0: loads" in target.stdout, target.stdout + target.stderr
    service = (top / "nin-edge.service").read_text()
    assert f"ExecStart={top}/run.sh" in service and "@DIR@" not in service and "@USER@" not in service
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(top / "nin-edge.service")], capture_output=True, text=True)
        assert check.returncode == 0 and "Unknown" not in check.stderr, check.stderr
    out = tmp_path / "bundle.jsonl"
    run = subprocess.run([str(top / "run.sh"), "--source", str(clip), "--max-frames", "25", "--output", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "summary: 25 frames" in run.stderr
    repo_out = tmp_path / "repo.jsonl"
    res = CliRunner().invoke(edge_cli, ["run", "--model", str(edge_model), "--source", str(clip), "--max-frames", "25",
                                        "--output", str(repo_out)])
    assert res.exit_code == 0, res.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    want = [json.loads(x) for x in repo_out.read_text().splitlines()]
    assert len(got) == len(want) == 25
    assert [g["top"] for g in got] == [w["top"] for w in want]


def test_package_refuses_a_run_without_models_or_with_a_changed_model(edge_model, edge_model_copy, tmp_path):
    dist = tmp_path / "d"
    dist.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(cli, ["package", str(empty), "--out", str(dist)])
    assert res.exit_code == 1 and "has no model_int8.tflite" in res.output and "Traceback" not in res.output
    with open(edge_model_copy / "model_int8.tflite", "ab") as f:
        f.write(b"\0")
    res = CliRunner().invoke(cli, ["package", str(edge_model_copy), "--out", str(dist)])
    assert res.exit_code == 1 and "does not match a sha256 recorded in model.json" in res.output
    res = CliRunner().invoke(cli, ["package", str(edge_model), "--out", str(dist), "--wheel", str(tmp_path / "no.whl")])
    assert res.exit_code == 1 and "no wheel at" in res.output
    assert list(dist.iterdir()) == []  # nothing half-made: no archive, no temporary file


STUB_PYTHON = """#!/bin/sh
# stands in for python3: `-m venv DIR` makes DIR/bin/python, a copy of this stub; `-m pip install -r F`
# records F's lines; everything is logged to $STUB_LOG (nothing is installed)
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  for a in "$@"; do d="$a"; done
  mkdir -p "$d/bin" && cp "$0" "$d/bin/python" && exit 0
fi
prev=""
for a in "$@"; do
  if [ "$prev" = "-r" ]; then cat "$a" >> "$STUB_LOG"; fi
  prev="$a"
done
echo "ARGS $*" >> "$STUB_LOG"
"""


@pytest.mark.parametrize("flags, cv", [([], "opencv-python-headless>="), (["--display"], "opencv-python>="),
                                       (["--tflite-runtime", "--display"], "opencv-python>=4.8,<4.11")])
def test_install_sh_display_installs_the_gui_opencv(bundle, tmp_path, flags, cv):
    top = _extract(bundle, tmp_path)
    stub, log = tmp_path / "python3", tmp_path / "pip.log"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "STUB_LOG": str(log)}
    res = subprocess.run(["sh", str(top / "install.sh"), *flags], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = log.read_text().splitlines()
    assert any(ln.startswith(cv) for ln in lines), lines
    assert ("opencv-python-headless" in "\n".join(lines)) == (not flags or "--display" not in flags)
    bad = subprocess.run(["sh", str(top / "install.sh"), "--gui"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "--display" in bad.stderr
