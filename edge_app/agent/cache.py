"""The models an agent holds: ``<cache>/models/<sha256>/model.tflite`` with its ``model.json`` and
``labels.txt`` beside it, at most ``cap`` bytes in all, the least recently used evicted first.

An upload is written to a temporary file in the cache, hashed while it is read, and renamed into place
only when it arrived whole and its sha256 is its name: a truncated, stalled or altered upload leaves
nothing behind. Only names that match protocol.SHA256 ever become paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from edge_app.agent.protocol import MODEL_PARTS, SHA256
from edge_app.errors import AgentError

MODEL_FILE = "model.tflite"
PART_MAX = 4 << 20  # bytes: a model.json or labels.txt (a thousand labels is a few tens of KB)
CHUNK = 1 << 16
UPLOAD_PREFIX = ".upload-"


def read_exactly(read: Callable[[int], bytes], length: int, sink: Callable[[bytes], object]) -> None:
    """Hand ``length`` bytes from ``read`` to ``sink``; a body that ends early or stalls (the socket's
    timeout) is an AgentError ("bad request")."""
    done = 0
    try:
        while done < length:
            chunk = read(min(CHUNK, length - done))
            if not chunk:
                break
            sink(chunk)
            done += len(chunk)
    except (TimeoutError, ConnectionError) as exc:
        raise AgentError(
            "bad request", f"the upload stopped after {done:,} of {length:,} bytes ({exc or type(exc).__name__})", "send it again"
        ) from None
    if done < length:
        raise AgentError("bad request", f"the upload ended after {done:,} of {length:,} bytes", "send it again, whole")


class ModelCache:
    def __init__(self, root: Path, cap: int, max_model: int) -> None:
        self.root, self.cap, self.max_model = Path(root), cap, max_model
        self.models = self.root / "models"
        self.jobs = self.root / "jobs"
        for d in (self.root, self.models, self.jobs):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._pinned: Counter[str] = Counter()
        self._reserved = 0
        self._clean()

    def _clean(self) -> None:
        """What a crash or a kill left: half-written uploads, jobs' folders, a model folder without its model."""
        for p in self.models.iterdir():
            if p.name.startswith(UPLOAD_PREFIX):
                p.unlink(missing_ok=True)
            elif not SHA256.match(p.name) or not (p / MODEL_FILE).is_file():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in self.jobs.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _dir(self, sha: str) -> Path:
        if not SHA256.match(sha):  # the routes check it first; this keeps any other caller from making a path of a name
            raise AgentError("bad request", "a model is named by its sha256: 64 lowercase hex digits")
        return self.models / sha

    def has(self, sha: str) -> bool:
        """Held (and so marked as used now)."""
        d = self._dir(sha)
        with self._lock:
            if not (d / MODEL_FILE).is_file():
                return False
            with contextlib.suppress(OSError):
                os.utime(d)
            return True

    def held(self) -> list[str]:
        return sorted(p.name for p in self.models.iterdir() if SHA256.match(p.name) and (p / MODEL_FILE).is_file())

    def _used(self) -> int:
        return sum(f.stat().st_size for d in self.models.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())

    def _evict_for(self, need: int, keep: str) -> None:
        """Under the lock: remove the least recently used models not in use until ``need`` more bytes fit."""
        by_age = sorted((d for d in self.models.iterdir() if d.is_dir() and d.name != keep), key=lambda d: d.stat().st_mtime)
        used = self._used()
        for d in by_age:
            if used + self._reserved + need <= self.cap:
                return
            if self._pinned[d.name]:
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            shutil.rmtree(d, ignore_errors=True)
            used -= size
        if used + self._reserved + need > self.cap:
            raise AgentError("too large", f"no room in the agent's cache ({self.cap >> 20} MB) beside the models in use", "try again later")

    @contextlib.contextmanager
    def _reserve(self, need: int, keep: str) -> Iterator[None]:
        with self._lock:
            self._evict_for(need, keep)
            self._reserved += need
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= need

    def store_model(self, sha: str, length: int, read: Callable[[int], bytes]) -> None:
        """Read ``length`` bytes of a .tflite from ``read``; keep it as ``sha`` if that is its sha256."""
        d = self._dir(sha)
        if length > self.max_model:
            raise AgentError(
                "too large",
                f"a model of {length:,} bytes is over this agent's cap of {self.max_model:,}",
                "start the agent with a larger --max-model-mb",
            )
        with self._reserve(length, sha):
            fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=self.models)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as fh:

                    def sink(chunk: bytes) -> None:
                        h.update(chunk)
                        fh.write(chunk)

                    read_exactly(read, length, sink)
                    fh.flush()
                    os.fsync(fh.fileno())
                if h.hexdigest() != sha:
                    raise AgentError(
                        "bad request",
                        f"the upload's sha256 is {h.hexdigest()}, not its name {sha}",
                        "name it by its own sha256 (a byte changed on the way?)",
                    )
                with self._lock:
                    d.mkdir(exist_ok=True, mode=0o700)
                    os.replace(tmp, d / MODEL_FILE)
                    os.utime(d)
            finally:
                Path(tmp).unlink(missing_ok=True)

    def store_part(self, sha: str, part: str, data: bytes) -> None:
        """Keep ``model.json`` or ``labels.txt`` beside a model held (checked to be what it says it is)."""
        d = self._dir(sha)
        if part not in MODEL_PARTS:
            raise AgentError("no such model", f"no part {part!r} of a model", f"the parts are {', '.join(MODEL_PARTS)}")
        try:
            text = data.decode("utf-8")
            if part.endswith(".json") and not isinstance(json.loads(text), dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
            raise AgentError("bad request", f"that is no {part} ({exc})", f"send the run folder's own {part}") from None
        with self._reserve(len(data), sha), self._lock:
            if not (d / MODEL_FILE).is_file():
                raise AgentError("no such model", f"no model {sha} here", f"upload it first (PUT /v1/models/{sha})")
            fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=d)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, d / part)
                os.utime(d)
            finally:
                Path(tmp).unlink(missing_ok=True)

    @contextlib.contextmanager
    def pinned(self, sha: str) -> Iterator[Path]:
        """The model's folder, kept from eviction while a job uses it."""
        d = self._dir(sha)
        with self._lock:
            if not (d / MODEL_FILE).is_file():
                raise AgentError("no such model", f"no model {sha} here", f"upload it first (PUT /v1/models/{sha})")
            self._pinned[sha] += 1
            os.utime(d)
        try:
            yield d
        finally:
            with self._lock:
                self._pinned[sha] -= 1
