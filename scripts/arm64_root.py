#!/usr/bin/env python3
"""A Debian arm64 root (Raspberry Pi OS is Debian for arm64) run under qemu-user-static, for
trying the device bundle on this x86-64 host: real installs and real numerics, no meaningful timing.

    sudo python3 scripts/arm64_root.py check                  # can this host run one? (else: why not)
    sudo python3 scripts/arm64_root.py enable                 # mount binfmt_misc, enable qemu-aarch64
    sudo python3 scripts/arm64_root.py build bookworm         # build or reuse the cached root
    sudo python3 scripts/arm64_root.py shell trixie           # a shell in a throwaway copy of it

Roots are cached under $NIN_ARM64_CACHE (default ~/.cache/nin-pipeline/arm64), one folder per
release: root/ (written by debootstrap as root.partial/, renamed when whole), READY (written
last: a root without it is built again), build.lock (two runs never build one at once) and
wheels/ (the wheels pip installed there, bind-mounted into every copy as pip's --find-links, so a
rerun downloads none: pip's HTTP cache is no help behind a proxy that strips cache headers). Each use runs in
a fresh copy of the root; /proc and /sys stay unmounted there, because mounted they describe the
x86 host and XNNPACK's cpuinfo crashes on it. Needs root (chroot, mount) and Debian's
qemu-user-static, binfmt-support and debootstrap. The standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
# release -> the Python it ships (what the bundle's install.sh will meet there)
RELEASES = {"bookworm": "3.11", "trixie": "3.13"}
# the CPU qemu emulates (QEMU_CPU; $NIN_ARM64_CPU instead): a Raspberry Pi 4's and a Pi 5's. Not qemu's
# default "max": its pointer authentication is emulated slowly, and trixie's binaries use it (10x slower)
CPUS = {"bookworm": "cortex-a72", "trixie": "cortex-a76"}
# python3-venv: install.sh makes a venv; ca-certificates: pip's HTTPS (and the user's own tools)
PACKAGES = ("python3", "python3-venv", "ca-certificates")
BUILD_TIMEOUT = 3600.0  # the first debootstrap of a release under emulation: ~4 min on 2 cores
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
DEB_PACKAGES = "qemu-user-static binfmt-support debootstrap"
HOST_CA = "/etc/ssl/certs/host-ca-bundle.crt"  # in a copy: this host's CA bundle, for pip (PIP_CERT)
WHEELHOUSE = "/root/wheelhouse"  # in a copy: the release's wheels folder


class RootError(RuntimeError):
    """A root could not be made or used; the message says why."""


def cache_dir() -> Path:
    env = os.environ.get("NIN_ARM64_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nin-pipeline" / "arm64"


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """``cmd`` in its own process group, output captured; on the time limit the whole group is killed
    (a chrooted pip under qemu leaves children) and TimeoutExpired is raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def emulation_problem() -> str | None:
    """Why this host cannot run an arm64 root (None: it can)."""
    if platform.system() != "Linux":
        return f"an arm64 root needs Linux (chroot, binfmt_misc); this is {platform.system()}"
    if os.geteuid() != 0:
        return "chroot and mount need root: run as root (sudo)"
    missing = [t for t in ("debootstrap", "chroot", "mount") if shutil.which(t) is None]
    if missing:
        return f"no {', '.join(missing)} on PATH: apt-get install {DEB_PACKAGES}"
    if platform.machine() in ("aarch64", "arm64"):
        return None  # native: no emulation needed
    if not (BINFMT / "status").exists():
        return f"binfmt_misc is not mounted: mount -t binfmt_misc binfmt_misc {BINFMT} (or `{Path(__file__).name} enable`)"
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        return f"no qemu-aarch64 binfmt entry: apt-get install {DEB_PACKAGES}, then update-binfmts --enable qemu-aarch64"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return "the qemu-aarch64 binfmt entry is disabled: update-binfmts --enable qemu-aarch64"
    if "flags: " in text and "F" not in text.split("flags: ", 1)[1].split("\n", 1)[0]:
        return "the qemu-aarch64 binfmt entry lacks the F flag (its interpreter would have to be inside the root): use Debian's qemu-user-static"
    return None


def enable_binfmt(timeout: float = 60) -> None:
    """Mount binfmt_misc and enable qemu-aarch64 where they are installed but off (a container, a fresh VM)."""
    # what still fails is then said by emulation_problem()
    if not (BINFMT / "status").exists() and shutil.which("mount"):
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], timeout)
    entry = BINFMT / "qemu-aarch64"
    if shutil.which("update-binfmts") and (BINFMT / "status").exists() and not (entry.exists() and entry.read_text().startswith("enabled")):
        run(["update-binfmts", "--enable", "qemu-aarch64"], timeout)


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RootError(f"{path} is held by another build for over {timeout:.0f} s") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _key(release: str) -> dict:
    return {"release": release, "arch": "arm64", "variant": "minbase", "packages": list(PACKAGES), "mirror": MIRROR}


def ready(release: str) -> dict | None:
    """The READY record of the cached root of ``release`` when it is whole and built as asked now, else None."""
    base = cache_dir() / release
    try:
        info = json.loads((base / "READY").read_text())
    except (OSError, ValueError):
        return None
    if {k: info.get(k) for k in _key(release)} != _key(release) or not (base / "root" / "usr" / "bin" / "python3").exists():
        return None
    return info


def ensure_root(release: str, timeout: float = BUILD_TIMEOUT, log=print) -> Path:
    """The cached root of ``release`` (built first if it is missing, half-built or built otherwise)."""
    if release not in RELEASES:
        raise RootError(f"unknown release {release!r}: one of {', '.join(RELEASES)}")
    problem = emulation_problem()
    if problem:
        raise RootError(problem)
    base = cache_dir() / release
    with _locked(base / "build.lock", timeout):
        if ready(release):
            return base / "root"
        for stale in ("READY", "root", "root.partial"):
            p = base / stale
            if p.is_dir():
                remove_copy(p)  # a debootstrap that was killed leaves its /proc mounted there
            elif p.exists():
                p.unlink()
        partial = base / "root.partial"
        log(f"building the {release} arm64 root in {partial} (debootstrap under emulation: minutes)")
        t0 = time.monotonic()
        cmd = ["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}", release, str(partial), MIRROR]
        try:
            proc = run(cmd, timeout, env={**os.environ, "QEMU_CPU": qemu_cpu(release)})
        except subprocess.TimeoutExpired:
            raise RootError(f"debootstrap {release} took over {timeout:.0f} s") from None
        if proc.returncode != 0:
            tail = " | ".join(proc.stdout.strip().splitlines()[-6:])
            raise RootError(f"debootstrap {release} failed (exit {proc.returncode}): {tail}")
        for point in _mounts_under(partial):  # debootstrap unmounts its /proc and /sys; make sure, the root is copied whole
            run(["umount", "-l", point], 60)
        for deb in (partial / "var" / "cache" / "apt" / "archives").glob("*.deb"):  # not needed again: smaller copies
            deb.unlink()
        version = in_root(partial, "python3 -c 'import platform; print(platform.python_version(), platform.machine())'", 300, release=release)
        if version.returncode != 0 or "aarch64" not in version.stdout:
            raise RootError(f"python3 in the new {release} root does not run as aarch64: {version.stdout.strip()[-300:]}")
        seconds = time.monotonic() - t0
        partial.rename(base / "root")
        info = {**_key(release), "python": version.stdout.split()[0], "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds)}
        (base / "wheels").mkdir(exist_ok=True)
        tmp = base / "READY.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.rename(base / "READY")  # last: only a whole root is ever taken as built
        log(f"built the {release} root in {seconds:.0f} s (Python {info['python']})")
        return base / "root"


def _mounts_under(path: Path) -> list[str]:
    target = str(path.resolve())
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1].replace("\\040", " ") for line in fh]
    return sorted((p for p in points if p == target or p.startswith(target + "/")), key=len, reverse=True)


def remove_copy(copy: Path) -> None:
    """Unmount whatever is mounted under ``copy`` (the wheels), then delete it: never through a mount."""
    for point in _mounts_under(copy):
        if run(["umount", point], 60).returncode != 0:
            run(["umount", "-l", point], 60)
    if _mounts_under(copy):
        raise RootError(f"{copy} still has mounts ({', '.join(_mounts_under(copy))}): not deleting it")
    shutil.rmtree(copy, ignore_errors=True)


_copies = itertools.count(1)  # next() on it is atomic: copies may be made from several threads


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def fresh_copy(release: str, timeout: float = BUILD_TIMEOUT) -> Iterator[Path]:
    """A throwaway copy of the cached ``release`` root (built first if need be), with this host's DNS
    settings and the release's wheels mounted at /root/wheelhouse; removed afterwards. The copies live
    in the cache's copies/<pid>-<n> (and one a dead process left is removed here, its mount first), not
    in a temporary folder that something else might delete through the mount."""
    root = ensure_root(release, timeout)
    copies = cache_dir() / release / "copies"
    for old in copies.glob("*-*") if copies.is_dir() else ():
        if not _alive(int(old.name.split("-")[0]) if old.name.split("-")[0].isdigit() else 0):
            remove_copy(old)
    dest = copies / f"{os.getpid()}-{next(_copies)}"
    if dest.exists():
        remove_copy(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = run(["cp", "-a", "--reflink=auto", str(root), str(dest)], 600)
        if proc.returncode != 0:
            raise RootError(f"copying the {release} root failed: {proc.stdout.strip()[-300:]}")
        resolv = dest / "etc" / "resolv.conf"
        resolv.unlink(missing_ok=True)  # may be a dangling symlink in the root
        shutil.copyfile("/etc/resolv.conf", resolv)  # pip reaches PyPI; no pip.conf: this host's points at x86 wheels
        shutil.copyfile(_host_ca(), dest / HOST_CA.lstrip("/"))  # this host's trust (a TLS-inspecting proxy's CA, say)
        wheels = cache_dir() / release / "wheels"
        wheels.mkdir(exist_ok=True)
        (dest / WHEELHOUSE.lstrip("/")).mkdir(parents=True, exist_ok=True)
        proc = run(["mount", "--bind", str(wheels), str(dest / WHEELHOUSE.lstrip("/"))], 60)
        if proc.returncode != 0:
            raise RootError(f"mounting the wheels folder failed: {proc.stdout.strip()}")
        yield dest
    finally:
        remove_copy(dest)


def _host_ca() -> str:
    """The CA bundle this host's pip trusts (its PIP_CERT, else the system's)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name) and Path(os.environ[name]).is_file():
            return os.environ[name]
    return "/etc/ssl/certs/ca-certificates.crt"


def root_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment inside a copy: none of this host's PIP_* settings (x86 wheel folders), its proxies and
    its CA bundle (copied in by fresh_copy) for pip."""
    proxies = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    base = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CERT": HOST_CA}
    base["PIP_FIND_LINKS"] = WHEELHOUSE  # pip takes a wheel from there when it is the one it would download
    return {**base, **proxies, **(extra or {})}


def qemu_cpu(release: str | None) -> str:
    return os.environ.get("NIN_ARM64_CPU") or CPUS.get(release or "", "cortex-a72")


def in_root(
    root: Path, script: str, timeout: float, env: dict[str, str] | None = None, release: str | None = None
) -> subprocess.CompletedProcess:
    """``sh -c script`` inside ``root`` as root, in :func:`root_env`, on the release's CPU (``release``: by
    default the cache folder ``root`` is in)."""
    release = release or next((p.name for p in Path(root).parents if p.name in RELEASES), None)
    env = {"QEMU_CPU": qemu_cpu(release), **(env or {})}  # every process in there is a qemu of its own: each reads it
    argv = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in root_env(env).items()), "/bin/sh", "-c", script]
    return run(argv, timeout, env={**os.environ, "QEMU_CPU": env["QEMU_CPU"]})


def _wheels_stamp(copy: Path, requirements: str, release: str) -> Path:
    import hashlib

    return cache_dir() / release / "wheels" / f".have-{hashlib.sha256((copy / requirements.lstrip('/')).read_bytes()).hexdigest()[:16]}"


def wheels_kept(copy: Path, requirements: str, release: str) -> bool:
    """Does the release's wheels folder hold every wheel of ``requirements`` (a path inside ``copy``)? Then pip
    may take them there alone (PIP_NO_INDEX), as on a device without network access."""
    return _wheels_stamp(copy, requirements, release).exists()


def keep_wheels(copy: Path, python: str, requirements: str, release: str, timeout: float = 1200) -> None:
    """After an install from ``requirements`` (paths inside ``copy``) with ``python`` (a venv's), download its
    wheels into the release's wheels folder once (a stamp per requirements file), so later installs take them there."""
    stamp = _wheels_stamp(copy, requirements, release)
    if stamp.exists():
        return
    proc = in_root(copy, f"{python} -m pip download --quiet -r {requirements} -d {WHEELHOUSE}", timeout)
    if proc.returncode == 0:
        stamp.write_text(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="say whether this host can run an arm64 root, and why not")
    sub.add_parser("enable", help="mount binfmt_misc and enable qemu-aarch64 (root)")
    for name in ("build", "shell"):
        p = sub.add_parser(name, help="build or reuse the cached root" if name == "build" else "a shell in a throwaway copy of the root")
        p.add_argument("release", choices=sorted(RELEASES))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "enable":
            enable_binfmt()
        if args.cmd in ("check", "enable"):
            problem = emulation_problem()
            print(problem or "ok: this host can run Debian arm64 roots under emulation")
            return 1 if problem else 0
        if args.cmd == "build":
            print(ensure_root(args.release, log=lambda m: print(m, flush=True)))
            print(json.dumps(ready(args.release)))
            return 0
        with fresh_copy(args.release) as copy:
            env = root_env({"TERM": os.environ.get("TERM", "dumb"), "QEMU_CPU": qemu_cpu(args.release)})
            argv = ["chroot", str(copy), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), "/bin/bash"]
            return subprocess.call(argv, env={**os.environ, "QEMU_CPU": env["QEMU_CPU"]})
    except RootError as exc:
        print(f"arm64_root: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
