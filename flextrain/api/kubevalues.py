"""Kubernetes' own rules for the values FlexTrain copies into the pods it creates: label
keys and values (node selectors, pod labels), annotation keys, toleration keys, volume
paths and image names.

A DeviceTier or FlexTrainJob that breaks one of these would pass `flextrain validate` and
the CRD, and then every Job or Deployment the operator builds from it would be refused
by the API server. So the models apply the API server's rules, ported from
k8s.io/apimachinery/pkg/api/validate/content (v0.37) and
k8s.io/kubernetes/pkg/apis/core/validation, with its wording, and the CRD carries the
same rules as schema patterns and CEL (see the JSON schemas below).

Map keys have no schema of their own in a CRD: a key type's CEL rules are written on
`self` (the key) and crdgen turns them into one `self.all(k, ...)` rule per rule over
the map's keys. The API server estimates a map key's size as 0 when costing CEL, so these
rules cost little; maps that use them are bounded (maxProperties) all the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Final

from pydantic import AfterValidator, WithJsonSchema

from flextrain.api.common import cel

#: The name part of a label key (a "qualified name"), 1 to 63 characters.
_NAME_FMT: Final[str] = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME_MAX: Final[int] = 63
#: A lowercase RFC 1123 subdomain (the optional prefix of a label key).
_SUBDOMAIN_FMT: Final[str] = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_SUBDOMAIN_MAX: Final[int] = 253
_VALUE_MAX: Final[int] = 63

#: A label value: empty, or 1 to 63 characters (the length is the schema's maxLength).
LABEL_VALUE_PATTERN: Final[str] = f"^({_NAME_FMT})?$"
#: A label key's shape; its lengths are checked apart (name part at most 63 characters
#: by the bounded repetition, prefix at most 253 by PREFIX_LENGTH_RULE).
LABEL_KEY_PATTERN: Final[str] = (
    f"^({_SUBDOMAIN_FMT}/)?([A-Za-z0-9][-A-Za-z0-9_.]{{0,{_NAME_MAX - 2}}})?[A-Za-z0-9]$"
)
#: The longest label key: a 253-character prefix, '/', a 63-character name.
LABEL_KEY_MAX: Final[int] = _SUBDOMAIN_MAX + 1 + _NAME_MAX
#: Total size of a pod's annotations (keys and values), as kube-apiserver counts it.
ANNOTATIONS_MAX_BYTES: Final[int] = 256 * 1024

# fullmatch, not `$`: Python's `$` also matches before a final newline, Go's does not.
_NAME_RE: Final = re.compile(_NAME_FMT)
_SUBDOMAIN_RE: Final = re.compile(_SUBDOMAIN_FMT)
_VALUE_RE: Final = re.compile(f"({_NAME_FMT})?")

_NAME_MSG: Final[str] = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')"
)
_SUBDOMAIN_MSG: Final[str] = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
)
_VALUE_MSG: Final[str] = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', "
    "'my_value' or '12345')"
)
KEY_RULES_MESSAGE: Final[str] = (
    "a label key is an optional DNS subdomain prefix (lowercase, at most 253 characters) "
    "and '/', then a name of 1 to 63 alphanumerics, '-', '_' or '.', starting and ending "
    "alphanumeric (e.g. example.com/pool)"
)


def dns_subdomain_problems(value: str) -> list[str]:
    """Why `value` is not a lowercase RFC 1123 subdomain (IsDNS1123Subdomain)."""
    problems = []
    if len(value) > _SUBDOMAIN_MAX:
        problems.append(f"must be no more than {_SUBDOMAIN_MAX} bytes")
    if not _SUBDOMAIN_RE.fullmatch(value):
        problems.append(_SUBDOMAIN_MSG)
    return problems


def label_key_problems(value: str) -> list[str]:
    """Why `value` is not a label key, a "qualified name" (IsLabelKey)."""
    parts = value.split("/")
    if len(parts) > 2:
        return [
            f"a valid label key {_NAME_MSG} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    problems = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems += [f"prefix part {p}" for p in dns_subdomain_problems(prefix)]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > _NAME_MAX:
        problems.append(f"name part must be no more than {_NAME_MAX} bytes")
    if not _NAME_RE.fullmatch(name):
        problems.append(f"name part {_NAME_MSG}")
    return problems


def label_value_problems(value: str) -> list[str]:
    """Why `value` is not a label value (IsLabelValue)."""
    problems = []
    if len(value) > _VALUE_MAX:
        problems.append(f"must be no more than {_VALUE_MAX} bytes")
    if not _VALUE_RE.fullmatch(value):
        problems.append(_VALUE_MSG)
    return problems


def annotation_key_problems(value: str) -> list[str]:
    """Why `value` is not an annotation key: a label key, whatever its letter case
    (ValidateAnnotations lowercases keys before checking them)."""
    return label_key_problems(value.lower())


def path_problems(value: str, *, relative: bool) -> list[str]:
    """Why a volume path is refused: `..` elements never (validatePathNoBacksteps); a
    subPath must also be relative (validateLocalDescendingPath)."""
    problems = []
    if relative and value.startswith("/"):
        problems.append("must be a relative path")
    if ".." in value.split("/"):
        problems.append("must not contain '..'")
    return problems


def cel_string(text: str) -> str:
    """`text` as a single-quoted CEL string literal (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _checked(problems: Callable[[str], list[str]], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        found = problems(value)
        if found:
            raise ValueError(f"not a valid {what}: {'; '.join(found)}")
        return value

    return check


#: CEL rules for a label key, written on `self` (the key).
KEY_RULES: Final[list[dict[str, str]]] = [
    cel(f"size(self) <= {LABEL_KEY_MAX}", f"must be at most {LABEL_KEY_MAX} characters"),
    cel(f"self.matches({cel_string(LABEL_KEY_PATTERN)})", KEY_RULES_MESSAGE),
    cel(
        f"!self.contains('/') || self.matches('^[^/]{{1,{_SUBDOMAIN_MAX}}}/')",
        f"the prefix before '/' must be at most {_SUBDOMAIN_MAX} characters",
    ),
]

#: A label key as a map key (node selectors, pod labels).
LabelKey = Annotated[
    str,
    AfterValidator(_checked(label_key_problems, "label key")),
    WithJsonSchema({"type": "string", "x-kubernetes-validations": KEY_RULES}),
]

#: An annotation key as a map key: a label key in any letter case.
AnnotationKey = Annotated[
    str,
    AfterValidator(_checked(annotation_key_problems, "annotation key")),
    WithJsonSchema(
        {
            "type": "string",
            "x-kubernetes-validations": [
                KEY_RULES[0],
                cel(
                    f"self.matches({cel_string('(?i)' + LABEL_KEY_PATTERN)})",
                    KEY_RULES_MESSAGE + ", in any case",
                ),
                KEY_RULES[2],
            ],
        }
    ),
]

#: A label value (node selector and pod label values, toleration values).
LabelValue = Annotated[
    str,
    AfterValidator(_checked(label_value_problems, "label value")),
    WithJsonSchema({"type": "string", "maxLength": _VALUE_MAX, "pattern": LABEL_VALUE_PATTERN}),
]

#: A toleration's key: empty (with operator Exists: every taint) or a label key. A field,
#: not a map key, so the schema carries a pattern and only the prefix length is CEL.
TolerationKey = Annotated[
    str,
    AfterValidator(lambda v: v if not v else _checked(label_key_problems, "label key")(v)),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": LABEL_KEY_MAX,
            "pattern": f"^$|{LABEL_KEY_PATTERN}",
            "x-kubernetes-validations": [KEY_RULES[2]],
        }
    ),
]


def _image(value: str) -> str:
    if value != value.strip():
        raise ValueError(f"image {value!r} must not have leading or trailing whitespace")
    return value


#: What kube-apiserver accepts as a container image: no leading or trailing whitespace
#: (CEL, not a pattern: a pattern cannot say it the same way in Go and Python regexps).
Image = Annotated[
    str,
    AfterValidator(_image),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
            "x-kubernetes-validations": [
                cel(
                    r"!self.matches('^\\s|\\s$')",
                    "image must not have leading or trailing whitespace",
                )
            ],
        }
    ),
]

#: CEL: no `..` element in a path (any volume path).
NO_BACKSTEPS_RULE: Final[dict[str, str]] = cel(
    "!self.matches('(^|/)[.][.](/|$)')", "must not contain '..'"
)
#: CEL: a subPath is relative and has no `..` element.
SUB_PATH_RULES: Final[list[dict[str, str]]] = [
    cel("!self.startsWith('/')", "must be a relative path"),
    NO_BACKSTEPS_RULE,
]

SubPath = Annotated[
    str,
    AfterValidator(_checked(lambda v: path_problems(v, relative=True), "subPath")),
    WithJsonSchema(
        {"type": "string", "maxLength": 1024, "x-kubernetes-validations": SUB_PATH_RULES}
    ),
]
