"""The one wiring point: builds the adapters from settings, once per process, so a warm function instance
reuses its database pool and its generators' HTTP connections.

    settings()                 the settings, with logging configured and secrets registered for masking
    database()                 the database port (psycopg pool, or the Supabase REST API)
    generator(kind, settings)  the generator a request kind uses (OpenAI or offline)

Each is imported and built on first use only, so a target pays for nothing it does not call.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from planbus import logs
from planbus.db import Database, connect
from planbus.http import register_secrets
from planbus.settings import Settings, get_settings

if TYPE_CHECKING:
    from planbus.kinds import AnyKind

_lock = threading.Lock()
_current: tuple[Settings, Database] | None = None


def settings() -> Settings:
    """The settings, with logging configured and secrets registered for masking."""
    current = get_settings()
    logs.configure(current.log_level)
    register_secrets(current)
    return current


def database() -> Database:
    """The process's database adapter for the current settings (re-made when the settings change)."""
    global _current
    wanted = settings()
    with _lock:
        if _current is None or _current[0] is not wanted:
            if _current is not None:
                _current[1].close()
            _current = (wanted, connect(wanted))
        return _current[1]


def generator(kind: AnyKind, settings: Settings) -> Any:
    """The process's generator for `kind` (each kind keeps its own warm for the same settings)."""
    return kind.generator(settings)


def reset() -> None:
    """Close and forget the adapter (tests switch databases between tests)."""
    global _current
    with _lock:
        if _current is not None:
            _current[1].close()
        _current = None
