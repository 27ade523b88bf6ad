"""Named errors of the data layer.

Callers (trainer, local runner, CLI) map these to their own boundary once: a missing
dataset is a configuration problem the user fixes by mounting or installing files; a
format error means the files are there but damaged or of another kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFound(FileNotFoundError):
    """The files of a dataset are not where the caller said they would be.

    The message names the path looked at, the files expected and how to obtain them.
    """

    def __init__(
        self,
        name: str,
        path: str | Path | None,
        expected: Sequence[str],
        how_to_obtain: str,
        looked_in: Sequence[Path] = (),
    ) -> None:
        self.name = name
        self.path = Path(path) if path is not None else None
        self.expected = tuple(expected)
        self.how_to_obtain = how_to_obtain
        self.looked_in = tuple(looked_in)
        if path is None:
            where = "no data directory was given (root=None)"
        else:
            where = f"not found under {str(path)!r}"
            if self.looked_in:
                where += " (looked in " + ", ".join(repr(str(p)) for p in self.looked_in) + ")"
        message = (
            f"dataset {name!r}: {where}; expected {', '.join(self.expected)}. "
            f"How to obtain it: {how_to_obtain}"
        )
        super().__init__(message)

    def __reduce__(self) -> tuple[type[DatasetNotFound], tuple[object, ...]]:
        # OSError pickles its args by default, which would not match __init__.
        return (
            type(self),
            (self.name, self.path, self.expected, self.how_to_obtain, self.looked_in),
        )


class DatasetFormatError(ValueError):
    """A dataset file exists but is truncated, corrupt or of an unexpected shape."""
