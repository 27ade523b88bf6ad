"""Smoke runs of the paper-reproduction benchmarks (``benchmarks.reproduce_*``, --quick).

Each runs as a real ``python -m`` process into a temporary directory and must leave its
markdown table, raw JSON and plot there. Fashion-MNIST is used when its files are
installed (the benchmarks' default); otherwise the bundled digits, so the test always
runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.reproduce_common import DEFAULT_FASHION_MNIST_DIR

REPO = Path(__file__).resolve().parents[2]


def _dataset_args() -> list[str]:
    if Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        return ["--dataset", "fashion-mnist", "--data-dir", DEFAULT_FASHION_MNIST_DIR]
    return ["--dataset", "digits"]


def _run(module: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--quick", "--out", str(out), *_dataset_args(), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_centralised_quick_run_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "centralised"
    proc = _run("benchmarks.reproduce_centralised", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("centralised.md", "centralised.json", "centralised.png", "runs/seed0.json"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "runs" / "seed0.json").read_text())
    methods = {r["method"] for r in data["runs"]}
    assert {"standalone", "independent", "flextrain", "flextrain-nodistill", "single"} <= methods
    assert data["provenance"]["command"].startswith("python -m benchmarks.reproduce_centralised")
    assert len(data["provenance"]["commit"]) == 40
    standalone = [r for r in data["runs"] if r["method"] == "standalone"]
    assert all(r["standalone"]["params"] > 0 for r in standalone)
    text = (out / "centralised.md").read_text()
    for words in (
        "Single (truncated)",
        "Independent (standalone ResNet)",
        "Independent (prefix alone)",
    ):
        assert words in text
    assert "epoch 1/1" in proc.stdout  # one progress line per epoch


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_federated_quick_run_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "federated"
    proc = _run("benchmarks.reproduce_federated", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("federated.md", "federated.json", "federated.png"):
        assert (out / name).stat().st_size > 0, name
    for split in ("iid", "dir0.5"):
        data = json.loads((out / "runs" / "paper" / split / "seed0.json").read_text())
        assert set(data["runs"]) == {"flextrain-pad", "flextrain-holder", "fedsmall", "fedclass"}
        assert data["provenance"]["command"].startswith("python -m benchmarks.reproduce_federated")
    assert "round 2/2" in proc.stdout  # one progress line per round
    assert "Per tier against FedSmall" in (out / "federated.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_federated_remedies_run_and_are_compared_with_the_paper_model(tmp_path: Path) -> None:
    out = tmp_path / "federated"
    small = [
        "--limit",
        "200",
        "--rounds",
        "1",
        "--split",
        "iid",
        "--runs",
        "flextrain-pad,fedsmall",
    ]
    for extra in ([], ["--pool-at-prefix", "--stage-adapters"]):
        proc = _run("benchmarks.reproduce_federated", out, *small, *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    remedy = json.loads(
        (out / "runs" / "pool_at_prefix+stage_adapters" / "iid" / "seed0.json").read_text()
    )
    assert remedy["model_options"] == {"pool_at_prefix": 1, "stage_adapters": 1}
    report = subprocess.run(
        [sys.executable, "-m", "benchmarks.reproduce_report", "--federated", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "## Remedies against the paper's model" in report.stdout
    assert "| IID | pool_at_prefix+stage_adapters | FedFlexTrain (pad) |" in report.stdout
