"""`flextrain operator` on the command line: flags, settings errors, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flextrain.cli import build_parser


def test_flags() -> None:
    args = build_parser().parse_args(["operator", "-n", "team-a", "-n", "team-b", "--liveness", ""])
    assert args.namespace == ["team-a", "team-b"] and args.liveness == ""
    args = build_parser().parse_args(["operator", "-A"])
    assert args.all_namespaces and args.liveness == "http://0.0.0.0:8080/healthz"


def test_a_bad_setting_exits_2_naming_the_variable() -> None:
    env = {**os.environ, "FLEXTRAIN_OPERATOR_STATUS_INTERVAL": "soon"}
    done = subprocess.run([sys.executable, "-m", "flextrain", "operator", "--liveness", ""],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "FLEXTRAIN_OPERATOR_STATUS_INTERVAL='soon' is not a number" in done.stderr


def test_the_operator_never_loads_torch() -> None:
    code = (
        "import sys\n"
        "import flextrain.operator.handlers, flextrain.operator.main\n"
        "from flextrain.cli import build_parser\n"
        "build_parser().parse_args(['operator', '-A'])\n"
        "assert 'torch' not in sys.modules, 'the operator imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_leader_election_without_a_namespace_or_credentials_exits_2_saying_why(tmp_path: Path) -> None:
    """Outside a pod there is no service-account namespace to put the Lease in, nor a
    token: each is named, not a traceback."""
    if os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount"):
        pytest.skip("running in a pod: its service account gives a namespace and a token")
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEXTRAIN_OPERATOR_")}
    base.update(FLEXTRAIN_OPERATOR_LEADER_ELECTION="true", KUBECONFIG="", HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "flextrain", "operator", "--liveness", ""],
                          env=base, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "leader election needs the Lease's namespace" in done.stderr
    base["FLEXTRAIN_OPERATOR_SELF_NAMESPACE"] = "flextrain-system"
    done = subprocess.run([sys.executable, "-m", "flextrain", "operator", "--liveness", ""],
                          env=base, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "leader election: cannot log in to the API server" in done.stderr
