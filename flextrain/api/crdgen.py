"""Generate the CustomResourceDefinitions from the typed models (one source of truth).

Pydantic's JSON schema is not a valid CRD schema as it is. This module turns it into a
*structural* openAPIV3Schema (kube-apiserver's requirement):

* every `$ref` is inlined and `$defs` dropped;
* `anyOf: [X, {type: null}]` (an Optional) becomes X with `nullable: true`;
* `default: null`, `title` and `additionalProperties: false` are dropped (the API server
  prunes or, with kubectl's default strict field validation, rejects unknown fields);
* JSON-Schema-2020 `exclusiveMinimum: n` becomes OpenAPI 3.0's `minimum: n,
  exclusiveMinimum: true`; `const` becomes a one-value enum;
* `x-kubernetes-*` extensions declared on models and fields are kept and merged;
* `propertyNames` (a map's key schema, which CRDs lack) becomes CEL over the keys: an
  enum, or the key type's own rules (written on `self`) as `self.all(k, ...)`.

`flextrain crds` writes the result to `crds/` and, wrapped in `{{- if .Values.crds.enabled }}`,
to the Helm chart's `charts/flextrain/templates/crds/`; tests fail when the committed files
differ from a fresh generation.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel

from flextrain.api import devicetier, flextrainjob
from flextrain.api.common import GROUP, VERSION

JSON = dict[str, Any]

CATEGORIES: Final[list[str]] = ["flextrain", "all-flextrain"]

_DROP: Final[frozenset[str]] = frozenset({"title", "$defs", "discriminator"})


@dataclass(frozen=True)
class CrdInfo:
    """Everything about one custom resource that is not in its schema."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    scope: str
    printer_columns: tuple[JSON, ...]

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def filename(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


RESOURCES: Final[tuple[CrdInfo, ...]] = (
    CrdInfo(
        model=devicetier.DeviceTier,
        kind=devicetier.KIND,
        plural=devicetier.PLURAL,
        singular="devicetier",
        short_names=devicetier.SHORT_NAMES,
        scope="Cluster",
        printer_columns=(
            {"name": "Arch", "type": "string", "jsonPath": ".spec.architecture"},
            {"name": "Accelerator", "type": "string", "jsonPath": ".spec.accelerator.type"},
            {
                "name": "Nodes",
                "type": "integer",
                "jsonPath": ".status.readyNodes",
                "description": "Ready nodes matching the tier",
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    CrdInfo(
        model=flextrainjob.FlexTrainJob,
        kind=flextrainjob.KIND,
        plural=flextrainjob.PLURAL,
        singular="flextrainjob",
        short_names=flextrainjob.SHORT_NAMES,
        scope="Namespaced",
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Round", "type": "string", "jsonPath": ".status.round"},
            {
                "name": "Tiers Ready",
                "type": "string",
                "jsonPath": ".status.tiersReady",
                "description": "Tiers with all replicas ready / tiers",
            },
            {
                "name": "Best Accuracy",
                "type": "number",
                "jsonPath": ".status.bestAccuracy",
                "description": "Best held-out accuracy over depths in the latest evaluation",
            },
            {
                "name": "Accuracy",
                "type": "string",
                "jsonPath": ".status.accuracyByDepth",
                "description": "Latest held-out accuracy per depth (d<depth>=<accuracy>)",
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
)


def _resolve_refs(node: Any, defs: JSON) -> Any:
    """Inline every `$ref`; siblings of a `$ref` (description, extensions) win over or
    extend the referenced schema."""
    if isinstance(node, list):
        return [_resolve_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        merged = _merge(target, siblings)
        return _resolve_refs(merged, defs)
    return {k: _resolve_refs(v, defs) for k, v in node.items()}


def _merge(base: JSON, extra: JSON) -> JSON:
    out = dict(base)
    for key, value in extra.items():
        if key == "x-kubernetes-validations":
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return out


def _structural(node: Any) -> Any:
    """Rewrite a resolved pydantic schema node into a structural CRD schema node."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = node["anyOf"]
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) == len(options) - 1 and len(non_null) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = _merge(non_null[0], rest)
            node["nullable"] = True
        else:
            raise ValueError(f"cannot express a union as a structural schema: {options}")
    node = {k: v for k, v in node.items() if k not in _DROP}
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if "propertyNames" in node:
        node = _merge(node, {"x-kubernetes-validations": _key_rules(node.pop("propertyNames"))})
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    if "anyOf" in node:
        node["anyOf"] = [_structural(o) for o in node["anyOf"]]
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key])
    if "required" in node and not node["required"]:
        del node["required"]
    return node


_SELF: Final = re.compile(r"\bself\b")


def _key_rules(names: JSON) -> list[JSON]:
    """A map's key schema (`propertyNames`, which CRDs lack) as CEL over the keys: an enum,
    and each of the key type's own rules (written on `self`, the key) for every key."""
    rules: list[JSON] = []
    if "enum" in names:
        allowed = names["enum"]
        rules.append(
            {
                "rule": f"self.all(k, k in {allowed})",
                "message": f"keys must be one of {', '.join(allowed)}",
            }
        )
    for rule in names.get("x-kubernetes-validations", []):
        rules.append(
            {
                "rule": f"self.all(k, {_SELF.sub('k', rule['rule'])})",
                "message": f"every key: {rule['message']}",
            }
        )
    unknown = set(names) - {"enum", "type", "description", "x-kubernetes-validations"}
    if unknown:
        raise ValueError(f"cannot express map key constraints {sorted(unknown)} in a CRD")
    return rules


def openapi_schema(model: type[BaseModel]) -> JSON:
    """The structural openAPIV3Schema of a resource model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: JSON = _structural(_resolve_refs(raw, defs))
    props = schema["properties"]
    # Standard object fields: the API server owns metadata's schema.
    props["apiVersion"] = {"type": "string", "description": "apiVersion: flextrain.dev/v1alpha1."}
    props["kind"] = {"type": "string", "description": f"kind: {raw['title']}."}
    props["metadata"] = {"type": "object"}
    props["status"].pop("nullable", None)
    schema["required"] = ["spec"]
    schema.pop("description", None)
    return schema


def build_crd(info: CrdInfo) -> JSON:
    """The complete CustomResourceDefinition manifest of one resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.name,
            "labels": {"app.kubernetes.io/part-of": "flextrain"},
        },
        "spec": {
            "group": GROUP,
            "scope": info.scope,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in info.printer_columns],
                    "schema": {"openAPIV3Schema": openapi_schema(info.model)},
                }
            ],
        },
    }


def render(crd: JSON) -> str:
    header = "# Generated by `flextrain crds` from flextrain/api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)


def generated_files() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    return {info.filename: render(build_crd(info)) for info in RESOURCES}


_CHART_LABELS: Final[str] = "  labels:\n    app.kubernetes.io/part-of: flextrain\n"


def chart_template(info: CrdInfo) -> str:
    """The Helm chart's copy of one CRD: the generated YAML, unchanged but for the Helm
    labels and the keep annotation, inside `{{- if .Values.crds.enabled }}`. Kept as a
    template (not in the chart's crds/ folder) so that `helm upgrade` updates it."""
    text = render(build_crd(info))
    if "{{" in text or _CHART_LABELS not in text:
        raise ValueError(f"{info.filename}: cannot be wrapped in a Helm template")
    helm_meta = (
        _CHART_LABELS
        + '    {{- include "flextrain.crdLabels" . | nindent 4 }}\n'
        + "  {{- if or .Values.crds.keep .Values.crds.annotations }}\n"
        + "  annotations:\n"
        + "    {{- if .Values.crds.keep }}\n"
        + "    helm.sh/resource-policy: keep\n"
        + "    {{- end }}\n"
        + "    {{- with .Values.crds.annotations }}\n"
        + "    {{- toYaml . | nindent 4 }}\n"
        + "    {{- end }}\n"
        + "  {{- end }}\n"
    )
    return (
        "{{- if .Values.crds.enabled }}\n"
        + text.replace(_CHART_LABELS, helm_meta, 1)
        + "{{- end }}\n"
    )


def chart_files() -> dict[str, str]:
    """File name -> Helm template text of every CRD (charts/flextrain/templates/crds/)."""
    return {info.filename: chart_template(info) for info in RESOURCES}


def write_crds(directory: Path, *, log: Callable[[str], None] = print) -> list[Path]:
    """Write every CRD into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = directory / name
        path.write_text(text)
        log(f"wrote {path}")
        written.append(path)
    return written


def crd_for_kind(kind: str) -> JSON:
    for info in RESOURCES:
        if info.kind == kind:
            return build_crd(info)
    raise KeyError(kind)


def _type_of(node: JSON) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_of(node['additionalProperties'])}"
    return kind


def _limits(node: JSON) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node:
        op = ">" if node.get("exclusiveMinimum") else ">="
        parts.append(f"{op} {node['minimum']}")
    if "maximum" in node:
        op = "<" if node.get("exclusiveMaximum") else "<="
        parts.append(f"{op} {node['maximum']}")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} chars")
    return "; ".join(parts)


def _rows(node: JSON, path: str, required: bool) -> list[str]:
    rows = []
    if path:
        default = f"`{node['default']}`" if "default" in node else ""
        desc = str(node.get("description", "")).replace("|", "\\|").replace("\n", " ")
        desc = desc.split(": ", 1)[1] if ": " in desc else desc
        req = "yes" if required else ""
        rows.append(f"| `{path}` | {_type_of(node)} | {req} | {default} | {_limits(node)} | {desc} |")
    props = node.get("properties", {})
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        props = node["items"].get("properties", {})
        need = node["items"].get("required", [])
        path += "[]"
    else:
        need = node.get("required", [])
    for name, sub in props.items():
        rows += _rows(sub, f"{path}.{name}" if path else name, name in need)
    return rows


def render_reference() -> str:
    """docs/api.md: every field of both resources, from the same schema as the CRDs."""
    out = [
        "# API reference (flextrain.dev/v1alpha1)",
        "",
        "Generated by `flextrain crds` from `flextrain/api`; do not edit by hand.",
        "CEL rules checked by the API server (and offline by `flextrain validate`) are listed",
        "under each resource.",
    ]
    for info in RESOURCES:
        schema = openapi_schema(info.model)
        out += [
            "",
            f"## {info.kind}",
            "",
            f"{info.scope.lower()}-scoped; short name `{', '.join(info.short_names)}`; "
            f"`kubectl get {info.plural}`.",
            "",
            "| field | type | required | default | limits | meaning |",
            "|---|---|---|---|---|---|",
        ]
        for part in ("spec", "status"):
            out += _rows(schema["properties"][part], part, part == "spec")
        out += ["", "Rules:", ""]
        for path, node in _walk(schema, ""):
            for rule in node.get("x-kubernetes-validations", []):
                out.append(f"- `{path or '(object)'}`: {rule['message']} — `{rule['rule']}`")
    return "\n".join(out) + "\n"


def _walk(node: JSON, path: str) -> list[tuple[str, JSON]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _walk(sub, f"{path}.{name}" if path else name)
    for key, suffix in (("items", "[]"), ("additionalProperties", ".*")):
        if isinstance(node.get(key), dict):
            found += _walk(node[key], path + suffix)
    return found
