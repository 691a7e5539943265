"""`edge-app agent`: this device's runtime over HTTP (the routes: edge_app.agent.protocol), standard library only.

Hostile clients are expected, and each is answered and forgotten while the agent keeps serving:

* Host and token are checked before anything is read: on loopback only a Host naming this machine is
  answered (a DNS-rebinding page gets 403, as the preview does); a token, where the agent has one (off
  loopback it must), is wanted on every route as ``Authorization: Bearer`` and compared in constant time (401).
* An upload needs a Content-Length, checked against the cap before its body is read (413; a client that
  sends ``Expect: 100-continue`` hears it before sending anything). The body goes to a temporary file,
  hashed while read, and is kept only whole and with the sha256 of its name (see edge_app.agent.cache).
* Each connection has a socket timeout (a stalled client ends), its own thread, and there are at most
  MAX_CONNECTIONS at a time; at most MAX_UPLOADS uploads and one job at a time (a second: 409, busy).
* Every refusal is JSON (``{"ok": false, "error", "hint"}``, its status from protocol.STATUS) and, as its
  body may be unread, closes its connection. A job that failed or timed out also carries its reply
  (what the command wrote, who the device is) under ``"reply"``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_app.agent.cache import CHUNK, PART_MAX, ModelCache
from edge_app.agent.jobs import Runner, device_info, parse_job, run_job
from edge_app.agent.protocol import API, SHA256, STATUS
from edge_app.camera.serve import host_names_loopback, is_loopback, parse_address
from edge_app.errors import AgentError, ServeError

log = logging.getLogger("edge_app")

SOCKET_TIMEOUT = 30.0  # seconds a client may stall, sending or reading, before its connection is dropped
MAX_CONNECTIONS = 32
MAX_UPLOADS = 2
JOB_BODY_MAX = 64 << 10
MODELS = re.compile(rf"^/{API}/models/([^/]*)(?:/([^/]*))?$")


@dataclass(frozen=True)
class AgentConfig:
    listen: str
    token: str | None
    cache_dir: Path
    data: dict[str, Path] = field(default_factory=dict)
    max_model_bytes: int = 64 << 20
    cache_bytes: int = 512 << 20
    job_timeout: float = 600.0
    client_timeout: float = SOCKET_TIMEOUT


class Agent:
    """The server (``serve_forever`` in the caller's thread, ``close`` from anywhere) and its state."""

    def __init__(self, config: AgentConfig) -> None:
        try:
            host, port = parse_address(config.listen)
        except ServeError:
            raise ServeError(f"--listen {config.listen!r} is not an address", "give PORT or HOST:PORT, e.g. 8765 or 0.0.0.0:8765") from None
        if not is_loopback(host) and not config.token:
            raise ServeError(
                f"the agent on {host} would run jobs for anyone who can reach this machine",
                "give it a token (--token-file F; the bundle's `./install.sh --agent` makes one), or listen on 127.0.0.1",
            )
        self.config = config
        self.cache = ModelCache(config.cache_dir, config.cache_bytes, config.max_model_bytes)
        self.runner = Runner()
        self.job_lock = threading.Lock()
        self._serving = False
        self.uploads = threading.BoundedSemaphore(MAX_UPLOADS)
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def process_request(self, request, client_address):
                if not slots.acquire(blocking=False):  # full: this one is closed, the others go on
                    self.shutdown_request(request)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        try:
            self.httpd = Server((host, port), _handler(self, socket.gethostname() if is_loopback(host) else None))
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", "choose another port (--listen PORT) or address"
            ) from None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = str(host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/{API}/"

    def serve_forever(self) -> None:
        self._serving = True
        try:
            self.httpd.serve_forever(poll_interval=0.5)
        finally:
            self._serving = False

    def close(self) -> None:
        """Stop serving and end a running job with its processes (from another thread, or after Ctrl-C/SIGTERM)."""
        self.runner.stop()
        if self._serving:  # shutdown() waits for serve_forever to return: only while it runs
            self.httpd.shutdown()
        self.httpd.server_close()

    def job(self, body: bytes) -> dict[str, Any]:
        req = parse_job(body, self.config.data, self.config.job_timeout)
        if not self.cache.has(req.model):
            raise AgentError("no such model", f"no model {req.model} here", f"upload it first (PUT /{API}/models/{req.model})")
        if not self.job_lock.acquire(blocking=False):
            raise AgentError("busy", "a job is running: the agent runs one at a time", "send it again when that one is done")
        try:
            with self.cache.pinned(req.model) as folder:
                return run_job(req, folder, self.cache.jobs, self.config.data, self.config.job_timeout, self.runner).to_json()
        finally:
            self.job_lock.release()


def _handler(agent: Agent, hostname: str | None):
    """``hostname``: on loopback, answer only requests whose Host names this machine (None: any)."""
    want = agent.config.token.encode() if agent.config.token else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive between a host's requests; every answer has a Content-Length
        timeout = agent.config.client_timeout
        server_version = "edge-app-agent"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("agent %s: " + fmt, self.client_address[0], *args)

        # ---- checks made before any body is read
        def parse_request(self) -> bool:
            self._prechecked = False
            if not super().parse_request():
                return False
            return self._prechecked or self._precheck()

        def handle_expect_100(self) -> bool:
            self._prechecked = True
            return self._precheck() and super().handle_expect_100()

        def _precheck(self) -> bool:
            try:
                self._refuse_early()
            except AgentError as exc:
                self._error(exc)
                return False
            return True

        def _refuse_early(self) -> None:
            hosts = self.headers.get_all("Host") or []
            if hostname is not None and not all(host_names_loopback(h, hostname) for h in hosts):
                log.debug("agent: refused a request for Host %r", hosts[0][:100])
                raise AgentError("forbidden host", "this agent answers only requests for this machine", "ask for http://127.0.0.1:PORT/")
            if want is not None:
                auth = self.headers.get("Authorization", "")
                offered = auth[7:].strip().encode() if auth.startswith("Bearer ") else b""
                if not hmac.compare_digest(offered, want):
                    raise AgentError("unauthorized", "a token is needed: Authorization: Bearer TOKEN", "the agent's --token or --token-file")
            if self.command in ("PUT", "POST"):
                self._length()

        def _length(self) -> int:
            """The body's size, refused before it is read: none given, chunked, or over the cap."""
            if self.headers.get("Transfer-Encoding"):
                raise AgentError("bad request", "a body must come with a Content-Length, not chunked", "send Content-Length")
            text = self.headers.get("Content-Length")
            if text is None or not text.strip().isdigit():
                raise AgentError("bad request", "a body must come with its Content-Length", "send Content-Length")
            n = int(text)
            kind, _, part = self._route()
            cap = agent.config.max_model_bytes if kind == "model" and part is None else PART_MAX if kind == "model" else JOB_BODY_MAX
            if n > cap:
                raise AgentError(
                    "too large", f"a body of {n:,} bytes is over this route's cap of {cap:,}", "start the agent with a larger --max-model-mb"
                )
            return n

        def _route(self) -> tuple[str, str | None, str | None]:
            """("info" | "jobs" | "model", sha256, part); names that are not a sha256 never go further."""
            path = urlsplit(self.path).path
            if path == f"/{API}/info":
                return "info", None, None
            if path == f"/{API}/jobs":
                return "jobs", None, None
            m = MODELS.match(path)
            if m is None:
                raise AgentError("no such model" if path.startswith(f"/{API}/models/") else "not found", f"no route {path[:100]}", _ROUTES)
            if not SHA256.match(m.group(1)):
                raise AgentError("bad request", "a model is named by its sha256: 64 lowercase hex digits", _ROUTES)
            return "model", m.group(1), m.group(2)

        def finish(self) -> None:
            super().finish()
            if getattr(self, "_unread", False):
                _linger(self.connection)

        # ---- answers
        def _send(self, code: int, body: dict[str, Any], close: bool = False) -> None:
            data = (json.dumps(body) + "\n").encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            except OSError:  # the client went away: only this thread notices
                pass
            if close:
                self.close_connection = True
                self._unread = self.command in ("PUT", "POST")  # a body may be left: see _linger

        def _error(self, exc: AgentError) -> None:
            body: dict[str, Any] = {"ok": False, "error": exc.message, "hint": exc.hint}
            if exc.reply is not None:
                body["reply"] = exc.reply
            self._send(STATUS.get(exc.kind, 404), body, close=True)  # its body may be unread: the connection ends

        def _answer(self, work) -> None:
            try:
                code, body = work()
            except AgentError as exc:
                self._error(exc)
            except Exception as exc:  # noqa: BLE001  (a bug of the agent costs this request, not the agent)
                log.exception("agent: %s %s failed", self.command, self.path[:100])
                self._send(
                    500, {"ok": False, "error": f"the agent failed: {type(exc).__name__}: {exc}", "hint": "see the agent's log"}, close=True
                )
            else:
                self._send(code, body)

        def _read(self, n: int) -> bytes:
            from edge_app.agent.cache import read_exactly

            chunks: list[bytes] = []
            read_exactly(self.rfile.read, n, chunks.append)
            return b"".join(chunks)

        def do_GET(self) -> None:
            def work():
                if self._route()[0] != "info":
                    raise AgentError("not found", f"GET has only /{API}/info", _ROUTES)
                return 200, device_info(agent.config.data).to_json()

            self._answer(work)

        def do_HEAD(self) -> None:
            def work():
                kind, sha, part = self._route()
                if kind != "model" or part is not None:
                    raise AgentError("not found", f"HEAD has only /{API}/models/<sha256>", _ROUTES)
                if not agent.cache.has(sha or ""):
                    raise AgentError("no such model", f"no model {sha} here", "upload it")
                return 200, {"ok": True, "model": sha}

            self._answer(work)

        def do_PUT(self) -> None:
            def work():
                kind, sha, part = self._route()
                if kind != "model" or sha is None:
                    raise AgentError("not found", f"PUT has only /{API}/models/<sha256>[/part]", _ROUTES)
                n = self._length()
                if not agent.uploads.acquire(blocking=False):
                    raise AgentError("busy", f"{MAX_UPLOADS} uploads are under way", "send it again when they are done")
                try:
                    if part is None:
                        agent.cache.store_model(sha, n, self.rfile.read)
                    else:
                        agent.cache.store_part(sha, part, self._read(n))
                finally:
                    agent.uploads.release()
                return 200, {"ok": True, "model": sha, **({"part": part} if part else {})}

            self._answer(work)

        def do_POST(self) -> None:
            def work():
                if self._route()[0] != "jobs":
                    raise AgentError("not found", f"POST has only /{API}/jobs", _ROUTES)
                return 200, agent.job(self._read(self._length()))

            self._answer(work)

        def _refuse(self) -> None:
            self._send(405, {"ok": False, "error": f"method {self.command} not allowed", "hint": _ROUTES}, close=True)

        do_DELETE = do_PATCH = do_OPTIONS = _refuse

    return Handler


def _linger(conn: socket.socket, seconds: float = 2.0, most: int = 1 << 20) -> None:
    """After a refusal that left a body unread: end our side, then drop what the client still sends for a
    moment. Closed at once, the kernel would answer the unread bytes with a reset, and the client could lose
    the refusal itself (the 413 it should read)."""
    import time

    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.5)
        deadline, dropped = time.monotonic() + seconds, 0
        while time.monotonic() < deadline and dropped < most:
            chunk = conn.recv(CHUNK)
            if not chunk:
                break
            dropped += len(chunk)
    except OSError:
        pass


_ROUTES = f"the routes: GET /{API}/info, HEAD|PUT /{API}/models/<sha256>, PUT /{API}/models/<sha256>/model.json|labels.txt, POST /{API}/jobs"
