"""`nin-pipeline package`: one .tar.gz that takes a run folder to a device and runs it on boot.

Layout of the archive (one top folder, ``nin-edge-<run>/``)::

    wheels/nin_edge-<version>-py3-none-any.whl        the device side (edge_app, edge-app), built from edge/
    model/model_int8.tflite, model.json, labels.txt    (+ model_int8_edgetpu.tflite when compiled)
    requirements-edge.txt                              ai-edge-litert, numpy, opencv-python-headless
    requirements-tflite-runtime.txt                    tflite-runtime 2.14 + numpy<2 (older Raspberry Pi OS)
    install.sh                                         makes .venv, installs the above, renders the unit
    run.sh                                             the launcher: edge-app run on the bundled model
    edge-app.env                                       the launcher's settings (source, delegate, ...)
    nin-edge.service                                   systemd unit: start on boot, restart on failure
    nin-edge-agent.service                             systemd unit of the device agent (install.sh --agent: its token)
    README.md                                          how to do all that on the device
    MANIFEST.json                                      sha256 of every file above

No TensorFlow anywhere in it, nor the training side: the wheel is nin-edge's alone (the
repository's edge/pyproject.toml, packaging edge_app), installed with --no-deps; the
requirements files carry its runtime.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from edge_app.contract.files import EDGETPU_TFLITE, INT8_TFLITE, LABELS_TXT, SIDECAR_NAME
from edge_app.subpython import run_bounded

from pipeline import __version__
from pipeline.errors import PackageError
from pipeline.export.bundle_files import AGENT_README, AGENT_SERVICE, AGENT_TOKEN

MODEL_FILES = (INT8_TFLITE, EDGETPU_TFLITE, SIDECAR_NAME, LABELS_TXT)
REQUIRED = (INT8_TFLITE, SIDECAR_NAME, LABELS_TXT)


EDGE_DIST = "nin_edge"  # the device side's wheel: nin_edge-<version>-py3-none-any.whl
BUILD_EDGE_WHEEL = "pip wheel --no-deps -w DIR ./edge"  # from the repository's top


def source_tree() -> Path | None:
    """The repository this package runs from (an editable install or a clone), if any: the
    folder with ``edge/pyproject.toml`` (nin-edge) and the ``edge_app`` source beside ``pipeline``."""
    root = Path(__file__).resolve().parents[2]
    ok = (root / "edge" / "pyproject.toml").is_file() and (root / "edge_app" / "__init__.py").is_file()
    return root if ok else None


def check_wheel(wheel: Path) -> Path:
    """``wheel`` if it is a whole nin_edge wheel holding edge_app and not the training side, else PackageError."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise PackageError(f"no wheel at {wheel}")
    problem = _wheel_problem(wheel)
    if problem:
        raise PackageError(
            f"{wheel.name} is not a nin_edge wheel ({problem}): the device bundle takes only the device side's "
            f"wheel (nin_edge-<version>-py3-none-any.whl, edge_app without the training side); build it "
            f"with `{BUILD_EDGE_WHEEL}` from the repository, or leave out --wheel to build it here"
        )
    return wheel


def _wheel_problem(wheel: Path) -> str | None:
    """What makes ``wheel`` something pip would not install as nin_edge (None: nothing): its name, a zip
    that does not read back whole, its .dist-info (METADATA naming nin-edge at the file name's version,
    WHEEL, RECORD with the sha256 of every file), or what it holds."""
    import base64
    import csv
    import re
    import zlib
    from email.parser import HeaderParser

    parts = wheel.name[: -len(".whl")].split("-") if wheel.name.endswith(".whl") else []
    if len(parts) not in (5, 6) or parts[0].replace(".", "_").lower() != EDGE_DIST:
        return "its name is not nin_edge-<version>-<python>-<abi>-<platform>.whl"
    info = f"{parts[0]}-{parts[1]}.dist-info"
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            damaged = z.testzip()  # every member read back against its CRC
            if damaged:
                return f"{damaged} in it is damaged"
            missing = [f"{info}/{f}" for f in ("METADATA", "WHEEL", "RECORD") if f"{info}/{f}" not in names]
            if missing:
                return f"it has no {', '.join(missing)}"
            meta = HeaderParser().parsestr(z.read(f"{info}/METADATA").decode("utf-8"))
            if "Wheel-Version" not in HeaderParser().parsestr(z.read(f"{info}/WHEEL").decode("utf-8")):
                return f"{info}/WHEEL has no Wheel-Version"
            record = {row[0]: row[1] for row in csv.reader(z.read(f"{info}/RECORD").decode("utf-8").splitlines()) if len(row) >= 2}
            contents = {n: z.read(n) for n in names if not n.endswith("/") and n != f"{info}/RECORD"}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, UnicodeDecodeError) as exc:
        return f"not a readable zip: {exc}"
    if re.sub(r"[-_.]+", "_", str(meta.get("Name", "")).lower()) != EDGE_DIST or meta.get("Version") != parts[1]:
        return f"its METADATA names {meta.get('Name')} {meta.get('Version')}, not nin-edge {parts[1]}"
    if "edge_app/cli/main.py" not in names:
        return "it holds no edge_app"
    if any(n.startswith("pipeline/") for n in names):
        return "it holds the training side, pipeline/"
    for name, data in sorted(contents.items()):
        want = record.get(name, "")
        digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if want != digest:
            return f"{name} is {'not in its RECORD' if not want else 'not what its RECORD says'}"
    return None


def build_wheel(dest: Path, timeout: float = 600) -> Path:
    """Build the device side's wheel, nin_edge (the repository's ``edge/``), with pip (no dependencies) into ``dest``."""
    root = source_tree()
    if root is None:
        raise PackageError(
            "no source tree to build the nin_edge wheel from: run `nin-pipeline package` from a clone "
            "(pip install -e ./edge -e .), or pass --wheel with a nin_edge wheel "
            f"(`{BUILD_EDGE_WHEEL}` in a clone)"
        )
    import shutil

    # build from a clean copy: setuptools leaves build/ behind, and a stale build/ can put deleted modules in a wheel.
    # edge/edge_app is a symlink to the top-level edge_app/: the copy holds the real files.
    src = dest / "src"
    src.mkdir()
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy2(root / "edge" / rel, src / rel)
    shutil.copytree(root / "edge_app", src / "edge_app", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(src)]
    try:
        import setuptools  # noqa: F401  (present: build here, offline, without an isolated build env)

        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    try:
        proc = run_bounded(cmd, timeout=timeout)  # on the limit, what it started is killed too
    except subprocess.TimeoutExpired:
        raise PackageError(
            f"building the nin_edge wheel took over {timeout:.0f} s (pip wheel): check pip's index access, "
            f"or pass --wheel with a nin_edge wheel (`{BUILD_EDGE_WHEEL}`)"
        ) from None
    wheels = sorted(dest.glob(f"{EDGE_DIST}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise PackageError(f"building the nin_edge wheel failed (pip exit {proc.returncode}): {tail}")
    return check_wheel(wheels[-1])


def _edge_requirements() -> str:
    return (
        "# ai-edge-litert: the current TFLite runtime (Raspberry Pi OS Bookworm 64-bit, Debian/Ubuntu, macOS)\n"
        "ai-edge-litert>=1.2\nnumpy\nopencv-python-headless>=4.8\nclick>=8.1\n"
    )


def _tflite_runtime_requirements() -> str:
    return (
        "# tflite-runtime 2.14: the last of its line, for devices that cannot take ai-edge-litert;\n"
        "# it needs numpy<2 (and an OpenCV built against numpy 1.x)\n"
        "tflite-runtime==2.14.0\nnumpy<2\nopencv-python-headless>=4.8,<4.11\nclick>=8.1\n"
    )


INSTALL_SH = r"""#!/bin/sh
# Install the camera loop into .venv beside this file. No TensorFlow is installed.
#   ./install.sh                      ai-edge-litert (default)
#   ./install.sh --tflite-runtime     tflite-runtime 2.14 with numpy<2 (older Raspberry Pi OS; Python 3.8 to 3.11)
#   ./install.sh --picamera           also see the system's picamera2 (sudo apt install python3-picamera2)
#   ./install.sh --display            OpenCV with its GUI (for edge-app run --display on a screen), not -headless
#   ./install.sh --agent              also the device agent's token (agent.token, mode 600) for nin-edge-agent.service
set -eu
DIR="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
REQ="$DIR/requirements-edge.txt"
VENV_OPTS=""
DISPLAY_CV=""
TFLITE_RT=""
AGENT=""
for arg in "$@"; do
  case "$arg" in
    --tflite-runtime) REQ="$DIR/requirements-tflite-runtime.txt"; TFLITE_RT=1 ;;
    --picamera) VENV_OPTS="--system-site-packages" ;;
    --display) DISPLAY_CV=1 ;;
    --agent) AGENT=1 ;;
    *) echo "install.sh: unknown option $arg (use --tflite-runtime, --picamera, --display, --agent)" >&2; exit 2 ;;
  esac
done
if [ -n "$TFLITE_RT" ]; then  # its wheels stop at CPython 3.11: say so before pip's "from versions: none"
  PYV="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  case "$PYV" in
    3.8|3.9|3.10|3.11|"") ;;  # "": a Python that did not say: pip decides
    *) echo "install.sh: tflite-runtime 2.14 has no wheel for Python $PYV (only 3.8 to 3.11):" \
         "use ai-edge-litert instead, ./install.sh without --tflite-runtime" >&2
       exit 1 ;;
  esac
fi
if [ -n "$DISPLAY_CV" ]; then  # the same pins, the GUI build of OpenCV instead of the headless one
  sed 's/^opencv-python-headless/opencv-python/' "$REQ" > "$DIR/.requirements-display.txt"
  REQ="$DIR/.requirements-display.txt"
fi
"$PYTHON" -m venv $VENV_OPTS "$DIR/.venv"
"$DIR/.venv/bin/python" -m pip install --quiet -r "$REQ"
"$DIR/.venv/bin/python" -m pip install --quiet --no-deps "$DIR"/wheels/*.whl
for unit in nin-edge nin-edge-agent; do
  sed -e "s#@DIR@#$DIR#g" -e "s#@USER@#$(id -un)#g" "$DIR/$unit.service.in" > "$DIR/$unit.service"
done
echo "installed. Try:   $DIR/run.sh --max-frames 10"
echo "start on boot:    sudo cp $DIR/nin-edge.service /etc/systemd/system/ && sudo systemctl enable --now nin-edge"
if [ -n "$AGENT" ]; then  # made once, readable by its owner alone; a second install keeps it
  if [ ! -s "$DIR/agent.token" ]; then
    (umask 077 && "$DIR/.venv/bin/python" -c "import secrets; print(secrets.token_urlsafe(24))" > "$DIR/agent.token")
  fi
  chmod 600 "$DIR/agent.token"
  echo "agent token:      $DIR/agent.token (the host needs it; set NIN_AGENT_LISTEN and NIN_AGENT_ARGS in edge-app.env)"
  echo "start the agent:  sudo cp $DIR/nin-edge-agent.service /etc/systemd/system/ && sudo systemctl enable --now nin-edge-agent"
fi
"""

RUN_SH = r"""#!/bin/sh
# The launcher: the bundled model through edge-app's camera loop. Settings come from
# edge-app.env (NIN_SOURCE, NIN_DELEGATE, NIN_ARGS); extra arguments are passed on.
set -eu
DIR="$(cd "$(dirname "$0")" && pwd)"
if [ -f "$DIR/edge-app.env" ]; then . "$DIR/edge-app.env"; fi
if [ ! -x "$DIR/.venv/bin/edge-app" ]; then
  echo "run.sh: not installed yet: run $DIR/install.sh first" >&2
  exit 1
fi
# shellcheck disable=SC2086  # NIN_ARGS is a list of options on purpose
exec "$DIR/.venv/bin/edge-app" run --model "$DIR/model" --source "${NIN_SOURCE:-0}" \
  --delegate "${NIN_DELEGATE:-cpu}" ${NIN_ARGS:-} "$@"
"""

ENV_FILE = """# Settings for run.sh and the systemd unit.
# NIN_SOURCE: camera index, /dev/videoN, picamera, a video file, an RTSP/HTTP URL, an image folder
NIN_SOURCE=0
# NIN_DELEGATE: cpu | edgetpu | gpu  (edgetpu uses model/model_int8_edgetpu.tflite when present)
NIN_DELEGATE=cpu
# NIN_ARGS: any other edge-app run options, e.g. "--serve 0.0.0.0:8080 --heatmap --top-k 5".
# Without --output the JSON lines go to stdout, i.e. the journal (journalctl -u nin-edge), which rotates.
NIN_ARGS=""
# The device agent (nin-edge-agent.service): where it listens (off loopback it wants agent.token:
# ./install.sh --agent), and its other options, e.g. "--data cifar=/home/pi/cifar10-test --job-timeout 900"
NIN_AGENT_LISTEN=0.0.0.0:8765
NIN_AGENT_ARGS=""
"""

SERVICE = """[Unit]
Description=nin-pipeline camera loop ({name})
Wants=network-online.target
After=network-online.target
# keep restarting however often it fails (a camera that is unplugged for a while)
StartLimitIntervalSec=0

[Service]
Type=simple
User=@USER@
SupplementaryGroups=video
WorkingDirectory=@DIR@
ExecStart=@DIR@/run.sh
Restart=on-failure
RestartSec=5
# a camera that vanishes ends the loop with a non-zero exit: systemd starts it again

[Install]
WantedBy=multi-user.target
"""

DEVICE_README = """# {name}: the camera loop for a device

{model_line}

    tar xzf {archive}
    cd {top}
    ./install.sh                  # .venv with ai-edge-litert, numpy, OpenCV (no TensorFlow)
    ./install.sh --tflite-runtime # instead, on an older Raspberry Pi OS: tflite-runtime 2.14, numpy<2
    ./install.sh --picamera       # with a Pi camera module (first: sudo apt install python3-picamera2)
    ./install.sh --display        # with a screen: OpenCV's GUI build, for run.sh --display
    ./run.sh --max-frames 10      # try it: JSON lines, one per frame

Before relying on it, ask the device itself:

    .venv/bin/edge-app check-target model               # will this runtime load it (every op's version)? how much of it maps to the Edge TPU?
    .venv/bin/edge-app info model                       # which ops the delegate took, which stayed on the CPU
    .venv/bin/edge-app check-input model --source 0     # is the camera frame what the model expects?
                                                        # (pictures of the model's input in model/check-input/)

Settings live in `edge-app.env` (source, delegate, other options); `run.sh` passes extra options on
to `edge-app run` (see `.venv/bin/edge-app run --help`). To start it on boot and restart it when it fails:

    sudo cp nin-edge.service /etc/systemd/system/
    sudo systemctl enable --now nin-edge
    journalctl -u nin-edge -f

Edge TPU: `sudo apt install libedgetpu1-std` (Coral's apt repository), then `NIN_DELEGATE=edgetpu` in
edge-app.env; {edgetpu_line}

Files: see MANIFEST.json for each file's sha256.
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_run(run_dir: Path, out_dir: Path, *, wheel: Path | None = None, name: str | None = None) -> Path:
    """Write ``out_dir/nin-edge-<run>.tar.gz``; returns its path. Atomic: a temporary name, then rename."""
    from edge_app.contract.sidecar import read_sidecar
    from edge_app.model import changed_files

    run_dir = Path(run_dir)
    missing = [f for f in REQUIRED if not (run_dir / f).is_file()]
    if missing:
        raise PackageError(f"{run_dir} has no {', '.join(missing)}: finish it with `nin-pipeline build --resume --out {run_dir}`")
    sidecar = read_sidecar(run_dir)
    changed = changed_files(sidecar, run_dir, MODEL_FILES)  # a model changed since model.json was written: refuse
    if changed:
        raise PackageError(
            f"{run_dir / changed[0]} does not match a sha256 recorded in model.json (or none is recorded): "
            f"re-run `nin-pipeline convert {run_dir}`"
        )
    if wheel is not None:
        wheel = check_wheel(wheel)
    name = name or f"nin-edge-{run_dir.resolve().name}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{name}.tar.gz"
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="nin-package-") as tmp:
        whl = Path(wheel) if wheel else build_wheel(Path(tmp))
        files[f"wheels/{whl.name}"] = whl.read_bytes()
    for f in MODEL_FILES:
        if (run_dir / f).is_file():
            files[f"model/{f}"] = (run_dir / f).read_bytes()
    has_tpu = f"model/{EDGETPU_TFLITE}" in files
    files["requirements-edge.txt"] = _edge_requirements().encode()
    files["requirements-tflite-runtime.txt"] = _tflite_runtime_requirements().encode()
    files["install.sh"] = INSTALL_SH.encode()
    files["run.sh"] = RUN_SH.encode()
    files["edge-app.env"] = ENV_FILE.encode()
    files["nin-edge.service.in"] = SERVICE.format(name=name).encode()
    files["nin-edge-agent.service.in"] = AGENT_SERVICE.format(name=name, token=AGENT_TOKEN).encode()
    files["README.md"] = DEVICE_README.format(
        name=name,
        archive=archive.name,
        top=name,
        model_line=(
            f"Model: {sidecar.dataset} / {sidecar.arch} width {sidecar.width:g}, {sidecar.num_classes} classes, "
            f"input {'x'.join(map(str, sidecar.input.shape[1:]))} {sidecar.input.dtype}; built by nin-pipeline "
            f"{sidecar.pipeline_version or __version__}."
        ),
        edgetpu_line=(
            "the compiled model_int8_edgetpu.tflite is in model/."
            if has_tpu
            else "this bundle has no compiled model: run `nin-pipeline edgetpu compile RUN` on an x86-64 Linux "
            "host and package again (until then the Edge TPU delegate would run the plain int8 model "
            "mostly on the CPU)."
        ),
    ).encode()
    files["README.md"] += AGENT_README.encode()
    files["MANIFEST.json"] = (
        json.dumps(
            {
                "name": name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "pipeline_version": __version__,
                "files": {k: _sha256(v) for k, v in sorted(files.items())},
            },
            indent=2,
        )
        + "\n"
    ).encode()
    executable = {"install.sh", "run.sh"}
    tmp_archive = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp_archive, "w:gz") as tar:
            for rel, data in sorted(files.items()):
                info = tarfile.TarInfo(f"{name}/{rel}")
                info.size, info.mtime = len(data), int(time.time())
                info.mode = 0o755 if rel in executable else 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp_archive, archive)
    finally:
        tmp_archive.unlink(missing_ok=True)
    return archive
