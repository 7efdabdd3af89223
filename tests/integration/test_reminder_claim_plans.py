"""The due-reminder claim over a long history reads only due reminders, whatever the statistics say
(migration 0017), and a lead's reminders are still found through the lead index."""

from __future__ import annotations

from planbus.db.postgres import PostgresDatabase
from support.query_plans import nested_plans
from support.reminder_rows import Sql, add_plan, claim


def sent_history(sql: Sql, count: int) -> None:
    """`count` sent reminders of finished plans, so the statistics see scheduled reminders as rare and
    every due_at as long past, as a long history leaves them."""
    sql.execute(
        """
        WITH new_leads AS (
          INSERT INTO public.leads (telegram_id, full_name)
          SELECT 600000 + n, 'History ' || n FROM generate_series(1, %(count)s) AS n RETURNING id, telegram_id
        ), plans AS (
          INSERT INTO public.plan_requests (lead_id, telegram_id, status, result)
          SELECT id, telegram_id, 'completed', '{"plan": {}}'::jsonb FROM new_leads
          RETURNING id, lead_id, telegram_id
        )
        INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text, status,
                                      attempts, sent_at)
        SELECT lead_id, telegram_id, id, 0, now() - interval '10 days', 'sent', 'sent', 1,
               now() - interval '10 days'
          FROM plans
        """,
        {"count": count},
    )


def test_a_claim_reads_only_the_due_part_of_a_long_schedule(db: PostgresDatabase, sql: Sql) -> None:
    sent_history(sql, 20_000)
    add_plan(sql, telegram_id=1, steps=(("due", -60), *((f"later {n}", 86_400 * (n + 1)) for n in range(40))))
    sql.execute("ANALYZE public.reminders, public.leads")

    plans = nested_plans(sql, "SELECT public.planbus_claim_due_reminders(30, 60, 5)")

    claim_plans = "\n".join(p for p in plans if "FROM public.reminders r" in p)
    assert "Index Cond: (due_at <= now())" in claim_plans
    assert "reminders_scheduled_lead" not in claim_plans
    assert [r["text"] for r in claim(db)] == ["due"]


def test_a_leads_scheduled_reminders_are_found_through_the_lead_index(sql: Sql) -> None:
    plan = add_plan(sql, steps=(("a", 60), ("b", 120)))
    sql.execute("SET enable_seqscan = off")
    explained = sql.execute(
        "EXPLAIN UPDATE public.reminders SET status = 'cancelled' "
        "WHERE lead_id = %s AND status = 'scheduled'",
        (plan["lead"]["id"],),
    ).fetchall()
    assert "reminders_scheduled_lead" in "\n".join(row["QUERY PLAN"] for row in explained)
