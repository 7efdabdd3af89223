"""The database port over psycopg 3 with a small connection pool (direct or pooled PostgreSQL)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from planbus.errors import DatabaseUnavailable, database_error

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _adapt(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict | list) else value


class PostgresDatabase:
    """Calls planbus SQL functions over a pooled psycopg connection in autocommit mode."""

    def __init__(self, url: str, *, max_size: int = 4, timeout: float = 10.0) -> None:
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=max_size,
            timeout=timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            check=ConnectionPool.check_connection,
            open=True,
        )

    def call(self, function: str, /, **params: Any) -> Any:
        if not _NAME.match(function) or not all(_NAME.match(name) for name in params):
            raise ValueError(f"not a SQL identifier: {function}({', '.join(params)})")
        arguments = sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in params
        )
        query = sql.SQL("SELECT {}.{}({})").format(
            sql.Identifier("public"), sql.Identifier(function), arguments
        )
        try:
            with self._pool.connection() as conn:
                row = conn.execute(query, {name: _adapt(v) for name, v in params.items()}).fetchone()
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"no database connection within the pool timeout: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        except psycopg.Error as exc:
            raise database_error(_message(exc), exc.sqlstate) from exc
        return None if row is None else row[0]

    def close(self) -> None:
        self._pool.close()


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    return diag.message_primary or str(exc).strip()
