"""Fast data for the benchmarks, made in bulk with generate_series (never row by row from Python).

The rows are written as the state machine would leave them (its columns and statuses as of today's
migrations); ids are derived from a row's number, so related rows join without a round trip back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import targets
from targets import ScaleFixture

Conn = psycopg.Connection[Any]

# Finished requests per lead in the history, and the share of them that failed.
REQUESTS_PER_LEAD = 10


def numbered_uuid(prefix: int, n: int) -> str:
    """A uuid made of a type prefix and a row number (what the SQL below builds with to_hex)."""
    return str(uuid.UUID(f"{prefix:08x}-0000-4000-8000-{n:012x}"))


def _uuid_sql(prefix: int, expression: str) -> str:
    return f"('{prefix:08x}-0000-4000-8000-' || lpad(to_hex({expression}), 12, '0'))::uuid"


@dataclass(frozen=True)
class Requester:
    """A lead with no active request, its owner's Telegram id, and that owner's Mini App user id."""

    lead_id: str
    telegram_id: int
    user_id: str


def requesters(conn: Conn, count: int, *, telegram_base: int, mini_app: bool = False) -> list[Requester]:
    """`count` leads, each of its own Telegram user (so no one reaches the daily limit); with `mini_app`,
    each user is also mapped in telegram_users, as telegram_auth leaves them."""
    rows = conn.execute(
        """
        INSERT INTO public.leads (telegram_id, full_name, company, title, notes)
        SELECT %(base)s + n, 'Lead ' || n, 'Company ' || n, 'Head of Operations',
               'Met at a trade fair. Wants a pilot.'
          FROM generate_series(1, %(count)s) AS n
        RETURNING id, telegram_id
        """,
        {"base": telegram_base, "count": count},
    ).fetchall()
    people = [Requester(str(lead_id), telegram_id, str(uuid.uuid4())) for lead_id, telegram_id in rows]
    if mini_app:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO public.telegram_users (user_id, telegram_id) VALUES (%s, %s)",
                [(p.user_id, p.telegram_id) for p in people],
            )
    return people


def pending_requests(conn: Conn, count: int, *, telegram_base: int = 1_000_000) -> list[str]:
    """`count` new leads with one pending request each (inserted by the owner); their ids, in order."""
    rows = conn.execute(
        """
        WITH new_leads AS (
          INSERT INTO public.leads (telegram_id, full_name, company, title, notes)
          SELECT %(base)s + n, 'Lead ' || n, 'Company ' || n, 'Head of Operations',
                 'Met at a trade fair. Wants a pilot.'
            FROM generate_series(1, %(count)s) AS n
          RETURNING id, telegram_id
        )
        INSERT INTO public.plan_requests (lead_id, telegram_id)
        SELECT id, telegram_id FROM new_leads ORDER BY telegram_id
        RETURNING id
        """,
        {"base": telegram_base, "count": count},
    ).fetchall()
    return [str(row[0]) for row in rows]


def bare_pending(conn: Conn, count: int) -> list[str]:
    """`count` pending rows in the bare table."""
    rows = conn.execute(
        """
        INSERT INTO bench.bare_requests (lead_id, telegram_id)
        SELECT gen_random_uuid(), 2000000 + n FROM generate_series(1, %s) AS n
        RETURNING id
        """,
        (count,),
    ).fetchall()
    return [str(row[0]) for row in rows]


def finished_history(conn: Conn, start: int, stop: int, result: str, *, days: float) -> None:
    """Finished requests number start+1 .. stop over the last `days`, as the use of that long leaves them:

    requests   95% completed (with `result`), 5% failed after 3 attempts; 10 per lead
    reminders  one per completed request: 80% sent, 15% cancelled, 5% failed
    errors     3 per failed request, and 1 per tenth completed request (a retried attempt)
    """
    lead = _uuid_sql(1, "((n - 1) / 10 + 1)")
    request = _uuid_sql(2, "n")
    # Spread over the last `days`, the same for a request and its reminder without joining them.
    span = max(round(days * 86400), 1)
    at = f"(now() - ((n::bigint * 7919) %% {span}) * interval '1 second')"
    conn.execute(
        f"""
        INSERT INTO public.leads (id, telegram_id, full_name, company, status, created_at, updated_at)
        SELECT {lead}, 3000000 + ((n - 1) / 10 + 1) %% 50000, 'History lead ' || n, 'Company', 'plan_ready',
               now() - %(before)s * interval '1 second', now() - %(before)s * interval '1 second'
          FROM generate_series(%(start)s + 1, %(stop)s) AS n
         WHERE (n - 1) %% {REQUESTS_PER_LEAD} = 0
        ON CONFLICT (id) DO NOTHING
        """,
        {"start": start, "stop": stop, "before": span + 86400},
    )
    conn.execute(
        f"""
        INSERT INTO public.plan_requests
               (id, lead_id, telegram_id, status, result, error, attempts, run_after, created_at, updated_at)
        SELECT {request}, {lead}, 3000000 + ((n - 1) / 10 + 1) %% 50000,
               CASE WHEN n %% 20 = 0 THEN 'failed' ELSE 'completed' END,
               CASE WHEN n %% 20 = 0 THEN NULL ELSE %(result)s::jsonb END,
               CASE WHEN n %% 20 = 0 THEN 'gave up after 3 attempts: OpenAI answered 503' END,
               CASE WHEN n %% 20 = 0 THEN 3 WHEN n %% 10 = 1 THEN 2 ELSE 1 END,
               {at}, {at}, {at} + interval '9 seconds'
          FROM generate_series(%(start)s + 1, %(stop)s) AS n
        """,
        {"start": start, "stop": stop, "result": result},
    )
    conn.execute(
        f"""
        INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text, status,
                                      attempts, sent_at, delivered_via, error, created_at, updated_at)
        SELECT {lead}, 3000000 + ((n - 1) / 10 + 1) %% 50000, {request}, 0, {at} + interval '1 day',
               'Reminder for history request ' || n,
               CASE WHEN n %% 20 = 1 THEN 'failed' WHEN n %% 20 < 5 THEN 'cancelled' ELSE 'sent' END,
               1,
               CASE WHEN n %% 20 >= 5 THEN {at} + interval '1 day' END,
               CASE WHEN n %% 20 >= 5 THEN 'telegram' END,
               CASE WHEN n %% 20 = 1 THEN 'Telegram 403: Forbidden: bot was blocked by the user'
                    WHEN n %% 20 < 5 THEN 'superseded by a newer plan' END,
               {at}, {at} + interval '1 day'
          FROM generate_series(%(start)s + 1, %(stop)s) AS n
         WHERE n %% 20 <> 0
        """,
        {"start": start, "stop": stop},
    )
    conn.execute(
        f"""
        INSERT INTO {targets.ERRORS_TABLE} (kind, request_id, attempt, at, message)
        SELECT '{targets.KIND}', {request}, a, now() - random() * %(span)s * interval '1 second',
               CASE WHEN n %% 20 = 0 THEN 'OpenAI answered 503: upstream overloaded'
                    ELSE 'OpenAI did not answer within 60 s' END
          FROM generate_series(%(start)s + 1, %(stop)s) AS n,
               LATERAL generate_series(1, CASE WHEN n %% 20 = 0 THEN 3 WHEN n %% 10 = 1 THEN 1 ELSE 0 END)
                 AS a
        """,
        {"start": start, "stop": stop, "span": span},
    )


def active_rows(conn: Conn, result: str) -> ScaleFixture:
    """What a live queue holds at any size: 20 pending rows whose webhook was lost, 10 processing rows
    whose lease expired, 50 chats with a due reminder of their lead's current plan, a lead free for a new
    request, and a Mini App user with a completed request to poll."""
    conn.execute(
        """
        WITH lost_leads AS (
          INSERT INTO public.leads (telegram_id, full_name) SELECT 4000000 + n, 'Lost ' || n
            FROM generate_series(1, 20) AS n RETURNING id, telegram_id
        )
        INSERT INTO public.plan_requests (lead_id, telegram_id, run_after, created_at, updated_at)
        SELECT id, telegram_id, now() - interval '10 minutes', now() - interval '10 minutes',
               now() - interval '10 minutes'
          FROM lost_leads
        """
    )
    conn.execute(
        """
        WITH stale_leads AS (
          INSERT INTO public.leads (telegram_id, full_name) SELECT 4100000 + n, 'Stale ' || n
            FROM generate_series(1, 10) AS n RETURNING id, telegram_id
        )
        INSERT INTO public.plan_requests (lead_id, telegram_id, status, attempts, lease_expires_at)
        SELECT id, telegram_id, 'processing', 1, now() - interval '1 minute' FROM stale_leads
        """
    )
    conn.execute(
        """
        WITH chat_leads AS (
          INSERT INTO public.leads (telegram_id, full_name, company) SELECT 4200000 + n, 'Chat ' || n, 'Co'
            FROM generate_series(1, 50) AS n RETURNING id, telegram_id
        ), plans AS (
          INSERT INTO public.plan_requests (lead_id, telegram_id, status, result)
          SELECT id, telegram_id, 'completed', %(result)s::jsonb FROM chat_leads
          RETURNING id, lead_id, telegram_id
        ), current AS (
          UPDATE public.leads l SET plan_request_id = p.id FROM plans p WHERE l.id = p.lead_id RETURNING l.id
        )
        INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
        SELECT lead_id, telegram_id, id, 0, now() - interval '1 minute', 'Call back' FROM plans
        """,
        {"result": result},
    )
    free = requesters(conn, 1, telegram_base=4300000)[0]
    poller = requesters(conn, 1, telegram_base=4400000, mini_app=True)[0]
    row = conn.execute(
        "INSERT INTO public.plan_requests (lead_id, telegram_id, status, result) "
        "VALUES (%s, %s, 'completed', %s::jsonb) RETURNING id",
        (poller.lead_id, poller.telegram_id, result),
    ).fetchone()
    assert row is not None
    return ScaleFixture(free.lead_id, free.telegram_id, poller.user_id, poller.telegram_id, str(row[0]))


def due_reminders(conn: Conn, count: int, chats: int) -> None:
    """`chats` leads, each with a completed plan; reminder i goes to chat i % chats, all of them due."""
    conn.execute(
        """
        WITH new_leads AS (
          INSERT INTO public.leads (telegram_id, full_name, company)
          SELECT 700000 + n, 'Lead ' || n, 'Company ' || n FROM generate_series(0, %(chats)s - 1) AS n
          RETURNING id, telegram_id
        ), plans AS (
          INSERT INTO public.plan_requests (lead_id, telegram_id, status, result)
          SELECT id, telegram_id, 'completed', '{"bench": true}' FROM new_leads
          RETURNING id, lead_id, telegram_id
        ), current AS (
          UPDATE public.leads l SET plan_request_id = p.id FROM plans p WHERE l.id = p.lead_id RETURNING l.id
        )
        INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
        SELECT p.lead_id, p.telegram_id, p.id, i / %(chats)s, now() - interval '1 minute',
               'Reminder ' || i || ' for chat ' || p.telegram_id
          FROM generate_series(0, %(count)s - 1) AS i
          JOIN plans p ON p.telegram_id = 700000 + i %% %(chats)s
        """,
        {"chats": chats, "count": count},
    )
