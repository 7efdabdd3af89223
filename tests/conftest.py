"""Shared fixtures: one PostgreSQL server per run (embedded, or the one DATABASE_URL names), one template
database with every migration applied, and a fresh copy of it for each test that touches the database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import respx
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from planbus import bootstrap
from planbus.db.postgres import PostgresDatabase
from planbus.embedded import EmbeddedPostgres
from planbus.kinds import KINDS, PLAN, AnyKind
from planbus.migrate import migrate
from planbus.settings import Settings, get_settings
from support.mini_app import BOT_TOKEN, JWT_SECRET, client
from support.request_kinds import complete_request, insert_request

# Read once, before the autouse fixture below clears the environment for every test.
SERVER_URL_FROM_ENV = os.environ.get("DATABASE_URL")
SETTINGS_VARIABLES = [name.upper() for name in Settings.model_fields]


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no planbus setting in the environment and no cached settings."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    bootstrap.reset()
    yield
    bootstrap.reset()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The PostgreSQL server of this run: DATABASE_URL when set, else an embedded one."""
    if SERVER_URL_FROM_ENV:
        yield SERVER_URL_FROM_ENV
        return
    server = EmbeddedPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


def _admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server, autocommit=True)


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    """A database with every migration applied, copied for each test."""
    name = f"planbus_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(with_database(server_url, name))
    yield name
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(server: str, template: str | None = None) -> str:
    """A new database on the server (empty, or a copy of `template`); returns its name."""
    name = f"planbus_test_{uuid.uuid4().hex[:12]}"
    suffix = f' TEMPLATE "{template}"' if template else ""
    with _admin(server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    return name


def drop_database(server: str, name: str) -> None:
    """Drop a test database, closing whatever connections a test left open to it."""
    with _admin(server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Factory: a new empty database (or a copy of `template`), dropped after the test."""
    created: list[str] = []

    def make(template: str | None = None) -> str:
        created.append(create_database(server_url, template))
        return with_database(server_url, created[-1])

    yield make
    for name in created:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def module_database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A migrated database shared by one test module, for tests that roll back whatever they do."""
    name = create_database(server_url, template_database)
    yield with_database(server_url, name)
    drop_database(server_url, name)


@pytest.fixture
def database_url(fresh_database: Callable[..., str], template_database: str) -> str:
    """A migrated database of this test's own."""
    return fresh_database(template_database)


@pytest.fixture
def db(database_url: str) -> Iterator[PostgresDatabase]:
    """The planbus database port over this test's database."""
    database = PostgresDatabase(database_url)
    yield database
    database.close()


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An owner connection (autocommit, dict rows) for arranging and asserting."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def make_lead(sql: psycopg.Connection[dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Insert a lead owned by `telegram_id`; returns the row."""

    def make(telegram_id: int = 1001, full_name: str = "Ada Lovelace", **fields: Any) -> dict[str, Any]:
        columns = {"telegram_id": telegram_id, "full_name": full_name, **fields}
        names = ", ".join(columns)
        values = ", ".join(f"%({k})s" for k in columns)
        row = sql.execute(f"INSERT INTO leads ({names}) VALUES ({values}) RETURNING *", columns).fetchone()
        assert row is not None
        return row

    return make


@pytest.fixture
def make_request(sql: psycopg.Connection[dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Insert a pending plan request for a lead (as the owner would); returns the row."""
    return lambda lead, **fields: insert_request(sql, PLAN, lead, **fields)


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> AnyKind:
    """Each registered request kind in turn: a test that takes it runs once per kind."""
    chosen: AnyKind = request.param
    return chosen


@pytest.fixture
def make_kind_request(
    sql: psycopg.Connection[dict[str, Any]], kind: AnyKind
) -> Callable[..., dict[str, Any]]:
    """Insert a pending request of the test's kind for a lead (as the owner would); returns the row."""
    return lambda lead, **fields: insert_request(sql, kind, lead, **fields)


@pytest.fixture
def make_plan(
    db: PostgresDatabase,
    sql: psycopg.Connection[dict[str, Any]],
    make_lead: Callable[..., dict[str, Any]],
    make_request: Callable[..., dict[str, Any]],
) -> Callable[..., list[str]]:
    """Carry a new lead's plan request to `completed` through the state machine, with `steps` reminders
    due `days` from now (a minute apart, so their order is fixed); returns the reminder ids by step."""

    def make(
        steps: int = 1, *, telegram_id: int = 1001, days: float = -1, text: str = "Call Ada"
    ) -> list[str]:
        request = make_request(make_lead(telegram_id=telegram_id, company="Analytical Engines"))
        due = datetime.now(UTC) + timedelta(days=days)
        reminders = [
            {"step_index": s, "due_at": (due + timedelta(minutes=s)).isoformat(), "text": f"{text} ({s})"}
            for s in range(steps)
        ]
        done = complete_request(
            db, PLAN, request["id"], result={"plan": {}}, completion={"plan": {}, "reminders": reminders}
        )
        assert done["completed"], done
        rows = sql.execute(
            "SELECT id FROM reminders WHERE plan_request_id = %s ORDER BY step_index", [request["id"]]
        ).fetchall()
        return [str(r["id"]) for r in rows]

    return make


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch, database_url: str) -> FlaskClient:
    """telegram_auth as a test client, configured with the test bot's token and the JWT secret."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", JWT_SECRET)
    return client("telegram_auth")


@pytest.fixture
def telegram() -> Iterator[respx.MockRouter]:
    """Telegram's Bot API mocked at the transport; each test adds the routes it answers."""
    with respx.mock(assert_all_called=False) as router:
        yield router
