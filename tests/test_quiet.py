"""Quiet by default: the native libraries' chatter is filtered from stderr; ``--verbose`` shows it;
progress in a log file is plain lines."""

import io
import subprocess
import sys

from click.testing import CliRunner

from edge_app.quiet import LineFilter, wants_verbose

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1795745245.834290   16951 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    b"GPU will not be used.\n",
    b"E0000 00:00:1795745027.001208   16301 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers\n",
    b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
]
KEPT = [
    b"Error: the model file is truncated\n",
    b"02:04:10 INFO no GPU visible to TensorFlow: training on the CPU (2 cores)\n",
    b"F0000 00:00:1795745027.001208   16301 some_op.cc:52] Check failed: x == y\n",  # fatal: always shown
    b"E0000 00:00:1795745027.001208   16301 conv_ops.cc:52] something this list does not know\n",
    b"Traceback (most recent call last):\n",
    b"WARNING: your own warning\n",
]


def test_the_filter_drops_only_the_known_noise():
    f = LineFilter()
    assert f.feed(b"".join(NOISE)) == b""
    assert f.dropped == len(NOISE)
    assert f.feed(b"".join(KEPT)) == b"".join(KEPT)


def test_the_filter_passes_a_progress_bar_at_once_and_holds_only_what_may_be_noise():
    f = LineFilter()
    assert f.feed(b"\r 3/10 [===>    ]") == b"\r 3/10 [===>    ]"  # no newline, but a bar: now
    assert f.feed(b"I0000 00:00:17.5 1 x.cc:1] hal") == b""  # may be noise: held
    assert f.feed(b"f of it\nnext") == b"next"
    assert f.feed(b"WARN") == b""
    assert f.feed(b"ING: All log messages before absl::InitializeLog() is called are written to STDERR\n") == b""
    assert f.feed(b"WARN") == b""
    assert f.flush() == b"WARN"  # the end came: what was held and is not noise is passed on


def _run(code: str, *argv: str) -> subprocess.CompletedProcess:
    prog = ("import os, sys\nfrom edge_app.quiet import entry_point\nentry_point(sys.argv[1:])\n" + code)
    env = {k: v for k, v in __import__("os").environ.items() if k != "NIN_VERBOSE"}
    return subprocess.run([sys.executable, "-c", prog, *argv], capture_output=True, timeout=60, env=env)


def test_the_entry_point_filters_descriptor_2_and_verbose_does_not():
    code = ("os.write(2, {noise!r})\nprint('python says hi', file=sys.stderr)\nos.write(2, b'native error\\n')\n"
            "sys.exit(3)").format(noise=b"".join(NOISE))
    quiet = _run(code)
    assert quiet.returncode == 3
    assert quiet.stderr == b"python says hi\nnative error\n"
    loud = _run(code, "--verbose")
    assert loud.returncode == 3
    assert all(line in loud.stderr for line in NOISE) and b"native error" in loud.stderr


def test_what_is_written_just_before_os_exit_is_not_lost_after_restore():
    code = "from edge_app.quiet import restore\nos.write(2, b'last words\\n')\nrestore()\nos._exit(1)"
    r = _run(code)
    assert (r.returncode, r.stderr) == (1, b"last words\n")


def test_a_crash_s_last_words_still_reach_the_terminal():
    """The filter is another process: what a process writes just before it aborts is not lost with it."""
    r = _run("os.write(2, b'F0000 00:00:1.5 7 op.cc:1] Check failed: x\\n')\nos.abort()")
    assert r.returncode == -6 and b"Check failed: x" in r.stderr


def test_ctrl_c_and_sigterm_leave_the_filter_running():
    """The filter runs in its own session, so a terminal's Ctrl-C does not reach it, and it ignores
    SIGINT and SIGTERM (systemd sends SIGTERM to every process of a service): they are meant for the
    command, whose own last message must still get through."""
    code = ("import signal, time\nfrom edge_app import quiet\ntime.sleep(0.5)\npid = quiet._active['child'].pid\n"
            "os.kill(pid, signal.SIGINT)\nos.kill(pid, signal.SIGTERM)\ntime.sleep(0.3)\n"
            "print('stopped by SIGTERM: bye', file=sys.stderr)\nassert os.getsid(pid) != os.getsid(0)")
    r = _run(code)
    assert r.returncode == 0 and r.stderr == b"stopped by SIGTERM: bye\n"


def test_a_terminal_is_still_a_terminal_behind_the_filter():
    """Progress bars and rich tables ask whether stderr is a terminal: behind the filter's pipe the answer
    must stay the one the user's terminal gives (tqdm's bar on a terminal, plain lines in a log)."""
    import os
    import pty

    code = ("from edge_app.quiet import stderr_is_tty\nfrom pipeline.progress import PlainProgress, progress\n"
            "print(sys.stderr.isatty(), stderr_is_tty(), isinstance(progress(range(3), total=3), PlainProgress))")
    master, slave = pty.openpty()
    try:
        prog = "import os, sys\nfrom edge_app.quiet import entry_point\nentry_point([])\n" + code
        env = {k: v for k, v in os.environ.items() if k != "NIN_VERBOSE"}
        r = subprocess.run([sys.executable, "-c", prog], stdout=subprocess.PIPE, stderr=slave, timeout=60, env=env)
    finally:
        os.close(slave)
        os.close(master)
    assert r.stdout.split() == [b"False", b"True", b"False"]  # a pipe now, a terminal to the user: tqdm's bar
    logged = _run(code)
    assert logged.stdout.split() == [b"False", b"False", b"True"]  # a log file: plain lines


def test_verbose_is_read_from_the_command_line_or_the_environment(monkeypatch):
    monkeypatch.delenv("NIN_VERBOSE", raising=False)
    assert wants_verbose(["build", "--verbose"]) and wants_verbose(["--verbose", "info"])
    assert not wants_verbose(["run", "--", "--verbose"])  # after "--" it is an argument, not ours
    monkeypatch.setenv("NIN_VERBOSE", "1")
    assert wants_verbose([])
    monkeypatch.setenv("NIN_VERBOSE", "0")
    assert not wants_verbose([])


def test_every_command_of_both_clis_takes_verbose():
    from edge_app.cli.main import cli as edge_cli
    from pipeline.cli.main import cli as pipeline_cli

    for group in (edge_cli, pipeline_cli):
        assert CliRunner().invoke(group, ["--verbose", "--help"]).exit_code == 0
        for name, command in group.commands.items():
            assert any(p.name == "verbose" for p in command.params), name
            assert CliRunner().invoke(group, [name, "--verbose", "--help"]).exit_code == 0, name


def test_progress_in_a_log_file_is_plain_lines():
    from pipeline.progress import PlainProgress

    out = io.StringIO()
    bar = PlainProgress(range(5), 5, "decoding x.tar", "img", every=0.0, stream=out)
    assert list(bar) == list(range(5))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("decoding x.tar: 1/5 img (20%)") and "\r" not in out.getvalue()
    assert lines[-1].startswith("decoding x.tar: 5/5 img (100%)")
    quiet = io.StringIO()
    list(PlainProgress(range(5), 5, "fast", "img", every=3600.0, stream=quiet))
    assert quiet.getvalue() == ""  # a loop that ends before the first interval says nothing
