"""Time from a Mini App insert to `completed` through the local stack's webhook relay (offline generator).

    .venv/bin/python tests/bench/bench_relay_latency.py [--requests 20] [--burst]

Starts the real stack in this process (`planbus.devstack.stack.Stack`: the handle_plan_request
functions-framework server as its own process, the relay and the sink), seeds one lead per Telegram user,
and inserts plan requests as the Mini App does (role authenticated, JWT claims, RLS). Each insert fires the
trigger → pg_notify → relay → POST → claim, offline plan, complete. One request is sent first to warm the
server up and reported apart.

Sequential (default): one request at a time; the clock runs from the insert's commit to the poll (every
2 ms, on a separate connection) that first sees `completed`. `--burst` inserts them all back to back and
waits for all: queueing shows. Both also report the database's own view, `updated_at - created_at` of each
row (created_at is the insert's transaction start, updated_at the completing transaction's).
Runs on DATABASE_URL's server when set (in a scratch database, dropped after), else an embedded one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from scratch import scratch_database

from planbus.devstack.console import Console
from planbus.devstack.miniapp import MiniApp, MiniAppUser
from planbus.devstack.stack import Stack, StackOptions
from planbus.settings import get_settings

POLL_SECONDS = 0.002


def seed(database_url: str, count: int) -> list[tuple[MiniAppUser, uuid.UUID]]:
    """One Telegram user with one lead per request (each user stays far below the daily limit)."""
    pairs = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i in range(count):
            user = MiniAppUser(uuid.uuid4(), 880_000_000 + i)
            conn.execute(
                "INSERT INTO public.telegram_users (user_id, telegram_id) VALUES (%s, %s)",
                (user.user_id, user.telegram_id),
            )
            row = conn.execute(
                "INSERT INTO public.leads (telegram_id, full_name, company, title, notes) "
                "VALUES (%s, %s, 'Acme Freight', 'Head of Operations', 'Met at a trade fair.') RETURNING id",
                (user.telegram_id, f"Bench Lead {i}"),
            ).fetchone()
            assert row is not None
            pairs.append((user, row[0]))
    return pairs


def wait_completed(conn: psycopg.Connection[dict[str, Any]], ids: list[uuid.UUID], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed') AS done, "
            "       count(*) FILTER (WHERE status = 'failed') AS failed "
            "FROM public.plan_requests WHERE id = ANY(%s)",
            (ids,),
        ).fetchone()
        assert row is not None
        if row["failed"]:
            raise RuntimeError(f"{row['failed']} request(s) failed")
        if row["done"] == len(ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {row['done']} of {len(ids)} completed after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def summary(label: str, values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18] if len(ordered) > 1 else ordered[0]
    return (
        f"  {label:<36} median {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   "
        f"min {ordered[0]:6.1f}   max {ordered[-1]:6.1f}"
    )


def run(stack: Stack, count: int, burst: bool) -> None:
    pairs = seed(stack.database_url, count + 1)
    with psycopg.connect(stack.database_url, autocommit=True, row_factory=dict_row) as conn:
        warm_user, warm_lead = pairs[0]
        started = time.perf_counter()
        warm_id = MiniApp(stack.database_url, warm_user).request_plan(warm_lead)
        wait_completed(conn, [warm_id], 120)
        cold_ms = (time.perf_counter() - started) * 1000

        client_ms: list[float] = []
        ids: list[uuid.UUID] = []
        began = time.perf_counter()
        if burst:
            ids = [MiniApp(stack.database_url, user).request_plan(lead) for user, lead in pairs[1:]]
            wait_completed(conn, ids, 300)
        else:
            for user, lead in pairs[1:]:
                request_id = MiniApp(stack.database_url, user).request_plan(lead)
                committed = time.perf_counter()
                wait_completed(conn, [request_id], 120)
                client_ms.append((time.perf_counter() - committed) * 1000)
                ids.append(request_id)
        wall = time.perf_counter() - began
        server_ms = [
            r["ms"]
            for r in conn.execute(
                "SELECT extract(epoch FROM updated_at - created_at)::float * 1000 AS ms "
                "FROM public.plan_requests WHERE id = ANY(%s)",
                (ids,),
            ).fetchall()
        ]
    mode = "burst" if burst else "sequential"
    where = "embedded PostgreSQL" if stack.embedded is not None else "DATABASE_URL's server"
    print(f"insert → completed through the relay, offline generator, {count} requests ({mode}), {where}")
    print(f"  first (cold) request: {cold_ms:.1f} ms")
    if client_ms:
        print(summary("commit → completed seen (client)", client_ms))
    print(summary("created_at → updated_at (database)", server_ms))
    print(f"  {count} requests in {wall:.2f} s ({count / wall:.1f} requests/s)")
    relay = stack.relay
    assert relay is not None
    # A row is visible as completed a moment before the function's answer reaches the relay.
    deadline = time.monotonic() + 10
    while relay.delivered + relay.given_up < count + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"  relay: {relay.delivered} deliveries, {relay.given_up} given up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--burst", action="store_true", help="insert all requests at once")
    args = parser.parse_args()
    settings = get_settings()
    if settings.generator != "offline":
        raise SystemExit(
            "this measures the offline generator: unset OPENAI_API_KEY or set PLAN_GENERATOR=offline"
        )
    options = StackOptions(functions=("handle_plan_request",))
    with contextlib.ExitStack() as cleanup:
        if settings.database_url:
            scratch_url = cleanup.enter_context(scratch_database(settings.database_url))
            settings = settings.model_copy(update={"database_url": scratch_url})
        with Stack(settings, options, Console(min_severity="WARNING")) as stack:
            run(stack, args.requests, args.burst)


if __name__ == "__main__":
    main()
