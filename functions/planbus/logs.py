"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

Each line carries `severity`, `message`, the trace of the current HTTP request
(`logging.googleapis.com/trace`) and planbus's own ids (request_id, reminder_id, ...) bound with `bind()`.
Every library's records are written by the same formatter (`configure()`), so no line is plain text that
Cloud Logging would show unstructured, with a guessed severity.

Secrets never reach a log line. Every value registered with `register_secret` (the settings that hold
secrets, see http.register_secrets) is masked, as written and in its URL-encoded and JSON-escaped forms:
- in planbus's JSON lines, over the whole line as written (a secret in a field is there JSON-escaped);
- in every other library's records too (httpx logs request URLs, and the bot token is part of them), since
  `configure()` installs a log record factory that masks a record's message and traceback when it is made,
  whichever handler later writes it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "planbus_log_context", default=MappingProxyType({})
)
# Replaced, never mutated, so a line being redacted in one thread never sees the set change under it.
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()

LOGGER_NAME = "planbus"
MASK = "***"
# Shorter values would mask ordinary words; a secret that short is a configuration problem of its own.
MIN_SECRET_LENGTH = 4


def register_secret(value: str | None) -> None:
    """Mask this value, and its URL-encoded and JSON-escaped forms, wherever it would appear in a log line."""
    global _secrets
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    with _secrets_lock:
        known = set(_secrets)
        if forms <= known:
            return
        # Longest first: a secret containing another is masked whole, not left half visible.
        _secrets = tuple(sorted(known | forms, key=len, reverse=True))


def redact(text: str) -> str:
    """`text` with every registered secret masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


# Cloud Logging's severities for Python's levels; a level below DEBUG (a library's own) has none.
SEVERITIES = (
    (logging.CRITICAL, "CRITICAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (logging.INFO, "INFO"),
    (logging.DEBUG, "DEBUG"),
)


def severity(levelno: int) -> str:
    """The Cloud Logging severity of a Python log level: the named level at or below it, else DEFAULT."""
    return next((name for floor, name in SEVERITIES if levelno >= floor), "DEFAULT")


class JsonFormatter(logging.Formatter):
    """One log record as one JSON object on one line (a message's newlines are escaped), secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": severity(record.levelno),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
            **_context.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        # One pass over the whole line masks every field: JSON escapes a string character by character,
        # so a secret inside any key or value appears in the line in the JSON-escaped form that
        # register_secret also masks.
        return redact(json.dumps(entry, default=str))


class _StdoutHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stdout is at the time, so a redirected or captured stdout gets the lines."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current sys.stdout."""


_default_factory: Callable[..., logging.LogRecord] | None = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _default_factory is not None
    record = _default_factory(*args, **kwargs)
    if not _secrets:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed %-format in someone's log call: leave it for logging to report
        return record
    masked = redact(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    return record


def configure(level: str = "INFO") -> None:
    """Write every log record as a JSON line on stdout, planbus's and every library's; mask secrets in all
    of them (idempotent: each entry point calls it on every request).

    planbus's loggers log at `level`; other libraries at the root logger's level (WARNING unless something
    set it), as before. Their records reach the one JSON formatter by either path a library may take:
    - propagated to the root logger, whose console handler writes JSON (added here when the root has none,
      e.g. psycopg's warnings; functions-framework installs one of its own when LOG_EXECUTION_ID is set,
      which is then used rather than doubled);
    - a console handler of a library's own logger (gunicorn's `gunicorn.error` in the worker, Flask's
      default handler): its formatter is replaced with the JSON one.
    Python warnings are logged too (`py.warnings`), instead of being printed as text.
    """
    global _default_factory
    planbus = logging.getLogger(LOGGER_NAME)
    if planbus.level != logging.getLevelName(level.upper()):
        # setLevel empties every logger's cache of enabled levels: only on a change, not per request.
        planbus.setLevel(level.upper())
    root = logging.getLogger()
    for handler in _console_handlers():
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())
    if not any(h in root.handlers for h in _console_handlers()):
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    logging.captureWarnings(True)
    with _secrets_lock:
        if _default_factory is None:
            _default_factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_redacting_factory)


def _console_handlers() -> list[logging.Handler]:
    """Handlers that print to a console stream: plain StreamHandlers (not files, not test captures) and
    ours, on the root logger or any logger made so far."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if type(handler) is logging.StreamHandler or isinstance(handler, _StdoutHandler)
    ]


def get_logger(name: str) -> logging.Logger:
    """A child of the planbus logger (`planbus.<name>`), written as JSON lines once `configure()` ran."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
