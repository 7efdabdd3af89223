"""The schema the migrations leave: platform objects respected, hot look-ups served by partial indexes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from planbus.migrate import migrate

Conn = psycopg.Connection[dict[str, Any]]

SUPABASE_OWN_AUTH = """
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
  AS $$ SELECT '00000000-0000-4000-8000-00000000000a'::uuid $$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$ SELECT '{"platform": "own"}'::jsonb $$;
"""


def test_the_platforms_own_auth_helpers_are_left_alone(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SUPABASE_OWN_AUTH)
    migrate(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT auth.uid()::text, auth.jwt()").fetchone() == (
            "00000000-0000-4000-8000-00000000000a",
            {"platform": "own"},
        )


def test_the_auth_helpers_read_the_claims_postgrest_sets(sql: Conn) -> None:
    with sql.transaction(force_rollback=True):
        sql.execute("SELECT set_config('request.jwt.claims', %s, true)", [claims(1)])
        assert sql.execute("SELECT auth.uid()::text AS uid, auth.jwt() ->> 'sub' AS sub").fetchone() == {
            "uid": "00000000-0000-4000-8000-000000000001",
            "sub": "00000000-0000-4000-8000-000000000001",
        }
    assert sql.execute("SELECT auth.uid() AS uid, auth.jwt() AS claims").fetchone() == {
        "uid": None,
        "claims": {},
    }


def test_a_stale_per_claim_setting_does_not_hide_the_sub_claim(sql: Conn) -> None:
    # Older PostgREST set request.jwt.claim.sub; once set in a pooled session it reads back as ''.
    with sql.transaction():
        sql.execute("SELECT set_config('request.jwt.claim.sub', 'x', true)")
    with sql.transaction(force_rollback=True):
        sql.execute("SELECT set_config('request.jwt.claims', %s, true)", [claims(2)])
        assert sql.execute("SELECT auth.uid()::text AS uid").fetchone() == {
            "uid": "00000000-0000-4000-8000-000000000002"
        }


def test_the_roles_exist_and_only_service_role_bypasses_row_level_security(sql: Conn) -> None:
    roles = sql.execute(
        "SELECT rolname, rolbypassrls FROM pg_roles"
        " WHERE rolname IN ('anon', 'authenticated', 'service_role') ORDER BY 1"
    ).fetchall()
    assert [(r["rolname"], r["rolbypassrls"]) for r in roles] == [
        ("anon", False),
        ("authenticated", False),
        ("service_role", True),
    ]


def claims(n: int) -> str:
    return json.dumps({"sub": f"00000000-0000-4000-8000-{n:012d}"})


def plan_of(sql: Conn, query: str) -> str:
    rows = sql.execute("EXPLAIN " + query).fetchall()
    return "\n".join(r["QUERY PLAN"] for r in rows)


@pytest.fixture
def busy(sql: Conn) -> Conn:
    """Many finished requests and delivered reminders, a handful of active ones, fresh statistics."""
    sql.execute(
        """
        INSERT INTO leads (id, telegram_id, full_name)
        SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, g, 'Lead ' || g
          FROM generate_series(1, 20000) g;
        INSERT INTO plan_requests (lead_id, telegram_id, status, result)
        SELECT id, telegram_id, 'completed', '{}' FROM leads;
        INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text, status,
                               sent_at, delivered_via)
        SELECT lead_id, telegram_id, id, 0, now() - interval '1 day', 'x', 'sent', now(), 'telegram'
          FROM plan_requests;
        INSERT INTO plan_requests (lead_id, telegram_id)
        SELECT id, telegram_id FROM leads WHERE telegram_id <= 5;
        ANALYZE leads, plan_requests, reminders;
        """
    )
    return sql


def test_finding_lost_requests_reads_only_the_pending_index(busy: Conn) -> None:
    plan = plan_of(
        busy,
        "SELECT id FROM plan_requests WHERE status = 'pending' AND run_after <= now()"
        " ORDER BY run_after LIMIT 50",
    )
    assert "plan_requests_pending_run_after" in plan


def test_finding_expired_leases_reads_only_the_processing_index(busy: Conn) -> None:
    plan = plan_of(
        busy, "SELECT id FROM plan_requests WHERE status = 'processing' AND lease_expires_at <= now()"
    )
    assert "plan_requests_processing_lease" in plan


def test_finding_due_reminders_reads_only_the_scheduled_index(busy: Conn) -> None:
    plan = plan_of(
        busy,
        "SELECT id FROM reminders WHERE status = 'scheduled' AND due_at <= now() ORDER BY due_at LIMIT 50",
    )
    assert "reminders_scheduled_due_at" in plan


def test_the_active_request_index_covers_only_active_rows(busy: Conn) -> None:
    entries = busy.execute(
        "SELECT reltuples::int AS n FROM pg_class WHERE relname = 'plan_requests_one_active_per_lead'"
    ).fetchone()
    assert entries == {"n": 5}


def test_a_step_of_a_plan_has_one_reminder(sql: Conn) -> None:
    constraint = sql.execute(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conname = 'reminders_one_per_step'"
    ).fetchone()
    assert constraint == {"def": "UNIQUE (plan_request_id, step_index)"}
