"""The agent's wire contract, version 1: HTTP/1.1 with JSON bodies, one place for both sides.

Routes (every one wants ``Authorization: Bearer TOKEN`` when the agent has a token; off loopback it
must have one):

* ``GET  /v1/info`` -> :class:`DeviceInfo` as JSON (who the device is, its runtimes, its data aliases).
* ``HEAD /v1/models/<sha256>`` -> 200 if the agent holds that model, else 404 (so a host uploads once).
* ``PUT  /v1/models/<sha256>`` body: the .tflite bytes (Content-Length required, at most the agent's
  cap). The agent hashes what it received and refuses a body whose sha256 is not the name.
* ``PUT  /v1/models/<sha256>/<part>`` with part ``model.json`` or ``labels.txt``: the model's sidecar
  and labels, kept beside it (eval needs the labels; the sidecar says how to feed the model).
* ``POST /v1/jobs`` body: a :class:`JobRequest` as JSON -> a :class:`JobReply` as JSON. The request
  waits for its job; one job at a time (a second gets 409 and ``busy``).

Errors are JSON too: ``{"ok": false, "error": "...", "hint": "..."}`` with the status saying the kind
(:data:`STATUS`). Models are named by content only, so no name from the network ever becomes a path.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

API = "v1"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODEL_PARTS = ("model.json", "labels.txt")
DEFAULT_PORT = 8765

#: the jobs an agent runs, each the `edge-app` command of that name on the device's own runtime
COMMANDS = ("bench", "eval", "check-target", "info", "check-input")

#: the options each job takes (anything else is refused), with their types; "data" names a folder by the
#: alias the device's owner gave it (`edge-app agent --data ALIAS=DIR`), never a path from the network
OPTIONS: dict[str, dict[str, type]] = {
    "bench": {"runs": int, "threads": int, "runtime": str, "delegate": str},
    "eval": {"data": str, "limit": int, "threads": int, "runtime": str, "delegate": str, "resize": str},
    "check-target": {"runtime": str},
    "info": {"runtime": str},
    "check-input": {"source": str, "frames": int, "runtime": str},
}

#: the HTTP status of each kind of refusal
STATUS = {
    "bad request": 400,  # malformed JSON, unknown command or option, an option of the wrong type
    "unauthorized": 401,  # no token, or not the agent's
    "forbidden host": 403,  # a Host header that names neither loopback nor this machine, on loopback
    "no such model": 404,  # upload it first (PUT /v1/models/<sha256>)
    "busy": 409,  # a job is running: one at a time
    "too large": 413,  # an upload over the agent's cap
    "job failed": 422,  # the job ran and failed (a model the runtime cannot load or run): the agent goes on
    "timeout": 504,  # the job passed its time limit and was killed
}


@dataclass(frozen=True)
class JobRequest:
    command: str
    model: str  # sha256 of a model the agent holds
    options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None  # at most the agent's own limit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceInfo:
    hostname: str
    board: str | None  # /proc/device-tree/model ("Raspberry Pi 5 Model B Rev 1.0"), else the DMI product name
    machine: str  # platform.machine(): aarch64, x86_64
    system: str  # "Linux 6.6.31+rpt-rpi-2712" and the distribution's PRETTY_NAME where known
    python: str
    runtimes: dict[str, str]  # installed TFLite runtimes and their versions
    soc_temp_c: float | None
    throttled: str | None  # vcgencmd get_throttled, on a Raspberry Pi
    data: tuple[str, ...]  # the aliases of the labelled folders this device offers for eval
    agent: str = API

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeviceInfo:
        return cls(**{**d, "data": tuple(d.get("data", ()))})


@dataclass(frozen=True)
class JobReply:
    ok: bool
    command: str
    model: str
    result: dict[str, Any]  # what `edge-app <command> --json` writes, measured on the device
    device: DeviceInfo  # who measured it, as it was when the job ended (temperature, throttling)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "device": self.device.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobReply:
        return cls(**{**d, "device": DeviceInfo.from_json(d["device"])})
