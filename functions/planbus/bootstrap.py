"""The one wiring point: builds the adapters from settings, once per process, so a warm function instance
reuses its database pool and its generators' HTTP connections.

    settings()                 the settings, with logging configured and secrets registered for masking
    database()                 the database port (psycopg pool, or the Supabase REST API)
    generator(kind, settings)  the generator a request kind uses (OpenAI or offline)
    task_queue(settings)       the Cloud Tasks queue (DISPATCH=cloud-tasks), or None for inline dispatch

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
    from planbus.dispatch import TaskQueue
    from planbus.kinds import AnyKind

_lock = threading.Lock()
_current: tuple[Settings, Database] | None = None
_queue: tuple[Settings, TaskQueue] | None = None
_secrets_of: Settings | None = None  # the settings whose secrets are registered


def settings() -> Settings:
    """The settings, with logging configured and secrets registered for masking."""
    global _secrets_of
    current = get_settings()
    logs.configure(current.log_level)
    if current is not _secrets_of:  # registering is idempotent, and costs a few encodings per secret
        register_secrets(current)
        _secrets_of = current
    return current


def database() -> Database:
    """The process's database adapter for the current settings (re-made when the settings change)."""
    global _current
    ready = _current
    if ready is not None and ready[0] is get_settings():
        return ready[1]  # built for these settings, which settings() configured then
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


def task_queue(settings: Settings) -> TaskQueue | None:
    """The process's task queue when requests are dispatched through Cloud Tasks; None when the webhook
    processes them itself (DISPATCH=inline). The gRPC client is made by its first enqueue."""
    global _queue
    if settings.dispatch_mode != "cloud-tasks":
        return None
    from planbus.dispatch import cloud_tasks_queue

    with _lock:
        if _queue is None or _queue[0] is not settings:
            if _queue is not None:
                _queue[1].close()
            _queue = (settings, cloud_tasks_queue(settings))
        return _queue[1]


def reset() -> None:
    """Close and forget the adapters (tests switch databases and queues between tests)."""
    global _current, _queue
    with _lock:
        if _current is not None:
            _current[1].close()
        if _queue is not None:
            _queue[1].close()
        _current = _queue = None
