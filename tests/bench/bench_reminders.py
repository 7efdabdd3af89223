"""Reminder delivery across instances: two send_due_reminders calls at once, on two function servers.

N due reminders over M chats (N/M each) are delivered to tests/support/fake_telegram.py, which enforces
Telegram's limits (30 messages/s in total, 1/s per chat) and answers 429 with retry_after beyond them.
First one server alone (the single-instance reference), then two servers called at the same moment, as
two scheduler ticks or two instances would be; each call may work for FUNCTION_BUDGET_SECONDS, and
there are always more reminders due than a call can send in that time. Reported: messages delivered per
second over that window (a call that stops early leaves the rest to the next tick, a minute later),
against Telegram's 30/s; the 429s provoked; the reminders the calls handed back unsent; and duplicates (a
message delivered twice to one chat), with the database's record of each send.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import data
import httpx
import psycopg
import targets
from harness import Check, Column, Context, Result, Table, ratio
from servers import running

from support.fake_telegram import FakeTelegram

TELEGRAM_LIMIT = 30.0


def call(url: str, timeout: float) -> dict[str, Any]:
    response = httpx.post(url, json={}, headers=targets.headers(), timeout=timeout)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def run(ctx: Context) -> Result:
    reminders, chats = ctx.size.pick((5000, 500), (1000, 200), (60, 20))
    budget = ctx.size.pick(20.0, 4.0, 2.0)
    fake = FakeTelegram(targets.BOT_TOKEN, per_second=int(TELEGRAM_LIMIT)).start()
    table = Table(
        f"delivery to a fake Telegram enforcing 30/s and 1/s per chat ({reminders} due over {chats} chats)",
        [
            Column("delivered", "delivered"),
            Column("seconds", "wall", "s"),
            Column("per_second", "messages/s in the budget", "/s"),
            Column("ratio", "vs Telegram's 30/s", "x"),
            Column("rejected", "429s"),
            Column("deferred", "handed back"),
            Column("duplicates", "duplicates"),
            Column("recorded", "recorded sent"),
        ],
    )
    answers: list[dict[str, Any]] = []
    try:
        with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
            data.due_reminders(conn, reminders, chats)
            env = targets.reminder_env(fake.base_url, budget)
            servers = [
                targets.server(targets.REMINDERS_TARGET, url, ctx.artifact(f"reminders-{i}.log"), **env)
                for i in (1, 2)
            ]
            with running(*servers):
                scenarios = [("one server", servers[:1]), ("two servers at once", servers)]
                if ctx.size.value == "tiny":
                    scenarios = scenarios[1:]
                for label, chosen in scenarios:
                    before_delivered = len(fake.tally.delivered)
                    before_rejected = fake.tally.rejected
                    before_sent = sent(conn)
                    started = time.perf_counter()
                    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
                        these = list(pool.map(lambda s: call(s.url, budget + 120), chosen))
                    elapsed = time.perf_counter() - started
                    answers += these
                    # a message goes out a moment before it is recorded; give the last records a moment
                    time.sleep(0.2)
                    delivered = fake.tally.delivered[before_delivered:]
                    count = len(delivered)
                    table.add(
                        label,
                        delivered=count,
                        seconds=elapsed,
                        per_second=count / max(elapsed, budget),
                        ratio=ratio(count / max(elapsed, budget), TELEGRAM_LIMIT),
                        rejected=fake.tally.rejected - before_rejected,
                        deferred=sum(int(answer.get("deferred", 0)) for answer in these),
                        duplicates=duplicates(delivered),
                        recorded=sent(conn) - before_sent,
                    )
    finally:
        fake.stop()
    both = table.rows[-1].cells
    all_duplicates = duplicates(fake.tally.delivered)
    return Result(
        title="reminders delivered by two instances at once against Telegram's limits",
        about=__doc__ or "",
        params={"reminders": reminders, "chats": chats, "budget_seconds": budget, "answers": answers},
        tables=[table],
        checks=[
            Check("two servers: messages/s", both["per_second"], ">=", 27.0, unit="/s"),  # type: ignore[arg-type]
            Check("two servers: 429s provoked", float(both["rejected"] or 0), "==", 0.0, unit=""),
            Check("duplicates delivered", float(all_duplicates), "==", 0.0, "must", ""),
            Check(
                "every delivery recorded as sent",
                float(sum(int(row.cells["recorded"] or 0) for row in table.rows)),
                "==",
                float(len(fake.tally.delivered)),
                "must",
                "",
            ),
        ],
    )


def sent(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM public.reminders WHERE status = 'sent'").fetchone()
    return int(row[0]) if row else 0


def duplicates(delivered: list[tuple[int, str, float]]) -> int:
    return sum(n - 1 for n in Counter((chat, text) for chat, text, _ in delivered).values() if n > 1)
