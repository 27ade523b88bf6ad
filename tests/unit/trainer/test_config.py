"""The trainer's environment contract."""

from __future__ import annotations

import pytest

from flextrain.trainer.client import backoff_delays
from flextrain.trainer.config import ConfigError, TrainerConfig

BASE = {
    "FLEXTRAIN_AGGREGATOR": "agg:50051",
    "FLEXTRAIN_TIER_KEY": "t",
    "FLEXTRAIN_JOB": "j",
    "FLEXTRAIN_TIER": "weak",
    "FLEXTRAIN_DEPTH": "3",
}


def test_minimal_environment() -> None:
    config = TrainerConfig.from_env(BASE)
    assert (config.depth, config.replica_index, config.device) == (3, 0, "auto")


def test_completion_index_of_an_indexed_job_is_the_replica() -> None:
    assert TrainerConfig.from_env({**BASE, "JOB_COMPLETION_INDEX": "4"}).replica_index == 4
    assert TrainerConfig.from_env({**BASE, "JOB_COMPLETION_INDEX": "4", "FLEXTRAIN_REPLICA_INDEX": "1"}).replica_index == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"FLEXTRAIN_TIER_KEY": ""}, "FLEXTRAIN_TIER_KEY is not set"),
        ({"FLEXTRAIN_DEPTH": "0"}, "FLEXTRAIN_DEPTH=0 must be >= 1"),
        ({"FLEXTRAIN_DEPTH": "deep"}, "not an integer"),
        ({"FLEXTRAIN_AGGREGATOR": "agg"}, "host:port"),
        ({"FLEXTRAIN_DEVICE": "tpu"}, "FLEXTRAIN_DEVICE"),
        ({"JOB_COMPLETION_INDEX": "-1"}, "must be >= 0"),
    ],
)
def test_bad_environment_names_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainerConfig.from_env({**BASE, **change})


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    delays = backoff_delays(base=1, cap=8, seed=0)
    values = [next(delays) for _ in range(10)]
    assert all(0 <= v <= 8 for v in values)
    assert max(values[:2]) <= 2 and len(set(values)) == len(values)
