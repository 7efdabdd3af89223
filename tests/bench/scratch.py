"""The PostgreSQL a benchmark runs on: DATABASE_URL's server when set, else an embedded one, and a migrated
scratch database on it that is dropped afterwards, so a benchmark never touches a database it did not make.

    with server() as server_url, scratch_database(server_url) as url:
        ...
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg

from planbus.embedded import EmbeddedPostgres
from planbus.migrate import migrate


@contextmanager
def server() -> Iterator[str]:
    """The URL of DATABASE_URL's server, or of an embedded PostgreSQL started here and stopped on exit."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    embedded = EmbeddedPostgres()
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """The URL of a new, migrated database on `server_url`'s server, dropped on exit even if still in use."""
    name = f"planbus_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
