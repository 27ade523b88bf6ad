"""Suite-wide settings: tests train tiny models; one torch thread each keeps them fast
and steady on a 2-core machine where subprocesses train at the same time."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure() -> None:
    import torch

    torch.set_num_threads(1)
