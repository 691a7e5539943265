"""The device's own state around a run: SoC temperature and throttling flags (a Raspberry Pi slows
down when hot or under-powered, and then a model's FPS says more about the Pi than the model).

Read from ``/sys/class/thermal/thermal_zone0/temp`` (millidegrees C; most Linux SoCs) and
``vcgencmd get_throttled`` (Raspberry Pi firmware: bit 0 under-voltage now, 1 frequency capped now,
2 throttled now, 3 soft temperature limit now; bits 16-19 the same "since boot"). Absent elsewhere:
:func:`read` returns what it found, and the run says once that there was nothing to read.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
THROTTLE_BITS = {0: "under-voltage", 1: "frequency capped", 2: "throttled", 3: "soft temperature limit"}


def decode_throttled(value: int) -> dict[str, list[str]]:
    """``get_throttled``'s bits as words: what holds now, and what happened since boot."""
    return {
        "now": [w for b, w in THROTTLE_BITS.items() if value & (1 << b)],
        "since_boot": [w for b, w in THROTTLE_BITS.items() if value & (1 << (b + 16))],
    }


def read(thermal: Path | None = None, vcgencmd: str | None = None) -> dict[str, Any]:
    """{"soc_temp_c": ..., "throttled": "0x...", "throttled_flags": {...}} with what this device has."""
    out: dict[str, Any] = {}
    try:
        out["soc_temp_c"] = round(int((thermal or THERMAL).read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        pass
    tool = vcgencmd or shutil.which("vcgencmd")
    if tool:
        try:
            text = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=2).stdout.strip()
            value = int(text.split("=", 1)[1], 16)  # "throttled=0x50000"
            out["throttled"] = hex(value)
            out["throttled_flags"] = decode_throttled(value)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    return out


def describe(start: dict[str, Any], end: dict[str, Any]) -> str:
    """One line for the summary, or the one-time note that this device has nothing to read."""
    if not start and not end:
        return "device health: no SoC temperature (/sys/class/thermal) or throttling flags (vcgencmd) on this device"
    parts = []
    if "soc_temp_c" in start or "soc_temp_c" in end:
        parts.append(f"SoC {start.get('soc_temp_c', '?')} -> {end.get('soc_temp_c', '?')} °C")
    if "throttled" in end:
        flags = end["throttled_flags"]
        parts.append(
            f"throttled {end['throttled']}"
            + (f" (now: {', '.join(flags['now'])})" if flags["now"] else "")
            + (f" (since boot: {', '.join(flags['since_boot'])})" if flags["since_boot"] else "")
        )
    return "device health: " + "; ".join(parts)
