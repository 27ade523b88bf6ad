"""The data layer stays on the algorithm side of the architecture."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("kopf", "grpc", "kubernetes", "flextrain.core", "flextrain.operator")


def test_importing_the_data_layer_pulls_in_no_cluster_or_network_code() -> None:
    probe = (
        "import sys, flextrain.data, flextrain.data.loaders\n"
        f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]\n"
        "print(','.join(sorted(bad)))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )

    assert result.stdout.strip() == ""
