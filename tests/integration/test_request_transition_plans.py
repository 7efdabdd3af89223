"""The generated claim and completion find their row by the primary key in the plan PL/pgSQL keeps for
the session (migration 0020), even when the statistics were taken while no request was pending or
processing, so a busy queue is never walked to find one row."""

from __future__ import annotations

from typing import Any

import pytest

from planbus.db.postgres import PostgresDatabase
from support.query_plans import nested_plans
from support.reminder_rows import Sql

COMPLETION = '{"plan": {"summary": "call on Monday"}, "reminders": []}'


def finished_history(sql: Sql, count: int) -> None:
    """`count` completed plan requests, analysed: the statistics see no pending or processing row."""
    sql.execute(
        """
        WITH new_leads AS (
          INSERT INTO public.leads (telegram_id, full_name)
          SELECT 700000 + n, 'History ' || n FROM generate_series(1, %(count)s) AS n RETURNING id, telegram_id
        )
        INSERT INTO public.plan_requests (lead_id, telegram_id, status, result)
        SELECT id, telegram_id, 'completed', '{"plan": {}}'::jsonb FROM new_leads
        """,
        {"count": count},
    )
    sql.execute("ANALYZE public.plan_requests")


def reopen(sql: Sql, count: int, status: str) -> list[Any]:
    """Turn `count` finished requests back into `status` rows (due pending, or processing under a live
    lease at attempt 1), after the statistics were taken; their ids."""
    rows = sql.execute(
        """
        UPDATE public.plan_requests
           SET status = %(status)s, result = NULL,
               attempts = CASE WHEN %(status)s = 'processing' THEN 1 ELSE 0 END,
               lease_expires_at = CASE WHEN %(status)s = 'processing' THEN now() + interval '1 hour' END,
               run_after = now() - interval '1 minute'
         WHERE id IN (SELECT id FROM public.plan_requests WHERE status = 'completed' LIMIT %(count)s)
        RETURNING id
        """,
        {"status": status, "count": count},
    ).fetchall()
    return [row["id"] for row in rows]


def request_update_plan(plans: list[str]) -> str:
    updates = [plan for plan in plans if "Update on plan_requests" in plan]
    assert len(updates) == 1, plans
    return updates[0]


@pytest.fixture
def generic_plans(sql: Sql) -> Sql:
    """The owner connection, planning every statement as PL/pgSQL does from its sixth call on."""
    sql.execute("SET plan_cache_mode = force_generic_plan")
    return sql


def test_a_claim_reads_its_row_by_the_primary_key(generic_plans: Sql, db: PostgresDatabase) -> None:
    finished_history(generic_plans, 2000)
    request_id, *_ = reopen(generic_plans, 300, "pending")

    plan = request_update_plan(
        nested_plans(generic_plans, f"SELECT public.planbus_claim_request('plan', '{request_id}', 60, 3)")
    )

    assert "plan_requests_pkey" in plan
    assert "plan_requests_pending_run_after" not in plan
    assert (
        db.call(
            "planbus_claim_request",
            p_kind="plan",
            p_request_id=str(request_id),
            p_lease_seconds=60,
            p_max_attempts=3,
        )["claimed"]
        is True
    )


def test_a_completion_reads_its_row_by_the_primary_key(generic_plans: Sql, db: PostgresDatabase) -> None:
    finished_history(generic_plans, 2000)
    request_id, *_ = reopen(generic_plans, 300, "processing")
    complete = f"SELECT public.planbus_complete_request('plan', '{request_id}', 1, '{{}}', '{COMPLETION}')"

    plan = request_update_plan(nested_plans(generic_plans, complete))

    assert "plan_requests_pkey" in plan
    assert "plan_requests_processing_lease" not in plan
    answer = generic_plans.execute(complete).fetchone()
    assert answer is not None and answer["planbus_complete_request"]["completed"] is True
