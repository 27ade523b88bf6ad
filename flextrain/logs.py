"""Structured logs for the long-running processes (aggregator, trainer, runner).

`json` writes one JSON object per line (time, level, logger, message and the extra
fields `round`, `client`, `tier` when given) for log collectors; `text` is for people.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

_EXTRA: Final[tuple[str, ...]] = ("round", "client", "tier", "job")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tags = " ".join(f"{k}={getattr(record, k)}" for k in _EXTRA if hasattr(record, k))
        base = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[0]} {record.name}: {record.getMessage()}"
        text = f"{base} [{tags}]" if tags else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Route flextrain's loggers to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
