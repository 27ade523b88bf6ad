"""Kubernetes resource quantities ("500m", "4Gi", "1e3") parsed without the kubernetes client."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

#: The grammar kube-apiserver accepts for a quantity (apimachinery resource.Quantity).
QUANTITY_PATTERN: Final[str] = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE: Final = re.compile(QUANTITY_PATTERN)
#: The same grammar without a minus sign: what container resources accept (the API
#: server refuses a negative request or limit: "must be greater than or equal to 0").
NON_NEGATIVE_QUANTITY_PATTERN: Final[str] = QUANTITY_PATTERN.replace("^(\\+|-)?", "^\\+?", 1)

_BINARY: Final[dict[str, int]] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_DECIMAL: Final[dict[str, Decimal]] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the numeric value of a quantity ("4Gi" -> 4294967296, "500m" -> 0.5).

    Raises ValueError naming the grammar when `value` is not a quantity.
    """
    text = str(value).strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity; expected a number with an optional "
            "suffix such as 500m, 2, 1.5, 512Mi, 4Gi or 1e9"
        )
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    if text[-1] in "numkMGTPE" and "e" not in text[:-1].lower():
        return Decimal(text[:-1]) * _DECIMAL[text[-1]]
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from exc


def _normalise(value: object) -> object:
    # YAML gives ints for `cpu: 2`; a quantity is kept as the string the user wrote.
    if isinstance(value, bool):
        return value  # rejected below as "not a quantity"
    if isinstance(value, int | float):
        return str(value)
    return value


def _check(value: str) -> str:
    parse_quantity(value)
    return value


#: A quantity as users write it; validated, stored as its original text.
Quantity = Annotated[
    str,
    BeforeValidator(_normalise),
    AfterValidator(_check),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


def _non_negative(value: str) -> str:
    if parse_quantity(value) < 0:
        raise ValueError(
            f"{value!r} must be greater than or equal to 0 (a request or limit cannot be negative)"
        )
    return value


#: A container resource request or limit: a quantity that is not negative.
ResourceQuantity = Annotated[
    str,
    BeforeValidator(_normalise),
    AfterValidator(_non_negative),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 0,
            "pattern": NON_NEGATIVE_QUANTITY_PATTERN,
        }
    ),
]
