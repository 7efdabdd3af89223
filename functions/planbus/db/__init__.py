"""The database port: call one SQL function by name with named arguments, get its JSON result.

Every state transition lives in a SQL function (migrations/) that returns `jsonb`, so one call is one
transaction and both adapters (direct PostgreSQL, Supabase REST) return the same decoded value.
"""

from __future__ import annotations

from typing import Any, Protocol

from planbus.errors import ConfigurationError, DatabaseError, DatabaseUnavailable, database_error
from planbus.settings import Settings

# SQLSTATE classes that mean the server or the connection is gone, not that a statement was refused:
# connection exception, insufficient resources, operator intervention (shutdown, crash, cannot connect
# now, not 57014 statement timeout), system error. Other errors, deadlocks and timeouts included, keep
# their SQLSTATE so the caller can decide whether to retry.
UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "58")


def translate_error(message: str, sqlstate: str | None) -> DatabaseError:
    """The planbus exception for a database error: unavailable, or refused with its SQLSTATE."""
    if sqlstate is not None and sqlstate.startswith(UNAVAILABLE_SQLSTATES):
        return DatabaseUnavailable(f"database unavailable ({sqlstate}): {message}", sqlstate=sqlstate)
    return database_error(message, sqlstate)


class Database(Protocol):
    """What the use cases need from the database."""

    def call(self, function: str, /, **params: Any) -> Any:
        """Run `public.<function>(name => value, ...)` in its own transaction; return its decoded JSON."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def connect(settings: Settings) -> Database:
    """The adapter the settings ask for: Supabase REST when its URL and key are set, else PostgreSQL."""
    if settings.supabase_url and settings.supabase_service_role_key:
        from planbus.db.supabase import SupabaseDatabase

        return SupabaseDatabase(settings.supabase_url, settings.supabase_service_role_key.get_secret_value())
    if settings.database_url:
        from planbus.db.postgres import PostgresDatabase

        return PostgresDatabase(settings.database_url)
    raise ConfigurationError("set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
