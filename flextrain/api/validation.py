"""`flextrain validate`: check manifests against the typed models, the generated CRDs
and each other, with errors that name the document, the field, the value and the rule.

The same function backs `flextrain run` (a manifest it refuses never starts anything)
and the operator's admission-time checks, so every entry point says the same thing.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from flextrain.api.common import API_VERSION, FieldProblem
from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import FlexTrainJob
from flextrain.api.schema_check import crd_schema, crd_violations, format_path

MODELS: Final[dict[str, type[BaseModel]]] = {"FlexTrainJob": FlexTrainJob, "DeviceTier": DeviceTier}
_MISSING: Final = "<missing>"


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    source: str
    index: int  # 1-based position in its file
    body: Any

    @property
    def kind(self) -> str | None:
        return self.body.get("kind") if isinstance(self.body, dict) else None

    @property
    def name(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("metadata"), dict):
            name = self.body["metadata"].get("name")
            return str(name) if name is not None else None
        return None

    @property
    def label(self) -> str:
        what = f" {self.kind}/{self.name or '?'}" if self.kind else ""
        return f"{self.source} (document {self.index}{what})"


@dataclass(frozen=True)
class Problem:
    """One reason a document is invalid."""

    document: str
    path: str
    value: Any
    message: str
    check: str  # model | crd-schema | crd-rule | reference | yaml

    def __str__(self) -> str:
        return f"{self.document}: {self.detail}"

    @property
    def detail(self) -> str:
        """The problem without its document: `path: message (got value)`."""
        shown = "" if self.value is _MISSING else f" (got {_short(self.value)})"
        return f"{self.path}: {self.message}{shown}"


@dataclass
class ValidationResult:
    """What `validate_documents` found: parsed objects and problems."""

    documents: list[Document] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    jobs: list[FlexTrainJob] = field(default_factory=list)
    tiers: list[DeviceTier] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps(
            {
                "valid": self.ok,
                "documents": [
                    {
                        "document": d.label,
                        "kind": d.kind,
                        "name": d.name,
                        "valid": not any(p.document == d.label for p in self.problems),
                    }
                    for d in self.documents
                ],
                "skipped": self.skipped,
                "problems": [
                    {**asdict(p), "value": None if p.value is _MISSING else p.value}
                    for p in self.problems
                ],
            },
            indent=2,
            default=str,
        )

    def to_text(self) -> str:
        lines = [str(p) for p in self.problems]
        lines += [f"{s}: skipped (not a FlexTrain resource)" for s in self.skipped]
        n_docs = len(self.documents)
        if self.ok:
            lines.append(f"OK: {n_docs} document(s) valid")
        else:
            bad = len({p.document for p in self.problems})
            lines.append(
                f"INVALID: {len(self.problems)} problem(s) in {bad} of {n_docs} document(s)"
            )
        return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ManifestError(Exception):
    """A manifest could not be read at all (missing file, broken YAML)."""


def load_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[Problem]]:
    """Read every YAML document of every file; unreadable files become problems."""
    docs: list[Document] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        try:
            text = path.read_text()
        except OSError as exc:
            problems.append(
                Problem(str(path), "(file)", _MISSING, f"cannot read file: {exc.strerror}", "yaml")
            )
            continue
        try:
            bodies = [b for b in yaml.safe_load_all(text) if b is not None]
        except yaml.YAMLError as exc:
            problems.append(
                Problem(str(path), "(file)", _MISSING, f"not valid YAML: {exc}", "yaml")
            )
            continue
        for i, body in enumerate(bodies, start=1):
            if isinstance(body, dict) and body.get("kind") == "List":
                for j, item in enumerate(body.get("items") or [], start=1):
                    docs.append(Document(f"{path}[items {j}]", i, item))
            else:
                docs.append(Document(str(path), i, body))
    return docs, problems


def _model_path(loc: tuple[Any, ...]) -> tuple[list[Any], bool]:
    """Strip pydantic's union/validator tags from a loc; True when it was a union branch."""
    parts: list[Any] = []
    union = False
    for part in loc:
        if isinstance(part, str) and (
            part in ("int", "str", "float", "bool")
            or part.startswith(("literal[", "function-", "constrained-"))
        ):
            union = True
            continue
        if part == "[key]":
            continue
        parts.append(part)
    return parts, union


def _allowed_fields(kind: str, path: list[Any]) -> list[str]:
    node: Any = crd_schema(kind)
    for part in path[:-1]:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            props = node.get("properties", {})
            node = (
                props.get(part, node.get("additionalProperties", {}))
                if isinstance(node, dict)
                else {}
            )
    return sorted(node.get("properties", {})) if isinstance(node, dict) else []


def _model_problems(doc: Document, error: ValidationError) -> list[Problem]:
    problems: dict[str, Problem] = {}
    kind = doc.kind or ""
    for err in error.errors(include_url=False):
        path, union = _model_path(err["loc"])
        where = format_path(path)
        value: Any = err.get("input", _MISSING)
        etype = err["type"]
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblem):
            path = [*path, *cause.path]
            where, value, message = format_path(path), cause.value, str(cause)
        if etype == "missing":
            value, message = _MISSING, "required field is missing"
        elif etype == "extra_forbidden":
            allowed = _allowed_fields(kind, path)
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"unknown field {path[-1]!r}{hint} Allowed fields here: {', '.join(allowed)}"
        elif union and path and path[-1] == "depth":
            message = "depth must be an integer (1 to the model's number of blocks) or 'auto'"
        elif err["loc"] and err["loc"][-1] == "[key]":
            message = f"key {value!r} is not allowed: {message}"
        if where in problems and union:
            continue  # one message per union field, not one per branch
        problems[where] = Problem(doc.label, where, value, message, "model")
    return list(problems.values())


def _within(path: str, outer: str) -> bool:
    """True when `path` names a field inside `outer` ('a.b[0]' is within 'a.b')."""
    return path.startswith(outer + ".") or path.startswith(outer + "[")


def object_problems(body: Mapping[str, Any], error: ValidationError) -> list[str]:
    """What the typed model found wrong in one object (with `kind`), one line per field:
    `path: message (got value)`, as `flextrain validate` words it. The operator reports
    a DeviceTier it cannot read with these."""
    doc = Document(str(body.get("kind") or "object"), 0, dict(body))
    return [p.detail for p in _model_problems(doc, error)]


def _check_document(doc: Document, result: ValidationResult) -> None:
    body = doc.body
    if not isinstance(body, dict):
        result.problems.append(
            Problem(doc.label, "(document)", body, "a manifest document must be a mapping", "yaml")
        )
        return
    kind = body.get("kind")
    if kind not in MODELS:
        if isinstance(body.get("apiVersion"), str) and body["apiVersion"].startswith(
            "flextrain.dev/"
        ):
            result.problems.append(
                Problem(
                    doc.label,
                    "kind",
                    kind,
                    f"unknown FlexTrain kind; allowed: {', '.join(MODELS)}",
                    "model",
                )
            )
        else:
            result.skipped.append(doc.label)
        return
    if body.get("apiVersion") != API_VERSION:
        result.problems.append(
            Problem(
                doc.label,
                "apiVersion",
                body.get("apiVersion", _MISSING),
                f"must be {API_VERSION}",
                "model",
            )
        )
        return
    found: list[Problem] = []
    parsed: BaseModel | None = None
    try:
        parsed = MODELS[kind].model_validate(body)
    except ValidationError as exc:
        found.extend(_model_problems(doc, exc))
    # The CRD must agree: anything the schema or its CEL rules reject that the model
    # did not already report is reported too (that would also mean the two drifted).
    seen = {p.path for p in found}
    for v in crd_violations(body, kind):
        # Skip what the model reported already: the same field, one inside it, or the map
        # or list around it (a CRD rule over a map's keys names the map).
        if v.path not in seen and not any(_within(v.path, s) or _within(s, v.path) for s in seen):
            found.append(Problem(doc.label, v.path, v.value, v.message, v.check))
            seen.add(v.path)
    result.problems.extend(found)
    if parsed is not None and not found:
        if isinstance(parsed, FlexTrainJob):
            result.jobs.append(parsed)
        elif isinstance(parsed, DeviceTier):
            result.tiers.append(parsed)


def _check_references(result: ValidationResult, labels: dict[int, str]) -> None:
    tiers = {t.metadata.name: t for t in result.tiers}
    for job in result.jobs:
        label = labels[id(job)]
        for i, tier in enumerate(job.spec.tiers):
            where = f"spec.tiers[{i}]"
            ref = tiers.get(tier.device_tier_ref)
            if ref is None:
                known = ", ".join(sorted(tiers)) or "none in the given files"
                result.problems.append(
                    Problem(
                        label,
                        f"{where}.deviceTierRef",
                        tier.device_tier_ref,
                        f"no DeviceTier named {tier.device_tier_ref!r} in the given files "
                        f"(DeviceTiers given: {known}); pass the file that defines it",
                        "reference",
                    )
                )
            elif tier.depth == "auto" and ref.spec.capacity is None:
                result.problems.append(
                    Problem(
                        label,
                        f"{where}.depth",
                        "auto",
                        f"depth auto needs spec.capacity on DeviceTier {ref.metadata.name!r}; "
                        "set its capacity or give a fixed depth",
                        "reference",
                    )
                )


def _check_duplicates(docs: Sequence[Document], result: ValidationResult) -> None:
    seen: dict[tuple[str, str | None, str | None], str] = {}
    for doc in docs:
        if doc.kind not in MODELS or not isinstance(doc.body, dict):
            continue
        ns = (
            (doc.body.get("metadata") or {}).get("namespace")
            if doc.kind == "FlexTrainJob"
            else None
        )
        key = (doc.kind, ns, doc.name)
        if key in seen:
            result.problems.append(
                Problem(
                    doc.label,
                    "metadata.name",
                    doc.name,
                    f"{doc.kind} {doc.name!r} is also defined in {seen[key]}",
                    "reference",
                )
            )
        else:
            seen[key] = doc.label


def validate_documents(
    docs: Sequence[Document], *, check_references: bool = True
) -> ValidationResult:
    """Validate parsed documents: models, CRD schema + CEL rules, then cross-references."""
    result = ValidationResult(documents=list(docs))
    labels: dict[int, str] = {}
    for doc in docs:
        before = len(result.jobs)
        _check_document(doc, result)
        if len(result.jobs) > before:
            labels[id(result.jobs[-1])] = doc.label
    _check_duplicates(docs, result)
    if check_references:
        _check_references(result, labels)
    return result


def validate_files(
    paths: Iterable[str | Path], *, check_references: bool = True
) -> ValidationResult:
    """Read and validate manifest files (multi-document YAML)."""
    docs, problems = load_documents(paths)
    result = validate_documents(docs, check_references=check_references)
    result.problems[:0] = problems
    return result
