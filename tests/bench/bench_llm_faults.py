"""LLM fault mix: requests against an OpenAI-compatible server that fails in every way it can.

N pending requests; each webhook is delivered once, 4 at a time, to the webhook target, whose generator
talks to tests/support/fake_llm.py answering with a mix of successes, 429s with retry-after, 503s,
hangs past OPENAI_TIMEOUT, invalid JSON and refusals. The sweeper is called as the scheduler would
(compressed: every few seconds instead of every minute) and carries the retries. At the end no request may
be left `processing`, nor `pending` past its backoff; the full run waits until every request is finished
and reports how long that took, the attempts used and the LLM calls made.

Then an API that keeps failing the same way (a 429 asking for 30 s, a 503, a refused connection): a few
requests run through the worker's use case in process with the OpenAI generator, whose HTTP transport is
the fake (tests/support/openai_fakes.py), every backoff skipped, until each has used MAX_ATTEMPTS and
failed for good. The LLM calls each request cost over all its attempts must stay within the retry budget:
one call an attempt, two when the API was not reached at all.

Last, a slow LLM: one process_plan_request server (THREADS=4, as one Cloud Run instance's concurrency in
infra/functions.conf) posted 1, 4 and 8 requests at once, each LLM call taking a few seconds: how many
calls the instance has in flight (clients x LLM seconds / wall time). Cloud Tasks lets a queue's
max_concurrent_dispatches through at once; the instances must take them all.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import data
import httpx2
import psycopg
import targets
from drivers import Sweeper, describe
from harness import Check, Column, Context, Result, Size, Table
from load import drive
from servers import running

from support.fake_llm import FakeLLM
from support.openai_fakes import Answer, api_error
from support.openai_fakes import FakeOpenAI as FakeTransport

MIX = {"ok": 60, "rate_limited": 10, "server_error": 10, "hang": 8, "invalid_json": 6, "refusal": 6}
MAX_ATTEMPTS = 3
# One worker instance's concurrency (THREADS), as infra/functions.conf gives the workers.
WORKER_THREADS = 4
# A failing API, answering every call the same way, and the most calls one attempt may cost against it.
PERSISTENT_FAILURES: dict[str, tuple[Callable[[], Answer], int]] = {
    "429, retry-after 30 s": (lambda: api_error(429, "Rate limit reached", headers={"retry-after": "30"}), 1),
    "503": (lambda: api_error(503, "The server is overloaded"), 1),
    "connection refused": (lambda: httpx2.ConnectError("connection refused"), 2),
}


def states(conn: psycopg.Connection[Any], margin: float) -> dict[str, int]:
    row = conn.execute(
        """
        SELECT count(*) FILTER (WHERE status = 'completed'),
               count(*) FILTER (WHERE status = 'failed'),
               count(*) FILTER (WHERE status = 'pending'),
               count(*) FILTER (WHERE status = 'processing'),
               count(*) FILTER (WHERE status = 'pending' AND run_after < now() - make_interval(secs => %s))
          FROM public.plan_requests
        """,
        (margin,),
    ).fetchone()
    assert row is not None
    return dict(zip(("completed", "failed", "pending", "processing", "overdue"), row, strict=True))


def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def slow_llm_concurrency(ctx: Context) -> tuple[Table, list[Check]]:
    """Requests one worker instance has in flight at once when each LLM call takes `llm_seconds`."""
    llm_seconds = ctx.size.pick(3.0, 1.0, 0.5)
    fake = FakeLLM({"ok": 1}, latency=llm_seconds).start()
    settings = {
        "plan_generator": "openai",
        "openai_api_key": "sk-bench",
        "openai_base_url": fake.base_url,
        "openai_timeout": llm_seconds + 10,
        "draft_openai_timeout": llm_seconds + 10,
        "threads": WORKER_THREADS,
    }
    table = Table(
        f"one worker instance (THREADS={WORKER_THREADS}), each LLM call {llm_seconds:g} s",
        [
            Column("wall", "wall", "s"),
            Column("in_flight", "calls in flight"),
            Column("completed", "completed"),
        ],
    )
    checks = []
    try:
        with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
            worker = targets.server(targets.WORKER_TARGET, url, ctx.artifact("slow-llm.log"), **settings)
            with running(worker):
                # The instance's first request imports the OpenAI client: not measured.
                [warm] = data.pending_requests(conn, 1, telegram_base=3_000_000)
                drive(worker.url, [targets.worker_body(warm)], concurrency=1, headers=targets.headers())
                for index, clients in enumerate((1, WORKER_THREADS, 2 * WORKER_THREADS)):
                    ids = data.pending_requests(conn, clients, telegram_base=3_000_100 + 100 * index)
                    bodies = [targets.worker_body(request_id) for request_id in ids]
                    load = drive(
                        worker.url, bodies, concurrency=clients, headers=targets.headers(), outcome=describe
                    )
                    in_flight = round(clients * llm_seconds / load.wall, 1)
                    done = load.outcomes["200 completed"]
                    table.add(f"{clients} at once", wall=load.wall, in_flight=in_flight, completed=done)
                    checks.append(
                        Check(f"slow LLM, {clients} at once: completed", done, "==", clients, "must", "")
                    )
                    if clients == WORKER_THREADS:
                        limit = 0.75 * WORKER_THREADS
                        checks.append(
                            Check(f"slow LLM, {clients} at once: in flight", in_flight, ">=", limit, unit="")
                        )
    finally:
        fake.stop()
    return table, checks


def persistent_failures(ctx: Context) -> tuple[Table, list[Check]]:
    """LLM calls per request, over all its attempts, against each persistently failing API."""
    n = ctx.size.pick(20, 5, 3)
    table = Table(
        f"an API that keeps failing: {n} requests each, until failed for good after {MAX_ATTEMPTS} attempts",
        [
            Column("calls", "LLM calls per request"),
            Column("failed", "failed for good"),
            Column("slept", "in-call pauses", "s"),
        ],
    )
    checks = []
    for label, (answer, per_attempt) in PERSISTENT_FAILURES.items():
        fake = FakeTransport(answer())
        slept: list[float] = []
        with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
            ids = data.pending_requests(conn, n)
            targets.fail_for_good(url, ids, fake.client(), max_attempts=MAX_ATTEMPTS, sleep=slept.append)
            failed = states(conn, 0)["failed"]
        calls = len(fake.requests) / n
        table.add(label, calls=round(calls, 2), failed=failed, slept=round(sum(slept), 2))
        checks += [
            Check(
                f"{label}: LLM calls per request", calls, "<=", float(MAX_ATTEMPTS * per_attempt), "must", ""
            ),
            Check(f"{label}: requests failed for good", float(failed), "==", float(n), "must", ""),
        ]
    return table, checks


def run(ctx: Context) -> Result:
    n = ctx.size.pick(200, 40, 10)
    openai_timeout = ctx.size.pick(3.0, 1.5, 1.0)
    sweep_every = ctx.size.pick(2.0, 1.0, 0.5)
    drain = ctx.size is Size.FULL
    # A pending row is overdue once its retry time is further past than two sweeps, each of which may
    # spend up to a full LLM budget per request before it reaches the row.
    margin = 2 * sweep_every + MAX_ATTEMPTS * openai_timeout + 5
    fake = FakeLLM(MIX, latency=0.02, hang=openai_timeout + 1.5, retry_after=0.5, seed=14).start()
    settings = {
        "plan_generator": "openai",
        "openai_api_key": "sk-bench",
        "openai_base_url": fake.base_url,
        "openai_timeout": openai_timeout,
        # The lease must outlive every kind's LLM call, drafts included (the settings refuse otherwise).
        "draft_openai_timeout": openai_timeout,
        "lease_seconds": 20,
        "max_attempts": MAX_ATTEMPTS,
    }
    try:
        with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
            ids = data.pending_requests(conn, n)
            sweeper = targets.server(targets.SWEEPER_TARGET, url, ctx.artifact("sweeper.log"), **settings)
            log_dir = ctx.artifact("logs/.keep").parent
            with (
                targets.request_path(url, log_dir, **settings) as path,
                running(sweeper),
                Sweeper(sweeper.url, sweep_every) as schedule,
            ):
                started = time.monotonic()
                deliveries = drive(
                    path.webhook_url,
                    [targets.webhook_body({"id": request_id}) for request_id in ids],
                    concurrency=4,
                    headers=targets.headers(),
                    outcome=describe,
                )
                if drain:
                    finished = wait_until(
                        lambda: states(conn, margin)["completed"] + states(conn, margin)["failed"] == n, 240
                    )
                else:
                    finished = wait_until(lambda: states(conn, margin)["processing"] == 0, 30)
                elapsed = time.monotonic() - started
            final = states(conn, margin)
            attempts: dict[int, int] = dict(
                conn.execute(
                    "SELECT attempts, count(*) FROM public.plan_requests GROUP BY 1 ORDER BY 1"
                ).fetchall()
            )
            reasons = Counter(
                re.sub(r"[0-9a-f-]{36}|\d+(\.\d+)?", "#", row[0] or "")[:110]
                for row in conn.execute(
                    "SELECT error FROM public.plan_requests WHERE status = 'failed'"
                ).fetchall()
            )
    finally:
        fake.stop()

    state_table = Table(
        f"{n} requests after {'draining' if drain else 'the webhooks and the sweeps in flight'} "
        f"({elapsed:.1f} s)",
        [Column("count", "requests")],
    )
    for key in ("completed", "failed", "pending", "processing"):
        state_table.add(key, count=final[key])
    state_table.add("pending past their backoff", count=final["overdue"])
    attempt_table = Table("attempts used", [Column("count", "requests")])
    for used, count in attempts.items():
        attempt_table.add(f"{used} attempt{'s' if used != 1 else ''}", count=count)
    calls = Table(
        "LLM calls by answer (the client retries within OPENAI_TIMEOUT)", [Column("count", "calls")]
    )
    for kind in MIX:
        calls.add(kind, count=fake.calls[kind])
    calls.add("total", count=sum(fake.calls.values()))
    calls.add("per request (mean)", count=round(sum(fake.calls.values()) / n, 2))
    failures = Table("why requests failed", [Column("count", "requests")])
    for reason, count in reasons.most_common(8):
        failures.add(reason, count=count)
    checks = [
        Check("rows left processing", float(final["processing"]), "==", 0.0, "must", ""),
        Check("rows left pending past their backoff", float(final["overdue"]), "==", 0.0, "must", ""),
        # A worker that cannot start or refuses every webhook leaves nothing stuck either: each request
        # must have been attempted.
        Check(
            "requests attempted at least once",
            float(sum(count for used, count in attempts.items() if used >= 1)),
            "==",
            float(n),
            "must",
            "",
        ),
    ]
    if drain:
        checks.append(
            Check("every request finished (completed or failed)", float(finished), "==", 1.0, "must", "")
        )
    persistent, persistent_checks = persistent_failures(ctx)
    slow, slow_checks = slow_llm_concurrency(ctx)
    return Result(
        title="LLM faults: no request stuck, attempts and calls used, and a slow LLM's calls in flight",
        about=__doc__ or "",
        params={
            "requests": n,
            "mix": MIX,
            "openai_timeout": openai_timeout,
            "sweep_every_seconds": sweep_every,
            "overdue_margin_seconds": margin,
            "webhook_answers": dict(deliveries.outcomes),
            "sweeper_calls": schedule.calls,
            "sweeper_answers": dict(schedule.answers),
            "seconds": round(elapsed, 1),
        },
        tables=[state_table, attempt_table, calls, failures, persistent, slow],
        checks=checks + persistent_checks + slow_checks,
    )
