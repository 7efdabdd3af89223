"""planbus status over a long history: the queue and the last day stay exact, totals of all history are
exact below a bound and the planner's estimate from it (migration 0017)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase

SQL = psycopg.Connection[dict[str, Any]]

COMPLETED = 3000
FAILED = 40
OLD_COMPLETED = 1000  # of COMPLETED, created and finished two days ago


def finished_history(sql: SQL) -> None:
    """COMPLETED + FAILED finished requests, one lead each, with a sent reminder per completed request;
    OLD_COMPLETED of them from two days ago, the rest from the last hour."""
    sql.execute(
        """
        WITH new_leads AS (
          INSERT INTO public.leads (telegram_id, full_name)
          SELECT 500000 + n, 'History ' || n FROM generate_series(1, %(total)s) AS n
          RETURNING id, telegram_id
        ), numbered AS (
          SELECT id, telegram_id, row_number() OVER (ORDER BY telegram_id) AS n FROM new_leads
        ), requests AS (
          INSERT INTO public.plan_requests (lead_id, telegram_id, status, result, error, attempts,
                                            created_at, updated_at)
          SELECT id, telegram_id,
                 CASE WHEN n <= %(failed)s THEN 'failed' ELSE 'completed' END,
                 CASE WHEN n <= %(failed)s THEN NULL ELSE '{"plan": {}}'::jsonb END,
                 CASE WHEN n <= %(failed)s THEN 'gave up' END,
                 1,
                 at, at
            FROM numbered,
                 LATERAL (SELECT now() - CASE WHEN n > %(total)s - %(old)s THEN interval '2 days'
                                              ELSE interval '1 hour' END AS at) AS finished
          RETURNING id, lead_id, telegram_id, status, updated_at
        )
        INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text, status,
                                      attempts, sent_at)
        SELECT lead_id, telegram_id, id, 0, updated_at, 'sent', 'sent', 1, updated_at
          FROM requests WHERE status = 'completed'
        """,
        {"total": COMPLETED + FAILED, "failed": FAILED, "old": OLD_COMPLETED},
    )
    sql.execute("ANALYZE public.plan_requests, public.reminders")


def test_a_long_history_keeps_the_queue_and_the_last_day_exact(
    db: PostgresDatabase, sql: SQL, make_lead: Any, make_request: Any
) -> None:
    finished_history(sql)
    make_request(make_lead(telegram_id=42))

    status = db.call("planbus_status")

    requests, reminders = status["requests"], status["reminders"]
    assert (requests["pending"], requests["processing"], requests["failed"]) == (1, 0, FAILED)
    assert requests["created_24h"] == COMPLETED + FAILED - OLD_COMPLETED + 1
    assert status["failures_24h"]["failed"] == FAILED
    assert reminders["sent_24h"] == COMPLETED - OLD_COMPLETED
    assert (reminders["scheduled"], reminders["due"], reminders["failed"]) == (0, 0, 0)


def test_totals_of_a_long_history_are_the_planners_estimate(db: PostgresDatabase, sql: SQL) -> None:
    finished_history(sql)

    status = db.call("planbus_status")

    # ANALYZE read every row of these small tables, so the estimate is close; it is never below the bound.
    assert status["requests"]["completed"] == pytest.approx(COMPLETED, rel=0.1)
    assert status["reminders"]["sent"] == pytest.approx(COMPLETED, rel=0.1)
    assert min(status["requests"]["completed"], status["reminders"]["sent"]) >= 1000


def test_a_status_total_is_exact_below_its_bound_and_an_estimate_from_it(sql: SQL) -> None:
    finished_history(sql)

    def total(status: str, bound: int) -> int:
        row = sql.execute(
            "SELECT planbus_private.status_total('public.plan_requests', %s, %s) AS n", (status, bound)
        ).fetchone()
        assert row is not None
        n: int = row["n"]
        return n

    assert total("failed", FAILED + 1) == FAILED
    assert total("failed", 10) == pytest.approx(FAILED, rel=0.5)
    assert total("failed", 10) >= 10
    assert total("pending", 10) == 0
