"""Cloud Tasks dispatch on the local emulator, with an OpenAI-compatible server that takes `--llm-seconds`.

    .venv/bin/python tests/bench/bench_cloud_tasks.py [--webhooks 200] [--llm-seconds 10]
                                                      [--clients 1,4,8,16] [--threads 4]
                                                      [--webhook-concurrency 8]

Runs on DATABASE_URL's server when set (in a scratch database it drops), else on an embedded PostgreSQL.

1. Worker concurrency: N clients POST {"request_id"} to one process_plan_request server (functions-framework
   with THREADS=--threads, as one Cloud Run instance) at once; wall time against N x llm-seconds.
2. Webhooks: --webhooks Supabase INSERT payloads through handle_plan_request (DISPATCH=cloud-tasks, the
   emulator's queue), --webhook-concurrency (8) at a time as pg_net sends them; the server time of each
   is the time inside the WSGI app (functions-framework's test client, no sockets), the first call of the
   process included.
3. Drain: the emulator dispatches the tasks to the worker one at a time (its only mode), so the drain takes
   about webhooks x llm-seconds and says nothing of Cloud Tasks' concurrency, which is the queue's
   max_concurrent_dispatches times the instances' concurrency (part 1). Then exactly once: LLM calls,
   completed rows, attempts, reminders and errors are counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import functions_framework
import httpx
import psycopg
from scratch import scratch_database, server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from planbus.devstack.console import Console  # noqa: E402
from planbus.devstack.stack import server_command  # noqa: E402
from planbus.devstack.supervisor import ManagedProcess, free_port, http_ready  # noqa: E402
from planbus.devstack.tasks_emulator import TasksEmulator  # noqa: E402
from planbus.settings import get_settings  # noqa: E402
from support.fake_llm import SlowLLM  # noqa: E402

MAIN = ROOT / "functions" / "main.py"
SECRET = "bench-cloud-tasks-secret-0123456789"


def settings_environment(database_url: str, llm: SlowLLM, llm_seconds: float) -> dict[str, str]:
    timeout = llm_seconds + 10
    return {
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": SECRET,
        "PLAN_GENERATOR": "openai",
        "OPENAI_API_KEY": "sk-bench-fake-llm",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_TIMEOUT": str(timeout),
        "DRAFT_OPENAI_TIMEOUT": str(timeout),
        "LEASE_SECONDS": str(int(timeout + 40)),
        # No sweeper runs here; a pending row waiting its turn on the emulator is not lost.
        "LOST_WEBHOOK_SECONDS": "86400",
        "LOG_LEVEL": "WARNING",
    }


def pending_requests(url: str, count: int, first_user: int) -> list[str]:
    """`count` leads with one pending request each, one user each (the daily limit is per user)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            """
            WITH new_leads AS (
              INSERT INTO leads (telegram_id, full_name, company, title, notes)
              SELECT %s + n, 'Lead ' || n, 'Company ' || n, 'CTO', 'Met at a conference. Wants a pilot.'
                FROM generate_series(1, %s) AS n
              RETURNING id, telegram_id
            )
            INSERT INTO plan_requests (lead_id, telegram_id)
            SELECT id, telegram_id FROM new_leads RETURNING id
            """,
            (first_user, count),
        ).fetchall()
    return [str(row[0]) for row in rows]


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms, max {ordered[-1]:.1f} ms"


def worker_concurrency(url: str, worker_url: str, clients: list[int], llm_seconds: float) -> None:
    print(f"\n1. worker concurrency: process_plan_request, LLM {llm_seconds:g} s per call")
    print(f"   {'clients':>7} {'wall':>8} {'concurrent':>11}  outcomes")
    first_user = 10_000_000
    with httpx.Client(timeout=llm_seconds * 20) as http:
        # The first call of the instance imports the OpenAI client and opens its connections: not counted.
        [warm_up] = pending_requests(url, 1, first_user - 1)
        started = time.monotonic()
        http.post(worker_url, json={"request_id": warm_up}, headers={"X-Webhook-Secret": SECRET})
        print(f"   first call of the instance (cold): {time.monotonic() - started:.1f} s")
        for count in clients:
            ids = pending_requests(url, count, first_user)
            first_user += count

            def call(request_id: str) -> str:
                answer = http.post(
                    worker_url, json={"request_id": request_id}, headers={"X-Webhook-Secret": SECRET}
                )
                return f"{answer.status_code} {answer.json().get('outcome')}"

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=count) as pool:
                outcomes = list(pool.map(call, ids))
            wall = time.monotonic() - started
            tally = {o: outcomes.count(o) for o in sorted(set(outcomes))}
            print(f"   {count:>7} {wall:>7.1f}s {count * llm_seconds / wall:>11.1f}  {tally}")


def webhooks(url: str, count: int, concurrency: int) -> list[str]:
    print(f"\n2. webhooks: {count} INSERT payloads, {concurrency} at a time, DISPATCH=cloud-tasks")
    ids = pending_requests(url, count, 20_000_000)
    get_settings.cache_clear()
    client = functions_framework.create_app("handle_plan_request", str(MAIN)).test_client()  # type: ignore[no-untyped-call]
    headers = {"X-Webhook-Secret": SECRET}

    def deliver(request_id: str) -> tuple[float, str]:
        event = {"type": "INSERT", "table": "plan_requests", "schema": "public", "record": {"id": request_id}}
        started = time.perf_counter()
        response = client.post("/", json=event, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, f"{response.status_code} {(response.get_json() or {}).get('outcome')}"

    first = deliver(ids[0])
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        rest = list(pool.map(deliver, ids[1:]))
    times = [first[0], *(t for t, _ in rest)]
    outcomes = [first[1], *(o for _, o in rest)]
    print(f"   outcomes {dict((o, outcomes.count(o)) for o in sorted(set(outcomes)))}")
    print(f"   server time, all {count}: {quantiles(times)}")
    print(f"   first call of the process (imports google-cloud-tasks, opens the channel): {first[0]:.1f} ms")
    print(f"   the other {count - 1}: {quantiles(times[1:])}; over 100 ms: {sum(t > 100 for t in times)}")
    return ids


def drain(url: str, ids: list[str], llm: SlowLLM, llm_seconds: float, calls_before: int) -> None:
    expected = len(ids) * llm_seconds
    print(f"\n3. drain: the emulator runs one task at a time, about {expected:.0f} s for {len(ids)} plans")
    started = time.monotonic()
    deadline = started + expected * 1.5 + 120
    last_report = started
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT status, count(*) FROM plan_requests WHERE id = ANY(%s::uuid[]) GROUP BY status",
                (ids,),
            ).fetchall()
            counts: dict[str, Any] = dict(rows)
            if (
                counts.get("completed", 0) + counts.get("failed", 0) == len(ids)
                or time.monotonic() > deadline
            ):
                break
            if time.monotonic() - last_report > 120:
                print(f"   {time.monotonic() - started:6.0f} s: {counts}", flush=True)
                last_report = time.monotonic()
            time.sleep(1.0)
        took = time.monotonic() - started
        attempts: dict[int, int] = dict(
            conn.execute(
                "SELECT attempts, count(*) FROM plan_requests WHERE id = ANY(%s::uuid[]) GROUP BY 1", (ids,)
            ).fetchall()
        )
        reminders = conn.execute(
            "SELECT count(*), count(DISTINCT (plan_request_id, step_index)), count(DISTINCT plan_request_id)"
            "  FROM reminders WHERE plan_request_id = ANY(%s::uuid[])",
            (ids,),
        ).fetchone()
        errors = conn.execute(
            "SELECT count(*) FROM planbus_private.request_errors WHERE request_id = ANY(%s::uuid[])", (ids,)
        ).fetchone()
    print(f"   drained in {took:.0f} s ({took / len(ids):.2f} s a plan): {counts}")
    print(f"   LLM calls {llm.calls - calls_before} for {len(ids)} requests; attempts {attempts}")
    assert reminders is not None and errors is not None
    print(
        f"   reminders {reminders[0]} ({reminders[1]} distinct, for {reminders[2]} requests); "
        f"errors {errors[0]}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--webhooks", type=int, default=200, help="0: part 1 only")
    parser.add_argument("--llm-seconds", type=float, default=10.0)
    parser.add_argument(
        "--webhook-concurrency", type=int, default=8, help="webhooks in flight at once (pg_net sends batches)"
    )
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated client counts for part 1")
    parser.add_argument(
        "--threads", type=int, default=4, help="THREADS of the worker server (its concurrency)"
    )
    args = parser.parse_args()
    console = Console(open(os.devnull, "w"), min_severity="ERROR")  # noqa: SIM115
    with (
        server() as server_url,
        scratch_database(server_url) as url,
        SlowLLM(args.llm_seconds).running() as llm,
    ):
        emulator = TasksEmulator(console)
        emulator.start()
        port = free_port()
        worker_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            **settings_environment(url, llm, args.llm_seconds),
            **emulator.environment(),
            "PLAN_WORKER_URL": worker_url,
            "THREADS": str(args.threads),
            "PYTHONUNBUFFERED": "1",
        }
        worker = ManagedProcess(
            "process_plan_request",
            server_command("process_plan_request", MAIN, "127.0.0.1", port),
            env=env,
            console=console,
            ready=http_ready(worker_url),
            cwd=str(ROOT),
        )
        worker.start(90)
        os.environ.update({k: v for k, v in env.items() if k != "THREADS"})
        try:
            print(
                f"emulator {emulator.host}, worker {worker_url} (THREADS={args.threads}), "
                f"fake LLM {llm.base_url}"
            )
            worker_concurrency(
                url, worker_url, [int(n) for n in args.clients.split(",") if n], args.llm_seconds
            )
            if args.webhooks:
                calls_before = llm.calls
                ids = webhooks(url, args.webhooks, args.webhook_concurrency)
                drain(url, ids, llm, args.llm_seconds, calls_before)
        finally:
            worker.stop()
            emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
