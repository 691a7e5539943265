"""The host's side of the agent: :class:`AgentClient` speaks :mod:`edge_app.agent.protocol` to one
`edge-app agent`, with the standard library only (http.client, json; the sha256 of edge_app.fsutil).

Every failure is one :class:`~edge_app.errors.AgentError` naming the agent's address and what to do:
:class:`~edge_app.errors.AgentUnreachable` when nothing answers (refused, timed out, the connection
dropped: the device went away), else ``kind`` is the agent's refusal (a key of ``STATUS``, with the
agent's own error text), ``"bad address"`` (a URL this client cannot use) or ``"bad reply"`` (an
answer that is not the protocol's: another program on that port, or another version).

Plain HTTP only: the agent is for a trusted network; elsewhere reach it through an SSH tunnel.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_app.agent.protocol import API, COMMANDS, DEFAULT_PORT, MODEL_PARTS, SHA256, STATUS, DeviceInfo, JobReply, JobRequest
from edge_app.errors import AgentError, AgentUnreachable, ModelLoadError
from edge_app.fsutil import sha256_file

TOKEN_ENV = "NIN_DEVICE_TOKEN"
MAX_REPLY = 16 * 1024 * 1024  # a reply is a few KB of JSON; more is no agent's
_KIND = {status: kind for kind, status in STATUS.items()}
TUNNEL = f"ssh -N -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} DEVICE, then --device 127.0.0.1:{DEFAULT_PORT}"
START = "start `edge-app agent` on the device (it prints the address to give here) and check HOST:PORT"
SAME_VERSION = "is it an `edge-app agent` of this version? install the same edge-app on the device and this host"
_HINTS = {
    "bad request": "if the command is right, the host and the device run different edge-app versions: install the same on both",
    "forbidden host": f"give the address the agent serves on (its hostname or IP), or reach it through an SSH tunnel ({TUNNEL})",
    "no such model": "run the same command again (the agent may have restarted since the upload)",
    "busy": "another job is running on the device (one at a time): wait for it, then run the same command again",
    "too large": "the model is over the agent's upload cap (see `edge-app agent --help`)",
    "job failed": "the device's runtime cannot run it: see `edge-app check-target MODEL` on the device",
    "timeout": "the job passed the agent's time limit: ask for fewer runs or images, or give the agent a longer limit",
}


def parse_url(url: str) -> tuple[str, int]:
    """``http://HOST:PORT``, ``HOST:PORT`` or ``HOST`` (port 8765) -> (host, port); IPv6 in brackets."""
    text = str(url).strip()
    bad = f"{url!r} is not an agent's address"
    form = f"give HOST:PORT or http://HOST:PORT, where `edge-app agent` listens (port {DEFAULT_PORT} by default)"
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme != "http":
        raise AgentError(
            "bad address", f"{bad}: the agent speaks plain http, not {parts.scheme}", f"{form}; elsewhere use an SSH tunnel ({TUNNEL})"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or port == 0 or parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise AgentError("bad address", bad, form)
    return parts.hostname, port or DEFAULT_PORT


def _known(cls: type, d: Any) -> dict[str, Any]:
    """The fields of ``cls`` in ``d`` (a newer agent may send more); TypeError where ``d`` is no object."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} is not an object")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class AgentClient:
    """One agent at ``url``; ``token`` (default: env NIN_DEVICE_TOKEN) is sent as ``Authorization: Bearer``.
    ``timeout``: seconds for connecting and for each short request; a job may take ``job_timeout`` (or its own
    ``timeout_s``) more."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, job_timeout: float = 1800.0) -> None:
        self.host, self.port = parse_url(url)
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        if self.token is not None and not (self.token and all("!" <= ch <= "~" for ch in self.token)):
            raise AgentError(
                "unauthorized",
                f"the token for {self.url} is empty or has characters an HTTP header cannot carry",
                f"give the token `edge-app agent` printed at its start (--device-token or {TOKEN_ENV})",
            )
        self.timeout, self.job_timeout = float(timeout), float(job_timeout)

    def __repr__(self) -> str:  # never the token
        return f"AgentClient({self.url!r})"

    # ---------------------------------------------------------------- the routes

    def info(self) -> DeviceInfo:
        """Who the device is (GET /v1/info)."""
        d = self._call("GET", f"/{API}/info", what="the device's description")
        try:
            info = DeviceInfo.from_json(_known(DeviceInfo, d))
            if not isinstance(info.hostname, str) or not isinstance(info.runtimes, dict):
                raise TypeError("hostname or runtimes of another type")
        except (TypeError, KeyError, ValueError) as exc:
            raise self._bad_reply(f"/{API}/info: {exc}") from None
        if info.agent != API:
            raise AgentError(
                "bad reply", f"the agent at {self.url} speaks protocol {info.agent!r}, this host {API!r}", "install the same edge-app on both"
            )
        return info

    def has_model(self, sha: str) -> bool:
        """Does the agent hold the model of this sha256 (HEAD /v1/models/<sha256>)?"""
        status, data = self._request("HEAD", f"/{API}/models/{_sha(sha)}")
        if status == 404:
            return False
        self._check(status, data, "the model lookup")
        return True

    def upload(
        self, model_path: str | os.PathLike, sidecar_path: str | os.PathLike | None = None, labels_path: str | os.PathLike | None = None
    ) -> str:
        """Put the model on the agent unless it has it (by sha256), and its sidecar and labels (small: always);
        returns the model's sha256."""
        model_path = Path(model_path)
        sha = sha256_file(model_path)
        if not self.has_model(sha):
            with open(model_path, "rb") as f:
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(os.fstat(f.fileno()).st_size)}
                self._call("PUT", f"/{API}/models/{sha}", f, headers, what=f"the upload of {model_path.name}", json_reply=False)
        for part, p in {"model.json": sidecar_path, "labels.txt": labels_path}.items():
            if p is not None:
                assert part in MODEL_PARTS
                body = Path(p).read_bytes()
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
                self._call("PUT", f"/{API}/models/{sha}/{part}", body, headers, what=f"the upload of {part}", json_reply=False)
        return sha

    def job(self, request: JobRequest) -> JobReply:
        """Run one job on the device and wait for its reply (POST /v1/jobs)."""
        if request.command not in COMMANDS:
            raise ValueError(f"no job {request.command!r}; the agent runs {', '.join(COMMANDS)}")
        body = json.dumps(request.to_json()).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        wait = (request.timeout_s or self.job_timeout) + self.timeout
        what = f"the {request.command} job"
        d = self._call("POST", f"/{API}/jobs", body, headers, what=what, timeout=wait)
        try:
            reply = JobReply(**{**_known(JobReply, d), "device": DeviceInfo.from_json(_known(DeviceInfo, d.get("device")))})
            if not isinstance(reply.result, dict) or not isinstance(reply.ok, bool):
                raise TypeError("result is not an object")
        except (TypeError, KeyError, ValueError) as exc:
            raise self._bad_reply(f"{what}: {exc}") from None
        if (reply.command, reply.model) != (request.command, request.model):
            raise self._bad_reply(f"{what} answered for {reply.command} of model {str(reply.model)[:12]}")
        if not reply.ok:
            error = reply.result.get("error") or "no reason given"
            raise AgentError("job failed", f"{what} failed on {reply.device.hostname} ({self.url}): {error}", _HINTS["job failed"], reply=d)
        return reply

    def run(self, command: str, model: str | os.PathLike, options: dict[str, Any] | None = None, timeout_s: float | None = None) -> JobReply:
        """Upload ``model`` (a run folder or a .tflite, with the model.json and labels.txt beside it) and run
        ``command`` on it; a result that names another model than the one sent is refused."""
        from edge_app.contract.files import LABELS_TXT, SIDECAR_NAME, resolve_model_path

        path = resolve_model_path(model)
        with open(path, "rb") as f:
            if f.read(8)[4:] != b"TFL3":  # e.g. a .keras file: the device runs TFLite models only
                raise ModelLoadError(f"{path} is not a TFLite model (no TFL3 identifier)", "give a run folder or a .tflite file")
        beside = {n: path.parent / n for n in (SIDECAR_NAME, LABELS_TXT) if (path.parent / n).is_file()}
        sha = self.upload(path, beside.get(SIDECAR_NAME), beside.get(LABELS_TXT))
        reply = self.job(JobRequest(command, sha, dict(options or {}), timeout_s))
        if reply.result.get("model_sha256", sha) != sha:
            raise self._bad_reply(f"the {command} job measured another model ({str(reply.result['model_sha256'])[:12]}) than {path.name}")
        return reply

    # ---------------------------------------------------------------- HTTP

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float | None = None):
        """(status, body bytes); what goes wrong on the way is an AgentUnreachable or a bad reply."""
        wait = timeout or self.timeout
        conn = http.client.HTTPConnection(self.host, self.port, timeout=wait)
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        try:
            try:
                conn.request(method, path, body=body, headers=sent)
            except (BrokenPipeError, ConnectionResetError) as exc:
                try:  # refused mid-body (e.g. over the upload cap): its answer may be there to read
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise exc from None
            else:
                resp = conn.getresponse()
            data = resp.read(MAX_REPLY + 1) if method != "HEAD" else b""
            return resp.status, data
        except (OSError, http.client.IncompleteRead) as exc:
            if isinstance(exc, (TimeoutError, socket.timeout)):  # two classes before Python 3.10, which a device may have
                raise AgentUnreachable(f"the agent at {self.url} did not answer within {wait:g} s", f"is the device up? {START}") from None
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AgentUnreachable(f"no agent answers at {self.url} ({why})", START) from None
        except http.client.HTTPException as exc:
            raise self._bad_reply(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    def _call(self, method, path, body=None, headers=None, *, what: str, timeout=None, json_reply: bool = True) -> dict[str, Any]:
        status, data = self._request(method, path, body, headers, timeout)
        self._check(status, data, what)
        return self._json(data, what) if json_reply else {}

    def _json(self, data: bytes, what: str) -> dict[str, Any]:
        if len(data) > MAX_REPLY:
            raise self._bad_reply(f"{what}: a reply over {MAX_REPLY // (1024 * 1024)} MB")
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self._bad_reply(f"{what}: not JSON") from None
        if not isinstance(d, dict):
            raise self._bad_reply(f"{what}: JSON but not an object")
        return d

    def _check(self, status: int, data: bytes, what: str) -> None:
        """A refusal as one AgentError: the agent's own error and hint where it gave them."""
        if 200 <= status < 300:
            return
        kind = _KIND.get(status, f"HTTP {status}")
        try:
            body = json.loads(data.decode("utf-8")) if data else {}
        except (UnicodeDecodeError, ValueError):
            body = {}
        body = body if isinstance(body, dict) else {}
        reply = body.get("reply") if isinstance(body.get("reply"), dict) else None  # a job that ran and failed: what it wrote
        error = " ".join(str(body.get("error") or kind).split())[:500]
        hint = " ".join(str(body.get("hint") or _HINTS.get(kind, SAME_VERSION)).split())[:500]
        if kind == "unauthorized":  # what to do is this host's: the agent's hint speaks of its own flags
            given = "no token was given" if not self.token else "this host's token is not the agent's"
            raise AgentError(
                kind,
                f"the agent at {self.url} refused {what}: {error} ({given})",
                f"give the token `edge-app agent` printed at its start with --device-token or {TOKEN_ENV}",
            )
        if kind in ("job failed", "timeout"):  # the agent's error says which job and why
            raise AgentError(kind, f"the agent at {self.url}: {error if body.get('error') else f'{what}: {kind}'}", hint, reply=reply)
        raise AgentError(kind, f"the agent at {self.url} refused {what}: {error}", hint, reply=reply)

    def _bad_reply(self, what: str) -> AgentError:
        return AgentError("bad reply", f"{self.url} did not answer as an `edge-app agent` does ({what})", SAME_VERSION)


def _sha(sha: str) -> str:
    if not SHA256.match(str(sha)):
        raise ValueError(f"{sha!r} is not a sha256 (64 lowercase hex digits)")
    return sha
