"""`edge-app run --serve [HOST:]PORT`: a live preview for headless devices, standard library only.

Routes (nothing else is served: no files, so no path traversal):

    /              the page: the annotated stream, top-k, FPS and stage latencies (refreshed from /status)
    /stream.mjpg   the annotated frames as MJPEG (multipart/x-mixed-replace)
    /frame.jpg     the latest annotated frame; its own numbers in the X-Frame-Status header (JSON), and with
                   ``?after=N`` it waits (up to 1 s) for a frame newer than X-Frame-Seq N. The page shows
                   these, so the picture and the side panel always show the same frame.
    /status        JSON: frame, FPS, top-k, per-stage ms, source, model, runtime, delegate

The camera loop only hands over the newest frame's data (a reference and a closure, no copy,
no drawing, no JPEG): drawing and encoding happen in the HTTP threads, once per frame however
many viewers there are, and a client that reads slowly or vanishes only ever holds up its own
thread. Each connection has a socket timeout, so a dead one ends.

Access: on a loopback address only this machine can connect, and only requests whose Host names it
(127.0.0.0/8, ::1, localhost or its hostname, any port) are answered: a web page whose own name was
made to resolve to 127.0.0.1 (DNS rebinding) gets 403, not the camera. On any other address the camera
would stream to everyone on the network, so every route wants a token (``--serve-token``, or one
made up and printed once in the URL): ``?token=`` in the URL (which also sets a cookie for the
page's own requests), that cookie, or ``Authorization: Bearer``; compared in constant time.
``--serve-insecure`` serves without one, with a warning.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edge_app.camera.page import PAGE as PAGE  # the page (tests read it from here)
from edge_app.errors import ServeError

log = logging.getLogger("edge_app")

BOUNDARY = "nin-frame"
SOCKET_TIMEOUT = 10.0  # seconds a client may take to accept data before its connection is dropped
TOKEN_COOKIE = "edge_app_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def host_names_loopback(header: str, hostname: str = "") -> bool:
    """Does a Host header (any port) name this machine: a loopback address, localhost, or ``hostname``?
    On loopback this is what keeps a DNS-rebinding page (evil.example.com resolved to 127.0.0.1) out:
    its browser still sends ``Host: evil.example.com``."""
    h = header.strip().lower()
    if h.startswith("["):  # [IPv6]:port
        name = h[1 : h.find("]")] if "]" in h else ""
    else:
        name = h.rpartition(":")[0] if h.count(":") == 1 else h
    name = name.rstrip(".")
    if not name:
        return False
    if is_loopback(name):
        return True
    try:
        mapped = ipaddress.ip_address(name)
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:  # ::ffff:127.0.0.1
            return mapped.ipv4_mapped.is_loopback
    except ValueError:
        pass
    hostname = hostname.lower().rstrip(".")
    return bool(hostname) and name in (hostname, hostname.split(".")[0])


def access_token(host: str, token: str | None, insecure: bool) -> str | None:
    """The token the preview on ``host`` will want (None: open), warning where it is reachable from
    other machines. A given token is always used; off loopback one is made up unless ``insecure``."""
    if is_loopback(host):
        return token
    if insecure and token is None:
        log.warning(
            "the preview on %s streams the camera to anyone who can reach this machine, without a token "
            "(--serve-insecure); leave that out to require one",
            host,
        )
        return None
    log.warning(
        "the preview on %s is reachable from other machines; it wants the token in the URL printed below "
        "(keep it to people who may see the camera)",
        host,
    )
    return token or secrets.token_urlsafe(16)


def parse_address(spec: str) -> tuple[str, int]:
    """``PORT`` (binds 127.0.0.1), ``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535 or (sep and not host):
        raise ServeError(f"--serve {spec!r} is not an address", "give PORT or HOST:PORT, e.g. 8080 or 0.0.0.0:8080")
    return host, n


class Preview:
    """The newest frame, shared by the loop (one writer) and the HTTP threads (readers)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seq = 0
        self._render: Callable[[], Any] | None = None
        self._status: dict[str, Any] = {"frame": None}
        self._jpeg: tuple[int, bytes, dict[str, Any]] = (0, b"", {})
        self._encode_lock = threading.Lock()
        self.closed = False
        self.streams = 0  # open /stream.mjpg connections
        self._pages: dict[str, float] = {}  # the pages polling /frame.jpg: their id -> when last seen

    @property
    def viewers(self) -> int:
        now = time.monotonic()
        with self._cond:
            return self.streams + sum(now - t < 3.0 for t in self._pages.values())

    def seen(self, page: str) -> None:
        """A page's poll (its random id): it counts as a viewer for 3 s."""
        now = time.monotonic()
        with self._cond:
            if len(self._pages) > 256:  # forget the pages that went away (bounded whatever clients send)
                self._pages = {k: t for k, t in self._pages.items() if now - t < 3.0}
            if len(self._pages) <= 256:
                self._pages[page[:32]] = now

    def publish(self, render: Callable[[], Any], status: dict[str, Any]) -> None:
        """Called by the loop for every frame: ``render()`` draws the annotated BGR frame when asked."""
        with self._cond:
            self._seq += 1
            self._render, self._status = render, status
            self._cond.notify_all()

    def status(self) -> dict[str, Any]:
        with self._cond:
            status = dict(self._status)
        return dict(status, viewers=self.viewers)

    def wait(self, after: int, timeout: float = 1.0) -> int:
        """The sequence number of a frame newer than ``after`` (or ``after`` on timeout/close)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after or self.closed, timeout)
            return self._seq

    def jpeg(self, quality: int = 80) -> tuple[int, bytes, dict[str, Any]]:
        """The newest frame as JPEG (encoded at most once per frame), with that frame's own status: the
        numbers drawn on the picture and those beside it then come from one frame, not two."""
        import cv2

        with self._encode_lock:
            with self._cond:
                seq, render, status = self._seq, self._render, self._status
            if render is None:
                return 0, b"", {}
            if self._jpeg[0] != seq:
                ok, buf = cv2.imencode(".jpg", render(), [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    return seq, b"", status  # not kept: the next request tries again
                self._jpeg = (seq, buf.tobytes(), status)
            return self._jpeg

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def _handler(preview: Preview, token: str | None, hostname: str | None = None):
    """``hostname``: served on loopback, answer only requests whose Host names this machine (None: any)."""
    want = token.encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT
        server_version = "edge-app"

        def log_message(self, fmt: str, *args: Any) -> None:  # keep stderr for the loop's own messages
            log.debug("preview %s: " + fmt, self.client_address[0], *args)

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            hosts = self.headers.get_all("Host") or []  # none: an HTTP/1.0 tool, not a browser
            if hostname is not None and not all(host_names_loopback(h, hostname) for h in hosts):
                self.close_connection = True
                bound = self.server.server_address
                addr, port = (str(bound[0]), bound[1]) if isinstance(bound, tuple) else ("127.0.0.1", "")
                here = f"[{addr}]" if ":" in addr else addr
                log.debug("preview: refused a request for Host %r", hosts[0][:100])
                self._send(403, f"this preview answers only requests for this machine: open http://{here}:{port}/\n".encode(), "text/plain")
                return False
            return True

        def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if getattr(self, "_cookie", False):  # the page's own requests (stream, status) then carry it
                self.send_header("Set-Cookie", f"{TOKEN_COOKIE}={quote(token or '')}; Path=/; HttpOnly; SameSite=Strict")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def _authorised(self) -> tuple[bool, bool]:
            """(may see this, came with ?token= so set the cookie)"""
            if want is None:
                return True, False
            url = urlsplit(self.path)
            offered = parse_qs(url.query).get("token", [])
            via_query = bool(offered)
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                offered.append(auth[7:].strip())
            cookie = SimpleCookie()
            try:
                cookie.load(self.headers.get("Cookie", ""))
            except Exception:  # noqa: BLE001  (a malformed Cookie header is no token)
                pass
            if TOKEN_COOKIE in cookie:
                offered.append(unquote(cookie[TOKEN_COOKIE].value))  # set quoted, see _send
            ok = any(hmac.compare_digest(o.encode(), want) for o in offered)
            return ok, ok and via_query

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            ok, set_cookie = self._authorised()
            if not ok:
                self._send(401, b"a token is needed: open the URL edge-app printed at start (.../?token=...)\n", "text/plain")
                return
            self._cookie = set_cookie
            try:
                if path in ("/", "/index.html"):
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                elif path == "/status":
                    self._send(200, json.dumps(preview.status()).encode(), "application/json")
                elif path == "/frame.jpg":
                    query = parse_qs(urlsplit(self.path).query)
                    after = query.get("after", [""])[0]
                    if query.get("page"):
                        preview.seen(query["page"][0])
                    if after.isascii() and after.isdigit() and len(after) < 19:
                        preview.wait(int(after))  # at most 1 s: a stopped loop still gets an answer
                    seq, data, status = preview.jpeg()
                    if data:
                        self._send(
                            200,
                            data,
                            "image/jpeg",
                            {"X-Frame-Seq": str(seq), "X-Frame-Status": json.dumps(dict(status, viewers=preview.viewers))},
                        )
                    else:
                        self._send(503, b"no frame yet\n", "text/plain")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, b"not found: this server has /, /stream.mjpg, /frame.jpg and /status\n", "text/plain")
            except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                self.close_connection = True  # the client went away or stopped reading: only this thread notices

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command == "HEAD":
                return
            with preview._cond:
                preview.streams += 1
            try:
                seq = 0
                while not preview.closed:
                    new = preview.wait(seq)
                    if new == seq:
                        continue
                    seq, data, _ = preview.jpeg()
                    if not data:
                        continue
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode())
                    self.wfile.write(data + b"\r\n")
                    self.wfile.flush()
            finally:
                with preview._cond:
                    preview.streams -= 1

        def _refuse(self) -> None:
            self._send(405, b"method not allowed\n", "text/plain")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    return Handler


class PreviewServer:
    """The HTTP server in a daemon thread; ``close()`` stops it and ends every stream."""

    def __init__(self, address: str, token: str | None = None) -> None:
        import socket

        host, port = parse_address(address)
        self.preview = Preview()
        self.token = token

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            self.httpd = Server((host, port), _handler(self.preview, token, socket.gethostname() if is_loopback(host) else None))
        except OSError as exc:
            raise ServeError(
                f"cannot serve the preview on {host}:{port}: {exc.strerror or exc}", "choose another port (--serve PORT) or address"
            ) from None
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="edge-app-preview", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={quote(self.token)}" if self.token else "")

    def close(self) -> None:
        self.preview.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def frame_status(
    frame_index: int,
    source: str,
    best: list[dict],
    ms: dict[str, float],
    fps: float,
    model: str,
    runtime: str,
    delegate: str,
    heatmap: dict | None = None,
) -> dict[str, Any]:
    return {
        "frame": frame_index,
        "time": round(time.time(), 3),
        "source": source,
        "top": best,
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "fps": round(fps, 2),
        "model": model,
        "runtime": runtime,
        "delegate": delegate,
        **({"heatmap": heatmap} if heatmap else {}),
    }
