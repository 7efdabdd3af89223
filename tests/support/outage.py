"""A database outage on demand: a PostgreSQL server of the test's own that can be stopped and started again
on the same port, and a record of what callers saw meanwhile.

    with outage_server() as pg:          # started, migrated; pg.url is the migrated database
        pg.stop()                        # pg_ctl stop -m fast: connections are cut, connects refused
        pg.start()                       # same port, same data; returns when a connection succeeds
        pg.ready_at                      # time.monotonic() of the first successful connection

The server is the embedded PostgreSQL (planbus.embedded), kept in a temporary folder under /tmp that is
removed afterwards; the machine's shared server is never stopped.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit, urlunsplit

import psycopg

from planbus.embedded import EmbeddedPostgres
from planbus.migrate import migrate

DATABASE = "planbus_outage"


class OutageServer:
    """One embedded server with a database migrated for planbus, stoppable and restartable."""

    def __init__(self, folder: Path) -> None:
        self._server = EmbeddedPostgres(base_dir=folder)
        self.stopped_at = 0.0
        self.ready_at = 0.0

    @property
    def url(self) -> str:
        return urlunsplit(urlsplit(self._server.url)._replace(path=f"/{DATABASE}"))

    def create(self) -> None:
        admin = self._server.start()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        migrate(self.url)

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are terminated); returns once it is gone."""
        self._server.stop()
        self.stopped_at = time.monotonic()

    def start(self, timeout: float = 60.0) -> float:
        """Start the server again on its port; returns (and records) when the first connection succeeds.

        Readiness is probed every 10 ms from a thread while pg_ctl waits, so `ready_at` is when the server
        took connections, not when pg_ctl noticed.
        """
        ready = threading.Event()
        probe = threading.Thread(target=self._probe, args=(ready, timeout), daemon=True)
        probe.start()
        self._server.start()
        probe.join(timeout)
        if not ready.is_set():
            raise AssertionError(f"the restarted server took no connection within {timeout} s")
        return self.ready_at

    def _probe(self, ready: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
            except psycopg.Error:
                time.sleep(0.01)
                continue
            self.ready_at = time.monotonic()
            ready.set()
            return

    def close(self) -> None:
        self._server.stop()


@contextmanager
def outage_server() -> Iterator[OutageServer]:
    """A started, migrated OutageServer in a folder of its own (its parent must be enterable by the server's
    user when run as root: /tmp is), stopped and removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="planbus-outage-"))
    server = OutageServer(folder)
    try:
        server.create()
        yield server
    finally:
        try:
            server.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent and answered (time.monotonic()), and the HTTP status."""

    sent: float
    answered: float
    status: int

    @property
    def seconds(self) -> float:
        return self.answered - self.sent


@dataclass
class Answers:
    """Every answer a set of callers saw, thread-safe."""

    items: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.items.append(answer)

    def sent_between(self, start: float, end: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.items if start <= a.sent < end]

    def first_answered_after(self, moment: float, status: int) -> Answer | None:
        with self.lock:
            later = [a for a in self.items if a.answered >= moment and a.status == status]
        return min(later, key=lambda a: a.answered, default=None)


# The figures of one outage, under the names the bench prints (some start with a digit: the functional form).
OutageFigures = TypedDict(
    "OutageFigures",
    {
        "outage_seconds": float,
        "requests_during": int,
        "statuses_during": list[int],
        "503_seconds_median": float | None,
        "503_seconds_max": float | None,
        "ready_to_first_200": float | None,
        "503_answered_after_ready": int,
        "503_for_requests_sent_after_ready": int,
    },
)


def summary(answers: Answers, stopped_at: float, ready_at: float) -> OutageFigures:
    """The figures of one outage: how the answers during it looked, and how soon 200s came back after it."""
    during = answers.sent_between(stopped_at, ready_at)
    unavailable = [a.seconds for a in during if a.status == 503]
    first_ok = answers.first_answered_after(ready_at, 200)
    late_503 = [a for a in answers.sent_between(ready_at, float("inf")) if a.status == 503]
    with answers.lock:
        answered_503_after_ready = [a for a in answers.items if a.status == 503 and a.answered >= ready_at]
    return {
        "outage_seconds": round(ready_at - stopped_at, 2),
        "requests_during": len(during),
        "statuses_during": sorted({a.status for a in during}),
        "503_seconds_median": round(statistics.median(unavailable), 3) if unavailable else None,
        "503_seconds_max": round(max(unavailable), 3) if unavailable else None,
        "ready_to_first_200": round(first_ok.answered - ready_at, 3) if first_ok else None,
        "503_answered_after_ready": len(answered_503_after_ready),
        "503_for_requests_sent_after_ready": len(late_503),
    }
