"""A real PostgreSQL stopped and started again under the adapter and under a function: how fast the
answers come while it is down, how soon they are 200 again once it is back, and a finished plan that is
still written when the database returns within the lease.

The server is one of the test's own (support.outage), never the shared one.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from planbus.db.pool import ConnectionPool
from planbus.db.postgres import RETEST_SECONDS, PostgresDatabase
from planbus.db.retry import call_with_retry
from planbus.errors import DatabaseUnavailable
from support.mini_app import client
from support.outage import Answer, Answers, OutageServer, outage_server, summary

SECRET = "outage-webhook-secret"
# The targets: a 503 within 2 s of a request while the database is down, a 200 within 1 s of its return.
MAX_503_SECONDS = 2.0
MAX_SECONDS_TO_FIRST_200 = 1.0


@pytest.fixture(scope="module")
def server() -> Iterator[OutageServer]:
    with outage_server() as pg:
        yield pg


@pytest.fixture
def pg(server: OutageServer) -> Iterator[OutageServer]:
    """The module's server, running at the start and the end of each test."""
    yield server
    try:
        psycopg.connect(server.url, connect_timeout=2).close()
    except psycopg.OperationalError:
        server.start()


def webhook_for_unknown_request() -> dict[str, Any]:
    return {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": {"id": str(uuid.uuid4())},
        "old_record": None,
    }


def test_a_function_answers_503_at_once_while_the_database_is_down_and_200_right_after_it_returns(
    pg: OutageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg.url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PLAN_GENERATOR", "offline")
    answers = Answers()
    stop = threading.Event()

    def caller() -> None:
        webhook = client("handle_plan_request")
        while not stop.is_set():
            sent = time.monotonic()
            response = webhook.post(
                "/", json=webhook_for_unknown_request(), headers={"X-Webhook-Secret": SECRET}
            )
            answers.add(Answer(sent, time.monotonic(), response.status_code))
            stop.wait(0.05)

    callers = [threading.Thread(target=caller) for _ in range(4)]
    for thread in callers:
        thread.start()
    try:
        time.sleep(1)
        pg.stop()
        time.sleep(3)
        ready_at = pg.start()
        time.sleep(2.5)
    finally:
        stop.set()
        for thread in callers:
            thread.join()

    figures = summary(answers, pg.stopped_at, ready_at)
    assert answers.sent_between(0, pg.stopped_at - 0.5), "no request was answered before the outage"
    assert {a.status for a in answers.items} <= {200, 503}, figures
    assert figures["statuses_during"] == [503], figures
    assert figures["503_seconds_max"] is not None
    assert figures["503_seconds_max"] < MAX_503_SECONDS, figures
    assert figures["ready_to_first_200"] is not None
    assert figures["ready_to_first_200"] < MAX_SECONDS_TO_FIRST_200, figures
    late = [a for a in answers.items if a.status == 503 and a.answered > ready_at + MAX_SECONDS_TO_FIRST_200]
    assert late == [], figures


def test_while_the_database_is_down_one_connect_at_most_every_half_second_retests_it(
    pg: OutageServer,
) -> None:
    connects: list[float] = []

    def counting_connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
        connects.append(time.monotonic())
        return psycopg.Connection.connect(url, **kwargs)

    pool = ConnectionPool(
        pg.url, max_size=4, timeout=10, retest_after=RETEST_SECONDS, kwargs={}, connect=counting_connect
    )
    try:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        pg.stop()
        connects.clear()
        failures = 0
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            with pytest.raises((DatabaseUnavailable, psycopg.OperationalError)), pool.connection():
                pass
            failures += 1
            time.sleep(0.01)
    finally:
        pool.close()

    assert failures > 50
    # The call that found its idle connection dead connects at once, then one call per half second.
    assert 2 <= len(connects) <= 6, connects
    gaps = [b - a for a, b in itertools.pairwise(connects)]
    assert all(gap >= RETEST_SECONDS * 0.9 for gap in gaps), gaps


def test_a_finished_plan_is_written_when_the_database_returns_within_the_retry_budget(
    pg: OutageServer,
) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        lead = conn.execute(
            "INSERT INTO leads (telegram_id, full_name) VALUES (%s, 'Ada Lovelace') RETURNING id",
            (uuid.uuid4().int % 10**9,),
        ).fetchone()
        assert lead is not None
        request = conn.execute(
            "INSERT INTO plan_requests (lead_id, telegram_id) SELECT id, telegram_id FROM leads WHERE id = %s"
            " RETURNING id",
            (lead[0],),
        ).fetchone()
        assert request is not None
    request_id = str(request[0])
    db = PostgresDatabase(pg.url)
    try:
        claim = db.call(
            "planbus_claim_request",
            p_kind="plan",
            p_request_id=request_id,
            p_lease_seconds=120,
            p_max_attempts=3,
        )
        pg.stop()

        def restart_later() -> None:
            time.sleep(2)
            pg.start()

        restarted = threading.Thread(target=restart_later)
        restarted.start()
        answer = call_with_retry(
            db,
            "planbus_complete_request",
            retry_for=20,
            p_kind="plan",
            p_request_id=request_id,
            p_attempt=claim["attempt"],
            p_result={"plan": {"summary": "written after the outage"}},
            p_completion={"plan": {"summary": "written after the outage"}, "reminders": []},
        )
        written_at = time.monotonic()
        restarted.join()
    finally:
        db.close()

    assert answer["completed"] is True
    assert written_at - pg.ready_at < MAX_SECONDS_TO_FIRST_200
    with psycopg.connect(pg.url) as conn:
        row = conn.execute("SELECT status, result FROM plan_requests WHERE id = %s", (request_id,)).fetchone()
    assert row == ("completed", {"plan": {"summary": "written after the outage"}})


def test_the_retry_gives_up_after_its_budget_with_database_unavailable(pg: OutageServer) -> None:
    db = PostgresDatabase(pg.url)
    try:
        pg.stop()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"gave up after \d+ tries over 1\.\d s"):
            call_with_retry(db, "planbus_find_lost_requests", retry_for=1.5, p_grace_seconds=60, p_limit=1)
        elapsed = time.monotonic() - started
    finally:
        db.close()
    assert 1.5 <= elapsed < 2.5
