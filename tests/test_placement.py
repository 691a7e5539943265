"""Delegate placement: which ops the delegate took, which stayed on TFLite's built-in CPU kernels."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_app.cli.main import cli
from edge_app.checks.placement import compiled_placement, describe, placement
from edge_app.checks.targets import Node

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "edge_app" / "demo" / "model_int8.tflite"


def _interpreter(**kw):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(DEMO), num_threads=1, **kw)
    it.allocate_tensors()
    return it


def test_xnnpack_placement_is_read_from_the_interpreter():
    from edge_app.checks.targets import model_ops

    p = placement(_interpreter(), model=DEMO)
    assert p["exposed"] and p["nodes"] == sum(o.count for o in model_ops(DEMO)) == 14 and p["partitions"] >= 1
    assert 0 < p["delegated"] < p["nodes"] and p["delegated"] + sum(p["cpu_ops"].values()) == p["nodes"]
    assert "CONV_2D" not in p["cpu_ops"]
    from importlib.metadata import version

    if version("ai-edge-litert") == "2.3.0":  # measured with it: NiN's int8 3x3/2 average pooling and the softmax stay out
        assert p["cpu_ops"] == {"AVERAGE_POOL_2D": 1, "SOFTMAX": 1} and p["partitions"] == 2
    assert "took %d of 14 nodes" % p["delegated"] in describe(p, "cpu")


def test_no_delegate_at_all_is_a_warning():
    from ai_edge_litert.interpreter import OpResolverType

    p = placement(_interpreter(experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES), model=DEMO)
    assert p["delegated"] == 0 and p["cpu_ops"]["CONV_2D"] == 9
    assert p["warnings"][0].startswith("XNNPACK took no op: TFLite's built-in CPU kernels run everything")


# a compiled model whose softmax the compiler left outside (tensors: 0 input, 1 custom op's output, 2 softmax output)
COMPILED = [Node(0, 0, "edgetpu-custom-op", 32, 1, (0,), (1,)), Node(0, 1, "SOFTMAX", 25, 1, (1,), (2,))]


class _Fake:
    """What a runtime reports after the Edge TPU delegate took the custom op of COMPILED."""

    def __init__(self, with_details=True):
        if with_details:
            self._get_ops_details = lambda: [
                {"index": 0, "op_name": "edgetpu-custom-op", "inputs": [0], "outputs": [1]},
                {"index": 1, "op_name": "SOFTMAX", "inputs": [1], "outputs": [2]},
                {"index": 2, "op_name": "DELEGATE", "inputs": [0], "outputs": [1]},
            ]


@pytest.mark.parametrize("pool2", ["avg", "max", "depthwise"])
def test_nin_cifar_int8_runs_in_one_xnnpack_partition_unless_pool2_is_the_papers_average(pool2):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.export.convert import quantize, to_tflite_int8
    from pipeline.models.nin import ModelConfig, build_model

    qat = quantize(build_model(ModelConfig(width=0.125, dropout=0.0, pool2=pool2)))
    rep = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    qat(rep[:2], training=False)
    tfl = to_tflite_int8(qat, rep)
    it = Interpreter(model_content=tfl, num_threads=1)
    it.allocate_tensors()
    p = placement(it, model=tfl)
    from importlib.metadata import version

    if version("ai-edge-litert") == "2.3.0":  # measured with it (google/XNNPACK#3040: no int8 average pooling)
        want = {"avg": ({"AVERAGE_POOL_2D": 1, "SOFTMAX": 1}, 2)}.get(pool2, ({"SOFTMAX": 1}, 1))
        assert (p["cpu_ops"], p["partitions"]) == want
    assert "CONV_2D" not in p["cpu_ops"] and "DEPTHWISE_CONV_2D" not in p["cpu_ops"]


def test_an_edge_tpu_placement_names_the_ops_outside_it_and_a_runtime_that_says_nothing():
    p = placement(_Fake(), "edgetpu", model=COMPILED)
    assert (p["tpu_custom_ops"], p["delegated"], p["cpu_ops"]) == (1, 1, {"SOFTMAX": 1})
    assert "crosses USB/PCIe" in p["warnings"][0]
    assert describe(p, "edgetpu").startswith("delegate placement: compiled for the Edge TPU; 1 op(s) outside it")
    quiet = placement(_Fake(with_details=False), model=COMPILED)
    assert not quiet["exposed"] and "not exposed by this runtime" in describe(quiet, "cpu")


def test_the_nodes_come_from_the_file_and_only_the_partitions_from_the_interpreter(edge_model):
    """The interpreter is asked only which partitions a delegate took; the nodes are the file's (one op list)."""
    from edge_app.checks.targets import model_nodes

    interp = _interpreter()
    assert placement(interp, model=DEMO) == placement(interp, model=model_nodes(DEMO)) == placement(interp, model=DEMO.read_bytes())
    other = placement(interp, model=edge_model / "model_float32.tflite")  # not the model the interpreter runs
    assert not other["exposed"] and "not the same model" in other["note"]
    missing = placement(interp, model=edge_model / "nope.tflite")
    assert not missing["exposed"] and "not readable from the model file" in describe(missing, "cpu")


def _fake_compiled(dest: Path) -> Path:
    """The demo model with its CONV_2D operator code turned into Coral's custom op: the structure of an
    Edge TPU-compiled model (mapped ops inside `edgetpu-custom-op`, the rest outside), no compiler needed."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    m = fu.read_model(str(DEMO))
    for oc in m.operatorCodes:
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == 3:
            oc.builtinCode = oc.deprecatedBuiltinCode = 32
            oc.customCode = b"edgetpu-custom-op"
    fu.write_model(m, str(dest))
    return dest


def test_a_compiled_model_placement_is_read_from_the_file(tmp_path):
    model = _fake_compiled(tmp_path / "model_int8_edgetpu.tflite")
    p = compiled_placement(model)
    assert p["tpu_custom_ops"] == 9 and p["cpu_ops"] == {"MAX_POOL_2D": 1, "AVERAGE_POOL_2D": 1, "QUANTIZE": 1,
                                                          "MEAN": 1, "SOFTMAX": 1}
    assert compiled_placement(DEMO) is None
    res = CliRunner().invoke(cli, ["info", str(model)])
    assert res.exit_code == 0, res.output
    assert "compiled for the Edge TPU; 5 op(s) outside it" in res.output and "crosses USB/PCIe" in res.output
    res = CliRunner().invoke(cli, ["check-target", str(model), "--runtime", "tflite-runtime==2.14.0"])
    assert res.exit_code == 3 and "Traceback" not in res.output, res.output  # it runs only with the Edge TPU delegate
    assert "unresolved custom op: edgetpu-custom-op" in res.output
    assert res.output.splitlines()[-1] == ("Edge TPU (Coral's rules, no compiler): already compiled for the Edge TPU "
                                           "(what it mapped: edge-app info MODEL)")


def test_info_and_the_run_summary_say_where_the_ops_went(edge_model, tmp_path):
    res = CliRunner().invoke(cli, ["info", str(edge_model), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "delegate placement: XNNPACK (the CPU's default delegate) took" in res.output
    src = tmp_path / "img.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(src), np.full((40, 40, 3), 120, np.uint8))
    res = CliRunner().invoke(cli, ["run", str(edge_model), "--source", str(src), "--threads", "1",
                                   "--summary", str(tmp_path / "s.json"), "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    placed = json.loads((tmp_path / "s.json").read_text())["delegate_placement"]
    assert placed["exposed"] and placed["delegated"] > 0 and "delegate placement:" in res.output


@pytest.mark.slow
def test_tflite_runtime_2_14_exposes_placement_the_same_way(tflite_runtime_214, edge_model):
    code = f"""
from tflite_runtime.interpreter import Interpreter
from edge_app.checks.placement import placement
for name in ("model_int8.tflite", "model_float32.tflite"):
    it = Interpreter(model_path={str(edge_model)!r} + "/" + name, num_threads=1)
    it.allocate_tensors()
    p = placement(it, model={str(edge_model)!r} + "/" + name)
    print(name, p["exposed"], p["nodes"] == p["delegated"] + sum(p["cpu_ops"].values()), p["delegated"])
"""
    out = subprocess.run([str(tflite_runtime_214), "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r.split()[0]: r.split()[1:] for r in out.stdout.strip().splitlines()}
    # measured: tflite-runtime 2.14's XNNPACK takes the whole float model and no op of the int8 one
    assert rows["model_int8.tflite"] == ["True", "True", "0"]
    assert rows["model_float32.tflite"][:2] == ["True", "True"] and int(rows["model_float32.tflite"][2]) > 0
