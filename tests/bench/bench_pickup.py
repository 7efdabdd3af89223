"""Pickup latency: from a Mini App insert to the row claimed, and to the row completed.

Requests arrive as a Poisson stream (one connection inserting, at a steady average rate), the same
stream for every path, one path after the other:
- each of planbus's dispatch paths (targets.PICKUP_PATHS: the local relay, trigger → pg_notify →
  WebhookRelay → handle_plan_request, inline; and the same relay to handle_plan_request with
  DISPATCH=cloud-tasks, which enqueues on the local Cloud Tasks emulator, which posts to
  process_plan_request; offline plans). The target is set for the inline path; the emulator's dispatch
  latency is the emulator's (it polls its queue), not a figure of Cloud Tasks in production;
- the bare baseline: a NOTIFY trigger on bench.bare_requests → bare.BareRelay → bare_main.bare_worker;
- the 3-second poller planbus replaces (bare.Poller), with the bare function's statements.
Times are the server's own: from the row's created_at (its insert's transaction start) to the first
status change to claimed and to completed, recorded by a trigger with clock_timestamp()
(bench.transitions), so the client's polling is in no figure.

Then the webhook alone with DISPATCH=cloud-tasks: webhooks for new pending requests are posted straight to
handle_plan_request (no relay), 8 at a time as pg_net sends its batches, and each answer (`queued`, once
the task exists on the emulator) is timed from the client on this machine: the contract asks for about
100 ms of server time, with no LLM call. The first call of the process, which imports the Cloud Tasks
client and opens its channel, is shown apart.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import bare
import data
import psycopg
import serverside
import targets
from drivers import describe
from harness import Check, Column, Context, Result, Table, percentile, ratio
from load import drive
from servers import FunctionServer, running

HERE = Path(__file__).resolve().parent
BARE = "bare NOTIFY → function"
POLLER = "3-second poller"
WARM = 3
# Webhooks in flight at once, as pg_net sends them (its batches) to the webhook target.
WEBHOOK_CONCURRENCY = 8


def arrivals(url: str, inserts: list[str], rate: float, seed: int) -> None:
    """Run each insert (an INSERT ... RETURNING-free statement) at Poisson-spaced moments."""
    rng = random.Random(seed)
    with psycopg.connect(url, autocommit=True) as conn:
        next_at = time.monotonic()
        for statement in inserts:
            next_at += rng.expovariate(rate)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute(statement)


def wait_completed(url: str, table: str, count: int, timeout: float) -> None:
    """Until `count` rows of `table` are completed (raises after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE status = 'completed'").fetchone()
            done = row[0] if row else 0
            if done >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {count} rows of {table} completed after {timeout:.0f} s")
            time.sleep(0.05)


def latencies(
    url: str, table: str, claimed: str, completed: str, skip: int
) -> tuple[list[float], list[float]]:
    """(insert → claimed, insert → completed) in ms for the rows of `table`, oldest first, after `skip`."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"""
            SELECT extract(epoch FROM c.at - r.created_at)::float * 1000,
                   extract(epoch FROM d.at - r.created_at)::float * 1000
              FROM {table} r
              JOIN LATERAL (SELECT min(at) AS at FROM bench.transitions t
                             WHERE t.id = r.id AND t.status = %s) c ON true
              JOIN LATERAL (SELECT min(at) AS at FROM bench.transitions t
                             WHERE t.id = r.id AND t.status = %s) d ON true
             ORDER BY r.created_at OFFSET %s
            """,
            (claimed, completed, skip),
        ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def enqueue_times(url: str, log_dir: Path, count: int) -> tuple[float, list[float], dict[str, int]]:
    """(the process's first answer, the others' answers in ms, the outcomes) of `count` + 1 webhooks for
    new pending requests posted straight to handle_plan_request with DISPATCH=cloud-tasks."""
    with psycopg.connect(url, autocommit=True) as conn:
        ids = data.pending_requests(conn, count + 1, telegram_base=8_000_000)
    bodies = [targets.webhook_body({"id": request_id}) for request_id in ids]
    with targets.cloud_tasks_path(url, log_dir) as path:
        first = drive(
            path.webhook_url, bodies[:1], concurrency=1, headers=targets.headers(), outcome=describe
        )
        rest = drive(
            path.webhook_url,
            bodies[1:],
            concurrency=WEBHOOK_CONCURRENCY,
            headers=targets.headers(),
            outcome=describe,
        )
    return first.latencies[0], rest.latencies, dict(first.outcomes + rest.outcomes)


def enqueue_table(first: float, times: list[float]) -> Table:
    table = Table(
        f"handle_plan_request with DISPATCH=cloud-tasks: webhook → `queued`, {len(times)} webhooks "
        f"{WEBHOOK_CONCURRENCY} at a time (client clock, this machine)",
        [Column("value", "", "ms")],
    )
    table.add("first call of the process (imports the Cloud Tasks client)", value=first)
    for p in (50, 95, 99):
        table.add(f"the others: p{p}", value=percentile(times, p))
    table.add("the others: max", value=max(times))
    table.add_in("", "the others: over 100 ms", value=sum(t > 100 for t in times))
    return table


def run(ctx: Context) -> Result:
    n = ctx.size.pick(500, 40, 10)
    rate = ctx.size.pick(25.0, 50.0, 20.0)
    measured: dict[str, tuple[list[float], list[float]]] = {}
    log_dir = ctx.artifact("logs/.keep").parent
    sample = targets.sample_result()
    with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
        serverside.install(conn)
        serverside.watch_transitions(conn, targets.REQUESTS_TABLE)
        bare.create_table(conn, notify=True)
        serverside.watch_transitions(conn, bare.TABLE)
        result_file = ctx.artifact("bare_result.json")
        result_file.write_text(sample.result)
        paths = list(targets.PICKUP_PATHS.items())
        people = data.requesters(conn, len(paths) * (n + WARM), telegram_base=6_000_000)

        def planbus_inserts(batch: list[data.Requester]) -> list[str]:
            return [targets.mini_app_insert(targets.REQUESTS_TABLE, p.lead_id, p.telegram_id) for p in batch]

        def bare_inserts(count: int, offset: int) -> list[str]:
            return [
                f"INSERT INTO {bare.TABLE} (lead_id, telegram_id) "
                f"VALUES (gen_random_uuid(), {7_000_000 + offset + i})"
                for i in range(count)
            ]

        def measure(
            label: str, table: str, inserts: list[str], claimed: str, before: int, warm: int = WARM
        ) -> None:
            if warm:
                arrivals(url, inserts[:warm], rate, seed=1)
                wait_completed(url, table, before + warm, 60)
            arrivals(url, inserts[warm:], rate, seed=2)
            wait_completed(url, table, before + len(inserts), 120 + n / 5)
            measured[label] = latencies(url, table, claimed, "completed", before + warm)

        done = 0
        for index, (label, path) in enumerate(paths):
            batch = people[index * (n + WARM) : (index + 1) * (n + WARM)]
            with path(url, log_dir):
                measure(label, targets.REQUESTS_TABLE, planbus_inserts(batch), targets.CLAIMED, done)
            done += len(batch)
        worker = FunctionServer(
            "bare_worker",
            HERE / "bare_main.py",
            {"DATABASE_URL": url, "BARE_RESULT_FILE": str(result_file)},
            log_dir / "bare-worker.log",
        )
        with running(worker), bare.BareRelay(url, worker.url):
            measure(BARE, bare.TABLE, bare_inserts(n + WARM, 0), "processing", 0)
        with bare.Poller(url, sample.result):
            measure(POLLER, bare.TABLE, bare_inserts(n, n + WARM), "processing", n + WARM, warm=0)
        webhooks = ctx.size.pick(200, 40, 10)
        first_enqueue, enqueues, enqueue_outcomes = enqueue_times(
            url, ctx.artifact("logs/enqueue/.keep").parent, webhooks
        )

    table = Table(
        f"insert → claimed and insert → completed, {n} requests per path at {rate:g}/s (server clock)",
        [
            Column("claimed_p50", "claimed p50", "ms"),
            Column("claimed_p95", "p95", "ms"),
            Column("claimed_p99", "p99", "ms"),
            Column("completed_p50", "completed p50", "ms"),
            Column("completed_p95", "p95", "ms"),
            Column("completed_p99", "p99", "ms"),
            Column("vs_bare", "claimed p50 vs bare", "x"),
            Column("vs_poller", "vs poller", "x"),
        ],
    )
    base = percentile(measured[BARE][0], 50)
    poller = percentile(measured[POLLER][0], 50)
    for label, (claimed, completed) in measured.items():
        p50 = percentile(claimed, 50)
        table.add(
            label,
            claimed_p50=p50,
            claimed_p95=percentile(claimed, 95),
            claimed_p99=percentile(claimed, 99),
            completed_p50=percentile(completed, 50),
            completed_p95=percentile(completed, 95),
            completed_p99=percentile(completed, 99),
            vs_bare=ratio(p50, base),
            vs_poller=ratio(p50, poller),
        )
    checks = [
        Check(
            f"{label}: pickup p50 vs bare function",
            ratio(percentile(measured[label][0], 50), base),
            "<=",
            1.3,
        )
        for label, _ in paths
        if label == targets.PICKUP_TARGET_PATH
    ]
    checks += [
        Check(f"{label}: every request measured", float(len(values[0])), "==", float(n), "must", "")
        for label, values in measured.items()
    ]
    checks += [
        Check("cloud-tasks webhook: answered p99", percentile(enqueues, 99), "<=", 100.0, "target", "ms"),
        Check(
            "cloud-tasks webhook: every webhook answered queued",
            float(enqueue_outcomes.get("200 queued", 0)),
            "==",
            float(webhooks + 1),
            "must",
            "",
        ),
    ]
    return Result(
        title="pickup latency through planbus's dispatch paths against a bare NOTIFY function and a poller",
        about=__doc__ or "",
        params={
            "requests_per_path": n,
            "arrivals_per_second": rate,
            "poll_interval_seconds": bare.POLL_INTERVAL,
            "cloud_tasks_webhooks": webhooks,
            "cloud_tasks_webhook_answers": enqueue_outcomes,
        },
        tables=[table, enqueue_table(first_enqueue, enqueues)],
        checks=checks,
        notes=[
            f"{label}: measured beside the target path; its dispatch runs through the local Cloud Tasks "
            "emulator, which polls its queue and posts one task at a time, so its latency is the "
            "emulator's, not Cloud Tasks' in production"
            for label, _ in paths
            if label != targets.PICKUP_TARGET_PATH
        ],
    )
