"""The AFTER INSERT webhook on every kind's table: the Supabase payload, and its three delivery paths.

pg_net, InsForge's realtime.publish and Supabase Vault are stood in for by plain SQL objects with the same
names and signatures, created in the test's own database, that record how they were called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as q

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.kinds import KINDS, AnyKind
from support.request_kinds import INSERT_DEFAULTS, insert_request
from support.rls import Caller, claims, run_as

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]
MakeLead = Callable[..., Row]
MakeRequest = Callable[..., Row]
URL = "https://functions.example.test/handle_plan_request"
SECRET = "webhook-secret-d41d8cd98f00b204"

FAKE_PG_NET = """
CREATE SCHEMA net;
CREATE TABLE net.calls (id bigint GENERATED ALWAYS AS IDENTITY, url text, body jsonb, params jsonb,
                        headers jsonb, timeout_milliseconds int);
CREATE FUNCTION net.http_post(url text, body jsonb DEFAULT '{}', params jsonb DEFAULT '{}',
                              headers jsonb DEFAULT '{"Content-Type": "application/json"}',
                              timeout_milliseconds int DEFAULT 5000) RETURNS bigint
LANGUAGE sql AS $$
  INSERT INTO net.calls (url, body, params, headers, timeout_milliseconds)
  VALUES (url, body, params, headers, timeout_milliseconds) RETURNING id
$$;
"""

FAKE_REALTIME = """
CREATE SCHEMA realtime;
CREATE TABLE realtime.published (channel text, event text, payload jsonb);
CREATE FUNCTION realtime.publish(p_channel_name text, p_event_name text, p_payload jsonb) RETURNS uuid
LANGUAGE sql AS $$
  INSERT INTO realtime.published VALUES (p_channel_name, p_event_name, p_payload);
  SELECT gen_random_uuid()
$$;
"""

# Vault's current surface: create_secret and update_secret gained a trailing new_key_id argument.
FAKE_VAULT = """
CREATE SCHEMA vault;
CREATE TABLE vault.secrets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text UNIQUE,
                            description text, secret text NOT NULL);
CREATE VIEW vault.decrypted_secrets AS
  SELECT id, name, description, secret AS decrypted_secret FROM vault.secrets;
CREATE FUNCTION vault.create_secret(new_secret text, new_name text DEFAULT NULL,
                                    new_description text DEFAULT '', new_key_id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE sql AS $$
  INSERT INTO vault.secrets (secret, name, description) VALUES (new_secret, new_name, new_description)
  RETURNING id
$$;
CREATE FUNCTION vault.update_secret(secret_id uuid, new_secret text DEFAULT NULL, new_name text DEFAULT NULL,
                                    new_description text DEFAULT NULL, new_key_id uuid DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
  UPDATE vault.secrets SET secret = coalesce(new_secret, secret) WHERE id = secret_id
$$;
"""


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN planbus_events")
        yield conn


def received(listener: psycopg.Connection[Any], *, wait: float = 5) -> list[Any]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=wait, stop_after=1)]


def as_json(sql: Conn, request_id: Any, table: str = "plan_requests") -> Any:
    found = sql.execute(
        q.SQL("SELECT to_jsonb(p) AS record FROM {} p WHERE id = %s").format(q.Identifier(table)),
        [request_id],
    ).fetchone()
    assert found is not None
    return found["record"]


def store(db: PostgresDatabase, name: str, value: str | None) -> Any:
    return db.call("planbus_store_setting", p_name=name, p_value=value)


def test_an_insert_is_announced_on_planbus_events_in_the_supabase_webhook_shape(
    sql: Conn,
    listener: psycopg.Connection[Any],
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
) -> None:
    request = make_kind_request(make_lead())
    [payload] = received(listener)
    assert payload == {
        "type": "INSERT",
        "table": kind.table,
        "schema": "public",
        "record": as_json(sql, request["id"], kind.table),
        "old_record": None,
    }
    assert payload["record"]["status"] == "pending"
    assert set(payload["record"]) >= {"id", "lead_id", "telegram_id", "status", "result", "error", "attempts"}


def test_an_insert_by_the_mini_app_is_announced_too(
    sql: Conn, listener: psycopg.Connection[Any], make_lead: MakeLead
) -> None:
    lead = make_lead(telegram_id=1001)
    user = Caller("user", "authenticated", claims("00000000-0000-4000-8000-000000000001", telegram_id=1001))
    outcome = run_as(
        sql,
        user,
        "INSERT INTO plan_requests (lead_id, telegram_id) VALUES (%s, 1001) RETURNING id",
        [lead["id"]],
    )
    assert not outcome.refused, outcome.message
    [payload] = received(listener)
    assert payload["record"]["id"] == str(outcome.rows[0]["id"])


def all_received(listener: psycopg.Connection[Any], *, wait: float = 1) -> list[Any]:
    """Every notification that arrives until none has come for `wait` seconds."""
    return [json.loads(n.payload) for n in listener.notifies(timeout=wait)]


def insert_for_leads(kind: AnyKind) -> q.Composed:
    """One statement inserting a pending request of `kind` for each lead in %(leads)s, by its owner."""
    extra = INSERT_DEFAULTS[kind.name]
    return q.SQL(
        "INSERT INTO {table} (lead_id, telegram_id{names}) SELECT id, telegram_id{values} FROM leads"
        " WHERE id = ANY(%(leads)s) RETURNING id"
    ).format(
        table=q.Identifier(kind.table),
        names=q.SQL("").join(q.SQL(", {}").format(q.Identifier(name)) for name in extra),
        values=q.SQL("").join(q.SQL(", {}").format(q.Literal(value)) for value in extra.values()),
    )


def test_each_inserted_row_is_announced_exactly_once(
    sql: Conn, listener: psycopg.Connection[Any], kind: AnyKind, make_lead: MakeLead
) -> None:
    owners = [make_lead(telegram_id=2001 + n)["id"] for n in range(3)]
    by_owner = sql.execute(insert_for_leads(kind), {"leads": owners}).fetchall()
    user = Caller("user", "authenticated", claims("00000000-0000-4000-8000-000000000001", telegram_id=1001))
    by_user = run_as(sql, user, insert_for_leads(kind), {"leads": [make_lead(telegram_id=1001)["id"]]})
    assert not by_user.refused, by_user.message
    inserted = [str(row["id"]) for row in by_owner + by_user.rows]
    assert len(inserted) == 4
    assert sorted(payload["record"]["id"] for payload in all_received(listener)) == sorted(inserted)


def test_a_payload_too_long_for_pg_notify_is_not_sent_and_the_insert_stands(
    sql: Conn,
    listener: psycopg.Connection[Any],
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
) -> None:
    warnings: list[str] = []
    sql.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
    request = make_kind_request(make_lead(), error="x" * 9000)
    assert request["status"] == "pending"
    assert received(listener, wait=0.5) == []
    assert any(
        f"{kind.name} request {request['id']} not sent" in w and "payload string too long" in w
        for w in warnings
    )


def test_a_row_not_inserted_as_pending_is_not_announced(
    sql: Conn, listener: psycopg.Connection[Any], make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    make_kind_request(make_lead(), status="failed", error="imported as failed")
    assert received(listener, wait=0.5) == []


def test_pg_net_posts_the_payload_with_url_and_secret_read_from_the_database(
    db: PostgresDatabase,
    sql: Conn,
    listener: psycopg.Connection[Any],
    make_lead: MakeLead,
    make_request: MakeRequest,
) -> None:
    sql.execute(FAKE_PG_NET)
    assert store(db, "webhook_url", URL) == {"stored": "settings"}
    assert store(db, "webhook_secret", SECRET) == {"stored": "settings"}
    request = make_request(make_lead())
    [call] = sql.execute("SELECT * FROM net.calls").fetchall()
    assert call["url"] == URL
    assert call["headers"] == {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}
    assert call["timeout_milliseconds"] == 5000
    assert call["body"] == {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": as_json(sql, request["id"]),
        "old_record": None,
    }
    assert received(listener, wait=0.5) == []


def test_a_changed_url_is_used_from_the_next_insert_on(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    sql.execute(FAKE_PG_NET)
    store(db, "webhook_url", URL)
    make_request(make_lead(telegram_id=1))
    store(db, "webhook_url", URL + "?v=2")
    make_request(make_lead(telegram_id=2))
    assert [r["url"] for r in sql.execute("SELECT url FROM net.calls ORDER BY id").fetchall()] == [
        URL,
        URL + "?v=2",
    ]


def test_with_pg_net_but_no_stored_url_the_local_channel_is_used(
    sql: Conn, listener: psycopg.Connection[Any], make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    sql.execute(FAKE_PG_NET)
    make_kind_request(make_lead())
    assert len(received(listener)) == 1
    assert sql.execute("SELECT count(*) AS n FROM net.calls").fetchone() == {"n": 0}


def test_url_and_secret_are_never_part_of_the_trigger_or_any_function(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    sql.execute(FAKE_PG_NET)
    store(db, "webhook_url", URL)
    store(db, "webhook_secret", SECRET)
    make_request(make_lead())
    definitions = sql.execute(
        """
        SELECT pg_get_triggerdef(t.oid) AS text FROM pg_trigger t
         WHERE t.tgrelid = 'public.plan_requests'::regclass
        UNION ALL
        SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('public', 'planbus_private')
        """
    ).fetchall()
    assert any("send_request_webhook('plan')" in d["text"] for d in definitions)
    leaks = [d["text"][:80] for d in definitions if URL in d["text"] or SECRET in d["text"]]
    assert leaks == []


def test_vault_holds_the_settings_where_it_exists(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    sql.execute(FAKE_PG_NET)
    store(db, "webhook_secret", "stored-before-vault-existed")
    sql.execute(FAKE_VAULT)
    assert store(db, "webhook_url", URL) == {"stored": "vault"}
    assert store(db, "webhook_secret", "first") == {"stored": "vault"}
    assert store(db, "webhook_secret", SECRET) == {"stored": "vault"}  # updated in place
    secrets = sql.execute("SELECT name, secret, description FROM vault.secrets ORDER BY name").fetchall()
    assert secrets == [
        {"name": "planbus_webhook_secret", "secret": SECRET, "description": "planbus setting"},
        {"name": "planbus_webhook_url", "secret": URL, "description": "planbus setting"},
    ]
    plain = sql.execute("SELECT name FROM planbus_private.settings WHERE name LIKE 'webhook%'").fetchall()
    assert plain == []
    make_request(make_lead())
    [call] = sql.execute("SELECT url, headers FROM net.calls").fetchall()
    assert (call["url"], call["headers"]["X-Webhook-Secret"]) == (URL, SECRET)


def test_realtime_publish_gets_the_payload_where_pg_net_is_absent(
    db: PostgresDatabase,
    sql: Conn,
    listener: psycopg.Connection[Any],
    make_lead: MakeLead,
    make_request: MakeRequest,
) -> None:
    sql.execute(FAKE_REALTIME)
    first = make_request(make_lead(telegram_id=1))
    store(db, "realtime_channel", "planbus_webhooks")
    second = make_request(make_lead(telegram_id=2))
    published = sql.execute("SELECT channel, event, payload FROM realtime.published").fetchall()
    assert [(p["channel"], p["event"]) for p in published] == [
        ("planbus", "plan_request_inserted"),
        ("planbus_webhooks", "plan_request_inserted"),
    ]
    assert published[0]["payload"] == {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": as_json(sql, first["id"]),
        "old_record": None,
    }
    assert published[1]["payload"]["record"]["id"] == str(second["id"])
    assert received(listener, wait=0.5) == []


def test_a_failing_delivery_path_does_not_refuse_the_insert(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    sql.execute(FAKE_PG_NET)
    sql.execute(
        "CREATE OR REPLACE FUNCTION net.http_post(url text, body jsonb DEFAULT '{}',"
        " params jsonb DEFAULT '{}', headers jsonb DEFAULT '{}', timeout_milliseconds int DEFAULT 5000)"
        " RETURNS bigint"
        " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'queue is full'; END $$"
    )
    store(db, f"webhook_url_{kind.name}", URL)
    warnings: list[str] = []
    sql.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
    request = make_kind_request(make_lead())
    assert request["status"] == "pending"
    assert any(
        f"{kind.name} request {request['id']} not sent" in w and "queue is full" in w for w in warnings
    )
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.webhook_deliveries").fetchone() == {"n": 0}
    # The sweeper's query finds it once the grace period has passed.
    sql.execute(
        q.SQL("UPDATE {} SET run_after = now() - interval '1 hour' WHERE id = %s").format(
            q.Identifier(kind.table)
        ),
        [request["id"]],
    )
    lost = db.call("planbus_find_lost_requests", p_kind=kind.name, p_grace_seconds=60, p_limit=10)
    assert [item["id"] for item in lost] == [str(request["id"])]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("Webhook URL", "x", "not a setting name"),
        ("webhook_url; drop table leads", "x", "not a setting name"),
        ("webhook_url", None, "setting webhook_url needs a value"),
    ],
)
def test_a_bad_setting_is_refused_and_nothing_is_stored(
    db: PostgresDatabase, sql: Conn, name: str, value: str | None, message: str
) -> None:
    before = sql.execute("SELECT * FROM planbus_private.settings ORDER BY name").fetchall()
    with pytest.raises(DatabaseError, match=message) as refused:
        store(db, name, value)
    assert refused.value.sqlstate == "22023"
    assert sql.execute("SELECT * FROM planbus_private.settings ORDER BY name").fetchall() == before


def test_each_kind_posts_to_its_own_url_and_the_post_is_recorded_with_pg_nets_id(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead
) -> None:
    sql.execute(FAKE_PG_NET)
    store(db, "webhook_secret", SECRET)
    for kind in KINDS:
        store(db, f"webhook_url_{kind.name}", f"{URL}/{kind.handle_target}")
    requests = {
        kind.name: insert_request(sql, kind, make_lead(telegram_id=n)) for n, kind in enumerate(KINDS)
    }
    calls = sql.execute("SELECT id, url, body FROM net.calls ORDER BY id").fetchall()
    assert [(c["url"], c["body"]["table"]) for c in calls] == [
        (f"{URL}/{kind.handle_target}", kind.table) for kind in KINDS
    ]
    deliveries = sql.execute(
        "SELECT kind, request_id, channel, net_request_id, outcome FROM planbus_private.webhook_deliveries"
        " ORDER BY id"
    ).fetchall()
    assert deliveries == [
        {
            "kind": kind.name,
            "request_id": requests[kind.name]["id"],
            "channel": "pg_net",
            "net_request_id": call["id"],
            "outcome": None,
        }
        for kind, call in zip(KINDS, calls, strict=True)
    ]


def test_the_deployed_webhook_url_serves_plans_only(
    db: PostgresDatabase, sql: Conn, listener: psycopg.Connection[Any], make_lead: MakeLead
) -> None:
    sql.execute(FAKE_PG_NET)
    store(db, "webhook_url", URL)
    for n, kind in enumerate(KINDS):
        insert_request(sql, kind, make_lead(telegram_id=n))
    assert [c["body"]["table"] for c in sql.execute("SELECT body FROM net.calls").fetchall()] == [
        "plan_requests"
    ]
    # Another kind without a URL of its own still reaches the local relay.
    assert [p["table"] for p in received(listener)] == [kind.table for kind in KINDS if kind.name != "plan"]


def test_realtime_publish_names_the_kind_in_its_event(
    sql: Conn, listener: psycopg.Connection[Any], make_lead: MakeLead
) -> None:
    sql.execute(FAKE_REALTIME)
    for n, kind in enumerate(KINDS):
        insert_request(sql, kind, make_lead(telegram_id=n))
    published = sql.execute("SELECT channel, event, payload FROM realtime.published").fetchall()
    assert [(p["channel"], p["event"], p["payload"]["table"]) for p in published] == [
        ("planbus", f"{kind.name}_request_inserted", kind.table) for kind in KINDS
    ]


def test_realtime_publish_uses_each_kinds_own_channel_when_one_is_stored(
    db: PostgresDatabase, sql: Conn, listener: psycopg.Connection[Any], make_lead: MakeLead
) -> None:
    # What `planbus deploy` stores on InsForge: the shared channel (older triggers) and one per kind.
    sql.execute(FAKE_REALTIME)
    store(db, "realtime_channel", "planbus-plan")
    for kind in KINDS:
        store(db, f"realtime_channel_{kind.name}", f"planbus-{kind.name}")
    for n, kind in enumerate(KINDS):
        insert_request(sql, kind, make_lead(telegram_id=n))
    published = sql.execute("SELECT channel, event FROM realtime.published").fetchall()
    assert [(p["channel"], p["event"]) for p in published] == [
        (f"planbus-{kind.name}", f"{kind.name}_request_inserted") for kind in KINDS
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"p_kind": "invoice"}, "unknown request kind: invoice"),
        ({"p_channel": "email"}, "p_channel must be"),
        ({"p_request_id": None}, "p_request_id is required"),
    ],
)
def test_a_delivery_report_that_makes_no_sense_is_refused(
    db: PostgresDatabase, sql: Conn, params: dict[str, Any], message: str
) -> None:
    report = {
        "p_kind": "plan",
        "p_request_id": "00000000-0000-4000-8000-000000000001",
        "p_channel": "cloud_tasks",
        "p_outcome": "enqueue_failed",
        "p_detail": "UNAVAILABLE: connection refused",
        **params,
    }
    with pytest.raises(DatabaseError, match=message) as refused:
        db.call("planbus_record_delivery", **report)
    assert refused.value.sqlstate == "22023"
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.webhook_deliveries").fetchone() == {"n": 0}


def test_a_delivery_report_is_kept(db: PostgresDatabase, sql: Conn) -> None:
    answer = db.call(
        "planbus_record_delivery",
        p_kind="draft",
        p_request_id="00000000-0000-4000-8000-000000000001",
        p_channel="cloud_tasks",
        p_outcome="enqueue_failed",
        p_detail="PERMISSION_DENIED: the caller may not enqueue",
    )
    row = sql.execute("SELECT * FROM planbus_private.webhook_deliveries").fetchone()
    assert row is not None and answer == {"recorded": True, "id": row["id"]}
    assert (row["kind"], row["channel"], row["outcome"], row["detail"], row["net_request_id"]) == (
        "draft",
        "cloud_tasks",
        "enqueue_failed",
        "PERMISSION_DENIED: the caller may not enqueue",
        None,
    )
