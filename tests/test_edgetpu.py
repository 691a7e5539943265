"""Edge TPU: the rule checker on real models (the device side's, edge_app.checks.edgetpu, which needs no
TensorFlow), and the compiler wiring with a stand-in edgetpu_compiler (the real one runs only on x86-64
Linux and is not installable here)."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_cli import BLOCK_TF  # TensorFlow, Keras, tfmot and the training side cannot be imported
from click.testing import CliRunner

from edge_app.checks.edgetpu import check_model, format_check
from edge_app.cli.main import cli as edge_cli
from pipeline.cli.main import cli
from pipeline.export.edgetpu import parse_compiler_output

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "edge_app" / "demo" / "model_int8.tflite"

COMPILER_STDOUT = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 61 ms.

Input model: {model}
Input size: 80.30KiB
Output model: {out}
Output size: 152.41KiB
On-chip memory used for caching model parameters: 98.25KiB
On-chip memory remaining for caching model parameters: 7.86MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 14
Operation log: {log}
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""
COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Input: {model}
Output: {out}

Operator                       Count      Status

AVERAGE_POOL_2D                1          Mapped to Edge TPU
CONV_2D                        9          Mapped to Edge TPU
MAX_POOL_2D                    1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
QUANTIZE                       1          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
"""


def _stand_in(folder, behaviour="ok"):
    """An executable named edgetpu_compiler that behaves like the real one's command line:
    edgetpu_compiler --show_operations --out_dir DIR MODEL -> DIR/<stem>_edgetpu.tflite and .log."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "edgetpu_compiler"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys, time
        from pathlib import Path
        Path({str(folder / 'argv.json')!r}).write_text(json.dumps(sys.argv[1:]))
        behaviour = {behaviour!r}
        if behaviour == "fail":
            print("ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'", file=sys.stderr)
            sys.exit(1)
        if behaviour == "hang":
            time.sleep(30)
        args = sys.argv[1:]
        out_dir = Path(args[args.index("--out_dir") + 1])
        model = Path(args[-1])
        out = out_dir / (model.stem + "_edgetpu.tflite")
        log = out_dir / (model.stem + "_edgetpu.log")
        if behaviour != "silent":
            out.write_bytes(model.read_bytes())  # a stand-in: the real one adds an edgetpu-custom-op
            log.write_text({COMPILER_LOG!r}.format(model=model.name, out=out.name))
        print({COMPILER_STDOUT!r}.format(model=model.name, out=out.name, log=log.name))
        """))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.fixture
def run_copy(fast_run_copy):
    """A private copy of the session's fast run (real run-folder files), so these tests can change it."""
    return fast_run_copy


def test_check_maps_every_op_of_our_int8_model(edge_model):
    res = check_model(edge_model / "model_int8.tflite")
    assert res.fully_mapped and res.on_tpu == len(res.ops) >= 10, format_check(res)
    ops = [v.op for v in res.ops]
    assert ops.count("CONV_2D") == 9 and {"MEAN", "SOFTMAX", "MAX_POOL_2D", "AVERAGE_POOL_2D"} <= set(ops)
    assert not res.problems


def test_check_sends_a_float_model_to_the_cpu(edge_model):
    res = check_model(edge_model / "model_float32.tflite")
    assert res.on_tpu == 0 and not res.fully_mapped
    assert "float tensor" in res.ops[0].reason
    assert all("partitions once" in v.reason for v in res.ops[1:])
    text = "\n".join(format_check(res))
    assert "0 of" in text and "input is float32" in text


def test_the_check_runs_where_tensorflow_cannot_be_imported(tmp_path):
    """A Coral user has no TensorFlow: the check, and `edge-app check-target` giving its verdict, need none."""
    code = BLOCK_TF + f"""
from click.testing import CliRunner
from edge_app.checks.edgetpu import check_model, verdict
from edge_app.cli.main import cli
print(verdict(check_model({str(DEMO)!r})))
res = CliRunner().invoke(cli, ["check-target", {str(DEMO)!r}, "--runtime", "tflite-runtime==2.14.0", "--runtime", "edgetpu"])
assert res.exit_code == 0, res.output
print(res.output.splitlines()[-1])
bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'pipeline')]
assert not bad, bad
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "14 of 14 operations would run on the Edge TPU — all of them"
    assert lines[-1] == "Edge TPU (Coral's rules, no compiler): 14 of 14 operations would run on the Edge TPU — all of them"


def test_edge_app_check_target_gives_the_edge_tpu_verdict(edge_model, tmp_path):
    model, n = edge_model / "model_int8.tflite", len(check_model(edge_model / "model_int8.tflite").ops)
    res = CliRunner().invoke(edge_cli, ["check-target", str(model), "--runtime", "tflite-runtime==2.14.0",
                                        "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    said = f"{n} of {n} operations would run on the Edge TPU — all of them"
    assert res.output.splitlines()[-1] == f"Edge TPU (Coral's rules, no compiler): {said}"
    assert "op by op" not in res.output
    assert json.loads((tmp_path / "t.json").read_text())["edgetpu"] == {"on_tpu": n, "total": n, "verdict": said}
    # asked for by name: op by op too (the op-table runtimes then only when named)
    res = CliRunner().invoke(edge_cli, ["check-target", str(model), "--runtime", "edgetpu"])
    assert res.exit_code == 0, res.output
    assert "Edge TPU, op by op:" in res.output and "  0  CONV_2D            Edge TPU" in res.output
    assert "tflite-runtime==2.14.0" not in res.output and res.output.splitlines()[-1].endswith(said)
    # a float model: where the CPU takes over
    res = CliRunner().invoke(edge_cli, ["check-target", str(edge_model / "model_float32.tflite")])
    assert res.exit_code == 0, res.output
    assert "Edge TPU (Coral's rules, no compiler): 0 of" in res.output and "from #0 CONV_2D on, the CPU (float tensor" in res.output


def test_the_training_side_keeps_only_the_compiler():
    import pipeline.export.edgetpu as compiler

    assert not hasattr(compiler, "check_model") and not hasattr(compiler, "SUPPORTED_OPS")
    assert callable(compiler.compile_model) and callable(compiler.find_compiler)


def _keras_tflite(tmp_path, layers_fn, dynamic=False):
    import tensorflow as tf
    import tf_keras as keras

    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, layers_fn(keras, inp))
    rep = np.random.default_rng(0).random((8, 1, 16, 16, 3), dtype=np.float32)
    if dynamic:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        fn = tf.function(lambda x: model(x))
        conv = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function(tf.TensorSpec([1, 16, 16, 3], tf.float32))], model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in rep)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    path = tmp_path / "m.tflite"
    path.write_bytes(conv.convert())
    return path


def test_first_unsupported_op_sends_the_rest_to_the_cpu(tmp_path):
    # LEAKY_RELU has an int8 TFLite kernel but is not an Edge TPU operation
    path = _keras_tflite(tmp_path, lambda k, x: k.layers.Conv2D(4, 3)(k.layers.LeakyReLU(0.1)(k.layers.Conv2D(8, 3)(x))))
    res = check_model(path)
    ops = [(v.op, v.device) for v in res.ops]
    i = [op for op, _ in ops].index("LEAKY_RELU")
    assert all(d == "tpu" for _, d in ops[:i]) and all(d == "cpu" for _, d in ops[i:]), ops
    assert res.ops[i].reason == "not an Edge TPU operation"
    assert "partitions once" in res.ops[i + 1].reason
    assert f"from #{i} LEAKY_RELU on, the CPU" in "\n".join(format_check(res))


def test_dynamic_batch_is_a_problem(tmp_path):
    path = _keras_tflite(tmp_path, lambda k, x: k.layers.Conv2D(4, 3, activation="relu")(x), dynamic=True)
    res = check_model(path)
    assert res.problems and "dynamic shape" in res.problems[0] and not res.fully_mapped


def test_check_cli_on_a_run_folder_records_it(run_copy, tmp_path):
    out = tmp_path / "check.json"
    res = CliRunner().invoke(cli, ["edgetpu", "check", str(run_copy), "--json", str(out), "--strict"])
    assert res.exit_code == 0, res.output
    assert "would run on the Edge TPU — all of them" in res.output
    assert json.loads(out.read_text())["fully_mapped"] is True
    assert json.loads((run_copy / "edgetpu.json").read_text())["check"]["on_tpu"] > 0
    assert "## Edge TPU" in (run_copy / "report.md").read_text()
    res = CliRunner().invoke(cli, ["edgetpu", "check", str(run_copy / "model_float32.tflite"), "--strict"])
    assert res.exit_code == 1 and "--strict" in res.output


def test_parse_compiler_output():
    out = COMPILER_STDOUT.format(model="m.tflite", out="m_edgetpu.tflite", log="m_edgetpu.log")
    log = COMPILER_LOG.format(model="m.tflite", out="m_edgetpu.tflite")
    assert parse_compiler_output(out, log) == {"version": "16.0.384591198", "on_tpu": 14, "total": 14, "subgraphs": 1}
    partial = log.replace("SOFTMAX                        1          Mapped to Edge TPU",
                          "SOFTMAX                        1          More than one subgraph is not supported")
    assert parse_compiler_output("", partial)["on_tpu"] == 13


def test_compile_with_a_stand_in_compiler(run_copy, tmp_path, monkeypatch):
    exe = _stand_in(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    res = CliRunner().invoke(cli, ["edgetpu", "compile", str(run_copy)])
    assert res.exit_code == 0, res.output
    assert "14 of 14 operations mapped to the Edge TPU (1 subgraph(s))" in res.output
    argv = json.loads((exe.parent / "argv.json").read_text())
    assert argv[0] == "--show_operations" and argv[1] == "--out_dir" and argv[-1] == str(run_copy / "model_int8.tflite")
    compiled = run_copy / "model_int8_edgetpu.tflite"
    assert compiled.is_file() and (run_copy / "model_int8_edgetpu.log").is_file()
    assert not [p for p in run_copy.iterdir() if p.name.startswith("edgetpu-")]  # the temporary folder is gone
    rec = json.loads((run_copy / "edgetpu.json").read_text())["compile"]
    assert rec["ops_on_tpu"] == 14 and rec["compiler_version"] == "16.0.384591198"
    assert json.loads((run_copy / "report.json").read_text())["edgetpu"]["compile"]["ops_total"] == 14
    assert "edgetpu_compiler 16.0.384591198: 14 of 14" in (run_copy / "report.md").read_text()
    assert "model_int8_edgetpu.tflite" in json.loads((run_copy / "model.json").read_text())["files"]


def test_edge_app_picks_the_compiled_model_only_on_the_edge_tpu(run_copy, tmp_path, monkeypatch, caplog):
    from edge_app.model import open_model
    from edge_app.contract.files import resolve_model_path

    (run_copy / "model_int8_edgetpu.tflite").write_bytes((run_copy / "model_int8.tflite").read_bytes())
    assert resolve_model_path(run_copy, "edgetpu").name == "model_int8_edgetpu.tflite"
    assert resolve_model_path(run_copy, "cpu").name == "model_int8.tflite"
    # no Edge TPU here: --fallback-cpu must run the plain model (a compiled one needs the TPU's custom op)
    m = open_model(run_copy, delegate="edgetpu", fallback_cpu=True)
    assert m.path.name == "model_int8.tflite" and m.delegate == "cpu (fallback)"


@pytest.mark.parametrize("behaviour, needle", [
    ("fail", "failed (exit 1)"),
    ("silent", "wrote no model_int8_edgetpu.tflite"),
    ("hang", "did not finish in 2 s"),
])
def test_compiler_failures_are_clear(run_copy, tmp_path, behaviour, needle):
    exe = _stand_in(tmp_path / "bin", behaviour)
    res = CliRunner().invoke(cli, ["edgetpu", "compile", str(run_copy), "--compiler", str(exe), "--timeout", "2"])
    assert res.exit_code == 1 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (run_copy / "model_int8_edgetpu.tflite").exists()
    assert not [p for p in run_copy.iterdir() if p.name.startswith("edgetpu-")]


def test_no_compiler_is_a_clear_error(run_copy, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    res = CliRunner().invoke(cli, ["edgetpu", "compile", str(run_copy)])
    assert res.exit_code == 1 and "edgetpu_compiler is not on PATH" in res.output and "edgetpu-compiler" in res.output
    res = CliRunner().invoke(cli, ["edgetpu", "check", str(run_copy / "nope.tflite")])
    assert res.exit_code == 1 and "no model at" in res.output


def test_convert_target_edgetpu(run_copy, tmp_path, monkeypatch):
    """convert --target edgetpu: the convert stage redone for uint8 input and output, the check, then
    the compiler (stand-in) — and the run's evaluation still runs the plain int8 model."""
    from edge_app.runtime import load_interpreter

    state0 = json.loads((run_copy / "state.json").read_text())
    exe = _stand_in(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    res = CliRunner().invoke(cli, ["convert", str(run_copy), "--target", "edgetpu"])
    assert res.exit_code == 0, res.output
    interp, _ = load_interpreter(run_copy / "model_int8.tflite", num_threads=1)
    assert interp.get_input_details()[0]["dtype"] == np.uint8 and interp.get_input_details()[0]["quantization"][1] == 0
    assert {d["dtype"] for d in interp.get_output_details()} == {np.uint8}
    assert [tuple(d["shape_signature"]) for d in interp.get_input_details()] == [(1, 32, 32, 3)]
    cfg = json.loads((run_copy / "config.json").read_text())["convert"]
    assert cfg["target"] == "edgetpu" and cfg["io_type"] == "uint8"
    sc = json.loads((run_copy / "model.json").read_text())
    assert sc["input"]["dtype"] == "uint8" and "model_int8_edgetpu.tflite" in sc["files"]
    assert sc["files"]["model_int8.tflite"] == hashlib.sha256((run_copy / "model_int8.tflite").read_bytes()).hexdigest()
    rec = json.loads((run_copy / "edgetpu.json").read_text())
    assert rec["check"]["fully_mapped"] and rec["compile"]["ops_on_tpu"] == 14
    report = json.loads((run_copy / "report.json").read_text())
    assert report["edgetpu"]["check"]["on_tpu"] == rec["check"]["on_tpu"]
    state = json.loads((run_copy / "state.json").read_text())  # redone from convert on; earlier stages untouched
    assert state["train"] == state0["train"] and state["qat"] == state0["qat"]
    assert state["convert"]["at"] >= state0["convert"]["at"] and state["evaluate"]["done"] and state["evaluate"]["seconds"] > 0
    # the evaluation ran the new uint8 model: the report's figure is what its predictions give
    preds = np.load(run_copy / "predictions.npz")
    assert report["variants"]["qat_int8"]["top1"] == pytest.approx(float(np.mean(preds["qat_int8"].argmax(1) == preds["y"])))


def test_build_target_edgetpu_refuses_int8_io(tmp_path):
    res = CliRunner().invoke(cli, ["build", "--target", "edgetpu", "--io-type", "int8", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "uint8" in res.output
