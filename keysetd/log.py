"""Structured logs: one event per line, JSON or text, with a stable set of fields.

Callers pass fields (kid, fingerprint, source, output, error ...) explicitly;
nothing here formats key objects, and errors are rendered by their ``str``,
which by the rules of ``keysetd.errors`` carries no key material.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure", "event", "logger"]

logger = logging.getLogger("keysetd")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()}" + (
            f" {extra}" if extra else ""
        )


def configure(fmt: str = "json", level: str = "info") -> None:
    """Send keysetd's events to stderr in ``fmt`` (json | text); idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one event with its fields; None-valued fields are left out."""
    if logger.isEnabledFor(level):
        clean = {k: v for k, v in fields.items() if v is not None}
        logger.log(level, name, extra={"fields": clean})
