"""`flextrain operator` on the command line: flags, settings errors, no torch."""

from __future__ import annotations

import os
import subprocess
import sys

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
