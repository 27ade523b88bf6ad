"""Check a custom resource against its generated CRD the way kube-apiserver would.

Three steps, in the apiserver's order:

1. unknown fields are rejected (kubectl's default server-side field validation is
   Strict), by validating against the openAPIV3Schema with `additionalProperties:
   false` added to every object that declares properties;
2. the openAPIV3Schema itself (types, enums, bounds, patterns, required fields), with
   OpenAPI's `nullable` mapped to JSON Schema;
3. defaults from the schema are applied, then every CEL rule in
   `x-kubernetes-validations` is evaluated with cel-python. Transition rules (those
   that read `oldSelf`) run only when an old object is given, as on an update.

The CRD used is the one `flextrain crds` generates, so this checks the shipped YAML's
behaviour, not the Python models.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

from flextrain.api import crdgen

JSON = dict[str, Any]


@dataclass(frozen=True)
class SchemaViolation:
    """One thing the CRD rejects: where, what was there and why."""

    path: str
    value: Any
    message: str
    check: str  # "crd-schema" or "crd-rule"


def format_path(parts: Iterator[Any] | list[Any] | tuple[Any, ...]) -> str:
    """('spec', 'tiers', 0, 'depth') -> 'spec.tiers[0].depth'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


@functools.cache
def crd_schema(kind: str) -> JSON:
    """The openAPIV3Schema of the generated CRD for `kind`."""
    crd = crdgen.crd_for_kind(kind)
    schema: JSON = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _to_json_schema(node: Any, *, strict: bool) -> Any:
    """OpenAPI 3.0 CRD schema -> Draft-4 JSON Schema (nullable, strict objects)."""
    if isinstance(node, list):
        return [_to_json_schema(n, strict=strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _to_json_schema(v, strict=strict)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "properties", "default")
    }
    if "properties" in node:
        out["properties"] = {
            k: _to_json_schema(v, strict=strict) for k, v in node["properties"].items()
        }
        if strict and "additionalProperties" not in node:
            out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    schema = _to_json_schema(crd_schema(kind), strict=True)
    # metadata is the API server's: only what FlexTrain needs is checked here.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
    }
    return jsonschema.Draft4Validator(schema)


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", error.message)
        allowed = sorted(error.schema.get("properties", {}))
        names = ", ".join(extra) or "field"
        return f"unknown field {names}; allowed fields here: {', '.join(allowed)}"
    message = str(error.message)
    if error.validator == "required":
        return message.replace("is a required property", "is required")
    return message


def schema_violations(body: JSON, kind: str) -> list[SchemaViolation]:
    """Everything the openAPIV3Schema (with strict field validation) rejects in `body`."""
    out = []
    for error in sorted(_validator(kind).iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", error.message)
            for name in extra:
                out.append(
                    SchemaViolation(
                        format_path([*path, name]),
                        error.instance.get(name) if isinstance(error.instance, dict) else None,
                        _schema_message(error).replace(", ".join(extra), name, 1),
                        "crd-schema",
                    )
                )
            continue
        out.append(
            SchemaViolation(format_path(path), error.instance, _schema_message(error), "crd-schema")
        )
    return out


def apply_defaults(schema: JSON, value: Any) -> Any:
    """Fill schema defaults into a copy of `value`, as the API server does before CEL,
    and make the integers of `type: number` fields doubles, as the API server's CEL sees
    them (`clipMultiple: 2` compares with `1.0`)."""
    value = copy.deepcopy(value)
    _fill(schema, value)
    return value


def _number(schema: JSON, value: Any) -> Any:
    """An int of a `type: number` field as a float; anything else as it is."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _fill(schema: JSON, value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _number(sub, value[name])
                _fill(sub, value[name])
        if isinstance(schema.get("additionalProperties"), dict):
            extra = schema["additionalProperties"]
            for key in value:
                if key not in schema.get("properties", {}):
                    value[key] = _number(extra, value[key])
                    _fill(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            value[i] = _number(schema["items"], item)
            _fill(schema["items"], value[i])


@functools.cache
def _program(rule: str) -> Any:
    import celpy  # imported lazily: only manifest validation needs it

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _walk_rules(
    schema: JSON, value: Any, old: Any, path: list[Any]
) -> Iterator[tuple[list[Any], JSON, Any, Any]]:
    """Yield (path, rule, self, oldSelf) for every CEL rule that applies to `value`."""
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule, value, old
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                yield from _walk_rules(sub, value[name], sub_old, [*path, name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in props:
                    sub_old = old.get(key) if isinstance(old, dict) else None
                    yield from _walk_rules(extra, item, sub_old, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys")
        for i, item in enumerate(value):
            sub_old = None
            if keys and isinstance(old, list) and isinstance(item, dict):
                # list-type=map items are correlated with their old self by key.
                sub_old = next(
                    (
                        o
                        for o in old
                        if isinstance(o, dict) and all(o.get(k) == item.get(k) for k in keys)
                    ),
                    None,
                )
            yield from _walk_rules(schema["items"], item, sub_old, [*path, i])


def rule_violations(body: JSON, kind: str, old: JSON | None = None) -> list[SchemaViolation]:
    """Every CEL rule of the CRD that `body` breaks (on create, or on update from `old`)."""
    import celpy

    schema = crd_schema(kind)
    body = apply_defaults(schema, body)
    if old is not None:
        old = apply_defaults(schema, old)
    out = []
    for path, rule, value, old_value in _walk_rules(schema, body, old, []):
        transition = "oldSelf" in rule["rule"]
        if transition and old_value is None:
            continue
        to_cel = celpy.json_to_cel  # type: ignore[attr-defined]
        activation = {"self": to_cel(value)}
        if transition:
            activation["oldSelf"] = to_cel(old_value)
        try:
            ok = bool(_program(rule["rule"]).evaluate(activation))
        except Exception as exc:  # a CEL runtime error rejects the object, as in the apiserver
            ok = False
            detail = f" (rule could not be evaluated: {exc})"
        else:
            detail = ""
        if not ok:
            # A rule's fieldPath (".operator") names the field it is about, as the API
            # server reports it.
            where = format_path(path) + rule.get("fieldPath", "")
            out.append(SchemaViolation(where, value, rule["message"] + detail, "crd-rule"))
    return out


def crd_violations(body: JSON, kind: str, old: JSON | None = None) -> list[SchemaViolation]:
    """Schema violations first; CEL rules only run on a schema-valid object (as in the apiserver)."""
    found = schema_violations(body, kind)
    return found or rule_violations(body, kind, old)
