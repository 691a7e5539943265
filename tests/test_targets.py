"""`check-target`: every op with its version, and whether each target runtime will load the model."""

import importlib.util
import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_app.cli.main import cli as edge_cli
from edge_app.errors import ModelLoadError
from edge_app.checks.targets import OP_TABLE, _Buf, check_target, load_with, model_nodes, model_ops

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "edge_app" / "demo" / "model_int8.tflite"


def with_op_version(src: Path, dest: Path, op: str, version: int) -> Path:
    """A copy of ``src`` whose operator code for ``op`` claims ``version`` (patched in place: the field
    is there when the version is not the default 1)."""
    data = bytearray(src.read_bytes())
    b = _Buf(bytes(data))
    (index,) = [i for i, o in enumerate(model_ops(src)) if o.name == op]
    pos = b.field(b.tables(b.u32(0), 1)[index], 2)
    assert pos is not None, f"{op} has the default version 1: nothing to patch"
    struct.pack_into("<i", data, pos, version)
    dest.write_bytes(bytes(data))
    return dest


def test_ops_are_read_from_the_flatbuffer_as_tensorflow_reads_them():
    from tensorflow.lite.tools import flatbuffer_utils

    ops = model_ops(DEMO)
    m = flatbuffer_utils.read_model(str(DEMO))
    assert [(o.code, o.version) for o in ops] == [(max(c.builtinCode, c.deprecatedBuiltinCode), c.version)
                                                  for c in m.operatorCodes]
    assert sum(o.count for o in ops) == len(m.subgraphs[0].operators)
    assert {o.name for o in ops} >= {"CONV_2D", "MEAN", "SOFTMAX"}


def test_the_file_lists_the_nodes_as_the_interpreter_numbers_them(edge_model):
    """The one op list (read from the file) is the interpreter's own: the same nodes, names and tensors."""
    from edge_app.runtime import load_interpreter

    for path in (DEMO, edge_model / "model_int8.tflite", edge_model / "model_float32.tflite"):
        interp, _ = load_interpreter(path, num_threads=1)
        theirs = [(o["index"], o["op_name"], tuple(map(int, o["inputs"])), tuple(map(int, o["outputs"])))
                  for o in interp._get_ops_details() if o["op_name"] != "DELEGATE"]
        assert [(n.index, n.name, n.inputs, n.outputs) for n in model_nodes(path)] == theirs, path
        assert sum(o.count for o in model_ops(path)) == len(model_nodes(path, None))


def test_a_file_that_is_not_a_model_is_one_clear_error(tmp_path):
    (tmp_path / "x.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="not a TFLite model"):
        model_ops(tmp_path / "x.tflite")
    data = DEMO.read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[:200])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        model_ops(tmp_path / "cut.tflite")


def test_the_release_tables_agree_with_the_probed_runtimes():
    t = json.loads(OP_TABLE.read_text())
    assert t["builtin_names"]["3"] == "CONV_2D" and t["builtin_names"]["9"] == "FULLY_CONNECTED"
    src, probed = t["runtimes"]["tflite-runtime==2.14.0"], t["probed"]["tflite-runtime==2.14.0"]
    assert "4dacf3f368eb7965e9b5c3bbdd5193986081c3b2" in src["source"] and src["complete"]
    assert len(probed["ops"]) >= 20
    for op, versions in probed["ops"].items():  # the numbers read from the source are the runtime's own
        assert src["ops"][op] == versions, op
    assert "a4dfb8d1a71385bd6d122e4f27f86dcebb96712d" in t["runtimes"]["tflite-runtime==2.5.0.post1"]["source"]


def test_the_generator_parses_every_form_of_addbuiltin():
    spec = importlib.util.spec_from_file_location("op_versions", REPO / "scripts" / "op_versions.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = """
  AddBuiltin(BuiltinOperator_ABS, Register_ABS(), /* min_version = */ 1,
             /* max_version = */ 4);
  AddBuiltin(BuiltinOperator_HARD_SWISH, Register_HARD_SWISH());
  AddBuiltin(BuiltinOperator_FAKE_QUANT, Register_FAKE_QUANT(), 1, 2);
  AddBuiltin(BuiltinOperator_AVERAGE_POOL_2D, Register_AVERAGE_POOL_2D(),
             /* min_version */ 1,
             /* max_version */ 3);
  AddBuiltin(BuiltinOperator_IF, tflite::ops::builtin::Register_IF());
  AddBuiltin(BuiltinOperator_BROADCAST_TO, Register_BROADCAST_TO(),
             /* min_version = */ 2,
             /* max_version = */ 3);
""" + "\n".join(f"  AddBuiltin(BuiltinOperator_OP{i}, Register_OP{i}());" for i in range(50))
    ops = gen.parse_register_cc(text)
    assert ops["ABS"] == [1, 2, 3, 4] and ops["HARD_SWISH"] == [1] and ops["FAKE_QUANT"] == [1, 2]
    assert ops["AVERAGE_POOL_2D"] == [1, 2, 3] and ops["IF"] == [1] and ops["BROADCAST_TO"] == [2, 3]
    with pytest.raises(SystemExit, match="register.cc"):
        gen.parse_register_cc("AddBuiltin(BuiltinOperator_ABS, Register_ABS());")


def test_the_demo_model_loads_everywhere():
    r = check_target(DEMO, ["tflite-runtime==2.14.0", "tflite-runtime==2.5.0.post1"], here=("ai-edge-litert",))
    assert [(t["runtime"].split()[0], t["loads"]) for t in r["targets"]] == [
        ("ai-edge-litert", True), ("tflite-runtime==2.14.0", True), ("tflite-runtime==2.5.0.post1", True)]


def test_an_op_version_too_new_is_named_with_what_to_do(tmp_path):
    # CONV_2D version 8: ai-edge-litert 2.3 has it, tflite-runtime 2.14 stops at 7, 2.5 at 5
    model = with_op_version(DEMO, tmp_path / "v8.tflite", "CONV_2D", 8)
    res = CliRunner().invoke(edge_cli, ["check-target", str(model), "--runtime", "tflite-runtime==2.14.0",
                                        "--runtime", "tflite-runtime==2.5.0.post1", "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 3, res.output
    assert "tflite-runtime==2.14.0: WILL NOT LOAD" in res.output and "NO (has <= 7)" in res.output
    assert "CONV_2D version 8: tflite-runtime==2.14.0 has CONV_2D versions 1-7, the model uses 8: upgrade" in res.output
    r = json.loads((tmp_path / "t.json").read_text())
    loads = {t["runtime"].split()[0]: t["loads"] for t in r["targets"]}
    assert loads["ai-edge-litert"] and not loads["tflite-runtime==2.14.0"] and not loads["tflite-runtime==2.5.0.post1"]
    # version 9 is beyond the installed runtime too: the runtime's own refusal is read back
    model = with_op_version(DEMO, tmp_path / "v9.tflite", "CONV_2D", 9)
    (here,) = check_target(model, (), here=("ai-edge-litert",))["targets"]
    res = CliRunner().invoke(edge_cli, ["check-target", str(model), "--runtime", "tflite-runtime==2.14.0"])
    assert res.exit_code == 3 and "Traceback" not in res.output, res.output  # nothing here loads it: the Edge TPU unchecked
    assert res.output.splitlines()[-1] == "Edge TPU (Coral's rules, no compiler): not checked: no TFLite runtime here loads the model"
    assert here["loads"] is False and here["problems"][0]["op"] == "CONV_2D" and here["problems"][0]["version"] == 9
    from importlib.metadata import version

    from edge_app.checks.targets import _known

    probed = (_known(f"ai-edge-litert {version('ai-edge-litert')}") or {}).get("ops", {}).get("CONV_2D")
    assert here["problems"][0]["runtime_versions"] == probed  # the probed table names what it has (2.3.0: 1..8)
    assert ("versions 1-8" if probed else "does not register CONV_2D version 9") in here["problems"][0]["advice"]


def test_bad_runtime_names_and_models_are_one_clear_message(tmp_path):
    res = CliRunner().invoke(edge_cli, ["check-target", str(DEMO), "--runtime", "tflite-runtime==1.0"])
    assert res.exit_code == 2 and "neither a runtime with an op table" in res.output
    res = CliRunner().invoke(edge_cli, ["check-target", str(tmp_path / "none.tflite")])
    assert res.exit_code == 1 and "Traceback" not in res.output


@pytest.mark.slow
def test_tflite_runtime_2_14_itself_agrees_with_its_table(tflite_runtime_214, tmp_path):
    ok = with_op_version(DEMO, tmp_path / "v7.tflite", "CONV_2D", 7)
    new = with_op_version(DEMO, tmp_path / "v8.tflite", "CONV_2D", 8)
    (good,) = load_with(tflite_runtime_214, ok)
    assert good["runtime"] == "tflite-runtime 2.14.0" and good["loads"], good
    # the runtime's own refusal, through the command, with the op, the versions and what to do
    res = CliRunner().invoke(edge_cli, ["check-target", str(new), "--python", str(tflite_runtime_214), "--json", str(tmp_path / "t.json")])
    assert res.exit_code == 3, res.output
    assert "tflite-runtime 2.14.0: WILL NOT LOAD" in res.output
    assert "CONV_2D version 8: tflite-runtime 2.14.0 has CONV_2D versions 1-7, the model uses 8: upgrade" in res.output
    bad = next(t for t in json.loads((tmp_path / "t.json").read_text())["targets"] if t["runtime"] == "tflite-runtime 2.14.0")
    assert "Didn't find op for builtin opcode 'CONV_2D' version '8'" in bad["error"]


def test_nin_pipeline_check_target_records_it_in_the_run_folder(fast_run_copy):
    from pipeline.cli.main import cli

    assert json.loads((fast_run_copy / "target.json").read_text())["targets"]  # the build's convert stage wrote it
    (fast_run_copy / "target.json").unlink()
    report = json.loads((fast_run_copy / "report.json").read_text())
    del report["target"]
    (fast_run_copy / "report.json").write_text(json.dumps(report))
    (fast_run_copy / "report.md").write_text("")
    res = CliRunner().invoke(cli, ["check-target", str(fast_run_copy)])
    assert res.exit_code == 0, res.output
    assert "Edge TPU (Coral's rules, no compiler):" in res.output
    assert json.loads((fast_run_copy / "target.json").read_text())["edgetpu"]["total"] > 0
    report = json.loads((fast_run_copy / "report.json").read_text())
    assert report["target"]["targets"] and "## Target runtimes" in (fast_run_copy / "report.md").read_text()


def test_the_two_commands_are_one(edge_model, tmp_path):
    """`nin-pipeline check-target` is `edge-app check-target` itself: the same object, output and JSON."""
    from pipeline.cli.main import cli

    assert cli.commands["check-target"] is edge_cli.commands["check-target"]
    model = edge_model / "model_int8.tflite"
    out = {}
    for name, group in (("edge", edge_cli), ("pipeline", cli)):
        res = CliRunner().invoke(group, ["check-target", str(model), "--runtime", "tflite-runtime==2.5.0.post1",
                                         "--json", str(tmp_path / f"{name}.json")])
        assert res.exit_code == 0, res.output
        out[name] = (res.output, json.loads((tmp_path / f"{name}.json").read_text()))
    assert out["edge"] == out["pipeline"]
    assert "Edge TPU (Coral's rules, no compiler): " in out["edge"][0] and out["edge"][1]["edgetpu"]["total"] > 0
    res = CliRunner().invoke(cli, ["check-target", str(tmp_path / "none.tflite")])
    assert res.exit_code == 1 and "no model at" in res.output and "Traceback" not in res.output


def test_edge_app_check_target_records_a_run_folder_but_not_the_demo(edge_model, tmp_path):
    import shutil

    from edge_app.contract.files import DEMO_DIR

    run = Path(shutil.copytree(edge_model, tmp_path / "run"))
    res = CliRunner().invoke(edge_cli, ["check-target", "--model", str(run), "--runtime", "tflite-runtime==2.14.0"])
    assert res.exit_code == 0, res.output
    recorded = json.loads((run / "target.json").read_text())
    assert recorded["edgetpu"]["on_tpu"] == recorded["edgetpu"]["total"] > 0 and recorded["targets"]
    assert not (run / "report.json").exists()  # the device side has no report to refresh
    res = CliRunner().invoke(edge_cli, ["check-target", "demo", "--runtime", "tflite-runtime==2.14.0"])
    assert res.exit_code == 0, res.output
    assert not (DEMO_DIR / "target.json").exists()


def test_one_builtin_at_two_versions_gets_a_mark_per_row():
    from edge_app.checks.targets import format_check

    ops = [{"name": "CONV_2D", "code": 3, "version": 3, "count": 2}, {"name": "CONV_2D", "code": 3, "version": 8, "count": 1}]
    target = {"runtime": "tflite-runtime==2.14.0", "how": "op table", "loads": False, "error": "",
              "problems": [{"op": "CONV_2D", "version": 8, "runtime_versions": list(range(1, 8)), "advice": "upgrade"}]}
    rows = format_check({"ops": ops, "targets": [target]})[1:3]
    assert rows[0].split()[-1] == "ok" and rows[1].endswith("NO (has <= 7)")


def test_a_python_without_a_runtime_is_said_not_blamed_on_the_model(tmp_path):
    res = CliRunner().invoke(edge_cli, ["check-target", str(DEMO), "--python", "/bin/sh", "--runtime", "tflite-runtime==2.14.0"])
    assert res.exit_code == 0, res.output  # nothing is known to refuse the model
    assert "python /bin/sh: unknown" in res.output and "the loader did not run" in res.output
