import json

import pytest

from edge_app.contract.sidecar import (
    InputSpec, OutputSpec, Quantization, Sidecar, SidecarError, read_sidecar, sidecar_from_dict, write_sidecar,
)


def _sidecar(labels=("a", "b", "c")) -> Sidecar:
    return Sidecar(
        labels=labels,
        input=InputSpec(shape=(1, 32, 32, 3), dtype="int8", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                        quant=Quantization(1 / 255, -128)),
        outputs=(OutputSpec(name="scores", shape=(1, 3), dtype="int8", quant=Quantization(1 / 256, -128)),),
        dataset="cifar10", arch="nin-cifar", width=0.25, files={"model_int8.tflite": "ab" * 32},
        pipeline_version="0.1.0", created="2026-01-01T00:00:00+00:00",
    )


def test_round_trip(tmp_path):
    sc = _sidecar()
    write_sidecar(tmp_path / "model.json", sc)
    back = read_sidecar(tmp_path)  # a run folder works as well as the file
    assert back == sc
    assert back.input.height == 32 and back.input.channels == 3
    assert back.output("scores").quant.zero_point == -128


def test_write_leaves_no_temporary_files(tmp_path):
    write_sidecar(tmp_path / "model.json", _sidecar())
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("labels"), "lacks the key 'labels'"),
    (lambda d: d.update(schema_version=99), "schema_version 99"),
    (lambda d: d["input"].update(dtype="int4"), "input.dtype"),
    (lambda d: d.update(labels=["a", "b"]), "2 labels but the scores output has 3"),
    (lambda d: d["input"].update(shape=[32, 32, 3]), "[1, H, W, C]"),
])
def test_bad_sidecars_name_the_problem(mutate, message):
    d = json.loads(json.dumps(_sidecar().to_dict()))
    mutate(d)
    with pytest.raises(SidecarError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sidecar_from_dict(d)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SidecarError, match="no sidecar"):
        read_sidecar(tmp_path / "model.json")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(SidecarError, match="not valid JSON"):
        read_sidecar(tmp_path / "model.json")


def test_input_stats_round_trip_and_are_checked(tmp_path):
    import dataclasses

    from edge_app.contract.sidecar import InputStats

    st = InputStats(images=4, pixel_mean=(1.0, 2.0, 3.0), pixel_std=(1.0, 1.0, 1.0), brightness_p5=1.0,
                    brightness_p95=3.0, contrast=1.0, value_mean=(0.1, 0.2, 0.3), value_std=(0.1, 0.1, 0.1))
    write_sidecar(tmp_path / "model.json", dataclasses.replace(_sidecar(), input_stats=st))
    assert read_sidecar(tmp_path).input_stats == st
    d = json.loads((tmp_path / "model.json").read_text())
    d["input_stats"]["pixel_mean"] = [1.0]
    with pytest.raises(SidecarError, match="one mean and std per input channel"):
        sidecar_from_dict(d)
    d.pop("input_stats")  # a model.json from before the statistics were kept still reads
    assert sidecar_from_dict(d).input_stats is None
