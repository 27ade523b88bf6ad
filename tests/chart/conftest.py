"""Chart tests share one helm/kubectl install (scripts/fetch-tools.sh, through
tests/tools.py, once per session) and cache renders: `helm template` of the same values
gives the same text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chart.chart import Tools, fetch_tools, template


@pytest.fixture(scope="session")
def tools() -> Tools:
    return fetch_tools()


@pytest.fixture(scope="session")
def render(tools: Tools) -> Callable[..., str]:
    """render(*value_files, namespace=...) -> the rendered YAML text (cached)."""
    cache: dict[tuple[object, ...], str] = {}

    def _render(*values: Path, namespace: str = "flextrain-system") -> str:
        key = (*values, namespace)
        if key not in cache:
            cache[key] = template(tools, *values, namespace=namespace)
        return cache[key]

    return _render
