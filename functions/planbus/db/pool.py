"""A few reusable PostgreSQL connections that fail fast while the server is down and serve as soon as it
is back.

psycopg_pool opens connections in a background worker with exponential backoff (1, 2, 4, 8, 16 s, ...) and
has callers wait up to the pool timeout for one: during an outage every request holds a thread for the
whole timeout, and once the server is back the next connection can still be seconds of backoff away.
This pool instead:

- opens a connection in the caller's own thread when none is idle, so a refused connect fails that call
  at once and a server that is back serves the very next call;
- marks itself *down* when a connect fails. While down, a call that needs a new connection fails at once
  with DatabaseUnavailable, except one call every `retest_after` seconds, which tries to connect: if it
  succeeds the pool is up again for everyone. A connect is cheap (refused at once by a stopped server, at
  most `connect_timeout` against an unreachable host), so this is how the outage is noticed to be over;
- checks an idle connection before handing it out, and replaces it when it died while idle (a restarted
  server, a failover, a proxy's idle timeout), without pausing in between. A connection given back less
  than `recheck_after` seconds ago is checked without a round trip: a server or proxy that ends a
  connection says so on its socket (an error message, then end of file), so a socket with nothing to read
  is one whose connection still stands, and a busy worker does not pay a round trip per call for it. One
  with something to read, or idle longer, is checked with an empty query;
- takes a connection back only when it is healthy and idle; a broken one is closed and forgotten.
Callers wait (up to `timeout`) only for a connection another call is using.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from planbus import logs
from planbus.errors import DatabaseUnavailable

Connection = psycopg.Connection[Any]

log = logs.get_logger("db")

# A connection idle longer than this is checked with a round trip before it is handed out again.
RECHECK_AFTER_SECONDS = 10.0


class ConnectionPool:
    """Up to `max_size` connections to `url`, opened on demand with `connect(url, **kwargs)`."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int,
        timeout: float,
        retest_after: float,
        kwargs: dict[str, Any],
        recheck_after: float = RECHECK_AFTER_SECONDS,
        connect: Callable[..., Connection] = psycopg.Connection.connect,
    ) -> None:
        self._url = url
        self._max_size = max_size
        self._timeout = timeout
        self._retest_after = retest_after
        self._recheck_after = recheck_after
        self._kwargs = kwargs
        self._connect = connect
        self._cond = threading.Condition()
        self._idle: list[tuple[Connection, float]] = []  # with when each was given back (monotonic)
        self._size = 0  # connections idle, in use, or being opened
        self._closed = False
        # While down: since when, the last connect error, when the next connect may be tried, and
        # whether one is being tried now.
        self._down_since: float | None = None
        self._down_error = ""
        self._next_test = 0.0
        self._testing = False

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A checked connection for the duration of the block; psycopg errors pass through."""
        conn = self._take()
        try:
            yield conn
        finally:
            self._give_back(conn)

    def close(self) -> None:
        """Close the idle connections now and the others when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for conn, _ in idle:
            conn.close()

    def _take(self) -> Connection:
        while True:
            reserved = self._reserve()
            if reserved is None:
                return self._open()
            conn, given_back = reserved
            try:
                if conn.info.transaction_status == TransactionStatus.IDLE:
                    recent = time.monotonic() - given_back < self._recheck_after
                    if not (recent and _quiet(conn)):
                        conn.execute("")
                    return conn
            except psycopg.Error:
                pass
            self._discard(conn)

    def _reserve(self) -> tuple[Connection, float] | None:
        """An idle connection, or None once a slot is reserved for opening a new one."""
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while True:
                if self._closed:
                    raise DatabaseUnavailable("the database connection pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._size < self._max_size:
                    if self._down_since is not None:
                        now = time.monotonic()
                        if self._testing or now < self._next_test:
                            raise DatabaseUnavailable(
                                f"database unreachable for {now - self._down_since:.1f} s: "
                                f"{self._down_error} (next connect attempt within {self._retest_after:g} s)"
                            )
                        self._testing = True
                    self._size += 1
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailable(
                        f"no free database connection within {self._timeout:g} s ({self._max_size} in use)"
                    )
                self._cond.wait(left)

    def _open(self) -> Connection:
        try:
            conn = self._connect(self._url, **self._kwargs)
        except psycopg.Error as exc:
            self._connect_failed(exc)
            raise
        except BaseException:
            self._release_slot()
            raise
        with self._cond:
            was_down, self._down_since, self._testing = self._down_since, None, False
            self._cond.notify_all()
        if was_down is not None:
            log.info("database reachable again after %.1f s", time.monotonic() - was_down)
        return conn

    def _connect_failed(self, exc: psycopg.Error) -> None:
        with self._cond:
            was_down, self._testing = self._down_since, False
            self._size -= 1
            self._next_test = time.monotonic() + self._retest_after
            self._down_error = " ".join(str(exc).split()) or type(exc).__name__
            if was_down is None:
                self._down_since = time.monotonic()
            self._cond.notify_all()
        if was_down is None:
            log.error("database unreachable, failing fast until a connect succeeds: %s", self._down_error)

    def _release_slot(self) -> None:
        with self._cond:
            self._size -= 1
            self._testing = False
            self._cond.notify_all()

    def _give_back(self, conn: Connection) -> None:
        healthy = not conn.closed and not conn.broken
        if healthy and conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.Error:
                healthy = False
        if not healthy:
            self._discard(conn)
            return
        with self._cond:
            if not self._closed:
                self._idle.append((conn, time.monotonic()))
                self._cond.notify()
                return
            self._size -= 1
        conn.close()

    def _discard(self, conn: Connection) -> None:
        with self._cond:
            self._size -= 1
            self._cond.notify()
        conn.close()


def _quiet(conn: Connection) -> bool:
    """Whether nothing waits on the connection's socket (an idle connection is sent nothing unless the
    server or a proxy is ending it)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)
