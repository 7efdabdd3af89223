"""Delivery failures in `planbus status` and `planbus status --check`, against real PostgreSQL.

pg_net is stood in for by tests/fakes/pg_net_responses.sql (its request queue and its `_http_response`
table with pg_net's columns); the answers its background worker would write are inserted by the test.
Enqueue failures and the local relay's give-ups arrive through planbus_record_delivery, as the functions
and the relay record them; the sweeper's recoveries through its own use case.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx

from planbus.cli import main
from planbus.clock import SystemClock
from planbus.commands.status import check
from planbus.db.postgres import PostgresDatabase
from planbus.devstack.console import Console
from planbus.devstack.relay import WebhookRelay, insert_payload
from planbus.kinds import KINDS, PLAN, AnyKind
from planbus.services.recovery import reset_stale_requests
from planbus.settings import Settings
from support.request_kinds import insert_request

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]
FAKE_PG_NET = (Path(__file__).parents[1] / "fakes" / "pg_net_responses.sql").read_text()
URL = "https://functions.example.test"
CAUSES = ("refused_401", "server_error", "client_error", "timeout", "connection_error", "enqueue_failed")

# What pg_net writes for each outcome: (status_code, timed_out, error_msg, content).
ANSWERS: dict[str, tuple[int | None, bool | None, str | None, str | None]] = {
    "ok": (200, False, None, '{"outcome": "completed"}'),
    "refused_401": (401, False, None, '{"error": "missing or wrong webhook secret"}'),
    "server_error": (500, False, None, "Internal Server Error"),
    "client_error": (404, False, None, "Not Found"),
    "timeout": (None, True, "Timeout of 5000 ms reached. Total time: 5001.2 ms", None),
    "connection_error": (None, False, "Couldn't connect to server", None),
}
LABELS = {
    "refused_401": "refused (401)",
    "server_error": "server error (5xx)",
    "client_error": "other non-2xx",
    "timeout": "timeout",
    "connection_error": "connection error",
    "enqueue_failed": "enqueue failed",
}


@pytest.fixture
def pg_net(db: PostgresDatabase, sql: Sql) -> None:
    sql.execute(FAKE_PG_NET)
    db.call("planbus_store_setting", p_name="webhook_secret", p_value="a-wrong-secret")
    for kind in KINDS:
        db.call(
            "planbus_store_setting", p_name=f"webhook_url_{kind.name}", p_value=f"{URL}/{kind.handle_target}"
        )


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOST_WEBHOOK_SECONDS", "60")


def posted(sql: Sql, kind: AnyKind, lead: Row, answer: str | None, *, ago: str = "0 seconds") -> Row:
    """A request of `kind` whose pg_net post got `answer` (None: no answer yet), `ago` in the past."""
    request = insert_request(sql, kind, lead)
    delivery = sql.execute(
        "UPDATE planbus_private.webhook_deliveries SET created_at = now() - %s::interval"
        " WHERE request_id = %s RETURNING net_request_id",
        (ago, request["id"]),
    ).fetchone()
    assert delivery is not None and delivery["net_request_id"] is not None
    if answer is not None:
        status_code, timed_out, error_msg, content = ANSWERS[answer]
        sql.execute(
            "INSERT INTO net._http_response (id, status_code, timed_out, error_msg, content, created)"
            " VALUES (%s, %s, %s, %s, %s, now() - %s::interval + interval '1 second')",
            (delivery["net_request_id"], status_code, timed_out, error_msg, content, ago),
        )
    return request


def deliveries(db: PostgresDatabase) -> dict[str, Any]:
    status: dict[str, Any] = db.call("planbus_status")
    return dict(status["deliveries"])


def counts(**expected: int) -> dict[str, int]:
    return {cause: expected.get(cause, 0) for cause in CAUSES}


@pytest.mark.parametrize("cause", [c for c in ANSWERS if c != "ok"])
def test_each_pg_net_failure_is_counted_by_its_cause_and_shown(
    db: PostgresDatabase,
    sql: Sql,
    pg_net: None,
    cli_env: None,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
    cause: str,
) -> None:
    posted(sql, PLAN, make_lead(1001), "ok")
    posted(sql, PLAN, make_lead(1002), None)
    failed = posted(sql, PLAN, make_lead(1003), cause)

    seen = deliveries(db)
    assert seen["pg_net_responses"] is True
    assert seen["last_hour"]["causes"] == counts(**{cause: 1})
    assert seen["last_day"]["causes"] == counts(**{cause: 1})
    assert seen["last_hour"]["kinds"] == {"plan": counts(**{cause: 1})}
    assert seen["last_5m"] == 1
    assert seen["last_failure"]["request_id"] == str(failed["id"])
    assert seen["last_failure"]["cause"] == cause and seen["last_failure"]["channel"] == "pg_net"

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"  {LABELS[cause]:<32}{1:>10}{1:>10}" in out
    assert f"{cause} (pg_net) for plan request {failed['id']}" in out


def test_failures_are_counted_per_kind_and_per_window(
    db: PostgresDatabase, sql: Sql, pg_net: None, make_lead: Callable[..., Row]
) -> None:
    for n, kind in enumerate(KINDS):
        posted(sql, kind, make_lead(2000 + n), "refused_401")
        posted(sql, kind, make_lead(2100 + n), "server_error", ago="3 hours")
        posted(sql, kind, make_lead(2200 + n), "timeout", ago="25 hours")

    seen = deliveries(db)
    n = len(KINDS)
    assert seen["last_hour"]["total"] == n
    assert seen["last_hour"]["causes"] == counts(refused_401=n)
    assert seen["last_day"]["total"] == 2 * n
    assert seen["last_day"]["causes"] == counts(refused_401=n, server_error=n)
    assert seen["last_day"]["kinds"] == {kind.name: counts(refused_401=1, server_error=1) for kind in KINDS}


def test_the_wrong_secret_case_shows_within_a_minute_and_fails_the_check(
    db: PostgresDatabase,
    sql: Sql,
    pg_net: None,
    cli_env: None,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
) -> None:
    posted(sql, PLAN, make_lead(1001), "refused_401")

    assert main(["status", "--check"]) == 1
    captured = capsys.readouterr()
    assert "refused (401)" in captured.out
    assert "1 webhook deliveries failed in the last 5 minutes (allowed 0)" in captured.err
    assert "refused_401 on pg_net" in captured.err

    assert main(["status", "--check", "--max-failures", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_an_old_failure_no_longer_fails_the_check(
    sql: Sql, pg_net: None, cli_env: None, make_lead: Callable[..., Row], capsys: pytest.CaptureFixture[str]
) -> None:
    posted(sql, PLAN, make_lead(1001), "server_error", ago="10 minutes")
    posted(sql, PLAN, make_lead(1002), "ok")
    sql.execute("UPDATE plan_requests SET status = 'failed', error = 'x'")

    assert main(["status", "--check", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["deliveries"]["last_5m"] == 0 and printed["deliveries"]["last_hour"]["total"] == 1


def test_a_pending_request_older_than_twice_the_lost_webhook_time_fails_the_check(
    sql: Sql, cli_env: None, kind: AnyKind, make_lead: Callable[..., Row], capsys: pytest.CaptureFixture[str]
) -> None:
    request = insert_request(sql, kind, make_lead(1001))
    assert main(["status", "--check"]) == 0
    capsys.readouterr()

    sql.execute(
        f"UPDATE public.{kind.table} SET created_at = now() - interval '121 seconds',"
        " run_after = now() - interval '121 seconds' WHERE id = %s",
        (request["id"],),
    )
    assert main(["status", "--check"]) == 1
    err = capsys.readouterr().err
    assert f"the oldest pending {kind.name} request has waited 2 m 01 s" in err
    assert "more than twice LOST_WEBHOOK_SECONDS: 2 m 00 s" in err


def test_a_retry_waiting_for_its_backoff_does_not_fail_the_check(
    sql: Sql, cli_env: None, kind: AnyKind, make_lead: Callable[..., Row], capsys: pytest.CaptureFixture[str]
) -> None:
    request = insert_request(sql, kind, make_lead(1001))
    sql.execute(
        f"UPDATE public.{kind.table} SET created_at = now() - interval '1 hour', attempts = 1,"
        " run_after = now() + interval '5 minutes' WHERE id = %s",
        (request["id"],),
    )
    assert main(["status", "--check", "--json"]) == 0
    pending = json.loads(capsys.readouterr().out)["pending_by_kind"][kind.name]
    assert pending["pending"] == 1 and pending["oldest_pending_seconds"] >= 3600
    assert pending["oldest_due_seconds"] is None


def test_a_bad_threshold_is_refused(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["status", "--check", "--max-failures", "-1"])
    assert refused.value.code == 2
    assert "a count cannot be negative" in capsys.readouterr().err


def test_enqueue_failures_are_counted_without_pg_net(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> None:
    request = insert_request(sql, kind, make_lead(1001))
    for _ in range(2):
        db.call(
            "planbus_record_delivery",
            p_kind=kind.name,
            p_request_id=request["id"],
            p_channel="cloud_tasks",
            p_outcome="enqueue_failed",
            p_detail="UNAVAILABLE: the queue is down",
        )

    seen = deliveries(db)
    assert seen["pg_net_responses"] is False
    assert seen["last_hour"]["causes"] == counts(enqueue_failed=2)
    assert seen["last_hour"]["kinds"] == {kind.name: counts(enqueue_failed=2)}
    assert seen["last_failure"]["detail"] == "UNAVAILABLE: the queue is down"
    assert check({"deliveries": seen, "pending_by_kind": {}}, max_failures=2, max_pending_seconds=60) == []
    assert check({"deliveries": seen, "pending_by_kind": {}}, max_failures=1, max_pending_seconds=60) == [
        f"2 webhook deliveries failed in the last 5 minutes (allowed 1); the last: enqueue_failed on "
        f"cloud_tasks for {kind.name} request {request['id']}"
    ]


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (httpx.Response(500), "server_error"),
        (httpx.ConnectError("connection refused"), "connection_error"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.Response(401, json={"error": "missing or wrong webhook secret"}), "refused_401"),
        (httpx.Response(404), "client_error"),
    ],
    ids=["5xx", "connect", "timeout", "401", "404"],
)
def test_the_relays_give_ups_and_refusals_are_counted(
    db: PostgresDatabase,
    database_url: str,
    sql: Sql,
    make_lead: Callable[..., Row],
    answer: httpx.Response | Exception,
    cause: str,
) -> None:
    request = insert_request(sql, PLAN, make_lead(1001))
    relay = WebhookRelay(
        database_url,
        {"plan_requests": f"{URL}/relay"},
        "secret",
        console=Console(),
        attempts=2,
        base_delay=0.01,
    )
    payload = json.dumps(insert_payload("plan_requests", request), default=str)
    try:
        with respx.mock() as router:
            router.post(f"{URL}/relay").mock(side_effect=[answer, answer])
            relay._deliver(f"{URL}/relay", payload)
    finally:
        relay._pool.shutdown()  # never started: no listener to stop
        relay._client.close()

    rows = sql.execute(
        "SELECT kind, request_id, channel, outcome FROM planbus_private.webhook_deliveries"
        " WHERE channel = 'relay'"
    ).fetchall()
    assert rows == [{"kind": "plan", "request_id": request["id"], "channel": "relay", "outcome": cause}]
    assert deliveries(db)["last_hour"]["causes"] == counts(**{cause: 1})


def test_requests_the_sweeper_recovered_as_lost_are_counted_once_each(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> None:
    settings = Settings(plan_generator="offline", lost_webhook_seconds=60)
    lost = [insert_request(sql, kind, make_lead(3000 + n)) for n in range(2)]
    on_time = insert_request(sql, kind, make_lead(3100))
    for request in lost:
        sql.execute(
            f"UPDATE public.{kind.table} SET run_after = now() - interval '2 minutes',"
            " created_at = now() - interval '2 minutes' WHERE id = %s",
            (request["id"],),
        )

    for _ in range(2):
        reset_stale_requests(
            KINDS, db, SystemClock(), generator_for=lambda k: k.generator(settings), settings=settings
        )

    recovered = deliveries(db)["recovered_lost_24h"]
    assert recovered == {"total": 2, "kinds": {kind.name: 2}}
    recorded = sql.execute(
        "SELECT request_id FROM planbus_private.webhook_deliveries WHERE channel = 'sweeper'"
    ).fetchall()
    assert {r["request_id"] for r in recorded} == {r["id"] for r in lost}
    assert on_time["id"] not in {r["request_id"] for r in recorded}
