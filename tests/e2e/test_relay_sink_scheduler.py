"""The local stand-ins for the platform, against real PostgreSQL: the webhook relay (pg_notify → POST with the
secret, retries, catch-up after a lost connection), the Telegram sink (outbox notifications), the scheduler,
and the Mini App's inserts through RLS."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase
from planbus.devstack.console import Console
from planbus.devstack.miniapp import MiniApp, MiniAppUser
from planbus.devstack.relay import WebhookRelay
from planbus.devstack.scheduler import Job, Scheduler
from planbus.devstack.sink import TelegramSink
from planbus.devstack.supervisor import free_port
from planbus.errors import DatabaseError
from planbus.kinds import PLAN
from support.devstack_helpers import RecordingEndpoint, memory_console, wait_until
from support.request_kinds import complete_request

Row = dict[str, Any]
SQL = psycopg.Connection[dict[str, Any]]
SECRET = "relay-test-secret"


def drop_connection(sql: SQL, name: str) -> None:
    """The listener's connection is cut, as by a database restart or a network blip."""
    wait_until(
        lambda: sql.execute(
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (f"planbus-{name}",),
        ).fetchall()
    )


@pytest.fixture
def relay_to() -> Iterator[Callable[..., WebhookRelay]]:
    started: list[WebhookRelay] = []

    def start(database_url: str, url: str, **options: Any) -> WebhookRelay:
        console, _ = memory_console()
        relay = WebhookRelay(database_url, {"plan_requests": url}, SECRET, console=console, **options)
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def test_the_relay_posts_the_trigger_payload_with_the_secret(
    database_url: str,
    relay_to: Callable[..., WebhookRelay],
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    with RecordingEndpoint().running() as endpoint:
        relay = relay_to(database_url, endpoint.url + "/hook")
        request = make_request(make_lead())
        wait_until(lambda: endpoint.received)
        (delivery,) = endpoint.received
        assert delivery.path == "/hook"
        assert delivery.headers["X-Webhook-Secret"] == SECRET
        assert delivery.headers["Content-Type"] == "application/json"
        payload = delivery.json()
        assert (payload["type"], payload["schema"], payload["table"]) == ("INSERT", "public", "plan_requests")
        assert payload["record"]["id"] == str(request["id"]) and payload["old_record"] is None
        wait_until(lambda: relay.delivered == 1)


def test_a_failed_delivery_is_retried_until_it_succeeds(
    database_url: str,
    relay_to: Callable[..., WebhookRelay],
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    with RecordingEndpoint(statuses=[503, 502, 200]).running() as endpoint:
        relay = relay_to(database_url, endpoint.url, base_delay=0.05)
        request = make_request(make_lead())
        wait_until(lambda: relay.delivered == 1)
        assert [d.json()["record"]["id"] for d in endpoint.received] == [str(request["id"])] * 3
        assert relay.given_up == 0


def test_a_refusal_is_not_retried(
    database_url: str,
    relay_to: Callable[..., WebhookRelay],
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    with RecordingEndpoint(statuses=[401], answer={"error": "wrong secret"}).running() as endpoint:
        relay = relay_to(database_url, endpoint.url, base_delay=0.05)
        make_request(make_lead())
        wait_until(lambda: relay.delivered == 1)
        assert len(endpoint.received) == 1


def test_an_unreachable_function_is_given_up_on_after_the_last_attempt(
    database_url: str,
    relay_to: Callable[..., WebhookRelay],
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # connections are refused
    relay = relay_to(database_url, nobody, attempts=3, base_delay=0.05)
    make_request(make_lead())
    wait_until(lambda: relay.given_up == 1)
    assert relay.delivered == 0


def test_rows_pending_before_the_relay_started_are_delivered_when_it_connects(
    database_url: str,
    relay_to: Callable[..., WebhookRelay],
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    waiting = [make_request(make_lead(full_name=f"Lead {i}")) for i in range(3)]
    with RecordingEndpoint().running() as endpoint:
        relay_to(database_url, endpoint.url)
        wait_until(lambda: len(endpoint.received) == 3)
        assert sorted(d.json()["record"]["id"] for d in endpoint.received) == sorted(
            str(r["id"]) for r in waiting
        )


def test_a_request_inserted_while_the_relay_was_disconnected_is_still_delivered(
    database_url: str,
    sql: SQL,
    relay_to: Callable[..., WebhookRelay],
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    with RecordingEndpoint().running() as endpoint:
        relay = relay_to(database_url, endpoint.url)
        drop_connection(sql, "relay")
        request = make_request(make_lead())
        wait_until(lambda: relay.listener.connects == 2)
        wait_until(lambda: str(request["id"]) in {d.json()["record"]["id"] for d in endpoint.received})


def outbox_delivery(db: PostgresDatabase, lead: Row, request: Row, text: str) -> str:
    """A reminder of `request` delivered to the outbox through the state machine; returns its id."""
    due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    reminders = [{"step_index": 0, "due_at": due, "text": text}]
    complete_request(
        db, PLAN, request["id"], result={"plan": {}}, completion={"plan": {}, "reminders": reminders}
    )
    (claimed,) = db.call("planbus_claim_due_reminders", p_limit=1, p_lease_seconds=60)
    db.call(
        "planbus_mark_reminder_sent",
        p_reminder_id=claimed["id"],
        p_attempt=claimed["attempt"],
        p_via="outbox",
        p_message=text,
    )
    reminder_id: str = claimed["id"]
    return reminder_id


@pytest.fixture
def screen() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def sink(database_url: str, screen: io.StringIO) -> Iterator[TelegramSink]:
    sink = TelegramSink(database_url, console=Console(screen))
    yield sink
    sink.stop()


def test_the_sink_shows_each_reminder_delivered_to_the_outbox_after_it_started(
    db: PostgresDatabase,
    screen: io.StringIO,
    sink: TelegramSink,
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    before = make_lead(full_name="Before")
    outbox_delivery(db, before, make_request(before), "old news")
    sink.start()
    lead = make_lead(telegram_id=4242)
    reminder_id = outbox_delivery(db, lead, make_request(lead), "Call Ada\nabout the pilot")
    message = sink.wait_for(lambda m: m.reminder_id == reminder_id, timeout=30)
    assert message is not None
    assert (message.chat_id, message.text) == (4242, "Call Ada\nabout the pilot")
    assert [m.text for m in sink.messages] == ["Call Ada\nabout the pilot"]
    shown = screen.getvalue()
    assert "Telegram → chat 4242" in shown and "│ about the pilot" in shown


def test_the_sink_catches_up_on_what_was_delivered_while_it_was_disconnected(
    db: PostgresDatabase,
    sql: SQL,
    sink: TelegramSink,
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> None:
    sink.start()
    drop_connection(sql, "telegram-sink")
    lead = make_lead()
    reminder_id = outbox_delivery(db, lead, make_request(lead), "sent during the outage")
    assert sink.wait_for(lambda m: m.reminder_id == reminder_id, timeout=30) is not None
    wait_until(lambda: sink.listener.connects == 2)
    assert len(sink.messages) == 1


def test_the_scheduler_calls_each_job_on_its_interval_with_the_secret() -> None:
    console, _ = memory_console()
    with RecordingEndpoint(answer={"sent": 0}).running() as endpoint:
        scheduler = Scheduler(
            [
                Job("send_due_reminders", endpoint.url + "/send", 0.2, {"limit": 5}),
                Job("reset_stale_requests", endpoint.url + "/reset", 60),
            ],
            SECRET,
            console=console,
        )
        scheduler.start()
        try:
            wait_until(lambda: scheduler.calls["send_due_reminders"] >= 3)
            assert scheduler.calls["reset_stale_requests"] == 1  # at start, then not for a minute
            scheduler.run_now("reset_stale_requests")
            wait_until(lambda: scheduler.calls["reset_stale_requests"] == 2)
        finally:
            scheduler.stop()
    sends = [r for r in endpoint.received if r.path == "/send"]
    assert len(sends) >= 3
    assert all(r.headers["X-Webhook-Secret"] == SECRET and r.json() == {"limit": 5} for r in sends)
    assert scheduler.last_answer["send_due_reminders"] == {"sent": 0}


def test_a_job_needs_a_positive_interval() -> None:
    console, _ = memory_console()
    with pytest.raises(ValueError, match="interval must be positive"):
        Scheduler([Job("send_due_reminders", "http://127.0.0.1:9", 0)], SECRET, console=console)


def test_the_mini_app_inserts_and_reads_only_through_row_level_security(
    database_url: str, sql: SQL, make_lead: Callable[..., Row]
) -> None:
    ada = MiniAppUser(uuid.uuid4(), 1001)
    bob = MiniAppUser(uuid.uuid4(), 2002)
    ada_lead, bob_lead = make_lead(telegram_id=1001), make_lead(telegram_id=2002)
    request_id = MiniApp(database_url, ada).request_plan(ada_lead["id"])
    row = MiniApp(database_url, ada).get_request(request_id)
    assert row is not None and row["status"] == "pending" and row["attempts"] == 0
    assert MiniApp(database_url, bob).get_request(request_id) is None
    with pytest.raises(DatabaseError) as refused:
        MiniApp(database_url, ada).request_plan(bob_lead["id"])
    assert refused.value.sqlstate == "42501"  # row-level security
    assert MiniApp(database_url, ada).reminders(request_id) == []
    inserted = sql.execute("SELECT telegram_id FROM public.plan_requests").fetchall()
    assert inserted == [{"telegram_id": 1001}]
