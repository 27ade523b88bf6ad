"""A command whose optional part is not installed says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.tools import REPO

HIDE = r"""
import importlib.abc, sys
hidden = sys.argv[1]
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from flextrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("hidden", "argv", "extra"),
    [
        ("torch", ["aggregator", "--port", "0"], "trainer"),
        ("kopf", ["operator", "--all-namespaces"], "operator"),
    ],
)
def test_a_missing_extra_is_named(hidden: str, argv: list[str], extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", HIDE, hidden, *argv],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"pip install 'flextrain[{extra}]'" in proc.stderr
