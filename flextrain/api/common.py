"""Shared pieces of the FlexTrain API: base model, metadata, conditions, constants."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from flextrain.api.conditions import MAX_CONDITIONS

GROUP: Final[str] = "flextrain.dev"
VERSION: Final[str] = "v1alpha1"
API_VERSION: Final[str] = f"{GROUP}/{VERSION}"

#: RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
DNS_LABEL_PATTERN: Final[str] = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: RFC 1123 subdomain (names of cluster-scoped objects such as DeviceTiers).
DNS_SUBDOMAIN_PATTERN: Final[str] = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


class FieldProblem(ValueError):
    """A validator's complaint about one field below the model it validates.

    Pydantic reports a model validator's error at the model's own location; raising this
    instead lets error reports name the exact field (`tiers[1].name`), not just `spec`.
    """

    def __init__(self, path: tuple[str | int, ...], value: Any, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.value = value


def schema_extra(**extensions: Any) -> JsonDict:
    """`x-kubernetes-*` schema extensions for a field, e.g.
    `schema_extra(x_kubernetes_list_type="map")` (underscores become dashes)."""
    return cast(JsonDict, {k.replace("_", "-"): v for k, v in extensions.items()})


def cel(
    rule: str, message: str, *, reason: str | None = None, field_path: str | None = None
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry (a CEL rule kube-apiserver evaluates)."""
    entry = {"rule": rule, "message": message}
    if reason:
        entry["reason"] = reason
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in YAML/JSON: camelCase keys, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def rules_config(*rules: dict[str, str]) -> ConfigDict:
    """The ApiModel config plus CEL rules that apply to the whole object."""
    return ConfigDict(
        **ApiModel.model_config,
        json_schema_extra=schema_extra(x_kubernetes_validations=list(rules)),
    )


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata FlexTrain reads; everything else is kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            pattern=DNS_SUBDOMAIN_PATTERN,
            description="name: the object's name (RFC 1123 subdomain).",
        ),
    ]
    namespace: str | None = Field(
        default=None, description="namespace: the namespace of a namespaced object."
    )
    labels: dict[str, str] | None = Field(default=None, description="labels: object labels.")
    annotations: dict[str, str] | None = Field(
        default=None, description="annotations: object annotations."
    )


class Condition(ApiModel):
    """A status condition in the standard Kubernetes shape (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        description="type: the condition type, one of the constants in flextrain.api.conditions "
        "(e.g. Degraded, Complete).",
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="status: True, False or Unknown."
    )
    reason: str = Field(
        max_length=1024,
        description="reason: a CamelCase machine-readable reason for the last transition.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="message: a human-readable explanation of the last transition.",
    )
    last_transition_time: datetime | None = Field(
        default=None,
        description="lastTransitionTime: when the status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="observedGeneration: the .metadata.generation the condition was computed from.",
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=MAX_CONDITIONS,
        json_schema_extra=schema_extra(
            x_kubernetes_list_type="map", x_kubernetes_list_map_keys=["type"]
        ),
    ),
]
