"""The terminal of the local stack: one writer for every process and thread, so lines never interleave.

Function servers log JSON lines (planbus.logs); `render_log_line` turns each into
`time source SEVERITY message key=value...`. On a terminal, `status()` keeps one transient line at the
bottom (a progress display) that other output scrolls above; elsewhere status changes print as lines.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from typing import Any, TextIO

SEVERITIES = {"DEBUG": 10, "INFO": 20, "NOTICE": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# Keys every JSON log line has, shown in the fixed columns (or not at all) rather than as key=value.
_FIXED_KEYS = {"severity", "message", "time", "logger", "exception"}
_COLORS = {"DEBUG": "2", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}
SOURCE_WIDTH = 21


def _clock(at: datetime | None = None) -> str:
    moment = (at or datetime.now()).astimezone()
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _entry_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or not text) else text


def parse_log_line(raw: str) -> dict[str, Any] | None:
    """The JSON object of a structured log line, or None for any other output."""
    text = raw.strip()
    if not text.startswith("{"):
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and "message" in entry else None


def format_event(
    source: str,
    severity: str,
    message: str,
    fields: dict[str, Any],
    *,
    at: datetime | None = None,
    color: bool = False,
) -> str:
    """One readable line: time, source, severity, message, then the ids as key=value."""
    extras = "  ".join(
        f"{key}={_value(value)}"
        for key, value in fields.items()
        if key not in _FIXED_KEYS and not key.startswith("logging.googleapis.com/") and value is not None
    )
    level = f"{severity:<7}"
    if color and severity in _COLORS:
        level = f"\x1b[{_COLORS[severity]}m{level}\x1b[0m"
    line = f"{_clock(at)} {source:<{SOURCE_WIDTH}} {level} {message}"
    return f"{line}  {extras}" if extras else line


def render_log_line(source: str, raw: str, *, color: bool = False) -> tuple[str, str]:
    """(severity, rendered text) for one line of a process's output; non-JSON output is passed through."""
    entry = parse_log_line(raw)
    if entry is None:
        return "INFO", f"{_clock()} {source:<{SOURCE_WIDTH}} | {raw.rstrip()}"
    severity = str(entry.get("severity", "INFO")).upper()
    text = format_event(
        source, severity, str(entry["message"]), entry, at=_entry_time(entry.get("time")), color=color
    )
    exception = entry.get("exception")
    if isinstance(exception, str) and exception:
        text += "\n" + "\n".join(f"    {row}" for row in exception.rstrip().splitlines())
    return severity, text


class Console:
    """Thread-safe output for the stack, with an optional transient status line on a terminal."""

    def __init__(
        self, stream: TextIO | None = None, *, min_severity: str = "DEBUG", color: bool | None = None
    ) -> None:
        self._stream = stream or sys.stdout
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._color = self._tty if color is None else color
        self._threshold = SEVERITIES.get(min_severity.upper(), 0)
        self._lock = threading.Lock()
        self._status: str | None = None

    @property
    def interactive(self) -> bool:
        """Whether output goes to a terminal (a redrawn status line) or to a file or pipe (plain lines)."""
        return self._tty

    def line(self, text: str = "") -> None:
        """Print narrative text as it is."""
        with self._lock:
            self._write(text)

    def event(self, source: str, severity: str, message: str, **fields: Any) -> None:
        """A log line of the orchestrator's own components (relay, scheduler, sink, supervisor)."""
        if SEVERITIES.get(severity, 20) < self._threshold:
            return
        with self._lock:
            self._write(format_event(source, severity, message, fields, color=self._color))

    def output(self, source: str, raw: str) -> None:
        """One line a child process wrote, rendered if it is a structured log line."""
        severity, text = render_log_line(source, raw, color=self._color)
        if SEVERITIES.get(severity, 20) < self._threshold:
            return
        with self._lock:
            self._write(text)

    def status(self, text: str | None) -> None:
        """Show (or with None, clear) the transient status line."""
        with self._lock:
            if text == self._status:
                return
            if self._tty:
                self._stream.write("\r\x1b[K" + (text or ""))
                self._stream.flush()
            elif text is not None:
                self._stream.write(text + "\n")
                self._stream.flush()
            self._status = text

    def _write(self, text: str) -> None:
        if self._tty and self._status is not None:
            self._stream.write("\r\x1b[K" + text + "\n" + self._status)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
