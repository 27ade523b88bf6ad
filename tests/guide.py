"""The commands of docs/install.md, as the tests run them.

Every ```bash block of the guide is preceded by an HTML comment (invisible on GitHub):

    <!-- guide-test: STEP -->          tests/cluster/test_install_guide.py runs the block
    <!-- guide-test: skip REASON -->   it does not, and REASON says why

A block is split into commands (a line, its `\\` continuations, a heredoc up to its
end marker). What a command should give is written the way a reader expects it:

- a trailing `# yes` or `# no`: the command prints exactly that (`kubectl auth can-i`,
  which exits 1 on `no`);
- a trailing `# refused...`: it fails, and the API server's answer says Forbidden;
- comment lines right after it whose first starts with `# NAME `: its output, a table
  compared column by column (an AGE column is not compared; an empty cell must be
  empty);
- anything else: it exits 0.

Expected answers and tables are polled for (the operator and the controllers act
asynchronously); everything else runs once.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "install.md"
MARKER = re.compile(r"^<!-- guide-test: (?P<what>.+?) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
HEREDOC = re.compile(r"<<-?\s*'?\"?(?P<end>[A-Za-z_]+)'?\"?")
#: A trailing comment: whitespace, `#`, the rest (bash drops it too).
TRAILING = re.compile(r"\s+#\s?(?P<comment>.*)$")

Expect = Literal["ok", "yes", "no", "refused"]


@dataclasses.dataclass(frozen=True)
class Command:
    text: str
    expect: Expect = "ok"
    #: An expected output table: its lines, without the `# ` prefix.
    table: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Block:
    line: int
    #: The step name, or None for a block the tests do not run.
    step: str | None
    skip_reason: str
    commands: tuple[Command, ...]
    source: str


def blocks(text: str) -> list[Block]:
    """Every ```bash block of the guide with its marker; raises ValueError naming the line
    of a block without one."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = lines[start + 1 : i]
        i += 1
        if fence["lang"] != "bash":
            continue
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before.strip())
        if marker is None:
            raise ValueError(
                f"docs/install.md:{start + 1}: a bash block without a `<!-- guide-test: STEP -->` "
                "or `<!-- guide-test: skip REASON -->` line above it"
            )
        what = marker["what"].strip()
        if what.startswith("skip"):
            reason = what.removeprefix("skip").strip()
            if not reason:
                raise ValueError(f"docs/install.md:{start + 1}: a skipped block must say why")
            found.append(Block(start + 1, None, reason, commands(body), "\n".join(body)))
        else:
            found.append(Block(start + 1, what, "", commands(body), "\n".join(body)))
    return found


def commands(body: list[str]) -> tuple[Command, ...]:
    out: list[Command] = []
    i = 0
    while i < len(body):
        line = body[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        parts = [line]
        while parts[-1].rstrip().endswith("\\") and i + 1 < len(body):
            i += 1
            parts.append(body[i])
        heredoc = HEREDOC.search(line)
        if heredoc:
            while i + 1 < len(body):
                i += 1
                parts.append(body[i])
                if body[i].strip() == heredoc["end"]:
                    break
        i += 1
        last = parts[-1] if not heredoc else parts[0]
        comment = TRAILING.search(last)
        note = comment["comment"].strip() if comment else ""
        expect: Expect = "ok"
        if note in ("yes", "no"):
            expect = note  # type: ignore[assignment]
        elif note.startswith("refused"):
            expect = "refused"
        table: list[str] = []
        if i < len(body) and body[i].strip().startswith("# NAME "):
            while i < len(body) and body[i].strip().startswith("#"):
                table.append(body[i].strip().removeprefix("#")[1:])
                i += 1
        out.append(Command("\n".join(parts), expect, tuple(table)))
    return tuple(out)


def columns(header: str) -> list[tuple[str, int, int | None]]:
    """(name, start, end) of each column of a kubectl table header: names are separated
    by two spaces or more (a name may hold one, e.g. TIERS READY)."""
    spans = [(m[0], m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    return [(name, start, spans[k + 1][1] if k + 1 < len(spans) else None)
            for k, (name, start) in enumerate(spans)]


def table_rows(text: str) -> list[dict[str, str]]:
    """A kubectl table as one dict per row, column name -> cell (stripped)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    cols = columns(lines[0])
    return [{name: line[start:end].strip() for name, start, end in cols} for line in lines[1:]]


def table_mismatch(expected: tuple[str, ...], actual: str) -> str | None:
    """None when `actual` (kubectl's output) shows the expected table, AGE aside; else what
    differs."""
    want = table_rows("\n".join(expected))
    got = table_rows(actual)
    want_cols = [c for c, _, _ in columns(expected[0])]
    got_cols = [c for c, _, _ in columns(actual.splitlines()[0])] if actual.strip() else []
    if want_cols != got_cols:
        return f"columns {got_cols}, the guide shows {want_cols}"
    strip = [{k: v for k, v in row.items() if k != "AGE"} for row in want]
    have = [{k: v for k, v in row.items() if k != "AGE"} for row in got]
    if sorted(map(str, strip)) != sorted(map(str, have)):
        return f"rows {have}, the guide shows {strip}"
    return None
