"""The reproductions' report step: seeds and splits parsing, the claim rule, aggregation.

The aggregation is checked on hand-made run files (what ``benchmarks.reproduce_federated``
writes per seed and split), so the means, spreads and words can be computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.reproduce_common import parse_seeds
from benchmarks.reproduce_federated import parse_split, variant_name
from benchmarks.reproduce_report import Stat, compare, federated_report, goal, stat


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("3", [0, 1, 2]), ("1", [0]), ("0,1,2", [0, 1, 2]), ("5,", [5]), ("4, 7", [4, 7])],
)
def test_seeds_are_a_count_or_a_list(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "-1", "x", "1,1", "-2,3", ","])
def test_bad_seeds_are_refused_with_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_splits_name_their_concentration() -> None:
    assert parse_split("iid", 0.5) == ("iid", "iid", None)
    assert parse_split("dir0.1", 0.5) == ("dir0.1", "dirichlet", 0.1)
    assert parse_split("dirichlet", 0.3) == ("dir0.3", "dirichlet", 0.3)
    for bad in ("dir0", "dir-1", "dirx", "skewed", "dirinf"):
        with pytest.raises(ValueError, match="split"):
            parse_split(bad, 0.5)
    assert variant_name({"pool_at_prefix": 0, "stage_adapters": 0}) == "paper"
    assert variant_name({"pool_at_prefix": 1}, beta=0.0) == "pool_at_prefix+beta0"
    assert variant_name({}, beta=0.2) == "paper"
    assert variant_name({"stage_adapters": 2}) == "stage_adapters2"
    assert (
        variant_name({"stage_adapters": 1, "pool_at_prefix": 1}) == "pool_at_prefix+stage_adapters"
    )


def test_claim_needs_the_gap_to_exceed_both_spreads() -> None:
    a = stat([0.60, 0.62, 0.64])  # mean 0.62, std 0.02
    b = stat([0.55, 0.56, 0.57])  # mean 0.56, std 0.01
    claim = compare(a, b)
    assert claim.verdict == ">" and claim.gap == pytest.approx(0.06)
    assert claim.spread == pytest.approx(0.03)
    assert "above beyond noise" in claim.words
    assert compare(b, a).verdict == "<"
    close = stat([0.585, 0.59, 0.595])  # gap 0.03 to a, spread 0.02 + 0.005
    assert compare(a, close).verdict == ">"
    closer = stat([0.58, 0.60, 0.62])  # gap 0.02, spread 0.04
    assert compare(a, closer).verdict == "~"
    assert "within noise" in compare(a, closer).words


def test_one_seed_makes_no_claim_however_large_the_gap() -> None:
    claim = compare(stat([0.9]), stat([0.1, 0.11]))
    assert claim.verdict == "?" and "no claim" in claim.words
    assert Stat((0.5,)).text() == "50.0 (1 seed)"
    assert Stat(()).text() == "-"
    assert stat([0.5, None, float("nan"), 0.7]).values == (0.5, 0.7)


def _run(label: str, mean: float, tiers: dict[int, float]) -> dict[str, Any]:
    # A curve of four rounds whose last three average to the final values minus 0.1.
    rounds = [
        {
            "round": r,
            "mean_device_accuracy": mean - 0.1 + step,
            "accuracy": {str(k): v - 0.1 + step for k, v in tiers.items()},
        }
        for r, step in enumerate((-0.2, -0.05, 0.0, 0.05), start=1)
    ]
    return {
        "label": label,
        "simulation": {"rounds": rounds},
        "final_mean_device_accuracy": mean,
        "final_accuracy": {str(k): v for k, v in tiers.items()},
        "bytes_up_share_of_fedavg": 0.5,
        "train_s": 10.0,
        "wall_s": 12.0,
    }


def _file(tmp: Path, variant: str, split: str, seed: int, flex: tuple[float, float]) -> Path:
    tiers = [[1, 2], [3, 2]]
    shallow, deep = flex
    record = {
        "kind": "federated",
        "provenance": {"commit": "abc123", "dirty": False, "command": "python -m x"},
        "variant": variant,
        "model_options": {},
        "seed": seed,
        "split": split,
        "dataset": "digits",
        "train_examples": 100,
        "test_examples": 50,
        "layers": 8,
        "rounds": 1,
        "local_epochs": 1,
        "batch_size": 64,
        "baseline_strategy": "holder-weighted",
        "machine": {"loadavg_1_5_15": [1.0, 1.0, 1.0], "cpu_count": 2, "torch_threads": 2},
        "wall_s": 30.0,
        "tiers": tiers,
        "partition": {
            "size_min": 40,
            "size_max": 60,
            "top_class_share_mean": 0.3,
            "classes_over_5pct_mean": 5.0,
        },
        "runs": {
            "flextrain-pad": _run(
                "FedFlexTrain (pad)", (shallow + deep) / 2, {1: shallow, 3: deep}
            ),
            "fedsmall": _run(
                "FedSmall", 0.50 + 0.01 * seed, {1: 0.50 + 0.01 * seed, 3: 0.50 + 0.01 * seed}
            ),
            "fedclass": _run("FedClass", 0.40 + 0.01 * seed, {1: 0.3, 3: 0.5 + 0.02 * seed}),
        },
    }
    path = tmp / "runs" / variant / split / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_federated_report_aggregates_seeds_and_states_the_goal(tmp_path: Path) -> None:
    # Paper model: shallow tier 0.40-0.42 against FedSmall's 0.50-0.52 (below beyond
    # noise); mean 0.60-0.62 vs FedSmall 0.51 and FedClass 0.41: above.
    for seed in (0, 1, 2):
        _file(tmp_path, "paper", "iid", seed, (0.40 + 0.01 * seed, 0.80 + 0.01 * seed))
        _file(tmp_path, "pool_at_prefix", "iid", seed, (0.55 + 0.01 * seed, 0.80 + 0.01 * seed))
    text = federated_report([tmp_path])
    assert "FedFlexTrain (pad) | 61.0 ± 1.0 | 41.0 ± 1.0 | 81.0 ± 1.0" in text
    assert "FedFlexTrain (pad) vs FedSmall: above beyond noise (gap +10.00, spread 2.00)" in text
    assert "Goal for FedFlexTrain (pad): not met: k=1 below FedSmall" in text
    assert "Goal for FedFlexTrain (pad): met" in text  # the pool_at_prefix model
    assert "## Remedies against the paper's model" in text
    assert "| IID | pool_at_prefix | FedFlexTrain (pad) | 56.0 ± 1.0 |" in text
    assert "above beyond noise (gap +15.00, spread 2.00)" in text
    assert "commit `abc123`, `python -m x`" in text
    # Each seed paired with the paper model's run of the same seed.
    assert "0: +15.0 / +7.5; 1: +15.0 / +7.5; 2: +15.0 / +7.5" in text
    # The steadier reading: the mean of the last three rounds of each curve.
    assert "## A steadier reading: the mean of the last 3 rounds" in text
    assert "| paper | FedFlexTrain (pad) | 51.0 ± 1.0 | 31.0 ± 1.0 | 71.0 ± 1.0 |" in text


def test_goal_is_undecided_with_one_seed(tmp_path: Path) -> None:
    _file(tmp_path, "paper", "iid", 0, (0.9, 0.9))
    text = federated_report([tmp_path])
    assert "undecided (fewer than 2 seeds)" in text
    assert "(1 seed)" in text
    assert callable(goal)


def _centralised_file(tmp: Path, seed: int, flex: float) -> Path:
    def run(method: str, depths: list[int], acc: float, **extra: Any) -> dict[str, Any]:
        return {
            "method": method,
            "seed": seed,
            "depths": depths,
            "train_s": 1.0,
            "eval_s": 0.1,
            "final_accuracy": {str(k): acc for k in depths},
            "diverged": None,
            "epochs": [],
            **extra,
        }

    record = {
        "kind": "centralised",
        "provenance": {"commit": "def456", "dirty": True, "command": "python -m y"},
        "args": {"epochs": 1},
        "stages": [[0.05, 1]],
        "dataset": "digits",
        "train_examples": 100,
        "test_examples": 50,
        "curve_examples": 20,
        "machine": {"cpu_count": 2, "torch": "x", "torch_threads": 2, "loadavg_1_5_15": [1, 1, 1]},
        "loadavg_end": [1, 1, 1],
        "wall_s": 10.0,
        "spec": {
            "family": "resnet",
            "layers": 20,
            "num_classes": 10,
            "in_channels": 1,
            "image_size": 8,
        },
        "depths": [5, 7, 9],
        "pi": {"5": 0.25, "7": 0.25, "9": 0.5},
        "seed": seed,
        "runs": [
            run(
                "standalone",
                [5, 7],
                0.80 + 0.01 * seed,
                standalone={"n": 1, "layers": 8, "params": 75002},
            ),
            run("standalone", [9], 0.90, standalone={"n": 3, "layers": 20, "params": 269434}),
            *[run("independent", [k], 0.79 + 0.01 * seed) for k in (5, 7, 9)],
            run("flextrain", list(range(1, 10)), flex),
            run("single", list(range(1, 10)), 0.2 + 0.1 * seed),
        ],
    }
    path = tmp / "runs" / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_centralised_report_names_both_independent_baselines_and_claims(tmp_path: Path) -> None:
    from benchmarks.reproduce_report import centralised_report

    for seed, flex in ((0, 0.70), (1, 0.72), (2, 0.74)):
        _centralised_file(tmp_path, seed, flex)
    text = centralised_report([tmp_path])
    assert "| k=5 (17.6 % params) | 81.0 ± 1.0 | 80.0 ± 1.0 | 72.0 ± 2.0 | 30.0 ± 10.0 |" in text
    assert "| 5 | 47,354 | ResNet-8 (n = 1) | 75,002 | 1.58 |" in text
    assert (
        "| k=5 | FlexTrain (β=0.2, probs) | Independent (standalone ResNet) | 72.0 ± 2.0 "
        "| 81.0 ± 1.0 | below beyond noise (gap -9.00, spread 3.00) |"
    ) in text
    assert (
        "| k=9 | FlexTrain (β=0.2, probs) | Single (truncated) | 72.0 ± 2.0 | 30.0 ± 10.0 |" in text
    )
    assert "commit `def456 (dirty)`, `python -m y`: seed 0, seed 1, seed 2" in text


def test_a_beta_only_variant_takes_the_paper_runs_baselines(tmp_path: Path) -> None:
    for seed in (0, 1):
        _file(tmp_path, "paper", "iid", seed, (0.40 + 0.01 * seed, 0.80))
        path = _file(tmp_path, "beta0", "iid", seed, (0.45 + 0.01 * seed, 0.80))
        record = json.loads(path.read_text())
        del record["runs"]["fedsmall"], record["runs"]["fedclass"]
        path.write_text(json.dumps(record))
    text = federated_report([tmp_path])
    assert "| FedSmall (paper run) | 50.5 ± 0.7 |" in text
    assert text.count("- Goal for FedFlexTrain (pad):") == 2
