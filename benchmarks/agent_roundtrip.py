"""Benchmark: what the device agent's round trip adds to a bench (issue 29; target: at most 5%).

    python benchmarks/agent_roundtrip.py [MODEL] [--runs 200] [--reps 21]

On one machine, alternated in one run so both see the same load: `edge-app bench MODEL --runs 200` as
the device's owner would run it (a process, wall time from start to exit), against the same bench asked of
an `edge-app agent` on loopback by the host's client (AgentClient.run: the upload check, the job in the
agent's child process, the JSON reply; wall time of the call). The model is uploaded once before the
timed repetitions, as in a sweep, where each candidate is uploaded once; the first upload is timed apart.
Writes benchmarks/results/agent_roundtrip-<date>.json with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from quick_build import machine  # noqa: E402


def start_agent(cache: Path, token: str) -> tuple[subprocess.Popen, str]:
    log = cache / "agent.log"
    cmd = [sys.executable, "-m", "edge_app", "agent", "--listen", "127.0.0.1:0", "--cache-dir", str(cache / "models"), "--token", token]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"serving (http://127\.0\.0\.1:\d+)/v1/", log.read_text())
        if m:
            return proc, m.group(1)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the agent did not start: {log.read_text()[-2000:]}")


def direct(model: Path, runs: int, threads: int, out: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "edge_app", "bench", str(model), "--runs", str(runs), "--threads", str(threads), "--json", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0, json.loads(out.read_text())


def through_agent(client, model: Path, runs: int, threads: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    reply = client.run("bench", model, {"runs": runs, "threads": threads})
    return time.perf_counter() - t0, reply.result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=str(REPO / "edge_app" / "demo"), help="run folder or .tflite (default: the demo quick model)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    from edge_app.agent.client import AgentClient

    model = Path(args.model)
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        proc, url = start_agent(tmp_path, token)
        try:
            client = AgentClient(url, token)
            first_s, _ = through_agent(client, model, args.runs, args.threads)  # with the upload
            direct(model, args.runs, args.threads, tmp_path / "warm.json")  # page cache, imports
            walls: dict[str, list[float]] = {"direct": [], "agent": []}
            medians: dict[str, list[float]] = {"direct": [], "agent": []}
            for i in range(args.reps):
                order = ("direct", "agent") if i % 2 == 0 else ("agent", "direct")
                for how in order:
                    if how == "direct":
                        s, r = direct(model, args.runs, args.threads, tmp_path / f"d{i}.json")
                    else:
                        s, r = through_agent(client, model, args.runs, args.threads)
                    walls[how].append(s)
                    medians[how].append(r["invoke_ms"]["median"])
                    print(f"rep {i + 1}/{args.reps} {how:6s} {s:6.2f} s", flush=True)
            info = client.info()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    d, a = statistics.median(walls["direct"]), statistics.median(walls["agent"])
    result = {
        "machine": machine(),
        "model": str(model),
        "runs": args.runs,
        "threads": args.threads,
        "reps": args.reps,
        "wall_s": walls,
        "bench_median_ms": medians,
        "direct_median_s": d,
        "agent_median_s": a,
        "added_fraction": a / d - 1,
        "first_call_with_upload_s": first_s,
        "device": info.to_json(),
    }
    print(f"direct {d:.3f} s, through the agent {a:.3f} s: {100 * (a / d - 1):+.1f}% (target <= +5%)")
    out = HERE / "results" / f"agent_roundtrip-{dt.date.today()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
