"""Multi-worker training: TF_CONFIG / --workers, the chief's role, data shards, and — on the real
CIFAR-10 copy — two worker processes on 127.0.0.1, one of them killed and both relaunched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO

from pipeline.cli.main import cli
from pipeline.stages.cluster import Cluster, ClusterError, check_batch_sizes, from_env, parse_workers, tf_config, worker_folder

# --------------------------------------------------------------------------- TF_CONFIG and --workers


def test_parse_workers_accepts_host_port_lists():
    assert parse_workers("10.0.0.1:2222, 10.0.0.2:2222") == ("10.0.0.1:2222", "10.0.0.2:2222")
    assert parse_workers("[::1]:5000,[::1]:5001") == ("[::1]:5000", "[::1]:5001")


@pytest.mark.parametrize("text, said", [
    ("hostonly,other:1", "not HOST:PORT"), ("a:0,b:1", "not HOST:PORT"), ("a:70000,b:1", "not HOST:PORT"),
    ("a:1", "two or more"), ("a:1,a:1", "same address twice"), (":1,b:2", "not HOST:PORT"),
])
def test_parse_workers_refuses(text, said):
    with pytest.raises(ClusterError, match=said):
        parse_workers(text)


def test_tf_config_round_trip_and_index_range():
    workers = ("127.0.0.1:1000", "127.0.0.1:1001", "127.0.0.1:1002")
    c = from_env({"TF_CONFIG": tf_config(workers, 2)})
    assert c == Cluster(workers, 2) and not c.is_chief and c.size == 3
    assert from_env({"TF_CONFIG": tf_config(workers, 0)}).is_chief
    with pytest.raises(ClusterError, match="--worker-index 3"):
        tf_config(workers, 3)


def test_from_env_reads_a_cluster_managers_tf_config():
    assert from_env({}) is None
    one = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert from_env({"TF_CONFIG": json.dumps(one)}) is None  # a single task trains alone
    # Kubeflow with a Chief replica: the chief comes first, workers after it
    spec = {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]}}
    assert from_env({"TF_CONFIG": json.dumps({**spec, "task": {"type": "chief", "index": 0}})}) == Cluster(("c:1", "w:1", "w:2"), 0)
    assert from_env({"TF_CONFIG": json.dumps({**spec, "task": {"type": "worker", "index": 1}})}).index == 2
    with pytest.raises(ClusterError, match="not valid"):
        from_env({"TF_CONFIG": "{not json"})
    with pytest.raises(ClusterError, match="ps"):
        from_env({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"], "ps": ["p:1"]}, "task": {"index": 0}})})
    with pytest.raises(ClusterError, match="not in its cluster"):
        from_env({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 5}})})


@pytest.mark.parametrize("args, said", [
    (["--workers", "127.0.0.1:1,127.0.0.1:2"], "--workers and --worker-index go together"),
    (["--worker-index", "1"], "--workers and --worker-index go together"),
    (["--workers", "nohost", "--worker-index", "0"], "not HOST:PORT"),
    (["--workers", "127.0.0.1:1,127.0.0.1:2", "--worker-index", "2"], "--worker-index 2 is not one of the 2 workers"),
    (["--workers", "127.0.0.1:1,127.0.0.1:2", "--worker-index", "1"], "a multi-worker build needs --out"),
])
def test_build_refuses_bad_worker_options_in_one_line(args, said, tmp_path):
    res = CliRunner().invoke(cli, ["build", "--dataset", "folder", "--data-dir", str(tmp_path), *args])
    assert res.exit_code != 0 and said in res.output and "Traceback" not in res.output, res.output
    # (conftest's _no_cluster removes the TF_CONFIG that --workers wrote into this process)


def test_batch_sizes_must_split_over_the_replicas():
    class ThreeReplicas:
        num_replicas_in_sync = 3

    check_batch_sizes(ThreeReplicas(), {"--batch-size": 96})
    with pytest.raises(ClusterError, match="--batch-size 128 does not split over 3 replicas"):
        check_batch_sizes(ThreeReplicas(), {"--batch-size": 128})


def test_a_worker_starts_from_the_chiefs_finished_stages(fast_run):
    """A non-chief worker's own folder is temporary; it copies the chief's finished float model so
    that a resumed build runs the same stages on every worker."""
    from edge_app.contract.files import FLOAT_KERAS, QAT_WEIGHTS
    from pipeline.runs.folder import RunFolder

    chief = RunFolder.open(fast_run)
    cfg = chief.load_config()
    with worker_folder(fast_run, cfg, Cluster(("a:1", "b:1"), 1)) as run:
        assert run.root != fast_run and run.shared == fast_run and run.root.name.startswith("nin-worker1-")
        assert run.done("train") and run.done("qat") and not run.done("convert")
        assert run.path(FLOAT_KERAS).read_bytes() == chief.path(FLOAT_KERAS).read_bytes()
        assert run.path(QAT_WEIGHTS).is_file()
        temp = run.root
    assert not temp.exists()


def test_a_killed_workers_temporary_folder_is_removed_by_the_next_worker(tmp_path):
    """A SIGKILLed worker cannot remove its own folder; the next worker started on that machine
    removes this user's worker folders whose process is gone, and only those."""
    import subprocess

    from pipeline.stages.cluster import remove_stale_worker_folders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f"nin-worker1-pid{dead.pid}-abc"
        live = tmp_path / f"nin-worker1-pid{alive.pid}-def"
        other = tmp_path / "nin-worker1-xyz"  # an older name without a PID: not ours to judge
        for d in (stale, live, other):
            (d / "checkpoints").mkdir(parents=True)
            (d / "config.json").write_text("{}")
        assert remove_stale_worker_folders(tmp_path) == [stale]
        assert not stale.exists() and live.is_dir() and other.is_dir()
    finally:
        alive.kill()
        alive.wait()


def test_each_worker_reads_its_own_shard():
    from pipeline.data.splits import make_dataset

    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(2, axis=1).repeat(2, axis=2)
    y = np.arange(10)
    seen = []
    for i in range(2):
        ds = make_dataset(x, y, 4, training=True, hflip=False, translate=False, seed=3, shard=(i, 2))
        seen.append(sorted(int(v) for _, b in ds for v in b.numpy()))
    assert seen == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_a_taken_port_is_one_clear_line(fast_tree, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = _free_ports(1)[0]
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        res = subprocess.run([sys.executable, "-m", "pipeline", "build", "--dataset", "folder", "--data-dir", str(fast_tree),
                              "--out", str(tmp_path / "run"), "--workers", f"127.0.0.1:{port},127.0.0.1:{other}",
                              "--worker-index", "0", "--worker-timeout", "30"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    assert f"check that port {port} is free on this machine" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- two real workers

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _launch(cifar_jpg: Path, out: Path, tag: str, cache: Path) -> list[tuple[subprocess.Popen, Path]]:
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    tmp = out.parent / f"tmp-{tag}"  # each launch its own TMPDIR: a killed worker cannot clean up
    tmp.mkdir()
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TMPDIR": str(tmp),
           "NIN_CACHE_DIR": str(cache), "KERAS_HOME": str(out.parent / "keras")}
    env.pop("TF_CONFIG", None)
    procs = []
    for i in range(2):
        log = out.parent / f"{tag}.w{i}.log"
        cmd = [sys.executable, "-m", "pipeline", "build", "--dataset", "cifar10", "--data-dir", str(cifar_jpg), "--out", str(out),
               "--width", "0.125", "--epochs", "2", "--qat-epochs", "1", "--batch-size", "64", "--limit-train", "1200",
               "--limit-test", "200", "--seed", "2", "--workers", workers, "--worker-index", str(i)]
        with open(log, "w") as fh:
            procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT), log))
    return procs


@pytest.fixture(scope="session")
def two_worker_run(cifar_jpg, cifar_cache, tmp_path_factory):
    """Two workers on 127.0.0.1 build a tiny model; worker 1 is killed (SIGKILL) after the first
    epoch's backup, worker 0 must stop on its own; then both are started again and finish."""
    base = tmp_path_factory.mktemp("workers")
    out = base / "run"
    first = _launch(cifar_jpg, out, "first", cifar_cache)
    backup = out / "checkpoints" / "train" / "chief" / "checkpoint"
    deadline = time.time() + 600
    while not backup.exists() and all(p.poll() is None for p, _ in first) and time.time() < deadline:
        time.sleep(0.2)
    assert backup.exists(), first[0][1].read_text()[-3000:]
    first[1][0].send_signal(signal.SIGKILL)
    try:
        rc0 = first[0][0].wait(timeout=300)  # bounded: a hang fails here instead of blocking CI
    except subprocess.TimeoutExpired:
        first[0][0].kill()
        pytest.fail("worker 0 did not stop within 300 s of worker 1's death")
    first[1][0].wait()
    second = _launch(cifar_jpg, out, "second", cifar_cache)
    for p, log in second:
        try:
            p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            for q, _ in second:
                q.kill()
            pytest.fail(f"the relaunched workers did not finish: {log.read_text()[-3000:]}")
    return {"out": out, "tmp": base / "tmp-second", "cache": cifar_cache, "rc0_after_kill": rc0,
            "first": [log.read_text() for _, log in first],
            "second": [log.read_text() for _, log in second], "rcs": [p.returncode for p, _ in second]}


@pytest.mark.slow
def test_a_killed_worker_stops_the_chief_with_one_message(two_worker_run):
    rc, text = two_worker_run["rc0_after_kill"], two_worker_run["first"][0]
    assert rc == 1, text[-3000:]
    assert "training stopped: a worker stopped responding" in text and "start the same command again" in text
    assert "Traceback" not in text


@pytest.mark.slow
def test_relaunched_workers_resume_and_the_chief_owns_a_complete_run_folder(two_worker_run):
    out = two_worker_run["out"]
    assert two_worker_run["rcs"] == [0, 0], [t[-3000:] for t in two_worker_run["second"]]
    chief_log = (out / "train.log").read_text()
    assert "2 workers, 2 replica(s) in sync (MultiWorkerMirroredStrategy" in chief_log
    # no per-collective timeout by default (TensorFlow's costs a thread per all-reduce): the killed
    # worker above was noticed through the heartbeat alone
    assert "collective timeout off" in chief_log
    assert "train: resuming from the checkpoint after epoch 1 of 2" in two_worker_run["second"][0]
    history = (out / "history_train.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]  # no epoch twice
    for name in ("model_int8.tflite", "model_float.keras", "model_qat.weights.h5", "model.json", "labels.txt",
                 "report.json", "report.html", "history_qat.csv", "state.json", "config.json"):
        assert (out / name).is_file(), name
    state = json.loads((out / "state.json").read_text())
    assert all(state[s]["done"] for s in ("train", "qat", "convert", "evaluate"))
    # the other worker said so, wrote nothing into --out of its own, and left no temporary folder
    assert "done; the chief writes the run folder" in two_worker_run["second"][1]
    assert not list(two_worker_run["tmp"].glob("nin-worker*")), "a worker's temporary folder was left behind"
    assert not list((out / "checkpoints").rglob("workertemp_*"))


@pytest.mark.slow
def test_the_converted_qat_model_is_the_one_trained_under_the_strategy(two_worker_run, monkeypatch):
    """The model trained under MultiWorkerMirroredStrategy cannot be converted; the one converted is
    rebuilt outside it with the trained weights. Its Keras accuracy on the validation split equals
    what the strategy model measured there after its last QAT epoch, and the int8 model from it
    (run in ai-edge-litert) is as accurate."""
    from edge_app.runtime import Classifier
    from edge_app.contract.sidecar import read_sidecar
    from pipeline.data.splits import make_splits
    from pipeline.runs.folder import RunFolder
    from pipeline.train.fit import read_history

    out = two_worker_run["out"]
    monkeypatch.setenv("NIN_CACHE_DIR", str(two_worker_run["cache"]))  # the workers' decoded copy
    run = RunFolder.open(out)
    splits = make_splits(run.load_config().data)
    qat = run.load_qat()
    x_val = np.asarray(splits.x_val[np.arange(len(splits.y_val))])  # uint8, out of the decoded store
    keras_pred = qat.predict(x_val.astype(np.float32) / 255.0, verbose=0).argmax(-1)
    keras_acc = float(np.mean(keras_pred == splits.y_val))
    # QAT's logged "accuracy" is against its targets: with distillation (the quick profile's) the blend
    # of the float model's answers and the labels
    w = run.load_config().qat.distill
    p = run.load_float().predict(x_val.astype(np.float32) / 255.0, verbose=0)
    target = (w * p + (1 - w) * np.eye(p.shape[1])[splits.y_val]).argmax(-1)
    keras_on_target = float(np.mean(keras_pred == target))
    logged = read_history(out / "history_qat.csv")["val_accuracy"][-1]
    n = len(splits.y_val)
    assert abs(keras_on_target - logged) <= 1.0 / n + 1e-6, (keras_on_target, logged)

    sc = read_sidecar(out)
    clf = Classifier(out / "model_int8.tflite", runtime="ai-edge-litert", num_threads=1, pixel_scale=sc.input.pixel_scale)
    int8_pred = clf.predict_batch(x_val).argmax(-1)
    assert float(np.mean(int8_pred == keras_pred)) >= 0.95  # the int8 model decides as the fake-quant one
    assert abs(float(np.mean(int8_pred == splits.y_val)) - keras_acc) <= 0.03


def test_a_worker_resuming_without_the_chiefs_folder_says_so(tmp_path, monkeypatch):
    """Non-chief `--resume` where the chief's --out is not visible (no shared storage): one message
    about shared storage, not the single-machine hint."""
    from click.testing import CliRunner

    from pipeline.cli.main import cli

    monkeypatch.setenv("TF_CONFIG", "")  # the command writes TF_CONFIG; monkeypatch restores it
    res = CliRunner().invoke(cli, ["build", "--resume", "--out", str(tmp_path / "chief-run"),
                                   "--workers", "127.0.0.1:1,127.0.0.1:2", "--worker-index", "1"])
    assert res.exit_code == 1, res.output
    assert "worker 1 of 2" in res.output and "is not visible here" in res.output and "storage they all see" in res.output
    assert "Traceback" not in res.output
