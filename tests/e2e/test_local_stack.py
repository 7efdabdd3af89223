"""End to end: `planbus dev` and `planbus demo` as real processes (functions-framework servers, webhook relay,
scheduler, Telegram sink) on this run's PostgreSQL, driven as the Mini App drives them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import SERVER_URL_FROM_ENV
from planbus.db.postgres import PostgresDatabase
from planbus.devstack.miniapp import MiniApp, MiniAppUser
from planbus.devstack.stack import FUNCTIONS
from support.devstack_helpers import group_alive, wait_until
from support.local_stack import PLANBUS, DevStack

pytestmark = pytest.mark.e2e

SQL = psycopg.Connection[dict[str, Any]]
USER = MiniAppUser(uuid.UUID("5f0c7a52-94a4-4f57-9a0e-3d1b2c4e6a10"), 555001)
# Short leases and a short lost-webhook grace so recovery happens within seconds (LEASE_SECONDS must
# exceed OPENAI_TIMEOUT and DRAFT_OPENAI_TIMEOUT, which the offline generators never use). These run the
# relay-only path (--dispatch inline): with Cloud Tasks the lease must also outlive the dispatch deadline,
# the LLM timeout plus 30 s (test_cloud_tasks_flow.py covers that path).
STACK_SETTINGS = {
    "PLAN_GENERATOR": "offline",
    "LEASE_SECONDS": "3",
    "OPENAI_TIMEOUT": "1",
    "DRAFT_OPENAI_TIMEOUT": "1",
    "LOST_WEBHOOK_SECONDS": "2",
    "MAX_ATTEMPTS": "3",
    "WEBHOOK_SECRET": "e2e-webhook-secret",
}


@pytest.fixture
def stack_database(database_url: str, sql: SQL) -> str:
    """This test's database, where a backend whose client vanished notices within 0.2 s (a killed worker's
    transaction is rolled back at once, as it would be once TCP keepalive gives up on a real network)."""
    name = sql.execute("SELECT current_database() AS name").fetchone()
    assert name is not None
    sql.execute(f"ALTER DATABASE \"{name['name']}\" SET client_connection_check_interval = '200ms'")
    return database_url


@pytest.fixture
def dev(stack_database: str, tmp_path: Path) -> Iterator[DevStack]:
    env = {**os.environ, **STACK_SETTINGS, "DATABASE_URL": stack_database}
    stack = DevStack(tmp_path, env, "--reminders-every", "0.5", "--sweep-every", "1", "--dispatch", "inline")
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.interrupt()


def seed(sql: SQL, leads: int) -> list[dict[str, Any]]:
    sql.execute(
        "INSERT INTO public.telegram_users (user_id, telegram_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (USER.user_id, USER.telegram_id),
    )
    return [
        row
        for i in range(leads)
        if (
            row := sql.execute(
                "INSERT INTO public.leads (telegram_id, full_name, company) "
                "VALUES (%s, %s, 'Acme') RETURNING *",
                (USER.telegram_id, f"Lead {i}"),
            ).fetchone()
        )
    ]


def status_of(sql: SQL, request_id: uuid.UUID) -> dict[str, Any]:
    row = sql.execute("SELECT * FROM public.plan_requests WHERE id = %s", (request_id,)).fetchone()
    assert row is not None
    return row


def test_requests_from_the_mini_app_complete_and_their_reminders_reach_the_sink(
    dev: DevStack, stack_database: str, sql: SQL
) -> None:
    app = MiniApp(stack_database, USER)
    request_ids = [app.request_plan(lead["id"]) for lead in seed(sql, 5)]

    def completed(request_id: uuid.UUID) -> bool:
        return (app.get_request(request_id) or {}).get("status") == "completed"

    for request_id in request_ids:
        wait_until(partial(completed, request_id), timeout=60)

    operator = PostgresDatabase(stack_database)
    first_steps = []
    try:
        for request_id in request_ids:
            reminders = app.reminders(request_id)
            assert [r["step_index"] for r in reminders] == list(range(len(reminders))) and reminders
            first = reminders[0]
            if first["status"] == "scheduled" and first["due_at"] > datetime.now(UTC):
                operator.call(
                    "planbus_reschedule_reminder", p_reminder_id=first["id"], p_due_at=datetime.now(UTC)
                )
            first_steps.append(str(first["id"]))
    finally:
        operator.close()

    def in_the_sink(reminder_id: str) -> bool:
        return f"(reminder {reminder_id})" in dev.output()

    for reminder_id in first_steps:
        wait_until(partial(in_the_sink, reminder_id), timeout=60)
    delivered = sql.execute(
        "SELECT status, delivered_via FROM public.reminders WHERE id = ANY(%s::uuid[])", (first_steps,)
    ).fetchall()
    assert delivered == [{"status": "sent", "delivered_via": "outbox"}] * 5
    assert f"Telegram → chat {USER.telegram_id}" in dev.output()
    assert STACK_SETTINGS["WEBHOOK_SECRET"] not in dev.state_file.read_text()
    attempts = sql.execute("SELECT attempts FROM public.plan_requests").fetchall()
    assert attempts == [{"attempts": 1}] * 5


def test_a_killed_function_server_is_restarted_and_the_request_still_completes(
    dev: DevStack, stack_database: str, sql: SQL
) -> None:
    (lead,) = seed(sql, 1)
    victim = dev.state()["functions"]["handle_plan_request"]["pid"]
    os.killpg(victim, signal.SIGKILL)  # the instance dies: master and workers
    request_id = MiniApp(stack_database, USER).request_plan(lead["id"])
    wait_until(lambda: status_of(sql, request_id)["status"] == "completed", timeout=60)
    restarted = wait_until(lambda: dev.state()["functions"]["handle_plan_request"], timeout=60)
    wait_until(lambda: dev.state()["functions"]["handle_plan_request"]["restarts"] == 1, timeout=60)
    assert dev.state()["functions"]["handle_plan_request"]["pid"] != victim
    assert restarted["url"] == dev.state()["functions"]["handle_plan_request"]["url"]
    assert "handle_plan_request exited; restarting" in dev.output()


def test_a_request_whose_worker_was_killed_mid_processing_is_recovered_by_the_sweeper(
    dev: DevStack, stack_database: str, sql: SQL
) -> None:
    (lead,) = seed(sql, 1)
    # Hold the lead so the worker stops inside planbus_complete_request, after its claim committed.
    with psycopg.connect(stack_database, row_factory=dict_row) as holder:
        holder.execute("SELECT id FROM public.leads WHERE id = %s FOR NO KEY UPDATE", (lead["id"],))
        request_id = MiniApp(stack_database, USER).request_plan(lead["id"])
        wait_until(lambda: status_of(sql, request_id)["status"] == "processing", timeout=60)
        waiting = (
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        wait_until(lambda: sql.execute(waiting).fetchone() == {"n": 1}, timeout=60)

        os.killpg(dev.state()["functions"]["handle_plan_request"]["pid"], signal.SIGKILL)
        wait_until(lambda: sql.execute(waiting).fetchone() == {"n": 0}, timeout=60)  # its transaction is gone
        held = status_of(sql, request_id)
        assert (held["status"], held["attempts"]) == ("processing", 1)
        holder.rollback()

    done = wait_until(
        lambda: (row := status_of(sql, request_id))["status"] == "completed" and row, timeout=90
    )
    assert done["attempts"] == 2
    errors = sql.execute(
        "SELECT message FROM planbus_private.request_errors WHERE request_id = %s", (request_id,)
    ).fetchall()
    assert errors == [{"message": "lease expired during attempt 1"}]


def test_ctrl_c_stops_every_process_of_the_stack(stack_database: str, tmp_path: Path) -> None:
    env = {**os.environ, **STACK_SETTINGS, "DATABASE_URL": stack_database}
    stack = DevStack(tmp_path, env, "--dispatch", "inline")
    state = stack.wait_ready()
    servers = [f["pid"] for f in state["functions"].values()]
    assert len(servers) == len(FUNCTIONS) and all(group_alive(pid) for pid in servers)
    assert stack.interrupt() == 0
    assert not [pid for pid in servers if group_alive(pid)]
    assert not stack.state_file.exists()
    output = stack.output()
    assert "ready. Press Ctrl-C to stop." in output and output.rstrip().endswith("planbus dev: stopped")
    assert "handle_draft_request" in FUNCTIONS
    for name in FUNCTIONS:
        assert re.search(rf"{name}\s+http://127\.0\.0\.1:\d+", output)


def test_the_demo_runs_the_whole_flow_and_exits_0(fresh_database: Any, template_database: str) -> None:
    env = {**os.environ}
    if SERVER_URL_FROM_ENV:
        # On a server of our own choosing: the demo on an existing, migrated database.
        env["DATABASE_URL"] = fresh_database(template_database)
    # Otherwise no DATABASE_URL at all: the demo starts its own embedded PostgreSQL, as on a fresh machine.
    result = subprocess.run(
        [PLANBUS, "demo"], env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "generator: offline (no OPENAI_API_KEY set)" in out
    assert "embedded PostgreSQL" in out if not SERVER_URL_FROM_ENV else "(DATABASE_URL)" in out
    assert re.search(r"completed at \d+\.\d+ s", out)
    assert "step  when    channel" in out and "Telegram → chat 7000000001" in out
    # After the plan, a draft of its first step's message, made by the draft kind's worker.
    assert out.index("draft for step 1:") > out.index("plan for ")
    assert re.search(r"draft for step 1:\n  channel: \w+\n", out)
    assert out.rstrip().endswith("demo complete: every process stopped")
    servers = dict(re.findall(r"(\w+)\s+http://127\.0\.0\.1:\d+  \(functions-framework, pid (\d+)\)", out))
    assert {"handle_plan_request", "process_plan_request", "reset_stale_requests"} <= set(servers)
    assert {"handle_draft_request", "process_draft_request"} <= set(servers)
    [emulator] = re.findall(r"\(gcloud-tasks-emulator, pid (\d+);", out)
    pids = [int(pid) for pid in (*servers.values(), emulator)]
    assert not [pid for pid in pids if group_alive(pid)]


def test_the_mini_app_polls_request_tables_only() -> None:
    # The table is a name in the query: anything but a registered kind's table is refused before it is used.
    with pytest.raises(ValueError, match="'leads' is not a request table"):
        MiniApp("postgresql://unused", USER).get_request(uuid.uuid4(), "leads")
