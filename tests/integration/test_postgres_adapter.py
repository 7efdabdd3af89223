"""The direct PostgreSQL adapter: calls, JSON both ways, and driver errors translated at the edge."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from planbus.db import connect
from planbus.db.pool import ConnectionPool
from planbus.db.postgres import PostgresDatabase
from planbus.db.retry import call_with_retry
from planbus.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    LimitExceeded,
    UniqueViolation,
)
from planbus.settings import get_settings

Conn = psycopg.Connection[dict[str, Any]]

ECHO = """
CREATE FUNCTION planbus_test_echo(p_value jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p_value $$;
CREATE FUNCTION planbus_test_raise(p_sqlstate text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'raised %', p_sqlstate USING ERRCODE = p_sqlstate; END $$;
CREATE FUNCTION planbus_test_prepared_statements() RETURNS jsonb LANGUAGE sql AS $$
  SELECT to_jsonb(count(*)) FROM pg_prepared_statements
$$;
CREATE FUNCTION planbus_test_sleep(p_seconds float) RETURNS jsonb LANGUAGE sql AS $$
  SELECT to_jsonb(pg_sleep(p_seconds)::text)
$$;
"""


@pytest.fixture
def echo(sql: Conn) -> None:
    sql.execute(ECHO)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def terminate_other_backends(sql: Conn) -> int:
    # With a timeout, pg_terminate_backend waits until each backend has gone, as a restart would have
    # ended them before the next call: the connections are dead, not dying, when the pool next looks.
    rows = sql.execute(
        "SELECT pg_terminate_backend(pid, 10000) AS done FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return len(rows)


@pytest.mark.usefixtures("echo")
@pytest.mark.parametrize(
    "value", [{"a": [1, 2, {"b": None}], "ü": "ß"}, [1, "two", 3.5, True], {}, []], ids=repr
)
def test_dicts_and_lists_go_in_as_jsonb_and_come_back_decoded(db: PostgresDatabase, value: Any) -> None:
    assert db.call("planbus_test_echo", p_value=value) == value


@pytest.mark.usefixtures("echo")
def test_a_sql_null_answer_is_none(db: PostgresDatabase) -> None:
    assert db.call("planbus_test_echo", p_value=None) is None


def test_state_machine_functions_are_called_with_named_arguments(
    db: PostgresDatabase, make_lead: Any, make_request: Any
) -> None:
    request = make_request(make_lead())
    answer = db.call(
        "planbus_claim_request",
        p_max_attempts=3,
        p_request_id=str(request["id"]),
        p_lease_seconds=60,
        p_kind="plan",
    )
    assert (answer["claimed"], answer["attempt"]) == (True, 1)


@pytest.mark.usefixtures("echo")
@pytest.mark.parametrize(
    ("sqlstate", "error"),
    [
        ("23505", UniqueViolation),
        ("PT429", LimitExceeded),
        ("22023", DatabaseError),
        ("40P01", DatabaseError),
        ("40001", DatabaseError),
        ("55P03", DatabaseError),
        ("57014", DatabaseError),
        ("57P01", DatabaseUnavailable),
        ("53300", DatabaseUnavailable),
        ("08006", DatabaseUnavailable),
    ],
)
def test_a_database_error_is_translated_with_its_sqlstate(
    db: PostgresDatabase, sqlstate: str, error: type[DatabaseError]
) -> None:
    with pytest.raises(DatabaseError) as raised:
        db.call("planbus_test_raise", p_sqlstate=sqlstate)
    assert type(raised.value) is error
    assert raised.value.sqlstate == sqlstate
    assert f"raised {sqlstate}" in str(raised.value)


def test_an_unknown_function_is_a_database_error(db: PostgresDatabase) -> None:
    with pytest.raises(DatabaseError) as raised:
        db.call("planbus_no_such_function", p_x=1)
    assert raised.value.sqlstate == "42883"
    assert type(raised.value) is DatabaseError


def test_names_that_are_not_sql_identifiers_are_refused_before_any_query(db: PostgresDatabase) -> None:
    with pytest.raises(ValueError, match="not a SQL identifier"):
        db.call("planbus_claim_request(); drop table leads; --")
    with pytest.raises(ValueError, match="not a SQL identifier"):
        db.call("planbus_claim_request", **{"p_x => 1); --": 1})


@pytest.mark.usefixtures("echo")
def test_no_statement_is_prepared_so_transaction_poolers_work(database_url: str) -> None:
    database = PostgresDatabase(database_url, max_size=1)
    try:
        counts = [database.call("planbus_test_prepared_statements") for _ in range(12)]
    finally:
        database.close()
    # psycopg prepares a query once it has run 5 times on a connection, unless told not to.
    assert counts == [0] * 12


def test_an_unreachable_server_is_database_unavailable() -> None:
    database = PostgresDatabase(f"postgresql://postgres@127.0.0.1:{unused_port()}/planbus", timeout=1)
    try:
        with pytest.raises(DatabaseUnavailable):
            database.call("planbus_claim_request", p_request_id=None)
    finally:
        database.close()


@pytest.mark.usefixtures("echo")
def test_the_pool_recovers_after_the_servers_connections_were_cut(db: PostgresDatabase, sql: Conn) -> None:
    assert db.call("planbus_test_echo", p_value={"before": True}) == {"before": True}
    assert terminate_other_backends(sql) >= 1  # the pool's idle connection, as a restart would
    assert db.call("planbus_test_echo", p_value={"after": True}) == {"after": True}


def recording_pool(url: str, sent: list[str], *, recheck_after: float) -> ConnectionPool:
    """A pool whose connections note every statement they are given in `sent`."""

    def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = psycopg.Connection.connect(url, **kwargs)
        execute = conn.execute

        def recorded(query: Any, *args: Any, **kw: Any) -> Any:
            sent.append(str(query))
            return execute(query, *args, **kw)

        conn.execute = recorded  # type: ignore[method-assign]
        return conn

    return ConnectionPool(
        url,
        max_size=2,
        timeout=5,
        retest_after=0.5,
        kwargs={"autocommit": True},
        recheck_after=recheck_after,
        connect=connect,
    )


def run_twice(pool: ConnectionPool, between: Callable[[], object] = lambda: None) -> list[int]:
    pids = []
    for query in ("SELECT 1", "SELECT 2"):
        with pool.connection() as conn:
            conn.execute(query)
            pids.append(conn.info.backend_pid)
        between()
    return pids


def test_a_connection_given_back_moments_ago_is_reused_without_a_check_query(database_url: str) -> None:
    sent: list[str] = []
    pool = recording_pool(database_url, sent, recheck_after=60)
    try:
        first, second = run_twice(pool)
    finally:
        pool.close()
    assert first == second
    assert sent == ["SELECT 1", "SELECT 2"]


def test_a_connection_idle_longer_than_recheck_after_is_checked_with_an_empty_query(
    database_url: str,
) -> None:
    sent: list[str] = []
    pool = recording_pool(database_url, sent, recheck_after=0)
    try:
        first, second = run_twice(pool)
    finally:
        pool.close()
    assert first == second
    assert sent == ["SELECT 1", "", "SELECT 2"]


def test_a_recent_connection_the_server_ended_is_checked_and_replaced(database_url: str, sql: Conn) -> None:
    sent: list[str] = []
    pool = recording_pool(database_url, sent, recheck_after=60)
    cuts: list[int] = []

    def cut_once() -> None:
        if not cuts:
            cuts.append(terminate_other_backends(sql))

    try:
        first, second = run_twice(pool, between=cut_once)
    finally:
        pool.close()
    assert first != second
    # The ended connection had something to read (the server's goodbye), so it was checked, failed the
    # check, and a new connection ran the statement.
    assert sent == ["SELECT 1", "", "SELECT 2"]


@pytest.mark.usefixtures("echo")
def test_a_connection_lost_during_a_call_is_database_unavailable_and_the_next_call_works(
    db: PostgresDatabase, sql: Conn
) -> None:
    errors: list[BaseException] = []

    def slow_call() -> None:
        try:
            db.call("planbus_test_sleep", p_seconds=30)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        active = sql.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%%planbus_test_sleep%%'"
            " AND pid <> pg_backend_pid() AND state = 'active'"
        ).fetchone()
        if active and active["n"]:
            break
        time.sleep(0.05)
    terminate_other_backends(sql)
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], DatabaseUnavailable)
    assert db.call("planbus_test_echo", p_value=[1]) == [1]


def test_the_settings_choose_the_direct_adapter_for_database_url(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    database = connect(get_settings())
    try:
        assert isinstance(database, PostgresDatabase)
    finally:
        database.close()


def test_without_any_database_setting_the_adapter_refuses_clearly() -> None:
    with pytest.raises(ConfigurationError, match="set DATABASE_URL"):
        connect(get_settings())


@pytest.mark.usefixtures("echo")
def test_a_call_waits_for_a_busy_connection_only_up_to_the_pool_timeout(database_url: str) -> None:
    database = PostgresDatabase(database_url, max_size=1, timeout=0.3)
    holder = threading.Thread(target=database.call, args=("planbus_test_sleep",), kwargs={"p_seconds": 1.5})
    try:
        holder.start()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"no free database connection within 0\.3 s"):
            database.call("planbus_test_echo", p_value=[1])
        assert time.monotonic() - started < 1.0
        holder.join()
        assert database.call("planbus_test_echo", p_value=[2]) == [2]
    finally:
        database.close()


def test_a_closed_adapter_refuses_calls_as_unavailable(database_url: str) -> None:
    database = PostgresDatabase(database_url)
    database.close()
    with pytest.raises(DatabaseUnavailable, match="closed"):
        database.call("planbus_find_lost_requests", p_grace_seconds=60, p_limit=1)


COUNTED_FAILURE = """
CREATE SEQUENCE planbus_test_calls;
CREATE FUNCTION planbus_test_count_and_raise(p_sqlstate text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  PERFORM nextval('planbus_test_calls');
  RAISE EXCEPTION 'raised %', p_sqlstate USING ERRCODE = p_sqlstate;
END $$;
"""


@pytest.mark.parametrize("sqlstate", ["22023", "40001", "23505"])
def test_the_bounded_retry_raises_any_other_error_at_once(
    db: PostgresDatabase, sql: Conn, sqlstate: str
) -> None:
    sql.execute(COUNTED_FAILURE)
    with pytest.raises(DatabaseError) as raised:
        call_with_retry(db, "planbus_test_count_and_raise", retry_for=5, p_sqlstate=sqlstate)
    assert raised.value.sqlstate == sqlstate
    # A sequence is not rolled back with the failed call: it counts the calls made.
    assert sql.execute("SELECT last_value AS n FROM planbus_test_calls").fetchone() == {"n": 1}


@pytest.mark.usefixtures("echo")
def test_the_bounded_retry_returns_the_answer_of_a_call_that_works(db: PostgresDatabase) -> None:
    assert call_with_retry(db, "planbus_test_echo", retry_for=5, p_value={"ok": True}) == {"ok": True}
