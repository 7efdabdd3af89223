"""End to end with Cloud Tasks, as processes: `planbus dev` on the emulator, an OpenAI-compatible server
that takes 3 s, the Mini App's insert. The webhook answers `queued` at once; the emulator calls
process_plan_request, which makes the only LLM call; a worker killed in the middle of it is recovered by
the sweeper once the lease has expired."""

from __future__ import annotations

import os
import re
import signal
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from planbus.devstack.miniapp import MiniApp, MiniAppUser
from support.devstack_helpers import wait_until
from support.fake_llm import FakeLLM
from support.local_stack import DevStack

pytestmark = pytest.mark.e2e

SQL = psycopg.Connection[dict[str, Any]]
USER = MiniAppUser(uuid.UUID("0b7f9a3c-58d1-4c2e-8f6a-1d2e3f4a5b6c"), 555002)
LLM_SECONDS = 3.0
# The LLM timeout covers the 3 s answer; with Cloud Tasks the lease must outlive the dispatch deadline
# (timeout + 30 s), which is also how long a killed worker's request waits before the sweeper takes it.
STACK_SETTINGS = {
    "PLAN_GENERATOR": "openai",
    "OPENAI_API_KEY": "sk-fake-llm-for-e2e",
    "OPENAI_TIMEOUT": "5",
    "DRAFT_OPENAI_TIMEOUT": "5",
    "LEASE_SECONDS": "36",
    "MAX_ATTEMPTS": "3",
    "WEBHOOK_SECRET": "e2e-cloud-tasks-webhook-secret",
}


@pytest.fixture
def stack_database(database_url: str, sql: SQL) -> str:
    """This test's database, where a backend whose client was killed notices within 0.2 s."""
    name = sql.execute("SELECT current_database() AS name").fetchone()
    assert name is not None
    sql.execute(f"ALTER DATABASE \"{name['name']}\" SET client_connection_check_interval = '200ms'")
    return database_url


def start_dev(tmp_path: Path, database_url: str, llm: FakeLLM) -> DevStack:
    env = {
        **os.environ,
        **STACK_SETTINGS,
        "OPENAI_BASE_URL": llm.base_url,
        "DATABASE_URL": database_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    stack = DevStack(
        tmp_path, env, "--reminders-every", "1", "--sweep-every", "1", "--dispatch", "cloud-tasks"
    )
    stack.wait_ready()
    return stack


def new_request(sql: SQL, database_url: str, name: str = "Grace Hopper") -> uuid.UUID:
    sql.execute(
        "INSERT INTO public.telegram_users (user_id, telegram_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (USER.user_id, USER.telegram_id),
    )
    lead = sql.execute(
        "INSERT INTO public.leads (telegram_id, full_name, company) VALUES (%s, %s, 'Navy') RETURNING id",
        (USER.telegram_id, name),
    ).fetchone()
    assert lead is not None
    return MiniApp(database_url, USER).request_plan(lead["id"])


def row_of(sql: SQL, request_id: uuid.UUID) -> dict[str, Any]:
    row = sql.execute("SELECT * FROM public.plan_requests WHERE id = %s", (request_id,)).fetchone()
    assert row is not None
    return row


def finished(sql: SQL, request_id: uuid.UUID) -> dict[str, Any] | None:
    row = row_of(sql, request_id)
    return row if row["status"] in ("completed", "failed") else None


def answer_ms(dev: DevStack, request_id: uuid.UUID) -> int | None:
    """How long the relay waited for handle_plan_request's `queued`, from its log line."""
    for line in dev.output().splitlines():
        if "webhook delivered: queued" in line and str(request_id) in line:
            found = re.search(r"\bms=(\d+)", line)
            return int(found.group(1)) if found else None
    return None


def test_the_webhook_queues_and_the_worker_makes_the_plan(
    stack_database: str, sql: SQL, tmp_path: Path
) -> None:
    with FakeLLM(latency=LLM_SECONDS).running() as llm:
        dev = start_dev(tmp_path, stack_database, llm)
        try:
            state = dev.state()
            assert state["dispatch"]["mode"] == "cloud-tasks"
            assert "process_plan_request" in state["functions"]
            # The first webhook of an instance loads google-cloud-tasks and opens its channel; the second
            # is what every later one costs.
            answers, rows = [], []
            for name in ("Grace Hopper", "Ada Lovelace"):
                request_id = new_request(sql, stack_database, name)
                answers.append(wait_until(partial(answer_ms, dev, request_id), timeout=60))
                rows.append(wait_until(partial(finished, sql, request_id), timeout=60))
            calls = llm.call_count
        finally:
            dev.interrupt()
    output = dev.output()
    assert [(row["status"], row["attempts"]) for row in rows] == [("completed", 1)] * 2, output[-3000:]
    assert {row["result"]["model"] for row in rows} == {"fake-llm-1"}
    # Neither answer waited for the LLM (3 s a call); its only calls were the worker's, one per request.
    cold, warm = answers
    assert cold < LLM_SECONDS * 1000 and warm < 500, answers
    assert calls == 2
    assert re.search(r"process_plan_request\s+INFO", output)
    assert STACK_SETTINGS["WEBHOOK_SECRET"] not in output


def test_a_worker_killed_mid_plan_is_recovered_after_its_lease(
    stack_database: str, sql: SQL, tmp_path: Path
) -> None:
    victims: list[int] = []
    dev: DevStack | None = None

    def kill_the_worker(call: int) -> None:
        # The first LLM call is in flight: the worker instance dies, master and workers.
        if call == 1 and dev is not None:
            pid = dev.state()["functions"]["process_plan_request"]["pid"]
            victims.append(pid)
            os.killpg(pid, signal.SIGKILL)

    with FakeLLM(latency=LLM_SECONDS, on_call=kill_the_worker).running() as llm:
        dev = start_dev(tmp_path, stack_database, llm)
        try:
            request_id = new_request(sql, stack_database)
            wait_until(lambda: victims, timeout=60)
            held = row_of(sql, request_id)
            assert (held["status"], held["attempts"]) == ("processing", 1)
            done = wait_until(lambda: finished(sql, request_id), timeout=80)
            restarts = dev.state()["functions"]["process_plan_request"]["restarts"]
            calls = llm.call_count
        finally:
            dev.interrupt()
    output = dev.output()
    assert (done["status"], done["attempts"]) == ("completed", 2), output[-3000:]
    assert calls == 2
    assert restarts >= 1
    assert "process_plan_request exited; restarting" in output
    errors = sql.execute(
        "SELECT message FROM planbus_private.request_errors WHERE request_id = %s", (request_id,)
    ).fetchall()
    assert errors == [{"message": "lease expired during attempt 1"}]
