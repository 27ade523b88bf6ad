"""The aggregator's shape: the servicer is its only gRPC/protobuf module and uses the
service only through its public methods."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "flextrain" / "aggregator"

#: What the servicer may use of AggregatorService.
SERVICE_API = {
    "name", "start", "stop", "join", "pull", "send", "expected_update", "begin_push", "receive_push", "refusal", "status",
    "push_timeouts", "model_tensors", "tier_names",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_servicer_speaks_grpc_or_protobuf() -> None:
    speaking = {
        path.name
        for path in PACKAGE.glob("*.py")
        if any(n == "grpc" or n.startswith(("grpc.", "grpc_health", "flextrain.proto")) for n in _imports(path))
    }
    assert speaking == {"servicer.py"}


def test_the_servicer_uses_only_the_services_public_methods() -> None:
    tree = ast.parse((PACKAGE / "servicer.py").read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "service"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used and used <= SERVICE_API, used - SERVICE_API
