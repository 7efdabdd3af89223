"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

Each line carries `severity`, `message`, the trace of the current HTTP request
(`logging.googleapis.com/trace`) and planbus's own ids (request_id, reminder_id, ...) bound with `bind()`.
Secrets never reach a log line: values of settings that hold secrets are masked before writing.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("planbus_log_context", default={})
_secrets: set[str] = set()

LOGGER_NAME = "planbus"


def register_secret(value: str | None) -> None:
    """Mask this value wherever it would appear in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
            **_context.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def configure(level: str = "INFO") -> None:
    """Send planbus's logs to stdout as JSON lines (idempotent)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
