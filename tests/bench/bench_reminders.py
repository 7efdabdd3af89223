"""How fast send_due_reminders delivers against a rate-limiting fake Telegram, and whether overlapping calls
keep Telegram's limits together.

    .venv/bin/python tests/bench/bench_reminders.py [--reminders 300] [--chats 100] [--latency 0.0]
                                                   [--concurrency 8] [--calls 1] [--no-limits]

Schedules N due reminders spread over M chats (N/M per chat), then times `--calls` overlapping calls of
send_due_reminders (the use case the deployed function runs, each with its own database connections and
its own Telegram client, the one the function builds from its settings, over HTTP) against
tests/support/fake_telegram.py on 127.0.0.1, which enforces 30 messages/s in total and 1/s per chat and
answers 429 beyond that. Reports delivered/s, the 429s, the busiest second and the shortest gap between
two messages to one chat, and checks that every delivered message arrived exactly once and every reminder
ended `sent` or back in `scheduled`.

`--latency` adds a network round trip per request (e.g. 0.1 for a far-away API); `--concurrency` sets
how many requests one call keeps in flight; `--no-limits` lifts the bot's limits (1,000,000/s, no chat
interval), to show what keeping them saves. Runs on DATABASE_URL's server when set (in a scratch
database), else an embedded one.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
from pydantic import SecretStr
from scratch import scratch_database, server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planbus import telegram
from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.services import reminders
from planbus.settings import Settings
from support.fake_telegram import FakeTelegram

TOKEN = "424242:bench-token"


def schedule(url: str, count: int, chats: int, heavy: int) -> None:
    """`chats` leads, each with a completed plan; reminder i goes to chat i % chats, all of them due.

    With `heavy`, one more chat (a salesperson who owns many leads) has that many reminders, due a little
    earlier than all the others.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            WITH new_leads AS (
              INSERT INTO leads (telegram_id, full_name, company)
              SELECT 700000 + n, 'Lead ' || n, 'Company ' || n FROM generate_series(0, %(chats)s - 1) AS n
              RETURNING id, telegram_id
            ), plans AS (
              INSERT INTO plan_requests (lead_id, telegram_id, status, result)
              SELECT id, telegram_id, 'completed', '{"bench": true}' FROM new_leads
              RETURNING id, lead_id, telegram_id
            ), current AS (
              UPDATE leads l SET plan_request_id = p.id FROM plans p WHERE l.id = p.lead_id RETURNING l.id
            )
            INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
            SELECT p.lead_id, p.telegram_id, p.id, i / %(chats)s, now() - interval '1 minute',
                   'Reminder ' || i || ' for chat ' || p.telegram_id
              FROM generate_series(0, %(count)s - 1) AS i
              JOIN plans p ON p.telegram_id = 700000 + i %% %(chats)s
            """,
            {"chats": chats, "count": count},
        )
        if heavy:
            conn.execute(
                """
                WITH lead AS (
                  INSERT INTO leads (telegram_id, full_name) VALUES (600000, 'Busy') RETURNING id, telegram_id
                ), plan AS (
                  INSERT INTO plan_requests (lead_id, telegram_id, status, result)
                  SELECT id, telegram_id, 'completed', '{"bench": true}' FROM lead
                  RETURNING id, lead_id, telegram_id
                ), current AS (
                  UPDATE leads l SET plan_request_id = p.id FROM plan p WHERE l.id = p.lead_id RETURNING l.id
                )
                INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
                SELECT p.lead_id, p.telegram_id, p.id, i, now() - interval '2 minutes', 'Busy reminder ' || i
                  FROM generate_series(0, %(heavy)s - 1) AS i, plan p
                """,
                {"heavy": heavy},
            )


def statuses(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM reminders GROUP BY status").fetchall())


def main() -> int:
    parser = argparse.ArgumentParser(description="reminders/second of one send_due_reminders call")
    parser.add_argument("--reminders", type=int, default=300)
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of round trip per request")
    parser.add_argument("--concurrency", type=int, default=reminders.SEND_CONCURRENCY)
    parser.add_argument("--budget", type=float, default=45.0, help="FUNCTION_BUDGET_SECONDS of the call")
    parser.add_argument("--heavy", type=int, default=0, help="reminders of one extra chat, due first")
    parser.add_argument("--calls", type=int, default=1, help="overlapping calls, as two schedulers would")
    parser.add_argument("--no-limits", action="store_true", help="send as fast as the client can")
    args = parser.parse_args()
    reminders.SEND_CONCURRENCY = args.concurrency
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"

    fake = FakeTelegram(TOKEN, latency=args.latency).start()
    settings = Settings(
        function_budget_seconds=args.budget,
        telegram_bot_token=SecretStr(TOKEN),
        telegram_api_base=fake.base_url,
    )
    results: list[reminders.ReminderCounts] = []
    try:
        with server() as server_url, scratch_database(server_url) as url:
            schedule(url, args.reminders, args.chats, args.heavy)

            def one_call() -> None:
                db = PostgresDatabase(url, max_size=args.concurrency + 1)
                sender = (
                    telegram.TelegramSender(TOKEN, api_base=fake.base_url, per_second=1e6, chat_interval=0)
                    if args.no_limits
                    else telegram.make_sender(settings)
                )
                try:
                    results.append(
                        reminders.send_due_reminders(
                            db, sender, SystemClock(), settings=settings, limit=args.reminders + args.heavy
                        )
                    )
                finally:
                    sender.close()
                    db.close()

            calls = [threading.Thread(target=one_call) for _ in range(args.calls)]
            started = time.perf_counter()
            for call in calls:
                call.start()
            for call in calls:
                call.join()
            elapsed = time.perf_counter() - started
            final = statuses(url)
    finally:
        fake.stop()

    delivered = fake.tally.delivered
    sent = sum(counts.sent for counts in results)
    busy = sum(1 for chat, _, _ in delivered if chat == 600000)
    duplicates = sum(n - 1 for n in Counter((chat, text) for chat, text, _ in delivered).values() if n > 1)
    per_second = sent / elapsed if elapsed else 0.0
    gap = fake.tally.min_chat_gap()
    print(
        f"{args.reminders} reminders over {args.chats} chats (+{args.heavy} to one busy chat), "
        f"latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, {args.calls} call(s), "
        f"limits {'off' if args.no_limits else 'on'}, on {where}"
    )
    print(f"{elapsed:.2f} s, {per_second:.1f} reminders/s delivered")
    for counts in results:
        print(f"counts of a call: {counts.as_json()}")
    print(
        f"fake Telegram: {len(delivered)} delivered, {fake.tally.rejected} answered 429 "
        f"({fake.tally.over_global} over 30/s, {fake.tally.over_chat} over 1/s per chat), "
        f"{duplicates} duplicates; busiest second {fake.tally.busiest_second()} messages; "
        f"shortest gap between two messages to one chat " + ("-" if gap is None else f"{gap * 1000:.0f} ms")
    )
    if args.heavy:
        print(
            f"delivered to the busy chat: {busy} of {args.heavy}; to the others: {len(delivered) - busy} "
            f"of {args.reminders}"
        )
    print(f"reminders afterwards: {final}")
    consistent = (
        duplicates == 0
        and len(delivered) == sent == final.get("sent", 0)
        and final.get("sent", 0) + final.get("scheduled", 0) == args.reminders + args.heavy
    )
    print("consistent: every delivery recorded once, nothing lost" if consistent else "INCONSISTENT")
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
