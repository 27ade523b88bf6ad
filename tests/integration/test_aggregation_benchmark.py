"""Smoke run of the aggregation benchmark (``benchmarks.aggregation --quick``), our side
only: a real aggregator process, 20 fake trainers and the loopback ceiling must leave
the markdown table and the raw JSON in the output directory, with the raw-gRPC round of
the same traffic measured next to it. Flower is not needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_flextrain_only_run_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "aggregation"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.aggregation", "--quick", "--only", "flextrain", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "aggregation.md").read_text()
    assert "FlexTrain aggregator" in table
    assert "Raw loopback gRPC throughput" in table
    data = json.loads((out / "aggregation.json").read_text())
    ours = data["results"]["ours/resnet56-table3"]
    assert "error" not in ours, ours
    assert len(ours["rounds"]) == 2  # --quick: two measured rounds after the warm-up
    # The Table 3 mix moves 55.8 % of full-model FedAvg's bytes (prefix sizes, exactly).
    assert ours["bytes_per_round"] == ours["bytes_per_round_expected"]
    assert abs(ours["bytes_share_of_fedavg"] - 0.558) < 0.005
    assert ours["server_peak_rss_bytes"] > 0
    assert data["results"]["loopback"]["ceiling_mib_s"] > 0
    # The same traffic with raw gRPC: the ceiling the throughput target is checked against.
    raw = data["results"]["raw/resnet56-table3"]
    assert "error" not in raw, raw
    assert raw["bytes_per_round"] == ours["bytes_per_round"]
    assert len(raw["round_seconds"]) == 2 and raw["round_seconds_best"] > 0
    assert raw["distinct"] and raw["clients_cpu_seconds_per_round"] > 0 and raw["server_cpu_seconds_per_round"] is not None
    assert "for the same traffic" in table


def _report(results: dict[str, object]) -> dict[str, object]:
    machine = {"cpus": 2, "cpu_model": "x", "memory_bytes": 2**34, "python": "3", "torch": "2", "grpcio": "1"}
    case = {"label": "ResNet-56/100 classes, Table 3 mix", "layers": 56, "num_classes": 100, "tiers": [], "model_bytes": 3_434_320}
    return {
        "started": "now", "wall_seconds": 1.0, "quick": True, "warmup": 1, "measured": 2, "client_procs": 4,
        "machine": machine, "cases": {"resnet56-table3": case}, "results": results, "skipped": [], "foreign_load": [],
    }


def test_the_report_renders_without_raw_rounds_and_with_a_failed_ceiling() -> None:
    from benchmarks.aggregation.bench import render

    loopback = {
        "download_1_stream_mib_s": 1000.0, "download_20_streams_mib_s": 900.0,
        "upload_1_stream_mib_s": 1100.0, "upload_20_streams_mib_s": 800.0, "ceiling_mib_s": 1100.0,
    }
    flower_only = render(_report({"loopback": loopback}))  # e.g. --only flower: no raw rounds
    assert "Best of the four: **1,100 MiB/s**" in flower_only and "failed" not in flower_only
    failed = render(_report({"loopback": {"error": "RuntimeError: no port"}}))
    assert "Raw loopback measurement failed: RuntimeError: no port" in failed


def test_the_memory_verdict_is_on_growth_with_the_model() -> None:
    """Above idle, a 3.5 MB model's configuration holds mostly the fixed part; the
    verdict is on how memory grows from it to the large model, the plain multiple is
    shown next to it."""
    from benchmarks.aggregation.bench import _memory_target

    mib = 2**20

    def ours(model_mib: float, above_mib: float) -> dict[str, float]:
        return {"model_bytes": model_mib * mib, "server_idle_rss_bytes": 500 * mib, "server_peak_rss_bytes": (500 + above_mib) * mib}

    small = ours(3.5, 36)
    within = _memory_target({"ours/resnet56-table3": small, "ours/large": ours(50, 216)}, "ours/large", "large", "")
    assert "4.3× the 52.4 MB model" in within and "3.9 bytes per byte of model" in within and within.endswith("| **met** |")
    beyond = _memory_target({"ours/resnet56-table3": small, "ours/large": ours(50, 250)}, "ours/large", "large", "")
    assert "4.6 bytes per byte" in beyond and beyond.endswith("| **not met** |")
    base = _memory_target({"ours/resnet56-table3": small}, "ours/resnet56-table3", "small", "")
    assert base.endswith("| – |")
    # Without the small configuration (e.g. a partial run) the plain multiple decides.
    alone = _memory_target({"ours/large": ours(50, 216)}, "ours/large", "large", "")
    assert "bytes per byte" not in alone and alone.endswith("| **not met** |")


def test_the_throughput_verdict_pairs_each_round_with_the_raw_round_next_to_it() -> None:
    """The verdict is the median of raw round r / our round r over rounds run back to
    back; the best raw round against our median (conservative) is shown next to it. A
    raw side that was not paired falls back to that conservative reading."""
    from benchmarks.aggregation.bench import _throughput_target, raw_share

    ours = {"rounds": [{"seconds": s} for s in (1.0, 2.0, 1.0)], "round_seconds_median": 1.0, "throughput_mib_s": 1000.0}
    raw = {"round_seconds": [0.8, 1.8, 0.6], "round_seconds_best": 0.6, "round_seconds_median": 0.8, "mib_s_median": 1250.0, "paired": True}
    res = {"ours/large": ours, "raw/large": raw}
    share = raw_share(res, "ours/large")
    assert share is not None and share.paired == 0.8 and share.best == 0.6  # ratios 0.8, 0.9, 0.6
    row = _throughput_target(res, "ours/large", "large", None)[0]
    assert "**80%**: median over 3 rounds" in row and "against the best raw round (0.600 s): 60%" in row
    assert row.endswith("| **met** |")
    unpaired = dict(raw, paired=False)
    row = _throughput_target({"ours/large": ours, "raw/large": unpaired}, "ours/large", "large", None)[0]
    assert "median over" not in row and row.endswith("| **not met** |")
