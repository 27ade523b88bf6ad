"""Refusal reasons: one table says how each is answered and handled, and the docs
say the same."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from flextrain.contract.refusals import RULES, Reason, Remedy, Status

DOC = Path(__file__).resolve().parents[3] / "docs" / "aggregator.md"


def render_table() -> list[str]:
    """The refusal table of docs/aggregator.md, as the enum describes it."""
    rows = ["| reason | status | the trainer | when |", "|---|---|---|---|"]
    rows += [f"| {r.value} | {r.status.value} | {r.remedy.value.replace('_', ' ')} | {r.when} |" for r in RULES]
    return rows


def test_every_status_is_a_grpc_status_code() -> None:
    for status in Status:
        assert grpc.StatusCode[status.value].name == status.value


def test_only_a_forgotten_client_rejoins_and_only_a_late_update_moves_on() -> None:
    assert [r for r in Reason if r.remedy is Remedy.REJOIN] == [Reason.UNKNOWN_CLIENT]
    assert {r for r in Reason if r.remedy is Remedy.NEXT_ROUND} == {Reason.STALE_ROUND, Reason.DUPLICATE}
    assert all(r.permanent for r in Reason if r.remedy is Remedy.GIVE_UP)
    assert not Reason.STALE_ROUND.permanent


@pytest.mark.parametrize("text", ["", "Stale_Round", "no_such_reason"])
def test_an_unknown_wire_reason_reads_as_none(text: str) -> None:
    assert Reason.from_wire(text) is None


def test_wire_values_are_the_snake_case_names() -> None:
    for reason in Reason:
        assert reason.value == reason.name.lower() and re.fullmatch(r"[a-z_]+", reason.value)
        assert Reason.from_wire(reason.value) is reason


def test_the_docs_table_is_the_enum() -> None:
    lines = DOC.read_text().splitlines()
    start = lines.index(render_table()[0])
    assert lines[start : start + len(RULES) + 2] == render_table(), (
        "docs/aggregator.md's refusal table differs from flextrain.contract.refusals:\n" + "\n".join(render_table())
    )
