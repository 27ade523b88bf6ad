"""scripts/reproduce-all.sh: the task list behind docs/results.md's seeded reproductions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce-all.sh"


def _run(*groups: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *groups],
        env={**os.environ, "LIST": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_group_lists_one_task_per_seed_and_split() -> None:
    done = _run(OUT="/tmp/x")
    assert done.returncode == 0, done.stderr
    tasks = done.stdout.splitlines()
    # 3 centralised seeds; 9 (seed, split) pairs for paper, beta0 and pool, 18 for the
    # two anchor variants and the two adapter variants.
    assert len(tasks) == 3 + 9 * 3 + 18 * 2
    assert len({t.split()[0] for t in tasks}) == len(tasks)  # names (log files) are unique
    assert "centralised-2 reproduce_centralised --out /tmp/x/centralised --seeds 2," in done.stdout
    assert (
        "anchor1-1-dir0.1 reproduce_federated --out /tmp/x/federated --seeds 1, --split dir0.1 "
        "--runs flextrain-pad --anchor ce --anchor-tiers all"
    ) in tasks
    # a model option is repeated for the baselines, which take it too
    assert (
        "adapters1-2-iid reproduce_federated --out /tmp/x/federated --seeds 2, --split iid "
        "--runs flextrain-pad,fedsmall,fedclass --pool-at-prefix --stage-adapters affine"
    ) in tasks
    assert (
        "beta00-0-dir0.5 reproduce_federated --out /tmp/x/federated --seeds 0, --split dir0.5 "
        "--runs flextrain-pad --beta 0"
    ) in tasks


def test_an_unknown_group_is_refused_with_the_list() -> None:
    done = _run("paper", "bogus")
    assert done.returncode != 0
    assert "unknown group 'bogus'; groups: centralised paper anchor pool adapters beta0" in done.stderr
