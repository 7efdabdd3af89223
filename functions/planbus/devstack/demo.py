"""`planbus demo`: the whole flow once, on the local stack, the way its users drive it.

1. An operator loads the lead registry (a demo user and three leads; idempotent on a reused database).
2. The Mini App inserts a plan request as its signed-in user (role `authenticated`, JWT claims, RLS).
3. The trigger fires and the relay delivers the webhook. With Cloud Tasks (the default) handle_plan_request
   enqueues a task and answers `queued`, and the emulator calls process_plan_request, which claims,
   generates and completes: the Mini App's polling shows pending → queued → processing → completed.
   Inline, handle_plan_request does the work itself: pending → processing → completed.
4. The plan and its reminders are printed.
5. The Mini App asks for a draft of the first step's message (a draft_requests row), which goes the same
   way through handle_draft_request and process_draft_request; the draft is printed, and completing it put
   it into that step's reminder if the reminder was still scheduled.
6. The operator moves the first step's reminder to now (`planbus_reschedule_reminder`), and the
   scheduler's next send_due_reminders call delivers it to the local Telegram sink.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from planbus.db.postgres import PostgresDatabase
from planbus.devstack.console import Console
from planbus.devstack.miniapp import MiniApp, MiniAppUser
from planbus.devstack.render import (
    QUEUED_STAGES,
    STAGES,
    draft_text,
    plan_table,
    progress_line,
    reminder_table,
    timeline,
)
from planbus.devstack.stack import Stack, StackOptions
from planbus.errors import LimitExceeded
from planbus.settings import Settings

DEMO_TELEGRAM_ID = 7_000_000_001
DEMO_LEADS = (
    {
        "full_name": "Maya Chen",
        "company": "Northwind Logistics",
        "title": "Head of Operations",
        "notes": "Met at LogiTech Expo. Evaluating route-optimisation tools; budget approved for Q1.",
        "status": "new",
    },
    {
        "full_name": "Tomás Álvarez",
        "company": "Brightline Dental Group",
        "title": "COO",
        "notes": "Asked for a case study on appointment no-shows. Prefers email.",
        "status": "contacted",
    },
    {
        "full_name": "Priya Nair",
        "company": "Kestrel Analytics",
        "title": "VP Engineering",
        "notes": "Warm intro from a mutual investor. Cares about SOC 2 and data residency.",
        "status": "new",
    },
)
POLL_SECONDS = 0.05


def seed_demo_data(database_url: str) -> tuple[MiniAppUser, dict[str, Any]]:
    """The demo user and leads (created once, reused after); returns the user and a lead free to plan."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        user = conn.execute(
            "INSERT INTO public.telegram_users (user_id, telegram_id, username, first_name) "
            "VALUES (%s, %s, 'planbus_demo', 'Demo') "
            "ON CONFLICT (telegram_id) DO UPDATE SET username = EXCLUDED.username RETURNING user_id",
            (uuid.uuid4(), DEMO_TELEGRAM_ID),
        ).fetchone()
        assert user is not None
        for lead in DEMO_LEADS:
            conn.execute(
                "INSERT INTO public.leads (telegram_id, full_name, company, title, notes, status) "
                "SELECT %(telegram_id)s, %(full_name)s, %(company)s, %(title)s, %(notes)s, %(status)s "
                "WHERE NOT EXISTS (SELECT 1 FROM public.leads "
                "                   WHERE telegram_id = %(telegram_id)s AND full_name = %(full_name)s)",
                {**lead, "telegram_id": DEMO_TELEGRAM_ID},
            )
        # A lead with no request in flight (an interrupted earlier demo may have left one behind).
        free = conn.execute(
            "SELECT * FROM public.leads l WHERE telegram_id = %s AND NOT EXISTS ("
            "  SELECT 1 FROM public.plan_requests p"
            "   WHERE p.lead_id = l.id AND p.status IN ('pending', 'processing'))"
            " ORDER BY created_at, id LIMIT 1",
            (DEMO_TELEGRAM_ID,),
        ).fetchone()
        if free is None:
            free = conn.execute(
                "INSERT INTO public.leads (telegram_id, full_name, company, title, notes, status) "
                "VALUES (%(telegram_id)s, %(full_name)s, %(company)s, %(title)s, %(notes)s, %(status)s) "
                "RETURNING *",
                {**DEMO_LEADS[0], "telegram_id": DEMO_TELEGRAM_ID},
            ).fetchone()
            assert free is not None
    return MiniAppUser(user["user_id"], DEMO_TELEGRAM_ID), free


def follow_request(
    app: MiniApp,
    request_id: uuid.UUID,
    console: Console,
    timeout: float,
    *,
    queued: Callable[[], bool] | None = None,
    table: str = "plan_requests",
    noun: str = "plan",
) -> dict[str, Any]:
    """Poll the row of `table` as the Mini App does until it is completed or failed, showing its progress.
    With
    `queued` (whether the webhook has answered `queued`), a pending row that is waiting in the task queue
    shows as the `queued` stage."""
    stages = STAGES if queued is None else QUEUED_STAGES
    started = time.monotonic()
    seen: dict[str, float] = {}
    spinner = itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
    while True:
        row = app.get_request(request_id, table)
        elapsed = time.monotonic() - started
        if row is None:
            raise LookupError(f"{noun} request {request_id} is not visible to its own user")
        status = str(row["status"])
        if status == "pending" and queued is not None and queued():
            status = "queued"
        seen.setdefault(status, elapsed)
        if console.interactive:
            console.status(progress_line(status, elapsed, spinner=next(spinner), stages=stages))
        else:
            console.status(progress_line(status, seen[status], stages=stages))
        if status in ("completed", "failed"):
            console.status(None)
            console.line(timeline(seen, status, stages=stages) + f"  (attempts: {row['attempts']})")
            return row
        if elapsed > timeout:
            console.status(None)
            raise TimeoutError(f"{noun} request {request_id} is still {status} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def run_demo(settings: Settings, console: Console, options: StackOptions) -> int:
    """Run the flow once on a fresh stack; 0 when the plan was made and a reminder reached the sink."""
    if settings.generator == "openai":
        console.line(f"generator: OpenAI ({settings.openai_model}) because OPENAI_API_KEY is set")
    else:
        why = "PLAN_GENERATOR=offline" if settings.plan_generator == "offline" else "no OPENAI_API_KEY set"
        console.line(f"generator: offline ({why}): deterministic plans built from the lead's own fields")
    generation_timeout = 60.0 if settings.generator == "offline" else settings.openai_timeout * 3 + 60
    draft_timeout = 60.0 if settings.generator == "offline" else settings.draft_openai_timeout * 3 + 60
    with Stack(settings, options, console) as stack:
        for text in stack.describe():
            console.line(text)
        user, lead = seed_demo_data(stack.database_url)
        console.line(
            f"\noperator: demo user {user.telegram_id} and {len(DEMO_LEADS)} leads are in the registry"
        )
        app = MiniApp(stack.database_url, user)
        try:
            request_id = app.request_plan(lead["id"])
        except LimitExceeded as exc:
            console.line(
                f"the demo user has used up today's plan requests ({exc}); run the demo on a fresh database "
                "(unset DATABASE_URL) or raise the limit with `planbus limits`"
            )
            return 1
        console.line(
            f"Mini App (role authenticated, telegram_id {user.telegram_id}): requested a plan for "
            f"{lead['full_name']} ({lead['company']})\n  request {request_id}"
        )
        relay = stack.relay

        def queued_probe(request_id: uuid.UUID) -> Callable[[], bool] | None:
            if relay is None or options.dispatch != "cloud-tasks":
                return None
            return lambda: relay.answers.get(str(request_id)) == "queued"

        row = follow_request(app, request_id, console, generation_timeout, queued=queued_probe(request_id))
        if row["status"] != "completed":
            console.line(f"\nthe request failed: {row['error']}")
            return 1
        console.line(f"\nplan for {lead['full_name']}:")
        console.line(plan_table(row["result"]))
        reminders = app.reminders(request_id)
        console.line(f"\nreminders ({len(reminders)}):")
        console.line(reminder_table(reminders))
        if not reminders:
            console.line("the plan scheduled no reminders")
            return 1
        first = reminders[0]
        step = int(first["step_index"])
        try:
            draft_id = app.request_draft(lead["id"], step)
        except LimitExceeded as exc:
            console.line(
                f"the demo user has used up today's draft requests ({exc}); run the demo on a fresh "
                "database (unset DATABASE_URL) or raise the limit with `planbus limits`"
            )
            return 1
        console.line(
            f"\nMini App: asked for a draft of step {step + 1}'s message for {lead['full_name']}\n"
            f"  request {draft_id}"
        )
        draft = follow_request(
            app,
            draft_id,
            console,
            draft_timeout,
            queued=queued_probe(draft_id),
            table="draft_requests",
            noun="draft",
        )
        if draft["status"] != "completed":
            console.line(f"\nthe draft request failed: {draft['error']}")
            return 1
        console.line(f"\ndraft for step {step + 1}:")
        console.line(draft_text(draft["result"]))
        first = next(r for r in app.reminders(request_id) if r["id"] == first["id"])
        if first["status"] == "scheduled" and first["due_at"] > datetime.now(UTC):
            operator = PostgresDatabase(stack.database_url)
            try:
                moved = operator.call(
                    "planbus_reschedule_reminder", p_reminder_id=first["id"], p_due_at=datetime.now(UTC)
                )
            finally:
                operator.close()
            # Not moved means the scheduler has already claimed it, which is just as good.
            if moved.get("rescheduled"):
                console.line(
                    "\noperator: moved the first step's reminder to now (planbus_reschedule_reminder)"
                )
        else:
            console.line("\nthe first step's reminder is already due (the plan starts today)")
        console.line("waiting for the scheduler's send_due_reminders to deliver the first step's reminder")
        assert stack.sink is not None
        message = stack.sink.wait_for(lambda m: m.reminder_id == str(first["id"]), timeout=60)
        if message is None:
            console.line("the reminder did not reach the Telegram sink within 60 s")
            return 1
        console.line(f"\ndelivered to the local Telegram sink (chat {message.chat_id}); stopping the stack")
    console.line("demo complete: every process stopped")
    return 0
