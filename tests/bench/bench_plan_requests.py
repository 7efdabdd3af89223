"""Per-request overhead of handle_plan_request with the offline generator, side by side with baselines.

    .venv/bin/python tests/bench/bench_plan_requests.py [--requests 200]

Runs on DATABASE_URL's server when set (it creates and drops its own database there), else on an embedded
PostgreSQL. Each row processes N distinct pending requests:

    bare SQL             claim + complete with a precomputed result, one psycopg connection: the floor
    use case             process_request for the plan kind directly (offline plan, reminders, pydantic,
                         two calls)
    webhook              a POST through the functions-framework test client: auth, parsing, the use case
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import functions_framework
import psycopg
from psycopg.types.json import Jsonb
from scratch import scratch_database, server

from planbus import logs
from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.kinds import PLAN
from planbus.llm.offline import OfflineGenerator
from planbus.models import LeadFacts
from planbus.services.requests import process_request
from planbus.settings import Settings, get_settings

MAIN = str(Path(__file__).resolve().parents[2] / "functions" / "main.py")
SECRET = "bench-secret"


def pending_requests(url: str, count: int) -> list[str]:
    """`count` leads with one pending request each."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            """
            WITH new_leads AS (
              INSERT INTO leads (telegram_id, full_name, company, title, notes)
              SELECT 1000 + n, 'Lead ' || n, 'Company ' || n, 'CTO', 'Met at a conference. Wants a pilot.'
                FROM generate_series(1, %s) AS n
              RETURNING id, telegram_id
            )
            INSERT INTO plan_requests (lead_id, telegram_id)
            SELECT id, telegram_id FROM new_leads RETURNING id
            """,
            (count,),
        ).fetchall()
    return [str(row[0]) for row in rows]


def timed(ids: list[str], process: Callable[[str], None]) -> list[float]:
    durations = []
    for request_id in ids:
        started = time.perf_counter()
        process(request_id)
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def bare_sql(url: str, settings: Settings) -> Callable[[str], None]:
    conn = psycopg.connect(url, autocommit=True)
    lead = LeadFacts(id=uuid.uuid4(), full_name="Lead", company="Company", title="CTO")
    plan = OfflineGenerator().generate(lead, today=date.today()).plan
    result = {"plan": plan.model_dump(mode="json"), "generator": "offline", "model": "bench"}
    reminders = [
        {"step_index": i, "due_at": "2030-01-01T10:00:00Z", "text": "t"} for i in range(len(plan.steps))
    ]

    def run(request_id: str) -> None:
        claim = conn.execute(
            "SELECT planbus_claim_request(p_kind => 'plan', p_request_id => %s, p_lease_seconds => %s,"
            " p_max_attempts => %s)",
            (request_id, settings.lease_seconds, settings.max_attempts),
        ).fetchone()
        assert claim is not None and claim[0]["claimed"]
        done = conn.execute(
            "SELECT planbus_complete_request(p_kind => 'plan', p_request_id => %s, p_attempt => %s,"
            " p_result => %s, p_completion => %s)",
            (
                request_id,
                claim[0]["attempt"],
                Jsonb(result),
                Jsonb({"plan": result["plan"], "reminders": reminders}),
            ),
        ).fetchone()
        assert done is not None and done[0]["completed"]

    return run


def use_case(url: str, settings: Settings) -> Callable[[str], None]:
    db = PostgresDatabase(url)
    generator = OfflineGenerator()

    def run(request_id: str) -> None:
        outcome = process_request(PLAN, db, generator, SystemClock(), request_id, settings=settings)
        assert outcome.outcome == "completed", outcome

    return run


def webhook(url: str) -> Callable[[str], None]:
    os.environ.update({"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "INFO"})
    os.environ.pop("OPENAI_API_KEY", None)
    get_settings.cache_clear()
    client = functions_framework.create_app("handle_plan_request", MAIN).test_client()  # type: ignore[no-untyped-call]
    headers = {"X-Webhook-Secret": SECRET}

    def run(request_id: str) -> None:
        event = {"type": "INSERT", "table": "plan_requests", "schema": "public", "record": {"id": request_id}}
        response = client.post("/", json=event, headers=headers)
        assert response.status_code == 200 and response.get_json()["outcome"] == "completed", response.data

    return run


def report(label: str, durations: list[float], floor: float) -> dict[str, Any]:
    ordered = sorted(durations)
    mean = statistics.fmean(durations)
    row = {
        "label": label,
        "mean": mean,
        "median": statistics.median(durations),
        "p95": ordered[int(len(ordered) * 0.95) - 1],
        "ratio": mean / floor,
    }
    print(f"{label:12} {row['mean']:8.2f} {row['median']:8.2f} {row['p95']:8.2f} {row['ratio']:7.1f}x")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description="per-request overhead of handle_plan_request (offline)")
    parser.add_argument("--requests", type=int, default=200, help="requests per row (default 200)")
    args = parser.parse_args()
    n = args.requests
    settings = Settings(lease_seconds=180, openai_timeout=60)
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    with server() as server_url, scratch_database(server_url) as url:
        ids = pending_requests(url, 3 * (n + 5))
        warm, ids = ids[:15], ids[15:]
        # Log lines are part of the cost (INFO, as deployed) but not of the output: they go to /dev/null.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            logs.configure("INFO")
            runners = {
                "bare SQL": bare_sql(url, settings),
                "use case": use_case(url, settings),
                "webhook": webhook(url),
            }
            for index, run in enumerate(runners.values()):
                for request_id in warm[index * 5 : (index + 1) * 5]:
                    run(request_id)
            results = {
                label: timed(ids[i * n : (i + 1) * n], run) for i, (label, run) in enumerate(runners.items())
            }
    print(f"{n} requests each, milliseconds per request, on {where}")
    print(f"{'':12} {'mean':>8} {'median':>8} {'p95':>8} {'vs SQL':>8}")
    floor = statistics.fmean(results["bare SQL"])
    for label, durations in results.items():
        report(label, durations, floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
