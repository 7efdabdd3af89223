"""How many LLM calls a plan request costs, over all its attempts, when the API keeps failing.

    .venv/bin/python tests/bench/bench_llm_retries.py [--requests 20] [--answer 429|503|unreachable]
                                                     [--retry-after 30]

Inserts N pending plan requests and runs each through process_request (the worker's use case) with
the real OpenAI generator, whose HTTP transport is a fake API (tests/support/openai_fakes.py) that answers
every call with a 429 (with `retry-after`), a 503, or a refused connection. Between rounds every pending
request's backoff is skipped (run_after moved to now), until each has used MAX_ATTEMPTS and failed for
good. The generator's sleeps are recorded, not slept. Reports calls per request, the in-call sleep, and a
request's error history. Runs on DATABASE_URL's server when set (in a scratch database), else an embedded
one.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import httpx2
import psycopg
from pydantic import SecretStr
from scratch import scratch_database, server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.kinds.plans import PLAN
from planbus.llm.openai_generator import OpenAIGenerator
from planbus.services.requests import process_request
from planbus.settings import Settings
from support.openai_fakes import FakeOpenAI, api_error


def failing_api(kind: str, retry_after: str) -> FakeOpenAI:
    if kind == "429":
        return FakeOpenAI(api_error(429, "Rate limit reached", headers={"retry-after": retry_after}))
    if kind == "503":
        return FakeOpenAI(api_error(503, "The server is overloaded"))
    return FakeOpenAI(httpx2.ConnectError("connection refused"))


def main() -> int:
    parser = argparse.ArgumentParser(description="LLM calls per plan request against a failing API")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--answer", choices=["429", "503", "unreachable"], default="429")
    parser.add_argument("--retry-after", default="30", help="the 429's retry-after header")
    args = parser.parse_args()
    settings = Settings(openai_api_key=SecretStr("sk-bench"), openai_timeout=60)

    fake = failing_api(args.answer, args.retry_after)
    slept: list[float] = []
    generator = OpenAIGenerator(
        api_key="sk-bench",
        model="gpt-5-mini",
        base_url="https://llm.bench.test/v1",
        timeout=settings.openai_timeout,
        http_client=fake.client(),
        sleep=slept.append,
    )
    with server() as server_url, scratch_database(server_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            ids = [
                str(row[0])
                for row in conn.execute(
                    """
                    WITH new_leads AS (
                      INSERT INTO leads (telegram_id, full_name)
                      SELECT 900000 + n, 'Lead ' || n FROM generate_series(1, %s) AS n
                      RETURNING id, telegram_id
                    )
                    INSERT INTO plan_requests (lead_id, telegram_id) SELECT id, telegram_id FROM new_leads
                    RETURNING id
                    """,
                    (args.requests,),
                )
            ]
        db = PostgresDatabase(url)
        try:
            rounds = 0
            while rounds < 10:
                rounds += 1
                for request_id in ids:
                    process_request(PLAN, db, generator, SystemClock(), request_id, settings=settings)
                with psycopg.connect(url, autocommit=True) as conn:
                    left = conn.execute(
                        "UPDATE plan_requests SET run_after = now() WHERE status = 'pending' RETURNING id"
                    ).fetchall()
                if not left:
                    break
            with psycopg.connect(url, autocommit=True) as conn:
                statuses = Counter(
                    str(row[0]) for row in conn.execute("SELECT status FROM plan_requests").fetchall()
                )
                history = conn.execute(
                    "SELECT attempt, message FROM planbus_private.request_errors"
                    " WHERE kind = 'plan' AND request_id = %s ORDER BY id",
                    (ids[0],),
                ).fetchall()
        finally:
            db.close()

    calls = len(fake.requests)
    print(
        f"{args.requests} requests, API answering {args.answer}"
        + (f" with retry-after {args.retry_after}" if args.answer == "429" else "")
        + f", MAX_ATTEMPTS {settings.max_attempts}"
    )
    print(f"LLM calls: {calls} in all, {calls / args.requests:.1f} per request; rounds: {rounds}")
    print(f"in-call sleep asked for: {sum(slept):.1f} s over {len(slept)} pauses")
    print(f"final statuses: {dict(statuses)}")
    print("error history of the first request:")
    for attempt, message in history:
        print(f"  attempt {attempt}: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
