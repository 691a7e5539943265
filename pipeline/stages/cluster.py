"""Training on several machines: TF_CONFIG, MultiWorkerMirroredStrategy, and the chief's role.

The standard contract: a ``TF_CONFIG`` environment variable naming more than one worker (a
cluster manager such as Kubeflow's TFJob writes it; ``nin-pipeline build --workers ...
--worker-index I`` writes it for people without one) switches float training and QAT to
``tf.distribute.MultiWorkerMirroredStrategy``. Worker 0 (or the task of type "chief") is the
chief: it owns the run folder. The others train in lockstep, keep their files in a temporary
folder, and exit once their part (training and QAT) is over; the chief converts and reports.

The strategy has to be TensorFlow's first runtime call in the process ("Collective ops must be
configured at program startup"), and its constructor waits for every peer without a limit:
:func:`start` bounds that wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.runs.folder import RunFolder

log = logging.getLogger("pipeline")

#: seconds a worker waits for the others to start
DEFAULT_TIMEOUT_S = 600.0
#: seconds a collective (a gradient all-reduce) may wait for a stuck peer before failing; 0: no limit.
#: Off by default: TensorFlow implements the limit with a new thread per collective that sleeps that
#: long ("should only be used for debugging", its CommunicationOptions docstring): with 120 s, two
#: workers of the quick model here grew by ~30 threads a second while training (2,054 threads after
#: ~190 steps; 110 with no limit); at that rate this module's former 600 s would come to ~18,000
#: at once, which a long run or a container with a pids limit answers with "Resource temporarily
#: unavailable". A dead or frozen worker is noticed anyway, by TensorFlow's heartbeat (how soon:
#: docs/distributed.md).
DEFAULT_COLLECTIVE_TIMEOUT_S = 0.0


class ClusterError(PipelineError):
    """A TF_CONFIG / --workers setting that cannot work, or workers that cannot agree."""


@dataclass(frozen=True)
class Cluster:
    """The workers' addresses (the chief first) and this process's place among them."""

    workers: tuple[str, ...]
    index: int

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def describe(self) -> str:
        return f"worker {self.index} of {self.size} ({self.workers[self.index]}{', the chief' if self.is_chief else ''})"


def parse_workers(text: str) -> tuple[str, ...]:
    """``HOST:PORT,HOST:PORT[,...]`` -> the addresses, checked (two or more, distinct, ports 1-65535)."""
    workers = tuple(w.strip() for w in text.split(",") if w.strip())
    for w in workers:
        host, sep, port = w.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ClusterError(f"--workers: {w!r} is not HOST:PORT", "e.g. --workers 10.0.0.1:12345,10.0.0.2:12345")
    if len(workers) < 2:
        raise ClusterError("--workers needs two or more HOST:PORT addresses", "leave out --workers to train on this machine alone")
    if len(set(workers)) != len(workers):
        raise ClusterError("--workers names the same address twice", "give every worker its own HOST:PORT")
    return workers


def tf_config(workers: tuple[str, ...], index: int) -> str:
    """The TF_CONFIG that ``--workers ... --worker-index I`` stands for."""
    if not 0 <= index < len(workers):
        raise ClusterError(f"--worker-index {index} is not one of the {len(workers)} workers", f"use 0 to {len(workers) - 1} (0 is the chief)")
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})


def from_env(environ: dict[str, str] | None = None) -> Cluster | None:
    """The cluster TF_CONFIG describes; None when it is absent or names a single task."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        conf = json.loads(raw)
        spec: dict[str, list[str]] = conf.get("cluster", {})
        task: dict[str, Any] = conf.get("task", {})
        chief, workers = list(spec.get("chief", [])), list(spec.get("worker", []))
        kind, i = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ClusterError(
            f"TF_CONFIG is not valid ({exc})",
            'it is JSON like {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}',
        ) from None
    others = sorted(set(spec) - {"chief", "worker"})
    if others:
        raise ClusterError(
            f"TF_CONFIG names task types this build does not use ({', '.join(others)})",
            "MultiWorkerMirroredStrategy takes only 'chief' and 'worker' tasks",
        )
    everyone = tuple(chief + workers)
    if len(everyone) < 2:
        return None
    if kind not in ("chief", "worker"):
        raise ClusterError(f"TF_CONFIG's task type {kind!r} is not 'chief' or 'worker'", "fix TF_CONFIG")
    index = i if kind == "chief" else len(chief) + i
    if not 0 <= index < len(everyone) or (kind == "chief" and i >= len(chief)):
        raise ClusterError(f"TF_CONFIG's task {kind}:{i} is not in its cluster", "fix TF_CONFIG's task index")
    return Cluster(everyone, index)


_strategy = None  # this process's MultiWorkerMirroredStrategy, once started
_cluster: Cluster | None = None


def start(cluster: Cluster, *, collective_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S, startup_s: float = DEFAULT_TIMEOUT_S):
    """Create the MultiWorkerMirroredStrategy: must come before any other TensorFlow call.

    Its constructor blocks until every worker has started; if that takes longer than
    ``startup_s`` the process says which workers it waited for and exits 1 (a thread does it:
    the constructor cannot be interrupted). ``collective_s`` (> 0) bounds each collective, so survivors
    of a worker that is alive but stuck stop instead of waiting (a dead or frozen worker is noticed
    by the heartbeat); it costs a thread per collective for that long (see DEFAULT_COLLECTIVE_TIMEOUT_S).
    """
    global _strategy, _cluster
    if _strategy is not None:
        return _strategy
    import tensorflow as tf

    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(startup_s):
            sys.stderr.write(
                f"Error: {cluster.describe()}: the other workers ({', '.join(w for i, w in enumerate(cluster.workers) if i != cluster.index)}) "
                f"did not all connect within {startup_s:.0f} s; start the same command on every worker with its own "
                "--worker-index, and check that each HOST:PORT is reachable from every machine\n"
            )
            from edge_app.quiet import restore

            restore()
            os._exit(1)

    log.info(
        "TF_CONFIG names %d workers (this is %s): waiting up to %.0f s for all of them to start", cluster.size, cluster.describe(), startup_s
    )
    threading.Thread(target=watchdog, name="nin-cluster-startup", daemon=True).start()
    # Python's Ctrl-C (and SIGTERM) handlers cannot run while the constructor blocks in C++: let
    # either signal end the process at once instead (nothing is trained yet, nothing to save)
    try:
        previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = None
    try:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_s)
        _strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except tf.errors.OpError as exc:  # e.g. "Could not start gRPC server": the port is taken
        port = cluster.workers[cluster.index].rpartition(":")[2]
        raise ClusterError(
            f"{cluster.describe()}: cannot start multi-worker training ({exc.message})",
            f"check that port {port} is free on this machine and that its HOST is this machine",
        ) from None
    except RuntimeError as exc:
        raise ClusterError(
            f"cannot start multi-worker training: {exc}",
            "the strategy must be TensorFlow's first call in the process: run it through `nin-pipeline build`",
        ) from None
    finally:
        done.set()
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)
    _cluster = cluster
    log.info(
        "multi-worker training: %s; %d workers, %d replica(s) in sync (MultiWorkerMirroredStrategy, collective timeout %s)",
        cluster.describe(),
        cluster.size,
        _strategy.num_replicas_in_sync,
        f"{collective_s:.0f} s" if collective_s > 0 else "off: a dead worker is noticed by TensorFlow's heartbeat",
    )
    return _strategy


#: TensorFlow errors that mean a peer died or hangs: the collectives of this process cannot recover
PEER_FAILURES = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError", "InternalError")


def peer_failed(exc: BaseException) -> bool:
    """Did training stop because another worker died or stopped responding?"""
    return _strategy is not None and type(exc).__name__ in PEER_FAILURES


class PeerLost(ClusterError):
    """Another worker died or stopped responding: this process's collectives cannot recover."""

    exit_now = True  # the strategy's threads would keep an ordinary exit waiting (the CLI ends the process)


def failure(exc: BaseException) -> PipelineError:
    """A TensorFlow runtime error raised inside a stage, as the error a user reads: a lost worker, or
    what TensorFlow said (out of memory, an image unreadable mid-epoch) with how to go on."""
    from pipeline.errors import TrainingError
    from pipeline.train.fit import tf_error_line

    said = f"{type(exc).__name__}: {tf_error_line(exc)}"
    if peer_failed(exc):
        return PeerLost(
            f"training stopped: a worker stopped responding ({said})",
            "finished epochs are backed up in the chief's run folder: start the same command again on "
            "every worker and training resumes from the last one",
        )
    return TrainingError(
        f"TensorFlow stopped with {said}",
        "finished epochs are checkpointed: fix the cause (e.g. a smaller --batch-size for out-of-memory) and run the same command again",
    )


def strategy():
    """The started MultiWorkerMirroredStrategy, or None when this process trains alone."""
    return _strategy


def agree(values: list[int], what: str) -> None:
    """Check that every worker holds the same ``values`` (stages still to run, epochs restored, ...).

    Workers that disagree would run different numbers of steps and wait on each other until the
    collective timeout; this says why at once. One all-reduce of [v, v * v, chief's v].
    """
    if _strategy is None or _cluster is None:
        return
    import numpy as np
    import tensorflow as tf

    v = np.asarray(values, np.float64)
    # each of this worker's replicas adds its share, so the sum counts every worker once
    per_replica = np.concatenate([v, v * v, v * float(_cluster.is_chief)]) / len(_strategy.extended.worker_devices)
    local = tf.constant(per_replica, tf.float64)

    @tf.function  # eagerly, the strategy warns of its overhead
    def all_reduce():
        return _strategy.reduce(tf.distribute.ReduceOp.SUM, _strategy.run(lambda: tf.identity(local)), axis=None)

    total = all_reduce().numpy()
    n = _cluster.size
    k = len(values)
    s, s2, chief = total[:k], total[k : 2 * k], total[2 * k :]
    if not (np.allclose(s, n * chief) and np.allclose(s2, n * chief * chief)):
        raise ClusterError(
            f"the workers disagree on {what} (this worker: {values}, the chief: {[int(c) for c in chief]})",
            "every worker must see the chief's run folder at the same --out path (shared storage such as NFS) "
            "and run the same command; then run them all again",
        )


_CHIEF_KEY = "nin_pipeline/chief"


def chief_finished(ok: bool) -> None:
    """The chief says it is done (or failed), through the cluster's coordination service."""
    if _strategy is not None and _cluster is not None and _cluster.is_chief:
        from tensorflow.python.eager import context

        context.context().set_config_key_value(_CHIEF_KEY, "ok" if ok else "failed")


def wait_for_chief() -> None:
    """A non-chief worker, its training done, stays until the chief has converted and reported
    (so the chief's log has no "task stopped sending heartbeats" from it); it stops with an
    error if the chief failed or died."""
    if _strategy is None or _cluster is None or _cluster.is_chief:
        return
    from tensorflow.python.eager import context

    log.info("%s: training and QAT done; waiting for the chief to convert and report", _cluster.describe())
    if context.context().get_config_key_value(_CHIEF_KEY) != "ok":
        raise ClusterError(
            "the chief (worker 0) stopped with an error after training",
            "see its log; fix the cause and run the same command on every worker again",
        )


def check_batch_sizes(strategy, batches: dict[str, int]) -> None:
    """A global batch must split evenly over the replicas."""
    n = strategy.num_replicas_in_sync
    for what, b in batches.items():
        if b % n:
            raise ClusterError(
                f"{what} {b} does not split over {n} replicas",
                f"use a multiple of {n} (the batch size is global: each replica takes batch / {n})",
            )


def per_worker_dataset(strategy, dataset_fn: Callable):
    """The training input for ``fit`` under ``strategy``: each worker's own ``dataset_fn(ctx)``.

    With one replica per worker (a CPU or a single GPU each, the usual case), the worker's dataset
    is handed to Keras as it is, and each step's batch goes straight to the worker's only replica.
    The standard route, ``distribute_datasets_from_function``, always puts a MultiDeviceIterator
    in between, which costs about half a step of CPU with one replica (docs/benchmarks/multi-worker.md;
    the multi-device-only alternative, ``InputReplicationMode.PER_REPLICA``, is refused by this strategy). Workers with
    several replicas take the standard route.
    """
    import tensorflow as tf

    local = len(strategy.extended.worker_devices)
    if local != 1 or _cluster is None:
        return strategy.distribute_datasets_from_function(dataset_fn)
    ctx = tf.distribute.InputContext(
        num_input_pipelines=_cluster.size, input_pipeline_id=_cluster.index, num_replicas_in_sync=strategy.num_replicas_in_sync
    )

    class WorkerDataset(tf.distribute.DistributedDataset):
        """One worker's tf.data pipeline, which Keras's ``fit`` iterates without redistributing it
        (it takes any ``tf.distribute.DistributedDataset`` as already distributed)."""

        def __init__(self, dataset):
            self._dataset = dataset

        def __iter__(self):
            return iter(self._dataset)

        @property
        def element_spec(self):
            return self._dataset.element_spec

    return WorkerDataset(dataset_fn(ctx))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_worker_folders(tmpdir: Path) -> list[Path]:
    """Remove the temporary folders of non-chief workers that were killed (SIGKILL, power loss) and
    so could not remove their own: this user's ``nin-worker<I>-pid<PID>-*`` folders whose process
    is gone. Returns what was removed."""
    removed = []
    for d in tmpdir.glob("nin-worker*-pid*-*"):
        pid = d.name.split("-pid", 1)[1].split("-", 1)[0]
        try:
            if not pid.isdigit() or _alive(int(pid)) or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
            log.info("removed %s, the temporary folder of a worker that is no longer running", d)
    return removed


@contextlib.contextmanager
def worker_folder(out: Path, cfg, cluster: Cluster) -> Iterator[RunFolder]:
    """A non-chief worker's own temporary run folder, removed afterwards.

    It restores training from the chief's backups (``shared`` = the chief's ``out``), and starts
    from the chief's finished stages: the float model (and QAT weights) are copied from it, so a
    resumed build runs the same stages on every worker."""
    from edge_app.contract.files import FLOAT_KERAS, QAT_WEIGHTS, STATE_JSON

    from pipeline.runs.folder import RunFolder

    remove_stale_worker_folders(Path(tempfile.gettempdir()))
    tmp = Path(tempfile.mkdtemp(prefix=f"nin-worker{cluster.index}-pid{os.getpid()}-"))
    try:
        run = RunFolder.create(tmp, cfg)
        run.shared = Path(out)
        chief = RunFolder(Path(out))
        if chief.path(STATE_JSON).is_file():
            chief.load_state()
        for stage, name in (("train", FLOAT_KERAS), ("qat", QAT_WEIGHTS)):
            if not (chief.done(stage) and chief.path(name).is_file()):
                break
            shutil.copy2(chief.path(name), run.path(name))
            run.mark(stage)
        yield run
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replicate(strategy, float_model, qat_model, quantize: Callable):
    """``qat_model`` (built outside any strategy) made again under ``strategy``, with its weights.

    tfmot's wrappers are made by ``quantize`` on a clone of ``float_model`` (BatchNorm frozen as
    in the original) inside the strategy's scope, so their variables are mirrored over the workers."""
    import tf_keras as keras

    with strategy.scope():
        twin = keras.models.clone_model(float_model)
        for mine, theirs in zip(twin.layers, float_model.layers):
            mine.trainable = theirs.trainable
        twin.set_weights(float_model.get_weights())
        trained = quantize(twin)
    trained.set_weights(qat_model.get_weights())
    return trained
