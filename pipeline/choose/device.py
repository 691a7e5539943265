"""Measuring on the device itself through its `edge-app agent` (edge_app.agent.client): the host's side of
`sweep --device`, `compare --device` and `evaluate --device`.

Each result is what the device's `edge-app bench --json` / `eval --json` writes, stored in the run folder
(device_bench.json, eval.json) with the device's identity and the model's sha256, atomically as it comes:
a device that goes away mid-sweep loses nothing finished, and the same command measures only the rest
(a folder measured on that device, with those options, for that very model is not measured again).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.agent.client import AgentClient
from edge_app.agent.protocol import DeviceInfo
from edge_app.contract.files import DEMO_DIR, DEVICE_BENCH_JSON, EVAL_JSON, INT8_TFLITE
from edge_app.errors import AgentError, AgentUnreachable

IDENTITY = ("hostname", "board", "machine")  # what makes two measurements the same device's
STORED = {"bench": DEVICE_BENCH_JSON, "eval": EVAL_JSON}  # where a job's result is kept in the run folder

Echo = Callable[[str, bool], None]  # (text, end the line)
JOB_FAILED = ("job failed", "timeout")  # the device could not run that model: said, and the others still measured


@dataclass(frozen=True)
class Device:
    client: AgentClient
    info: DeviceInfo

    @property
    def name(self) -> str:
        return self.info.hostname

    def describe(self) -> str:
        return f"{self.info.hostname} ({self.info.board or self.info.machine}, {self.client.url})"

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self.info, k) for k in IDENTITY}


def connect(url: str, token: str | None = None, data: str | None = None) -> Device:
    """The agent at ``url``, asked who it is (so a wrong address or token fails before any work);
    ``data``: a folder alias it must offer for eval."""
    client = AgentClient(url, token)
    info = client.info()
    if data is not None and data not in info.data:
        offers = f"it offers {', '.join(info.data)}" if info.data else "it offers none"
        raise AgentError(
            "no such data",
            f"{info.hostname} ({client.url}) has no labelled folder {data!r} for eval ({offers})",
            "give one of its aliases, or start its agent with `edge-app agent --data ALIAS=DIR`",
        )
    return Device(client, info)


def stored(path: Path, sha: str, dev: Device, options: dict[str, Any]) -> dict[str, Any] | None:
    """The result kept at ``path`` if it is this device's, with these options, for the model of ``sha``."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    agent = d.get("agent") if isinstance(d, dict) else None
    if not isinstance(agent, dict) or d.get("model_sha256") != sha or agent.get("options") != options:
        return None
    measured_by = agent.get("device")
    if not isinstance(measured_by, dict) or {k: measured_by.get(k) for k in IDENTITY} != dev.identity():
        return None  # another device's figure (or one that does not say whose)
    return d


def _figure(command: str, result: dict[str, Any]) -> float:
    """The figure a table takes from a job's result: bench's median ms, eval's top-1."""
    try:
        v = float(result["invoke_ms"]["median"]) if command == "bench" else float(result["top1"])
    except (KeyError, TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < 0 or (command == "eval" and v > 1):
        raise AgentError(
            "bad reply",
            f"the device's {command} result has no usable {'invoke_ms median' if command == 'bench' else 'top1'}",
            "is the agent of this version? install the same edge-app on the device and this host",
        )
    return v


def job_result(dev: Device, command: str, model: str | Path, options: dict[str, Any]) -> dict[str, Any]:
    """Run ``command`` on ``model`` on the device: its result, with who measured it and how."""
    reply = dev.client.run(command, model, options)
    result = dict(reply.result)
    if command in STORED:
        _figure(command, result)
    agent = {"url": dev.client.url, "device": reply.device.to_json(), "options": options, "seconds": reply.seconds}
    return {**result, "agent": agent}


def measure(dev: Device, folder: Path, command: str, options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``command`` ("bench" or "eval") on the run folder's int8 model, kept in the folder as soon as it is
    done; a result kept before for the same device, options and model is reused. (result, measured now)."""
    from edge_app.fsutil import atomic_write_text, sha256_file

    from pipeline.errors import RunError

    model = Path(folder) / INT8_TFLITE
    if not model.is_file():
        raise RunError(f"{folder} has no {INT8_TFLITE} to measure on the device", f"build it first (`nin-pipeline build --out {folder}`)")
    path = Path(folder) / STORED[command]
    prior = stored(path, sha256_file(model), dev, options)
    if prior is not None:
        return prior, False
    d = job_result(dev, command, folder, options)
    atomic_write_text(path, json.dumps(d, indent=2) + "\n")
    return d, True


def measure_all(dev: Device, named: list[tuple[str, Path]], echo: Echo, eval_alias: str | None = None) -> list[Path]:
    """Bench (and with ``eval_alias``, eval) every run folder on the device, a line each:
    ``measuring NAME on HOST (3/6) ... 0.41 ms``. The device going away ends it with one message that keeps
    what was measured and says to run the same command again. A model the device cannot run (its job failed
    or timed out) is said and left out: the table, the front and the pick are the device's. Returns the
    device_bench.json of every folder measured (a folder's file from another device or model is not one)."""
    n, failed = len(named), []
    for i, (name, folder) in enumerate(named, 1):
        echo(f"measuring {name} on {dev.name} ({i}/{n}) ... ", False)
        try:
            bench, fresh = measure(dev, folder, "bench", {})
            said = f"{_figure('bench', bench):.2f} ms"
            if eval_alias is not None:
                try:
                    ev, fresh_eval = measure(dev, folder, "eval", {"data": eval_alias})
                    said += f", top-1 {100 * _figure('eval', ev):.2f}% on {eval_alias}"
                    fresh = fresh or fresh_eval
                except AgentError as exc:
                    if exc.kind not in JOB_FAILED:
                        raise
                    said, fresh = f"{said}, eval failed: {exc.message}", True
        except AgentUnreachable:
            echo("the device went away", True)
            raise AgentUnreachable(
                f"{dev.describe()} went away while measuring {name}: {i - 1} of {n} measured, kept in their run folders",
                "start `edge-app agent` there again and run the same command: it measures only the rest",
            ) from None
        except AgentError as exc:
            if exc.kind not in JOB_FAILED:
                echo("failed", True)
                raise
            echo(f"failed: {exc.message}", True)
            failed.append(name)
            continue
        except Exception:
            echo("failed", True)
            raise
        echo(said + ("" if fresh else " (measured before)"), True)
    if failed:
        echo(f"not measured on {dev.name}, left out of the table, the front and the pick: {', '.join(failed)}", True)
    return [Path(folder) / DEVICE_BENCH_JSON for name, folder in named if name not in failed]


def with_device(recs: list[dict], folders: list[Path], dev: Device, echo: Echo, eval_alias: str | None = None) -> list[dict]:
    """The records with the device's latency in place of this host's (the host's kept beside it) and, with
    ``eval_alias``, its top-1 (compare's eval.json column): measured now, or kept from before."""
    from pipeline.choose import compare
    from pipeline.choose.sweep import device_latencies, with_device_latency

    measured = measure_all(dev, [(r["run"], Path(f)) for r, f in zip(recs, folders)], echo, eval_alias)
    recs = compare.records(folders) if eval_alias is not None else recs  # read again: the eval.json files just written
    return with_device_latency(recs, folders, device_latencies(measured))


def evaluate_on_device(model: Path, dev: Device, alias: str, limit: int | None = None, threads: int | None = None) -> tuple[dict, list[str]]:
    """`nin-pipeline evaluate MODEL --device URL --device-eval ALIAS`: the eval job on the device's folder.
    A run folder keeps the result as its eval.json (compare shows it beside the host's top-1)."""
    from edge_app.fsutil import atomic_write_text

    options: dict[str, Any] = {"data": alias, **({"limit": limit} if limit else {}), **({"threads": threads} if threads else {})}
    r = job_result(dev, "eval", model, options)
    top5 = f", top-5 {100 * float(r['top5']):.2f}%" if isinstance(r.get("top5"), (int, float)) else ""
    images = r.get("images")
    lines = [
        f"{Path(model).name} on {dev.describe()}, {r.get('runtime', '?')} {r.get('delegate', 'cpu')}: "
        f"{f'{images:,}' if isinstance(images, int) else '?'} images of its folder {alias}: top-1 {100 * _figure('eval', r):.2f}%{top5}"
    ]
    if Path(model).is_dir() and Path(model).resolve() != DEMO_DIR.resolve():
        atomic_write_text(Path(model) / EVAL_JSON, json.dumps(r, indent=2) + "\n")
        lines.append(f"eval: {Path(model) / EVAL_JSON}")
    return r, lines
