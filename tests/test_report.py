"""Float-vs-int8 reports: metrics on synthetic predictions, and the report files of the tiny real run."""

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, make_image_tree

from pipeline.cli.main import cli
from pipeline.report.predict import topk
from pipeline.report.figures import VARIANTS, confusion, mcnemar, significance, variant_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def test_metrics_on_known_predictions():
    labels = ("a", "b", "c")
    y = np.array([0, 0, 1, 1, 2, 2])
    float_p = np.eye(3)[[0, 0, 1, 1, 2, 2]] * 0.9 + 0.1 / 3
    int8_p = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = variant_metrics(int8_p, y, float_p, labels)
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["agreement_with_float"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    assert m["top5"] is None  # three classes: top-5 means nothing
    # where the prediction held, the float top-1's probability fell from 0.933 to 0.867; where it flipped, to 0.067
    assert m["mean_abs_top1_prob_change"] == pytest.approx((4 * (0.9 + 0.1 / 3 - 0.8 - 0.2 / 3) + 2 * (0.9 + 0.1 / 3 - 0.2 / 3)) / 6)
    assert confusion(np.array([1]), np.array([2]), 3).sum() == 1
    assert topk(np.array([[0.1, 0.5, 0.4]]), np.array([2]), 2) == 1.0


def test_top1_breaks_ties_like_argmax():
    """int8 scores tie often; `evaluate`'s top-1 and the report's argmax must pick the same class."""
    probs = np.full((64, 10), 0.1, np.float32)  # every class tied: argmax says class 0
    probs[:, 7] = 0.05
    y = np.zeros(64, np.int64)
    assert topk(probs, y, 1) == 1.0 == np.mean(probs.argmax(1) == y)


def _pairs(a_only: int, b_only: int, both: int = 50, neither: int = 10):
    a = np.array([1] * a_only + [0] * b_only + [1] * both + [0] * neither, bool)
    b = np.array([0] * a_only + [1] * b_only + [1] * both + [0] * neither, bool)
    return a, b


@pytest.mark.parametrize("a_only, b_only, p", [
    (0, 6, 2 / 64),                      # 2 * P(X <= 0), X ~ Bin(6, 1/2)
    (1, 5, 2 * 7 / 64),                  # 2 * (1 + 6) / 64
    (10, 2, 2 * (1 + 12 + 66) / 4096),   # the textbook 10-vs-2 case, p = 0.0386
    (3, 3, 1.0),                         # even split: capped at 1
    (0, 0, 1.0),                         # the same answers: no evidence either way
])
def test_mcnemar_exact_on_hand_counted_cases(a_only, b_only, p):
    a, b = _pairs(a_only, b_only)
    t = mcnemar(a, b)
    assert (t["a_only_correct"], t["b_only_correct"]) == (a_only, b_only)
    assert t["p_value"] == pytest.approx(p, rel=1e-9)
    assert t["significant"] == (p < 0.05)
    assert t["difference_points"] == pytest.approx(100 * (b_only - a_only) / len(a))


def test_mcnemar_many_flips_stays_finite_and_symmetric():
    """10,000 test images: thousands of discordant pairs must not overflow."""
    a, b = _pairs(1480, 1520, both=6000, neither=1000)
    t, u = mcnemar(a, b), mcnemar(b, a)
    assert t["p_value"] == pytest.approx(u["p_value"])
    assert 0.4 < t["p_value"] <= 1.0 and not t["significant"]
    assert mcnemar(*_pairs(1400, 1600, both=6000, neither=1000))["significant"]  # the same 3,000 flips, 200 apart


def test_significance_names_each_pair():
    y = np.array([0, 1, 0, 1])
    onehot = np.eye(2)
    preds = {"float_keras": onehot[[0, 1, 0, 1]], "qat_int8": onehot[[0, 1, 1, 1]], "ptq_int8": onehot[[1, 0, 1, 0]]}
    s = significance(preds, y)
    assert set(s) == {"float_keras_vs_qat_int8", "float_keras_vs_ptq_int8", "ptq_int8_vs_qat_int8"}
    assert (s["float_keras_vs_ptq_int8"]["a_only_correct"], s["float_keras_vs_ptq_int8"]["b_only_correct"]) == (4, 0)
    assert s["ptq_int8_vs_qat_int8"]["difference_points"] == pytest.approx(75.0)


@pytest.fixture(scope="module")
def report(fast_run):
    return json.loads((fast_run / "report.json").read_text())


def test_report_json_is_complete_and_consistent(fast_run, report):
    assert report["schema_version"] == 2
    assert report["test_images"] == 40 and report["dataset"] == "folder"
    assert set(report["variants"]) == set(VARIANTS)
    for key, v in report["variants"].items():
        cm = np.array(v["confusion_matrix"])
        assert cm.shape == (10, 10) and cm.sum() == report["test_images"]
        assert v["top1"] == pytest.approx(np.trace(cm) / cm.sum())
        for i, c in enumerate(report["labels"]):
            pc = v["per_class"][c]
            assert pc["support"] == cm[i].sum()
            assert pc["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert 0.0 <= v["agreement_with_float"] <= 1.0 and 0.0 <= v["mean_abs_top1_prob_change"] <= 1.0
        assert v["top1"] <= v["top5"] <= 1.0
        assert v["bytes"] == (fast_run / v["file"]).stat().st_size
        assert v["params"] > 0 and v["macs"] > v["params"]
        if key != "float_keras":
            lat = v["latency_ms"]
            assert set(lat) == {"1_thread", f"{report['machine']['cpus']}_threads"}
            assert all(0 < d["median"] <= d["p95"] for d in lat.values())
    assert report["variants"]["float_keras"]["agreement_with_float"] == 1.0
    losses = report["int8_losses"]
    assert len(losses["classes_by_accuracy_change"]) == 10
    changes = [c["change"] for c in losses["classes_by_accuracy_change"]]
    assert changes == sorted(changes)  # the worst drop first
    n = report["test_images"]
    flips = n - round(report["variants"]["qat_int8"]["agreement_with_float"] * n)
    assert losses["flipped_count"] == flips
    sig = report["significance"]["float_keras_vs_qat_int8"]
    assert sig["a_only_correct"] + sig["b_only_correct"] <= flips and 0.0 <= sig["p_value"] <= 1.0
    assert "Is the difference real?" in (fast_run / "report.md").read_text()


def test_plots_are_png(fast_run, report):
    assert {"plot_training", "plot_confusion", "plot_per_class"} <= set(report["plots"])
    for name in report["plots"].values():
        data = (fast_run / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.rows, self.links, self._table = [], {}, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script", "iframe") or (tag == "a" and "href" in a):
            self.links.append((tag, a))
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1


def test_report_html_is_self_contained(fast_run, report):
    text = (fast_run / "report.html").read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "external URL in report.html"
    page = _Page()
    page.feed(text)
    assert page.links == []
    assert len(page.imgs) == len(report["plots"])
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert page.rows["summary"] == 1 + 4  # header + one row per variant
    md = (fast_run / "report.md").read_text()
    assert "| QAT int8 |" in md and "## Where int8 loses" in md


def test_report_command_rewrites_from_saved_predictions(fast_run_copy, report):
    (fast_run_copy / "report.json").unlink()
    out = subprocess.run([sys.executable, "-m", "pipeline", "report", str(fast_run_copy), "--no-latency"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads((fast_run_copy / "report.json").read_text())
    for key in VARIANTS:
        assert again["variants"][key]["top1"] == report["variants"][key]["top1"]
        assert again["variants"][key]["confusion_matrix"] == report["variants"][key]["confusion_matrix"]
    assert "QAT int8" in out.stderr  # the terminal table
    assert "evaluate: " not in out.stderr  # the saved predictions were reused
    # a model replaced since: the saved predictions are not its own, so the report evaluates again
    (fast_run_copy / "model_int8_ptq.tflite").write_bytes((fast_run_copy / "model_int8.tflite").read_bytes())
    out = subprocess.run([sys.executable, "-m", "pipeline", "report", str(fast_run_copy), "--no-latency"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "was not made by the models now in the folder (model_int8_ptq.tflite)" in out.stderr
    again = json.loads((fast_run_copy / "report.json").read_text())
    assert again["variants"]["ptq_int8"]["top1"] == again["variants"]["qat_int8"]["top1"]


def test_evaluate_any_model(fast_run, fast_tree, report, tmp_path):
    """`evaluate` and the build's report run the same images through the same runtime: the same top-1."""
    res = CliRunner().invoke(cli, ["evaluate", str(fast_run / "model_int8.tflite"), "--dataset", "folder",
                                   "--data-dir", str(fast_tree), "--json", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["images"] == report["test_images"] and ev["top1"] == report["variants"]["qat_int8"]["top1"]
    assert ev["top5"] == pytest.approx(report["variants"]["qat_int8"]["top5"])
    res = CliRunner().invoke(cli, ["evaluate", str(fast_run / "model_float.keras"), "--dataset", "folder",
                                   "--data-dir", str(fast_tree), "--limit-test", "20"])
    assert res.exit_code == 0 and "(20 images): top-1" in res.output, res.output
    # a run folder: its int8 model, on its own data; --limit-test picks the images `build --limit-test` picks
    res = CliRunner().invoke(cli, ["evaluate", str(fast_run), "--json", str(tmp_path / "run.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run.json").read_text())["top1"] == report["variants"]["qat_int8"]["top1"]
    from pipeline.data.splits import test_subset

    y = np.arange(40) % 4
    assert np.array_equal(test_subset(y, 12), test_subset(y, 12)) and len(set(y[test_subset(y, 12)])) == 4


def test_evaluate_refuses_models_that_do_not_fit_the_data(fast_run, tmp_path):
    tree = make_image_tree(tmp_path / "tree", size=32)
    res = CliRunner().invoke(cli, ["evaluate", str(fast_run / "model_int8.tflite"), "--dataset", "folder", "--data-dir", str(tree)])
    assert res.exit_code == 1 and "predicts 10 classes but folder has 3" in res.output
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 100)
    res = CliRunner().invoke(cli, ["evaluate", str(bad), "--dataset", "folder", "--data-dir", str(tree)])
    assert res.exit_code == 1 and "is not a TFLite model" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "none.tflite")])
    assert res.exit_code == 1 and "no model file" in res.output


def test_compare_and_bad_report_folders(fast_run, tmp_path):
    md = tmp_path / "cmp.md"
    res = CliRunner().invoke(cli, ["compare", str(fast_run), str(fast_run), "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    assert md.read_text().count("| 0.125 |") == 2
    assert "…" not in res.output and "QAT int8 top-1" in res.output  # not cut to 80 columns in a pipe
    assert str(fast_run) in res.output  # the same folder name twice: full paths tell them apart
    js, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    res = CliRunner().invoke(cli, ["compare", str(fast_run), "--json", str(js), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    rec = json.loads(js.read_text())["runs"][0]
    report = json.loads((fast_run / "report.json").read_text())
    q = report["variants"]["qat_int8"]
    assert (rec["params"], rec["macs"], rec["int8_bytes"]) == (q["params"], q["macs"], q["bytes"])
    assert rec["agreement"] == q["agreement_with_float"] and rec["int8_ms_1_thread"] == q["latency_ms"]["1_thread"]["median"]
    assert rec["head"] == "gap" and rec["edgetpu_ops"] == "-"  # no Edge TPU check made in this run folder
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for column in ("params", "MACs", "agreement", "int8 ms 1 thread / all", "Edge TPU ops"):
        assert column in res.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.json").write_text("{\"variants\": ")
    res = CliRunner().invoke(cli, ["compare", str(fast_run), str(broken)])
    assert res.exit_code == 1 and "report.json is corrupt" in res.output
    res = CliRunner().invoke(cli, ["compare", str(tmp_path)])
    assert res.exit_code == 1 and "has no report.json" in res.output
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.json").write_text((fast_run / "config.json").read_text())
    res = CliRunner().invoke(cli, ["report", str(empty)])
    assert res.exit_code == 1 and "has no models yet" in res.output


def test_unreadable_optional_records_are_left_out(tmp_path, caplog):
    from edge_app.contract.files import EDGETPU_JSON, LAYER_ERRORS_JSON
    from pipeline.runs.folder import RunFolder

    run = RunFolder(tmp_path)
    assert run.read_layer_errors() == {} and run.read_edgetpu() == {}  # absent
    (tmp_path / LAYER_ERRORS_JSON).write_bytes(b"\xff\xfe not json")
    (tmp_path / EDGETPU_JSON).write_text("[1, 2]")  # JSON, but not an object
    assert run.read_layer_errors() == {} and run.read_edgetpu() == {}
    assert "re-run the convert stage" in caplog.text


@pytest.mark.parametrize("config", [b"\xff\xfe binary", b"[1]", b'{"data": 3}'])
def test_a_damaged_config_or_state_is_one_clear_line(tmp_path, config):
    """config.json of binary bytes or of another JSON shape ends in one message; a state.json of another
    shape ([1]) is treated as 'no stage done' with a warning, not an AttributeError."""
    from pipeline.runs.folder import RunFolder

    (tmp_path / "config.json").write_bytes(config)
    for args in (["report", str(tmp_path)], ["convert", str(tmp_path)]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert "config.json is corrupt" in res.output or "config.json does not describe a build" in res.output
    (tmp_path / "state.json").write_text("[1]")
    run = RunFolder(tmp_path)
    run.load_state()
    assert run.state == {} and not run.done("train")


def test_where_int8_loses_lists_only_losses():
    from pipeline.report.render import int8_losses

    rows = [{"class": "a", "float": 0.8, "int8": 0.7, "change": -0.1}, {"class": "b", "float": 0.5, "int8": 0.5, "change": 0.0},
            {"class": "c", "float": 0.5, "int8": 0.6, "change": 0.1}]
    assert [c["class"] for c in int8_losses({"int8_losses": {"classes_by_accuracy_change": rows}})] == ["a"]
    assert int8_losses({"int8_losses": {"classes_by_accuracy_change": rows[1:]}}) == []


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes():
    from pipeline.choose.compare import pareto

    recs = [{"run": n, "int8_ms_1_thread": ms, "qat_int8_top1": acc} for n, ms, acc in
            [("a", 1.0, 0.60), ("b", 2.0, 0.70), ("c", 3.0, 0.65), ("d", 0.5, 0.50), ("e", 2.0, 0.68), ("f", 4.0, 0.80)]]
    assert [r["run"] for r in pareto(recs)] == ["d", "a", "b", "f"]  # c: b is faster and better; e: b ties it, better
