"""A trainer refuses an anchor option it cannot honour instead of crashing mid-round."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flextrain.trainer.config import ConfigError, TrainerConfig
from flextrain.trainer.loop import Trainer
from flextrain.wire.messages import Joined
from tests.unit.wire.test_serde import make_joined

CONFIG = TrainerConfig.from_env(
    {
        "FLEXTRAIN_AGGREGATOR": "agg:50051",
        "FLEXTRAIN_TIER_KEY": "t",
        "FLEXTRAIN_JOB": "j",
        "FLEXTRAIN_TIER": "deep",
        "FLEXTRAIN_DEPTH": "3",
    }
)
JOINED = make_joined(torch.float32)


class _Answers:
    """Stands in for the aggregator's Join answer (what a peer sends, built by hand)."""

    def __init__(self, joined: Joined) -> None:
        self.joined = joined

    def join(self) -> Joined:
        return self.joined


def _join(anchors: tuple[int, ...], loss: str) -> Joined:
    training = dataclasses.replace(JOINED.training, anchor_depths=anchors, anchor_loss=loss)
    answers = _Answers(dataclasses.replace(JOINED, training=training))
    return Trainer(CONFIG, answers, retry_for_seconds=0).join()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("anchors", "loss", "message"),
    [
        ((1,), "features", "anchor loss 'features'"),
        ((3,), "ce", r"anchor depths \[3\] are not in \[1, 2\]"),
        ((0, 2), "distill", r"anchor depths \[0\]"),
    ],
)
def test_an_anchor_option_the_trainer_cannot_honour_is_a_config_error(
    anchors: tuple[int, ...], loss: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _join(anchors, loss)


def test_anchors_below_the_trainers_depth_are_accepted() -> None:
    assert _join((1, 2), "ce").training.anchor_depths == (1, 2)
    assert _join((), "none").training.anchor_loss == "none"
