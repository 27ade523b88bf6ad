"""Progress output: a redrawn panel on a terminal, one line per change otherwise."""

from __future__ import annotations

import io

from flextrain.local.progress import Progress, tier_state
from flextrain.wire.status import AggregatorStatus, TierStatus


def status(round_: int, pushed: int, joined: int = 2, accuracy: dict[int, tuple[float, int]] | None = None) -> AggregatorStatus:
    return AggregatorStatus(
        job="j",
        round=round_,
        total_rounds=4,
        done=False,
        tiers=[TierStatus("weak", 3, 2, joined, pushed, round_, 0, 0), TierStatus("strong", 9, 1, 1, 0, round_, 0, 0)],
        accuracy=accuracy or {},
    )


def test_tier_states() -> None:
    assert tier_state(TierStatus("t", 1, 2, 0, 0, 0, 0, 0)) == "waiting"
    assert tier_state(TierStatus("t", 1, 2, 2, 0, 0, 0, 0)) == "training"
    assert tier_state(TierStatus("t", 1, 2, 2, 1, 0, 0, 0)) == "training (1/2 pushed)"
    assert tier_state(TierStatus("t", 1, 2, 2, 2, 0, 0, 0)) == "pushed"


def test_plain_output_prints_a_line_per_round() -> None:
    out = io.StringIO()
    progress = Progress("j", out, tty=False)
    progress.update(status(0, 0))
    progress.update(status(0, 1))
    progress.update(status(1, 0, accuracy={3: (0.5, 1), 9: (0.6, 1)}))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in out.getvalue()
    assert "round 1/4 done" in lines[1] and "depth 3: 0.500  depth 9: 0.600" in lines[1]


def test_terminal_panel_redraws_in_place() -> None:
    out = io.StringIO()
    progress = Progress("j", out, tty=True)
    progress.update(status(1, 1, accuracy={3: (0.5, 1)}))
    progress.update(status(2, 0))
    text = out.getvalue()
    assert "\x1b[4F" in text, "the second draw moves up over the first"
    assert "round 3/4" in text and "tier weak" in text and "training (1/2 pushed)" in text
    assert "ETA" in text and "elapsed" in text
