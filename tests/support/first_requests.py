"""A cold start of each deployed target, as a fresh interpreter sees it: import functions/main.py through
functions-framework, then serve one real request, noting the time each part takes and the heavy libraries
loaded by then. The import tests and tests/bench/import_time.py both run it.

    targets()                      the targets main.py declares (read from its source, not imported)
    FIRST_REQUESTS[target](sql)    arranges rows for one request doing that target's real work
    cold_start(target, ...)        runs it in a new interpreter; returns a ColdStart
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from planbus.initdata import sign_init_data
from support.openai_fakes import VALID_PLAN

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "functions" / "main.py"
SECRET = "cold-start-secret"
BOT_TOKEN = "7000000001:AAFcoldSTARTtokenFORimportCHECKS_00"
JWT_SECRET = "cold-start-jwt-secret-of-at-least-32-characters"

# What a target that does not use them must not pay for: module name prefixes. No target signs with PyJWT
# (telegram_auth's HS256 is the standard library's HMAC), so no target loads it or cryptography.
HEAVY = ("openai", "supabase", "jwt", "cryptography", "httpx", "psycopg", "google.cloud.tasks", "grpc")
# What importing main.py leaves to the code path that uses it: each target needs some of these, and a
# target's first request loads only those.
DEFERRED = ("pydantic", "planbus.settings", "planbus.models", "planbus.kinds")
# Each request kind's module: a target loads the kinds it serves, and no other.
KIND_MODULES = {"planbus.kinds.plans": "plan", "planbus.kinds.drafts": "draft"}

PLAN = frozenset({"plan"})
DRAFT = frozenset({"draft"})

Sql = psycopg.Connection[dict[str, Any]]

# planbus is imported from beside main.py, as in a deployed function (and ahead of an installed one).
PROBE = """
import json, os, sys, time
call = json.loads(sys.argv[1])
sys.path.insert(0, os.path.dirname(call["source"]))
started = time.perf_counter()
import functions_framework
framework = time.perf_counter()
app = functions_framework.create_app(call["target"], call["source"])
imported = time.perf_counter()
after_import = sorted(sys.modules)
response = app.test_client().post("/", data=call["body"], headers=call["headers"])
answered = time.perf_counter()
print(json.dumps({
    "framework": framework - started,
    "main": imported - framework,
    "request": answered - imported,
    "status": response.status_code,
    "answer": response.get_data(as_text=True)[:500],
    "after_import": after_import,
    "after_request": sorted(sys.modules),
}))
"""


def heavy(modules: list[str], among: tuple[str, ...] = HEAVY) -> set[str]:
    """Which of `among` the loaded `modules` include (a package counts with its submodules and siblings
    such as psycopg_pool or google.cloud.tasks_v2)."""
    return {h for h in among for m in modules if m == h or m.startswith((h + ".", h + "_"))}


@dataclass(frozen=True)
class FirstRequest:
    """One request doing a target's real work, and the heavy libraries that work needs."""

    body: dict[str, Any] | None
    uses: frozenset[str]
    env: dict[str, str] = field(default_factory=dict)
    answer: dict[str, Any] = field(default_factory=dict)  # what the JSON answer holds when the work is done
    kinds: frozenset[str] = frozenset()  # the request kinds the target serves (KIND_MODULES' names)


@dataclass(frozen=True)
class ColdStart:
    """What one fresh interpreter spent and loaded; times in seconds."""

    framework: float  # import functions_framework
    main: float  # create_app: importing main.py
    request: float  # the first request, end to end through the test client
    status: int
    answer: str
    after_import: set[str]  # HEAVY loaded by importing main.py
    after_request: set[str]  # HEAVY loaded once the first request is answered
    deferred_at_import: set[str]  # DEFERRED loaded by importing main.py
    kinds: set[str]  # request kinds whose module is loaded once the first request is answered

    @property
    def total(self) -> float:
        return self.framework + self.main + self.request


def targets(main: Path = MAIN) -> list[str]:
    """The functions main.py decorates as functions-framework targets, in source order."""
    found = []
    for node in ast.parse(main.read_text()).body:
        if isinstance(node, ast.FunctionDef) and any(
            ast.unparse(d.func if isinstance(d, ast.Call) else d).startswith("functions_framework.")
            for d in node.decorator_list
        ):
            found.append(node.name)
    return found


def cold_start(
    target: str,
    database_url: str,
    request: FirstRequest | None,
    *,
    source: Path = MAIN,
    timeout: float = 120,
) -> ColdStart:
    """Import `source` for `target` and serve `request` (None: an empty POST) in a new interpreter, with
    no setting but the database, the secret and the request's own."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": SECRET,
        **(request.env if request else {}),
    }
    body = json.dumps(request.body) if request and request.body is not None else ""
    call = {
        "target": target,
        "source": str(source),
        "body": body,
        "headers": {"X-Webhook-Secret": SECRET, "Content-Type": "application/json"},
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(call)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"the cold start of {target} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    return ColdStart(
        framework=seen["framework"],
        main=seen["main"],
        request=seen["request"],
        status=seen["status"],
        answer=seen["answer"],
        after_import=heavy(seen["after_import"]),
        after_request=heavy(seen["after_request"]),
        deferred_at_import=heavy(seen["after_import"], DEFERRED),
        kinds={kind for module, kind in KIND_MODULES.items() if module in seen["after_request"]},
    )


def _lead(sql: Sql, telegram_id: int) -> dict[str, Any]:
    row = sql.execute(
        "INSERT INTO leads (telegram_id, full_name, company) VALUES (%s, 'Maya Chen', 'Northwind') "
        "RETURNING *",
        (telegram_id,),
    ).fetchone()
    assert row is not None
    return row


def _pending(sql: Sql, telegram_id: int, *, age: timedelta = timedelta(0)) -> dict[str, Any]:
    lead = _lead(sql, telegram_id)
    since = datetime.now(UTC) - age
    row = sql.execute(
        "INSERT INTO plan_requests (lead_id, telegram_id, created_at, run_after) VALUES (%s, %s, %s, %s) "
        "RETURNING *",
        (lead["id"], telegram_id, since, since),
    ).fetchone()
    assert row is not None
    return row


def plan_request_insert(sql: Sql) -> FirstRequest:
    """A webhook for a new pending request: claimed, planned offline, completed."""
    record = json.loads(json.dumps(_pending(sql, 7101), default=str))
    event = {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": record,
        "old_record": None,
    }
    return FirstRequest(event, frozenset({"psycopg"}), answer={"outcome": "completed"}, kinds=PLAN)


def due_reminder(sql: Sql) -> FirstRequest:
    """A due reminder of a completed plan, delivered to the local outbox (no bot token)."""
    lead = _lead(sql, 7201)
    request = sql.execute(
        "INSERT INTO plan_requests (lead_id, telegram_id, status, result) "
        "VALUES (%s, %s, 'completed', '{}') RETURNING id",
        (lead["id"], lead["telegram_id"]),
    ).fetchone()
    assert request is not None
    sql.execute("UPDATE leads SET plan_request_id = %s WHERE id = %s", (request["id"], lead["id"]))
    sql.execute(
        "INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text) "
        "VALUES (%s, %s, %s, 0, now() - interval '1 minute', 'Step 1 of 1 for Maya Chen · Email')",
        (lead["id"], lead["telegram_id"], request["id"]),
    )
    return FirstRequest(None, frozenset({"psycopg"}), answer={"sent": 1})


def lost_request(sql: Sql) -> FirstRequest:
    """A pending request whose webhook never came: found by the sweeper and processed."""
    _pending(sql, 7301, age=timedelta(hours=1))
    # The sweeper goes over every kind.
    return FirstRequest(None, frozenset({"psycopg"}), answer={"redispatched": 1}, kinds=PLAN | DRAFT)


def mini_app_sign_in(sql: Sql) -> FirstRequest:
    """A Mini App user's first sign-in: initData checked, the user recorded, a token signed."""
    fields = {
        "user": json.dumps({"id": 7401, "first_name": "Maya"}),
        "auth_date": str(int(datetime.now(UTC).timestamp())),
    }
    return FirstRequest(
        {"init_data": sign_init_data(fields, BOT_TOKEN)},
        frozenset({"psycopg"}),
        env={"TELEGRAM_BOT_TOKEN": BOT_TOKEN, "SUPABASE_JWT_SECRET": JWT_SECRET},
        answer={"telegram_id": 7401},
    )


def draft_request_insert(sql: Sql) -> FirstRequest:
    """A webhook for a new draft request on a lead with a plan: claimed, drafted offline, completed."""
    lead = _lead(sql, 7501)
    sql.execute("UPDATE leads SET plan = %s WHERE id = %s", (Jsonb(VALID_PLAN), lead["id"]))
    row = sql.execute(
        "INSERT INTO draft_requests (lead_id, telegram_id, step_index) VALUES (%s, %s, 0) RETURNING *",
        (lead["id"], lead["telegram_id"]),
    ).fetchone()
    assert row is not None
    record = json.loads(json.dumps(row, default=str))
    event = {"type": "INSERT", "table": "draft_requests", "schema": "public", "record": record}
    return FirstRequest(
        {**event, "old_record": None}, frozenset({"psycopg"}), answer={"outcome": "completed"}, kinds=DRAFT
    )


def plan_task(sql: Sql) -> FirstRequest:
    """A Cloud Tasks call for a pending plan request: claimed, planned offline, completed."""
    request = _pending(sql, 7601)
    return FirstRequest(
        {"request_id": str(request["id"])},
        frozenset({"psycopg"}),
        answer={"outcome": "completed"},
        kinds=PLAN,
    )


def draft_task(sql: Sql) -> FirstRequest:
    """A Cloud Tasks call for a pending draft request: claimed, drafted offline, completed."""
    event = draft_request_insert(sql).body
    assert event is not None
    request_id = event["record"]["id"]
    return FirstRequest(
        {"request_id": request_id}, frozenset({"psycopg"}), answer={"outcome": "completed"}, kinds=DRAFT
    )


# A target added to main.py gets its entry here: the request that shows what its cold start costs.
FIRST_REQUESTS: dict[str, Callable[[Sql], FirstRequest]] = {
    "handle_plan_request": plan_request_insert,
    "process_plan_request": plan_task,
    "handle_draft_request": draft_request_insert,
    "process_draft_request": draft_task,
    "send_due_reminders": due_reminder,
    "reset_stale_requests": lost_request,
    "telegram_auth": mini_app_sign_in,
}
