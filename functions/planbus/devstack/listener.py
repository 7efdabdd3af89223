"""LISTEN on one channel over a dedicated connection, reconnecting with backoff when the connection drops.

NOTIFY is fire-and-forget: whatever is sent while we are disconnected is gone. So every (re)connect calls
`on_connect` after LISTEN is in place, which lets the relay and the sink catch up from the tables, and
duplicates between the catch-up and the live notifications are harmless (both consumers de-duplicate or
are idempotent downstream).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from planbus.devstack.console import Console

Connection = psycopg.Connection[Any]
RECONNECT_BASE_DELAY = 0.5
RECONNECT_MAX_DELAY = 10.0
POLL_SECONDS = 0.5


class Listener:
    """A thread that LISTENs on `channel` and hands each payload to `on_notify`."""

    def __init__(
        self,
        name: str,
        database_url: str,
        channel: str,
        *,
        console: Console,
        on_notify: Callable[[str], None],
        on_connect: Callable[[Connection, bool], None],
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.channel = channel
        self.console = console
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.connected = threading.Event()
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start listening; returns once the first LISTEN is in place (or raises after `timeout`)."""
        self._thread.start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"{self.name} could not LISTEN on {self.channel} within {timeout:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = RECONNECT_BASE_DELAY
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.database_url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"planbus-{self.name}",
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.on_connect(conn, self.connects == 0)
                    self.connects += 1
                    self.connected.set()
                    delay = RECONNECT_BASE_DELAY
                    while not self._stop.is_set():
                        for notification in conn.notifies(timeout=POLL_SECONDS):
                            self.on_notify(notification.payload)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                self.console.event(
                    self.name,
                    "WARNING",
                    f"lost the connection; reconnecting in {delay:.1f} s",
                    error=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
