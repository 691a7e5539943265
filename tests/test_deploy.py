"""deploy/kubeflow/tfjob.yaml: a TFJob the training operator accepts, running a `nin-pipeline build`
command that this CLI accepts. No cluster here: this checks the manifest's structure, and that its
command's options are real `build` options with valid values (a typo, a renamed flag, a --workers
that would fight the operator's TF_CONFIG all fail). Fast: no TensorFlow, no network, no PyYAML
(not a dependency): the manifest keeps to a small YAML subset read by the parser below."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO

from pipeline.cli.main import cli
from pipeline.runs.profiles import PROFILES

MANIFEST = REPO / "deploy" / "kubeflow" / "tfjob.yaml"


# -- a parser for the YAML subset the manifest uses: block mappings and sequences, plain or quoted
# scalars, comments. Anything else (flow style, anchors, multi-line strings, several documents) is
# refused, so the manifest cannot drift into something these tests misread.

def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str):
    if text[:1] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise ValueError(f"unterminated quoted scalar: {text!r}")
        return text[1:-1]
    if text[:1] in "[{&*|>!" or text == "---":
        raise ValueError(f"YAML outside the subset these tests read: {text!r}")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"true": True, "false": False}.get(text, text)


def parse_yaml(text: str):
    lines = []
    for raw in text.splitlines():
        body = _strip_comment(raw)
        if body.strip():
            if "\t" in body[: len(body) - len(body.lstrip())]:
                raise ValueError("tabs in indentation")
            lines.append([len(body) - len(body.lstrip()), body.strip()])

    def block(i: int, indent: int):
        return seq(i, indent) if lines[i][1].startswith("- ") or lines[i][1] == "-" else mapping(i, indent)

    def seq(i: int, indent: int):
        out = []
        while i < len(lines) and lines[i][0] == indent and (lines[i][1].startswith("- ") or lines[i][1] == "-"):
            rest = lines[i][1][1:].strip()
            if not rest:
                value, i = block(i + 1, lines[i + 1][0])
            elif re.match(r"[^\s\"']+:(\s|$)", rest):  # "- key: value" starts a mapping
                lines[i] = [indent + 2, rest]
                value, i = mapping(i, indent + 2)
            else:
                value, i = _scalar(rest), i + 1
            out.append(value)
        return out, i

    def mapping(i: int, indent: int):
        out = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            m = re.fullmatch(r"([^\s\"':]+):(?:\s+(.*))?", lines[i][1])
            if not m:
                raise ValueError(f"not a 'key: value' line: {lines[i][1]!r}")
            key, rest = m.group(1), m.group(2)
            if key in out:
                raise ValueError(f"key {key!r} twice")
            nxt = lines[i + 1] if i + 1 < len(lines) else None
            if rest:
                out[key], i = _scalar(rest), i + 1
            elif nxt and (nxt[0] > indent or (nxt[0] == indent and nxt[1].startswith("- "))):
                out[key], i = block(i + 1, nxt[0])
            else:
                out[key], i = None, i + 1
        return out, i

    doc, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"bad indentation at {lines[end][1]!r}")
    return doc


def test_the_parser_reads_the_subset_and_refuses_the_rest():
    assert parse_yaml("a: 1\nb:\n  - x  # note\n  - k: 'v # not a comment'\n    n: \"2\"\nc:\n- y\n") == {
        "a": 1, "b": ["x", {"k": "v # not a comment", "n": "2"}], "c": ["y"]}
    for bad in ("a: [1, 2]\n", "a: {b: 1}\n", "a: |\n  text\n", "a: 1\n   b: 2\n"):
        with pytest.raises(ValueError):
            parse_yaml(bad)


# -- the manifest

@pytest.fixture(scope="module")
def job() -> dict:
    return parse_yaml(MANIFEST.read_text())


def _replicas(job: dict) -> dict:
    return job["spec"]["tfReplicaSpecs"]


def _container(spec: dict) -> dict:
    containers = spec["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod: the training one"
    return containers[0]


def test_it_is_a_tfjob(job):
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert job["kind"] == "TFJob"
    assert job["metadata"]["name"]
    # cluster.from_env takes only 'chief' and 'worker' tasks (MultiWorkerMirroredStrategy)
    assert set(_replicas(job)) <= {"Chief", "Worker"} and "Worker" in _replicas(job)
    assert sum(spec["replicas"] for spec in _replicas(job).values()) >= 2, "one pod is not multi-worker training"


def test_pods_restart_after_a_failure(job):
    # a killed pod must come back (and the survivors, which exit 1) so the build resumes from its backup
    for kind, spec in _replicas(job).items():
        assert spec["restartPolicy"] in ("OnFailure", "ExitCode"), kind


def test_the_container_is_the_one_the_operator_configures(job):
    for kind, spec in _replicas(job).items():
        c = _container(spec)
        assert c["name"] == "tensorflow", f"{kind}: the operator sets TF_CONFIG only in a container named 'tensorflow'"
        assert {"name": "tfjob-port", "containerPort": 2222} in c["ports"], kind
        assert c["image"]
        assert not any(e.get("name") == "TF_CONFIG" for e in c.get("env", [])), "the operator writes TF_CONFIG"


def _command(spec: dict) -> list[str]:
    c = _container(spec)
    argv = [str(a) for a in c.get("command", []) + c.get("args", [])]
    assert argv[:2] == ["nin-pipeline", "build"], argv
    return argv[2:]


def _flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


@pytest.fixture(scope="module")
def build_options() -> set[str]:
    res = CliRunner().invoke(cli, ["build", "--help"])
    assert res.exit_code == 0, res.output
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.output))


def unknown_flags(argv: list[str], options: set[str]) -> list[str]:
    return [f for f in _flags(argv) if f not in options]


def test_every_flag_is_a_build_option(job, build_options):
    assert "--out" in build_options and "--data" not in build_options  # exact names, not prefixes
    for kind, spec in _replicas(job).items():
        argv = _command(spec)
        assert unknown_flags(argv, build_options) == [], kind
        assert unknown_flags([a.replace("--input-size", "--input-szie") for a in argv], build_options) == ["--input-szie"]


def test_the_command_parses_with_valid_values(job):
    """click parses the arguments (types, choices, ranges) without running the build."""
    build = cli.commands["build"]
    for spec in _replicas(job).values():
        ctx = build.make_context("build", _command(spec))
        assert ctx.params["out"] is not None
        assert ctx.params["workers"] is None and ctx.params["worker_index"] is None


def test_no_workers_flag_and_an_out_on_the_shared_volume(job):
    for kind, spec in _replicas(job).items():
        argv = _command(spec)
        assert not {"--workers", "--worker-index"} & set(_flags(argv)), f"{kind}: TF_CONFIG comes from the operator"
        assert "--out" in _flags(argv), f"{kind}: a multi-worker build needs --out on shared storage"
        pod = spec["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in _container(spec)["volumeMounts"]}
        claims = {v["name"]: v for v in pod["volumes"]}

        def volume_of(path: str) -> dict:
            hits = [p for p in mounts if Path(path).is_relative_to(p)]
            assert hits, f"{kind}: {path} is on no mounted volume"
            return claims[mounts[max(hits, key=len)]]

        out = volume_of(argv[argv.index("--out") + 1])
        assert "persistentVolumeClaim" in out, f"{kind}: --out must be on a shared claim (ReadWriteMany), not in the pod"
        assert not out["persistentVolumeClaim"].get("readOnly"), kind
        if "--data-dir" in argv:
            volume_of(argv[argv.index("--data-dir") + 1])


def test_the_batch_splits_over_the_workers(job):
    n = sum(spec["replicas"] for spec in _replicas(job).values())
    for spec in _replicas(job).values():
        argv = _command(spec)
        profile = argv[argv.index("--profile") + 1] if "--profile" in argv else "quick"
        batch = int(argv[argv.index("--batch-size") + 1]) if "--batch-size" in argv else PROFILES[profile].batch_size
        assert batch % n == 0, f"--batch-size {batch} is global: it must divide by the {n} workers"
