"""docs/install.md's bash blocks are each marked run-by-a-test or skipped-with-a-reason
(tests/guide.py), and the reading of a block (commands, heredocs, what each should give,
output tables) is what tests/cluster/test_install_guide.py relies on."""

from __future__ import annotations

import pytest

from tests import guide

UNMARKED = """# Guide

<!-- guide-test: one -->
```bash
kubectl get nodes
```

```bash
kubectl delete everything
```
"""


def test_every_bash_block_of_the_guide_is_run_or_says_why_not() -> None:
    blocks = guide.blocks(guide.GUIDE.read_text())
    assert blocks, "no bash blocks found"
    for block in blocks:
        assert block.commands, f"docs/install.md:{block.line}: an empty block"
        assert (block.step is None) is bool(block.skip_reason), block
    steps = [b.step for b in blocks if b.step]
    assert len(steps) == len(set(steps)), f"a step name is used twice: {steps}"
    assert {"install", "upgrade", "tiers", "job", "watch", "users", "uninstall"} <= set(steps)


def test_a_block_without_a_marker_is_an_error_naming_its_line() -> None:
    with pytest.raises(ValueError, match=r"docs/install.md:8: a bash block without"):
        guide.blocks(UNMARKED)


def test_a_skipped_block_must_say_why() -> None:
    with pytest.raises(ValueError, match="must say why"):
        guide.blocks("<!-- guide-test: skip -->\n```bash\nls\n```\n")


def test_commands_continuations_heredocs_and_expectations() -> None:
    body = [
        "# a comment line",
        "cat > v.yaml <<'EOF'",
        "a: 1   # yes",
        "EOF",
        "helm install x charts/x \\",
        "  -f v.yaml",
        "kubectl auth can-i create pods --as bob     # no",
        "kubectl auth can-i list pods --as bob   # yes",
        "kubectl apply -f t.yaml --as carol   # refused: not hers",
        "kubectl get dt     # short name",
        "# NAME   ARCH   NODES   AGE",
        "# gpu           2       5s",
        "kubectl get nodes",
    ]
    commands = guide.commands(body)
    assert [c.text for c in commands] == [
        "cat > v.yaml <<'EOF'\na: 1   # yes\nEOF",
        "helm install x charts/x \\\n  -f v.yaml",
        "kubectl auth can-i create pods --as bob     # no",
        "kubectl auth can-i list pods --as bob   # yes",
        "kubectl apply -f t.yaml --as carol   # refused: not hers",
        "kubectl get dt     # short name",
        "kubectl get nodes",
    ]
    assert [c.expect for c in commands] == ["ok", "ok", "no", "yes", "refused", "ok", "ok"]
    assert commands[5].table == ("NAME   ARCH   NODES   AGE", "gpu           2       5s")
    assert all(not c.table for i, c in enumerate(commands) if i != 5)


EXPECTED = ("NAME       ARCH    ACCELERATOR      NODES   AGE",
            "arm-edge   arm64                    2       5s",
            "gpu        amd64   nvidia.com/gpu   2       5s")


@pytest.mark.parametrize(("actual", "differs"), [
    pytest.param("NAME     ARCH  ACCELERATOR     NODES  AGE\n"
                 "gpu      amd64 nvidia.com/gpu  2      3m\n"
                 "arm-edge arm64                 2      3m\n", False, id="same-rows-other-widths-and-ages"),
    pytest.param("NAME       ARCH    ACCELERATOR      NODES   AGE\n"
                 "arm-edge   arm64                    0       5s\n"
                 "gpu        amd64   nvidia.com/gpu   2       5s\n", True, id="a-count-differs"),
    pytest.param("NAME       ARCH    ACCELERATOR      NODES   AGE\n"
                 "arm-edge   arm64   nvidia.com/gpu   2       5s\n"
                 "gpu        amd64   nvidia.com/gpu   2       5s\n", True, id="an-empty-cell-is-not-empty"),
    pytest.param("NAME       ARCH    NODES   AGE\n"
                 "arm-edge   arm64   2       5s\n"
                 "gpu        amd64   2       5s\n", True, id="a-column-missing"),
    pytest.param("NAME       ARCH    ACCELERATOR      NODES   AGE\n"
                 "gpu        amd64   nvidia.com/gpu   2       5s\n", True, id="a-row-missing"),
])
def test_output_tables_compare_cells_but_not_age(actual: str, differs: bool) -> None:
    assert (guide.table_mismatch(EXPECTED, actual) is not None) is differs


def test_column_names_may_hold_one_space() -> None:
    header = "NAME         PHASE     ROUND   TIERS READY   BEST ACCURACY   AGE"
    assert [c for c, _, _ in guide.columns(header)] == ["NAME", "PHASE", "ROUND", "TIERS READY", "BEST ACCURACY", "AGE"]
