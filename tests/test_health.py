"""Honest figures from the device: capture-to-result latency beside FPS, and the SoC's temperature
and throttling flags at the start and end of a run (a hot or under-powered Pi slows down)."""

import json

from click.testing import CliRunner

from edge_app import health


def test_throttling_bits_in_words():
    flags = health.decode_throttled(0x50005)
    assert flags == {"now": ["under-voltage", "throttled"], "since_boot": ["under-voltage", "throttled"]}
    assert health.decode_throttled(0) == {"now": [], "since_boot": []}


def test_read_what_a_pi_has_and_say_once_when_there_is_nothing(tmp_path):
    thermal = tmp_path / "temp"
    thermal.write_text("61234\n")
    tool = tmp_path / "vcgencmd"
    tool.write_text("#!/bin/sh\necho throttled=0x50000\n")
    tool.chmod(0o755)
    got = health.read(thermal, str(tool))
    assert got == {"soc_temp_c": 61.2, "throttled": "0x50000",
                   "throttled_flags": {"now": [], "since_boot": ["under-voltage", "throttled"]}}
    line = health.describe({"soc_temp_c": 48.0}, got)
    assert "SoC 48.0 -> 61.2 °C" in line and "since boot: under-voltage, throttled" in line
    assert health.read(tmp_path / "none", str(tmp_path / "no-tool")) == {}
    assert "no SoC temperature" in health.describe({}, {})


def test_the_summary_gives_capture_to_result_latency_and_the_device_s_health(edge_model, tmp_path, monkeypatch):
    from conftest import write_video

    from edge_app.cli.main import cli

    monkeypatch.setattr(health, "THERMAL", tmp_path / "temp")
    (tmp_path / "temp").write_text("50000\n")
    clip = write_video(tmp_path / "clip.avi", 12)
    summary = tmp_path / "summary.json"
    res = CliRunner().invoke(cli, ["run", str(edge_model), "--source", str(clip), "--threads", "1",
                                   "--output", str(tmp_path / "out.jsonl"), "--summary", str(summary)])
    assert res.exit_code == 0, res.output
    d = json.loads(summary.read_text())
    lat, ms = d["capture_to_result_ms"], d["ms"]
    # from the frame's read to its result: each frame's is at least its own invoke, so the medians too
    assert lat["median"] >= ms["invoke"]["median"] and lat["p95"] >= lat["median"]
    assert d["device_health"]["start"]["soc_temp_c"] == 50.0
    assert "capture-to-result ms median/p95" in res.output and "SoC 50.0 -> 50.0 °C" in res.output
