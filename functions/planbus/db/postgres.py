"""The database port over psycopg 3 with a small connection pool (direct or pooled PostgreSQL).

The pool (planbus.db.pool) fails fast while the server is down: after a failed connect, calls are
DatabaseUnavailable at once, and one connect every RETEST_SECONDS finds out when it is back, so a function
answers 503 within moments of a request during an outage and serves again within moments of the server's
return. A connection that died while it sat in the pool (a restarted server, a failover, an idle timeout)
is checked and replaced when it is taken out. A connection lost during a call surfaces as
DatabaseUnavailable: the call's outcome is unknown, and every state transition is safe to call again
(planbus.db.retry repeats such a call while the database is unavailable, for calls that opt in).

No statement is ever prepared on the server, so the adapter works through transaction-mode poolers
(Supabase's Supavisor on port 6543, PgBouncer), where consecutive statements may reach different backends.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from planbus.db import translate_error
from planbus.db.pool import ConnectionPool
from planbus.errors import DatabaseError, DatabaseUnavailable

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# libpq's shortest connect timeout (it reads 1 as 2): how long a connect to an unreachable host (no
# answer at all, not a refusal) holds its caller before the call is DatabaseUnavailable.
CONNECT_TIMEOUT_SECONDS = 2
# While the database is down, one call at most this often tries to connect; the others fail at once.
RETEST_SECONDS = 0.5


@functools.lru_cache(maxsize=256)
def _call_query(function: str, names: tuple[str, ...]) -> bytes:
    """`SELECT public."<function>"("<name>" => %(name)s, ...)`, composed once per function and argument
    names (composing with psycopg.sql escapes every identifier on every call). The names are checked to
    be plain identifiers, which quoting alone then makes safe."""
    if not _NAME.match(function) or not all(_NAME.match(name) for name in names):
        raise ValueError(f"not a SQL identifier: {function}({', '.join(names)})")
    arguments = ", ".join(f'"{name}" => %({name})s' for name in names)
    return f'SELECT "public"."{function}"({arguments})'.encode()


def _adapt(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict | list) else value


class PostgresDatabase:
    """Calls planbus SQL functions over a pooled psycopg connection in autocommit mode."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 4,
        timeout: float = 10.0,
        connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
        retest_after: float = RETEST_SECONDS,
    ) -> None:
        """`timeout` bounds the wait for a connection that other calls are using, not an outage."""
        self._pool = ConnectionPool(
            url,
            max_size=max_size,
            timeout=timeout,
            retest_after=retest_after,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout, "prepare_threshold": None},
        )

    def call(self, function: str, /, **params: Any) -> Any:
        """Run `SELECT public.<function>(name => value, ...)`; return its decoded JSON (None for null)."""
        query = _call_query(function, tuple(params))
        try:
            with self._pool.connection() as conn:
                row = conn.execute(query, {name: _adapt(v) for name, v in params.items()}).fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc
        return None if row is None else row[0]

    def close(self) -> None:
        """Close the pool and its connections."""
        self._pool.close()


def translate(exc: psycopg.Error, context: str | None = None) -> DatabaseError:
    """planbus's exception for a psycopg error (every direct-connection caller uses this one rule).

    libpq's own errors (refused, reset, closed by the server: no SQLSTATE) and an unusable connection are
    DatabaseUnavailable; anything else keeps its SQLSTATE through `translate_error`.
    """
    message = exc.diag.message_primary or str(exc).strip()
    if context:
        message = f"{context}: {message}"
    if isinstance(exc, psycopg.InterfaceError) or (
        isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None
    ):
        return DatabaseUnavailable(f"database unreachable: {message}")
    return translate_error(message, exc.sqlstate)
