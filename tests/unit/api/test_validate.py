"""`flextrain validate`: every bad manifest is refused with a field-specific message, by
the typed models and, where the rule is expressible, by the generated CRD itself."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flextrain.api.schema_check import crd_violations
from flextrain.api.validation import Document, validate_documents, validate_files
from flextrain.cli import main
from tests.factories import make_job, make_tier

REPO = Path(__file__).resolve().parents[3]
Body = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Body], None]:
    """Mutation setting a dotted path ('spec.tiers.0.depth') to value."""

    def mutate(body: Body) -> None:
        node: Any = body
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        node: Any = body
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


def _queued_tiers(names: list[str]) -> Callable[[Body], None]:
    """Mutation giving the job a queueName (Kueue) and tiers of these names."""

    def mutate(body: Body) -> None:
        body["spec"]["queueName"] = "team-a"
        body["spec"]["tiers"] = [
            {"name": n, "deviceTierRef": "cpu", "replicas": 1, "depth": 3} for n in names
        ]

    return mutate


def _vit(layers: int = 9, depths: tuple[int, int] = (9, 3), **vit: Any) -> Callable[[Body], None]:
    """Mutation making the job's model a ViT (tiers' depths set to fit by default)."""

    def mutate(body: Body) -> None:
        body["spec"]["model"] = {"family": "vit", "layers": layers}
        if vit:
            body["spec"]["model"]["vit"] = dict(vit)
        for tier, depth in zip(body["spec"]["tiers"], depths, strict=True):
            tier["depth"] = depth

    return mutate


def _arm64(**spec: Any) -> Callable[[Body], None]:
    """Mutation making the tier an arm64 one, with the other spec fields given."""

    def mutate(body: Body) -> None:
        body["spec"]["architecture"] = "arm64"
        body["spec"].update(spec)

    return mutate


# (case id, kind, mutation, field path the error must name, CRD can express the rule)
BAD: list[tuple[str, str, Callable[[Body], None], str, bool]] = [
    ("replicas-zero", "job", _set("spec.tiers.0.replicas", 0), "spec.tiers[0].replicas", True),
    ("replicas-negative", "job", _set("spec.tiers.1.replicas", -3), "spec.tiers[1].replicas", True),
    (
        "replicas-wrong-type",
        "job",
        _set("spec.tiers.0.replicas", "two"),
        "spec.tiers[0].replicas",
        True,
    ),
    ("rounds-string", "job", _set("spec.training.rounds", "many"), "spec.training.rounds", True),
    (
        "anchor-loss-unknown",
        "job",
        _set("spec.training.distillation.anchor", {"loss": "mse"}),
        "spec.training.distillation.anchor.loss",
        True,
    ),
    (
        "anchor-tiers-unknown",
        "job",
        _set("spec.training.distillation.anchor", {"loss": "ce", "tiers": "deepest"}),
        "spec.training.distillation.anchor.tiers",
        True,
    ),
    ("unknown-model-family", "job", _set("spec.model.family", "vgg"), "spec.model.family", True),
    ("unknown-model-layers", "job", _set("spec.model.layers", 50), "spec.model.layers", True),
    ("depth-zero", "job", _set("spec.tiers.0.depth", 0), "spec.tiers[0].depth", True),
    ("vit-too-many-blocks", "job", _vit(layers=33), "spec.model.layers", True),
    ("vit-zero-blocks", "job", _vit(layers=0), "spec.model.layers", True),
    ("vit-depth-deeper-than-blocks", "job", _vit(layers=4), "spec.tiers[0].depth", True),
    ("vit-width-too-small", "job", _vit(embedDim=4, heads=1), "spec.model.vit.embedDim", True),
    ("vit-heads-do-not-divide-width", "job", _vit(embedDim=30, heads=4), "spec.model.vit.embedDim", True),
    ("vit-too-many-heads", "job", _vit(heads=32), "spec.model.vit.heads", True),
    ("vit-mlp-ratio-zero", "job", _vit(mlpRatio=0), "spec.model.vit.mlpRatio", True),
    ("vit-patch-too-large", "job", _vit(patchSize=32), "spec.model.vit.patchSize", True),
    ("vit-patch-does-not-tile-image", "job", _vit(patchSize=3), "spec.model.vit.patchSize", True),
    ("vit-unknown-option", "job", _vit(width=64), "spec.model.vit.width", True),
    (
        "vit-shape-on-a-resnet",
        "job",
        _set("spec.model", {"family": "resnet", "layers": 20, "vit": {"heads": 2}}),
        "spec.model.vit",
        True,
    ),
    ("depth-deeper-than-model", "job", _set("spec.tiers.0.depth", 10), "spec.tiers[0].depth", True),
    ("depth-not-auto", "job", _set("spec.tiers.0.depth", "max"), "spec.tiers[0].depth", True),
    (
        "missing-device-tier",
        "job",
        _set("spec.tiers.1.deviceTierRef", "gpu"),
        "spec.tiers[1].deviceTierRef",
        False,
    ),
    (
        "duplicate-tier-names",
        "job",
        _set("spec.tiers.1.name", "strong"),
        "spec.tiers[1].name",
        True,
    ),
    ("bad-tier-name", "job", _set("spec.tiers.0.name", "Strong_Tier"), "spec.tiers[0].name", True),
    ("no-tiers", "job", _set("spec.tiers", []), "spec.tiers", True),
    ("missing-tiers", "job", _delete("spec.tiers"), "spec.tiers", True),
    ("missing-dataset", "job", _delete("spec.dataset"), "spec.dataset", True),
    ("missing-depth", "job", _delete("spec.tiers.0.depth"), "spec.tiers[0].depth", True),
    ("unknown-dataset", "job", _set("spec.dataset.name", "imagenet"), "spec.dataset.name", True),
    ("dataset-without-source", "job", _set("spec.dataset.name", "cifar100"), "spec.dataset", True),
    (
        "unknown-partition",
        "job",
        _set("spec.dataset.partition", {"scheme": "shards"}),
        "spec.dataset.partition.scheme",
        True,
    ),
    (
        "dirichlet-alpha-zero",
        "job",
        _set("spec.dataset.partition", {"scheme": "dirichlet", "alpha": 0}),
        "spec.dataset.partition.alpha",
        True,
    ),
    (
        "dirichlet-alpha-negative",
        "job",
        _set("spec.dataset.partition", {"scheme": "dirichlet", "alpha": -1.5}),
        "spec.dataset.partition.alpha",
        True,
    ),
    (
        "dirichlet-without-alpha",
        "job",
        _set("spec.dataset.partition", {"scheme": "dirichlet"}),
        "spec.dataset.partition",
        True,
    ),
    (
        "two-data-sources",
        "job",
        _set("spec.dataset.source", {"path": "/d", "hostPath": {"path": "/d"}}),
        "spec.dataset.source",
        True,
    ),
    (
        "unknown-strategy",
        "job",
        _set("spec.aggregation.strategy", "fedprox"),
        "spec.aggregation.strategy",
        True,
    ),
    (
        "quorum-above-one",
        "job",
        _set("spec.aggregation.quorum", 1.5),
        "spec.aggregation.quorum",
        True,
    ),
    ("quorum-zero", "job", _set("spec.aggregation.quorum", 0), "spec.aggregation.quorum", True),
    (
        "robust-options-with-pad",
        "job",
        _set("spec.aggregation", {"strategy": "pad", "robust": {"method": "median"}}),
        "spec.aggregation.robust",
        True,
    ),
    (
        "robust-unknown-method",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"method": "mode"}}),
        "spec.aggregation.robust.method",
        True,
    ),
    (
        "robust-trim-half",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"trimFraction": 0.5}}),
        "spec.aggregation.robust.trimFraction",
        True,
    ),
    (
        "robust-trim-with-median",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"method": "median", "trimFraction": 0.1}}),
        "spec.aggregation.robust.trimFraction",
        True,
    ),
    (
        "robust-clip-below-one",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"clipMultiple": 0.5}}),
        "spec.aggregation.robust.clipMultiple",
        True,
    ),
    (
        "robust-clip-too-large",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"clipMultiple": 5000}}),
        "spec.aggregation.robust.clipMultiple",
        True,
    ),
    (
        "negative-learning-rate",
        "job",
        _set("spec.training.optimizer", {"learningRate": -0.1}),
        "spec.training.optimizer.learningRate",
        True,
    ),
    ("misspelt-job-field", "job", _set("spec.trainig", {"rounds": 3}), "spec.trainig", True),
    (
        "misspelt-tier-field",
        "job",
        _set("spec.tiers.0.deviceTier", "cpu"),
        "spec.tiers[0].deviceTier",
        True,
    ),
    ("suspend-not-bool", "job", _set("spec.suspend", "sometimes"), "spec.suspend", True),
    ("queue-name-not-a-name", "job", _set("spec.queueName", "Team_Queue"), "spec.queueName", True),
    ("queue-name-empty", "job", _set("spec.queueName", ""), "spec.queueName", True),
    (
        "queued-job-with-eight-tiers",
        "job",
        _queued_tiers([f"t{i}" for i in range(8)]),
        "spec.tiers",
        True,
    ),
    (
        "queued-tier-named-aggregator",
        "job",
        _queued_tiers(["aggregator", "weak"]),
        "spec.tiers",
        True,
    ),
    (
        "deadline-zero",
        "job",
        _set("spec.activeDeadlineSeconds", 0),
        "spec.activeDeadlineSeconds",
        True,
    ),
    (
        "misspelt-node-selector",
        "tier",
        _set("spec.nodeSelectr", {"a": "b"}),
        "spec.nodeSelectr",
        True,
    ),
    ("bad-architecture", "tier", _set("spec.architecture", "riscv64"), "spec.architecture", True),
    (
        "bad-cpu-quantity",
        "tier",
        _set("spec.resources", {"requests": {"cpu": "two"}}),
        "spec.resources.requests.cpu",
        True,
    ),
    (
        "bad-memory-quantity",
        "tier",
        _set("spec.resources", {"limits": {"memory": "4 GB"}}),
        "spec.resources.limits.memory",
        True,
    ),
    (
        "unknown-resource",
        "tier",
        _set("spec.resources", {"requests": {"gpu": 1}}),
        "spec.resources.requests.gpu",
        True,
    ),
    (
        "gpu-without-count",
        "tier",
        _set("spec.accelerator", {"type": "nvidia.com/gpu"}),
        "spec.accelerator",
        True,
    ),
    (
        "unknown-accelerator",
        "tier",
        _set("spec.accelerator", {"type": "amd.com/gpu", "count": 1}),
        "spec.accelerator.type",
        True,
    ),
    ("empty-capacity", "tier", _set("spec.capacity", {}), "spec.capacity", True),
    (
        # The CUDA image is linux/amd64 only; the arm64 image is CPU-only.
        "arm64-gpu-tier",
        "tier",
        _arm64(accelerator={"type": "nvidia.com/gpu", "count": 1}),
        "spec.accelerator.type",
        True,
    ),
    (
        "bad-toleration-operator",
        "tier",
        _set("spec.tolerations", [{"key": "k", "operator": "In"}]),
        "spec.tolerations[0].operator",
        True,
    ),
    (
        "node-selector-not-strings",
        "tier",
        _set("spec.nodeSelector", {"gpu": True}),
        "spec.nodeSelector.gpu",
        True,
    ),
    (
        "limit-below-request",
        "tier",
        _set("spec.resources", {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
        "spec.resources.limits.memory",
        False,
    ),
    ("auto-depth-without-capacity", "tier", _delete("spec.capacity"), "spec.tiers[1].depth", False),
    # What kube-apiserver refuses in the pods built from a DeviceTier or a job.
    (
        "toleration-exists-with-value",
        "tier",
        _set("spec.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
        "spec.tolerations[0].value",
        True,
    ),
    (
        "toleration-empty-key-with-equal",
        "tier",
        _set("spec.tolerations", [{"operator": "Equal", "value": "v"}]),
        "spec.tolerations[0].operator",
        True,
    ),
    (
        "toleration-seconds-without-noexecute",
        "tier",
        _set(
            "spec.tolerations",
            [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}],
        ),
        "spec.tolerations[0].effect",
        True,
    ),
    (
        "toleration-seconds-without-effect",
        "tier",
        _set("spec.tolerations", [{"key": "k", "operator": "Exists", "tolerationSeconds": 60}]),
        "spec.tolerations[0].effect",
        True,
    ),
    (
        "toleration-unknown-effect",
        "tier",
        _set("spec.tolerations", [{"key": "k", "operator": "Exists", "effect": "NoRun"}]),
        "spec.tolerations[0].effect",
        True,
    ),
    (
        "toleration-bad-key",
        "tier",
        _set("spec.tolerations", [{"key": "gpu type", "operator": "Exists"}]),
        "spec.tolerations[0].key",
        True,
    ),
    (
        "toleration-key-prefix-too-long",
        "tier",
        _set("spec.tolerations", [{"key": "p" * 254 + "/gpu", "operator": "Exists"}]),
        "spec.tolerations[0].key",
        True,
    ),
    (
        "toleration-bad-value",
        "tier",
        _set("spec.tolerations", [{"key": "k", "value": "two words"}]),
        "spec.tolerations[0].value",
        True,
    ),
    (
        "node-selector-bad-key",
        "tier",
        _set("spec.nodeSelector", {"pool name": "edge"}),
        "spec.nodeSelector.pool name",
        True,
    ),
    (
        "node-selector-key-name-too-long",
        "tier",
        _set("spec.nodeSelector", {"example.com/" + "n" * 64: "edge"}),
        "spec.nodeSelector.example.com/" + "n" * 64,
        True,
    ),
    (
        "node-selector-uppercase-prefix",
        "tier",
        _set("spec.nodeSelector", {"Example.com/pool": "edge"}),
        "spec.nodeSelector.Example.com/pool",
        True,
    ),
    (
        "node-selector-value-too-long",
        "tier",
        _set("spec.nodeSelector", {"pool": "e" * 64}),
        "spec.nodeSelector.pool",
        True,
    ),
    (
        "node-selector-bad-value",
        "tier",
        _set("spec.nodeSelector", {"pool": "-edge"}),
        "spec.nodeSelector.pool",
        True,
    ),
    (
        "negative-cpu-request",
        "tier",
        _set("spec.resources", {"requests": {"cpu": "-500m"}}),
        "spec.resources.requests.cpu",
        True,
    ),
    (
        "negative-memory-limit",
        "tier",
        _set("spec.resources", {"limits": {"memory": -1}}),
        "spec.resources.limits.memory",
        True,
    ),
    ("tier-image-with-spaces", "tier", _set("spec.image", " registry/x:1"), "spec.image", True),
    ("job-image-with-newline", "job", _set("spec.image", "registry/x:1\n"), "spec.image", True),
    (
        "pod-label-bad-key",
        "job",
        _set("spec.podTemplate", {"labels": {"team/name/x": "vision"}}),
        "spec.podTemplate.labels.team/name/x",
        True,
    ),
    (
        "pod-label-bad-value",
        "job",
        _set("spec.podTemplate", {"labels": {"team": "vision ai"}}),
        "spec.podTemplate.labels.team",
        True,
    ),
    (
        "pod-annotation-bad-key",
        "job",
        _set("spec.podTemplate", {"annotations": {"note!": "x"}}),
        "spec.podTemplate.annotations.note!",
        True,
    ),
    (
        "pod-annotations-too-large",
        "job",
        _set("spec.podTemplate", {"annotations": {"big": "x" * (256 * 1024)}}),
        "spec.podTemplate.annotations",
        False,
    ),
    (
        "pvc-sub-path-absolute",
        "job",
        _set(
            "spec.checkpoint",
            {"persistentVolumeClaim": {"claimName": "ckpt", "subPath": "/runs"}},
        ),
        "spec.checkpoint.persistentVolumeClaim.subPath",
        True,
    ),
    (
        "host-path-with-backsteps",
        "job",
        _set("spec.tiers.0.dataSource", {"hostPath": {"path": "/data/../etc"}}),
        "spec.tiers[0].dataSource.hostPath.path",
        True,
    ),
    (
        "own-claim-and-empty-dir",
        "job",
        _set("spec.checkpoint", {"persistentVolumeClaim": {"claimName": "c"}, "emptyDir": True}),
        "spec.checkpoint",
        True,
    ),
    ("empty-dir-with-size", "job", _set("spec.checkpoint", {"emptyDir": True, "size": "5Gi"}), "spec.checkpoint", True),
    ("negative-checkpoint-size", "job", _set("spec.checkpoint", {"size": "-1Gi"}), "spec.checkpoint.size", True),
]


def _documents(kind: str, mutate: Callable[[Body], None]) -> tuple[list[Document], Body]:
    job = make_job()
    job["spec"]["tiers"][1]["depth"] = "auto"
    tier = make_tier("cpu")
    target = job if kind == "job" else tier
    mutate(target)
    return [Document("t.yaml", 1, tier), Document("t.yaml", 2, job)], target


def test_the_table_covers_at_least_twenty_cases() -> None:
    assert len(BAD) >= 20


def test_the_unmutated_documents_are_valid() -> None:
    docs, _ = _documents("job", lambda body: None)
    result = validate_documents(docs)
    assert result.ok, result.to_text()


@pytest.mark.parametrize(("case", "kind", "mutate", "path", "crd"), BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_rejected_naming_the_field(
    case: str, kind: str, mutate: Callable[[Body], None], path: str, crd: bool
) -> None:
    docs, target = _documents(kind, mutate)
    result = validate_documents(docs)
    assert not result.ok, f"{case} was accepted"
    paths = [p.path for p in result.problems]
    assert path in paths, f"{case}: expected a problem at {path}, got {result.to_text()}"
    problem = next(p for p in result.problems if p.path == path)
    assert problem.message and problem.document.startswith("t.yaml (document")
    if crd:
        found = crd_violations(copy.deepcopy(target), target["kind"])
        assert found, f"{case}: the generated CRD accepts it"
        assert any(
            v.path == path or v.path.startswith(path) or path.startswith(v.path) for v in found
        ), f"{case}: CRD rejected other fields: {found}"


def test_unknown_field_suggests_the_right_name() -> None:
    docs, _ = _documents("tier", _set("spec.nodeSelectr", {"a": "b"}))
    problem = next(p for p in validate_documents(docs).problems if p.path == "spec.nodeSelectr")
    assert "did you mean 'nodeSelector'" in problem.message


def test_depth_error_states_the_allowed_range() -> None:
    docs, _ = _documents("job", _set("spec.tiers.0.depth", 10))
    problem = next(p for p in validate_documents(docs).problems if p.path == "spec.tiers[0].depth")
    assert "1 to 9" in problem.message and problem.value == 10


def test_every_example_validates() -> None:
    result = validate_files(sorted((REPO / "examples").glob("*.yaml")))
    assert result.ok, result.to_text()
    assert {j.metadata.name for j in result.jobs} >= {"quickstart", "cifar100-resnet56"}


def test_examples_reproduce_the_papers_table_3_mix() -> None:
    result = validate_files(
        [REPO / "examples/cifar100-resnet56.yaml", REPO / "examples/devicetiers.yaml"]
    )
    (job,) = result.jobs
    mix = [(t.depth, t.replicas) for t in job.spec.tiers]
    assert mix == [(8, 2), (12, 2), (16, 2), (18, 2), (21, 2), (23, 2), (25, 2), (27, 6)]
    assert (job.spec.training.rounds, job.spec.training.local_epochs) == (160, 10)


def test_duplicate_objects_across_files_are_reported(tmp_path: Path) -> None:
    one = tmp_path / "a.yaml"
    one.write_text(yaml.safe_dump_all([make_tier("cpu"), make_tier("cpu")]))
    result = validate_files([one])
    assert [p.path for p in result.problems] == ["metadata.name"]


def test_broken_yaml_and_missing_files_are_problems(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    result = validate_files([broken, tmp_path / "absent.yaml"])
    assert [p.check for p in result.problems] == ["yaml", "yaml"]


def test_other_kinds_are_skipped_not_failed(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}}
    path.write_text(yaml.safe_dump_all([pvc, make_tier("cpu")]))
    result = validate_files([path])
    assert result.ok and len(result.skipped) == 1


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([make_tier("cpu"), make_job()]))
    assert main(["validate", str(good)]) == 0
    bad_job = make_job()
    bad_job["spec"]["tiers"][0]["replicas"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([make_tier("cpu"), bad_job]))
    capsys.readouterr()
    assert main(["validate", "--output", "json", str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    (problem,) = report["problems"]
    assert problem["path"] == "spec.tiers[0].replicas" and problem["value"] == 0
    assert problem["document"].endswith("bad.yaml (document 2 FlexTrainJob/job)")


def test_skip_references_accepts_tiers_that_live_in_the_cluster(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_job()))
    assert main(["validate", str(path)]) == 1
    assert main(["validate", "--skip-references", str(path)]) == 0


def test_console_script_runs_without_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from flextrain.cli import main; rc = main(['validate', 'examples/quickstart.yaml']);"
        "assert 'torch' not in sys.modules, 'validate imported torch'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


GOOD: list[tuple[str, str, Callable[[Body], None]]] = [
    ("tolerate-every-taint", "tier", _set("spec.tolerations", [{"operator": "Exists"}])),
    (
        "toleration-seconds-with-noexecute",
        "tier",
        _set(
            "spec.tolerations",
            [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
              "effect": "NoExecute", "tolerationSeconds": 300}],
        ),
    ),
    ("toleration-empty-value", "tier", _set("spec.tolerations", [{"key": "k", "value": ""}])),
    ("arm64-cpu-tier", "tier", _arm64(accelerator={"type": "none"})),
    ("amd64-gpu-tier", "tier", _set("spec.accelerator", {"type": "nvidia.com/gpu", "count": 2})),
    (
        "node-selector-edge-cases",
        "tier",
        _set("spec.nodeSelector", {"example.com/pool": "", "Pool_A": "x.y-Z", "p" * 63: "v" * 63}),
    ),
    ("zero-request", "tier", _set("spec.resources", {"requests": {"cpu": 0, "memory": "+1Gi"}})),
    (
        "annotation-key-in-any-case",
        "job",
        _set("spec.podTemplate", {"annotations": {"Example.COM/Note": "any text at all"}}),
    ),
    (
        "relative-sub-path",
        "job",
        _set("spec.checkpoint", {"persistentVolumeClaim": {"claimName": "c", "subPath": "a/..b/c"}}),
    ),
]


GOOD += [
    ("robust-with-defaults", "job", _set("spec.aggregation", {"strategy": "robust"})),
    (
        "robust-median-without-clipping",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"method": "median", "clipMultiple": 0}}),
    ),
    (
        "robust-every-option",
        "job",
        _set("spec.aggregation", {"strategy": "robust", "robust": {"method": "trimmed-mean", "trimFraction": 0.1, "clipMultiple": 2}}),
    ),
    ("vit-with-default-shape", "job", _vit(layers=6, depths=(6, 2))),
    ("vit-with-every-option", "job", _vit(layers=4, depths=(4, 1), embedDim=48, heads=3, patchSize=4, mlpRatio=4)),
    ("vit-one-pixel-patches", "job", _vit(layers=2, depths=(2, 1), embedDim=16, heads=16, patchSize=1)),
]


@pytest.mark.parametrize(("case", "kind", "mutate"), GOOD, ids=[g[0] for g in GOOD])
def test_what_the_api_server_accepts_is_accepted(
    case: str, kind: str, mutate: Callable[[Body], None]
) -> None:
    docs, target = _documents(kind, mutate)
    result = validate_documents(docs)
    assert result.ok, f"{case}: {result.to_text()}"
    assert crd_violations(copy.deepcopy(target), target["kind"]) == []


def test_toleration_errors_say_what_is_allowed() -> None:
    docs, _ = _documents(
        "tier", _set("spec.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}])
    )
    problem = next(p for p in validate_documents(docs).problems if p.document.endswith("cpu)"))
    assert problem.path == "spec.tolerations[0].value" and problem.value == "v"
    assert "value must be empty when operator is Exists" in problem.message
    assert "use operator Equal" in problem.message
    docs, _ = _documents("tier", _set("spec.nodeSelector", {"pool name": "e"}))
    problems = [p for p in validate_documents(docs).problems if p.document.endswith("cpu)")]
    assert {p.path: p.message for p in problems} == {
        "spec.nodeSelector.pool name": "key 'pool name' is not allowed: not a valid label key: "
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
        "and end with an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')",
    }


def test_vit_errors_say_what_was_wrong_and_what_is_allowed() -> None:
    cases = [
        (_vit(layers=4), "spec.tiers[0].depth", "a vit with 4 transformer blocks has 4 blocks, so depth must be 1 to 4"),
        (_vit(layers=40), "spec.model.layers", "transformer blocks, 1 to 32, got 40"),
        (_vit(embedDim=30, heads=4), "spec.model.vit.embedDim", "embedDim 30 must be a multiple of heads 4"),
        (_vit(patchSize=3), "spec.model.vit.patchSize", "does not divide the digits images' size 8; allowed here: 1, 2, 4, 8"),
        (_vit(heads=32), "spec.model.vit.heads", "less than or equal to 16"),
    ]
    for mutate, path, words in cases:
        docs, _ = _documents("job", mutate)
        problems = {p.path: p for p in validate_documents(docs).problems}
        assert path in problems, (path, list(problems))
        assert words in problems[path].message, problems[path].message


def test_arm64_gpu_tier_message_says_which_field_why_and_what_to_do() -> None:
    docs, _ = _documents("tier", _arm64(accelerator={"type": "nvidia.com/gpu", "count": 1}))
    problems = validate_documents(docs).problems
    (problem,) = [p for p in problems if p.document.endswith("DeviceTier/cpu)")]
    assert (problem.path, problem.value) == ("spec.accelerator.type", "nvidia.com/gpu")
    for part in ("architecture arm64", "linux/amd64 only", "CPU-only", "architecture: amd64",
                 "accelerator.type none"):
        assert part in problem.message, problem.message
