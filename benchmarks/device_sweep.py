"""Benchmark: `nin-pipeline sweep --device` against `--device-latency` files made by hand (issue 29; target:
the same pick).

    python benchmarks/device_sweep.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

1. A small real sweep on CIFAR-10 (nin-cifar, widths 0.125/0.25/0.5 x 24/32 px, 1 float + 1 QAT epoch on
   a 5,000-image subset, 2,000 test images: the candidates only need to differ in latency and accuracy).
2. An `edge-app agent` on loopback (with a token) is "the device": the same sweep with `--device URL`
   measures every candidate through it. The latency budget for the pick is then set just below the most
   accurate candidate's device latency (halfway, geometrically, to the next faster one), so the pick is a choice.
3. By hand, as the docs said before the agent: `edge-app bench RUN --json hand/<run>.json` for each
   candidate on the same device (the agent's defaults: 300 runs, the device's cores), then the same sweep
   with `--device-latency hand/`. Same budget.
Compares the picks and the Pareto fronts, and each candidate's latency both ways. Writes
benchmarks/results/device_sweep-<date>.json with the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from agent_roundtrip import start_agent  # noqa: E402
from quick_build import machine  # noqa: E402


def sweep(base: list[str], *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "pipeline", "sweep", *base, *extra], cwd=REPO, stdout=subprocess.PIPE, text=True)
    print(out.stdout[-3000:], flush=True)
    if out.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {out.returncode}): {' '.join(extra)}")
    return json.loads((Path(base[1]) / "sweep.json").read_text())


def latencies(data: dict) -> dict[str, float]:
    return {r["run"]: r["int8_ms_1_thread"] for r in data["candidates"]}


def budget_below_best(data: dict) -> float:
    """A budget the most accurate candidate misses: the geometric middle of its device latency and the
    nearest one below it, so the pick is a real choice (the best within the budget, not the best of all)."""
    ms = latencies(data)
    best = max(data["candidates"], key=lambda r: r["qat_int8_top1"])["run"]
    below = [v for k, v in ms.items() if v < ms[best]]
    return round(math.sqrt(ms[best] * max(below)), 4) if below else ms[best] / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "device-sweep")
    args = ap.parse_args()
    base = ["--out", str(args.out), "--archs", "nin-cifar", "--widths", "0.125,0.25,0.5", "--input-sizes", "24,32"]
    base += ["--dataset", "cifar10", "--data-dir", str(args.data_dir), "--epochs", "1", "--qat-epochs", "1"]
    base += ["--limit-train", "5000", "--limit-test", "2000", "--seed", "0"]
    host = sweep(base)  # builds the candidates (resumes)
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_agent(Path(tmp), token)
        try:
            agent = sweep(base, "--device", url, "--device-token", token)
            budget = budget_below_best(agent)
            agent = sweep(base, "--device", url, "--device-token", token, "--latency-budget", str(budget))  # measured: reused
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    hand_dir = args.out.parent / f"{args.out.name}-hand"
    hand_dir.mkdir(exist_ok=True)
    for r in host["candidates"]:
        run = args.out / r["run"]
        subprocess.run(
            [sys.executable, "-m", "edge_app", "bench", str(run), "--json", str(hand_dir / f"{r['run']}.json")],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=600,
        )
    hand = sweep(base, "--device-latency", str(hand_dir), "--latency-budget", str(budget))
    a, h = latencies(agent), latencies(hand)
    result = {
        "machine": machine(),
        "sweep": base,
        "latency_budget_ms": budget,
        "agent": {"pick": agent["pick"], "pareto": agent["pareto"], "ms": a},
        "hand": {"pick": hand["pick"], "pareto": hand["pareto"], "ms": h},
        "host_ms": latencies(host),
        "agent_over_hand": {k: a[k] / h[k] for k in a if k in h},
        "same_pick": agent["pick"]["winner"] == hand["pick"]["winner"],
        "same_front": agent["pareto"] == hand["pareto"],
    }
    print(f"budget {budget} ms: pick through the agent {agent['pick']['winner']}, by hand {hand['pick']['winner']}")
    print("fronts the same" if result["same_front"] else f"fronts differ: {agent['pareto']} / {hand['pareto']}")
    out = HERE / "results" / f"device_sweep-{dt.date.today()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
