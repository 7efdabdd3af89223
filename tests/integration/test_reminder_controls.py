"""Reminders follow the lead, and a Mini App user cancels or snoozes her own reminders (migration 0012).

Closing a lead (its status becoming one of the configured closed statuses) cancels its scheduled
reminders in the same transaction; `cancel_my_reminder` and `snooze_my_reminder` change one of the caller's
own scheduled reminders and nothing else. Who may call them is the RLS matrix's job (test_rls.py); here:
what they do, what they refuse, and how they meet the reminder sender, including two connections racing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from planbus.cli import main as planbus
from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.kinds import PLAN
from support.concurrency import run_together
from support.reminder_rows import Row, Sql, add_plan, claim, reminder
from support.request_kinds import complete_request
from support.rls import Caller, Outcome, act_as, claims, run_as, snapshot

ADA, BOB = 1001, 1002
DEFAULT_CLOSED = ["won", "lost", "archived"]
CANCEL = "SELECT * FROM cancel_my_reminder(%(id)s)"
SNOOZE = "SELECT * FROM snooze_my_reminder(%(id)s, %(due_at)s)"
SNOOZE_BY = "SELECT * FROM snooze_my_reminder(%(id)s, now() + %(by)s::interval)"
CONTROLS = {"cancel": CANCEL, "snooze": SNOOZE_BY}


def user(telegram_id: int) -> Caller:
    return Caller(
        f"user {telegram_id}",
        "authenticated",
        claims(f"{telegram_id:08d}-0000-4000-8000-000000000000", telegram_id=telegram_id),
    )


def control(sql: Sql, name: str, reminder_id: Any, telegram_id: int = ADA) -> Outcome:
    """Cancel, or snooze by a day, a reminder as the Mini App user `telegram_id`."""
    return run_as(sql, user(telegram_id), CONTROLS[name], {"id": reminder_id, "by": "1 day"})


def set_status(sql: Sql, lead: Row, status: str | None) -> None:
    sql.execute("UPDATE leads SET status = %s WHERE id = %s", (status, lead["id"]))


def reminders_of(sql: Sql, lead: Row) -> list[Row]:
    return sql.execute(
        "SELECT * FROM reminders WHERE lead_id = %s ORDER BY step_index", (lead["id"],)
    ).fetchall()


def put_in_state(sql: Sql, reminder_id: Any, status: str) -> None:
    """Arrange a reminder as the state machine leaves it in `status`."""
    columns = {
        "sent": "sent_at = now(), delivered_via = 'telegram', attempts = 1",
        "failed": "error = 'Forbidden: bot was blocked by the user', attempts = 1",
        "cancelled": "error = 'superseded by plan request x'",
        "sending": "lease_expires_at = now() + interval '1 minute', attempts = 1",
    }[status]
    sql.execute(f"UPDATE reminders SET status = %s, {columns} WHERE id = %s", (status, reminder_id))


@pytest.fixture
def closing(sql: Sql) -> dict[str, Any]:
    """Ada's lead with two scheduled reminders (one due, one later), one sent and one failed; Ada's
    other lead and Bob's lead, each with a scheduled reminder."""
    plan = add_plan(sql, steps=(("Due", -60), ("Later", 86400), ("Was sent", -7200), ("Has failed", -3600)))
    put_in_state(sql, plan["reminders"][2]["id"], "sent")
    put_in_state(sql, plan["reminders"][3]["id"], "failed")
    others = [add_plan(sql, full_name="Ada's other lead"), add_plan(sql, telegram_id=BOB, full_name="Bob's")]
    return {"lead": plan["lead"], "others": others}


@pytest.fixture(scope="module")
def module_sql(module_database_url: str) -> Iterator[Sql]:
    with psycopg.connect(module_database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def rolled_back(module_sql: Sql) -> Iterator[Sql]:
    """For the refusals: a database shared by the module, inside a transaction always rolled back."""
    with module_sql.transaction(force_rollback=True):
        yield module_sql


# -- closing a lead ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", DEFAULT_CLOSED)
def test_closing_a_lead_cancels_its_scheduled_reminders_and_nothing_else(
    sql: Sql, closing: dict[str, Any], status: str
) -> None:
    lead = closing["lead"]
    before = reminders_of(sql, lead)
    others_before = [reminders_of(sql, other["lead"]) for other in closing["others"]]

    set_status(sql, lead, status)

    after = reminders_of(sql, lead)
    assert [(r["status"], r["error"], r["lease_expires_at"]) for r in after[:2]] == [
        ("cancelled", f"lead closed: {status}", None)
    ] * 2
    assert [r["due_at"] for r in after[:2]] == [r["due_at"] for r in before[:2]]
    assert after[2:] == before[2:]  # the sent and the failed one, untouched
    assert [reminders_of(sql, other["lead"]) for other in closing["others"]] == others_before


def test_the_reminders_are_cancelled_in_the_transaction_that_closes_the_lead(
    sql: Sql, closing: dict[str, Any]
) -> None:
    with sql.transaction(force_rollback=True):
        set_status(sql, closing["lead"], "won")
        assert [r["status"] for r in reminders_of(sql, closing["lead"])[:2]] == ["cancelled"] * 2
    # Rolled back with the lead's status: still scheduled.
    assert [r["status"] for r in reminders_of(sql, closing["lead"])[:2]] == ["scheduled"] * 2


@pytest.mark.parametrize("status", ["contacted", "plan_ready", "won over", None])
def test_a_change_to_a_status_that_is_not_closed_cancels_nothing(
    sql: Sql, closing: dict[str, Any], status: str | None
) -> None:
    set_status(sql, closing["lead"], "negotiating")
    before = snapshot(sql)
    set_status(sql, closing["lead"], status)
    after = snapshot(sql)
    assert after["public.reminders"] == before["public.reminders"]


def test_closed_statuses_match_whatever_their_case_and_surrounding_spaces(
    sql: Sql, closing: dict[str, Any]
) -> None:
    set_status(sql, closing["lead"], " Lost\n")
    assert [r["error"] for r in reminders_of(sql, closing["lead"])[:2]] == ["lead closed: Lost"] * 2


def test_reopening_a_lead_does_not_bring_its_cancelled_reminders_back(
    sql: Sql, closing: dict[str, Any]
) -> None:
    set_status(sql, closing["lead"], "archived")
    set_status(sql, closing["lead"], "contacted")
    set_status(sql, closing["lead"], "lost")
    assert [(r["status"], r["error"]) for r in reminders_of(sql, closing["lead"])[:2]] == [
        ("cancelled", "lead closed: archived")
    ] * 2


def test_a_new_plan_for_a_closed_lead_schedules_its_own_reminders(
    db: PostgresDatabase, sql: Sql, closing: dict[str, Any], make_request: Callable[..., Row]
) -> None:
    lead = closing["lead"]
    set_status(sql, lead, "won")
    request = make_request(lead)
    due = sql.execute("SELECT now() + interval '1 day' AS at").fetchone()
    assert due is not None
    reminders = [{"step_index": 0, "due_at": due["at"].isoformat(), "text": "Upsell"}]
    complete_request(
        db, PLAN, request["id"], result={"plan": {}}, completion={"plan": {}, "reminders": reminders}
    )
    rows = reminders_of(sql, lead)
    assert [(r["text"], r["status"]) for r in rows if r["plan_request_id"] == request["id"]] == [
        ("Upsell", "scheduled")
    ]
    assert [r["error"] for r in rows if r["status"] == "cancelled"] == ["lead closed: won"] * 2


# -- which statuses close a lead --------------------------------------------------------------------------


def test_by_default_won_lost_and_archived_close_a_lead(db: PostgresDatabase) -> None:
    assert db.call("planbus_closed_lead_statuses") == {
        "statuses": DEFAULT_CLOSED,
        "stored": None,
        "default": DEFAULT_CLOSED,
    }


def test_the_configured_statuses_replace_the_default(
    db: PostgresDatabase, sql: Sql, closing: dict[str, Any]
) -> None:
    answer = db.call("planbus_set_closed_lead_statuses", p_statuses=["Signed", " paused ", "signed"])
    assert answer["statuses"] == ["signed", "paused"]
    assert answer["stored"] == '["signed", "paused"]'
    ada_other, bob = (other["lead"] for other in closing["others"])

    set_status(sql, closing["lead"], "won")
    set_status(sql, ada_other, "paused")
    set_status(sql, bob, "SIGNED")

    assert [r["status"] for r in reminders_of(sql, closing["lead"])[:2]] == ["scheduled"] * 2
    assert [(r["status"], r["error"]) for r in reminders_of(sql, ada_other)] == [
        ("cancelled", "lead closed: paused")
    ]
    assert [(r["status"], r["error"]) for r in reminders_of(sql, bob)] == [
        ("cancelled", "lead closed: SIGNED")
    ]


def test_with_no_closed_statuses_no_status_change_cancels_reminders(
    db: PostgresDatabase, sql: Sql, closing: dict[str, Any]
) -> None:
    assert db.call("planbus_set_closed_lead_statuses", p_statuses=[])["statuses"] == []
    set_status(sql, closing["lead"], "won")
    assert [r["status"] for r in reminders_of(sql, closing["lead"])[:2]] == ["scheduled"] * 2


@pytest.mark.parametrize("statuses", ["won", ["won", 1], ["won", ""], ["  "], {"won": True}, None], ids=repr)
def test_statuses_that_are_not_a_list_of_names_are_refused_and_change_nothing(
    db: PostgresDatabase, sql: Sql, statuses: Any
) -> None:
    db.call("planbus_set_closed_lead_statuses", p_statuses=["won"])
    before = snapshot(sql)
    with pytest.raises(
        DatabaseError, match="closed lead statuses are a JSON array of non-empty strings"
    ) as refused:
        db.call("planbus_set_closed_lead_statuses", p_statuses=None if statuses is None else Jsonb(statuses))
    assert refused.value.sqlstate == "22023"
    assert snapshot(sql) == before


@pytest.mark.parametrize("stored", ["won,lost", '{"won": true}', "[1]", '[""]', "", "[won]"])
def test_a_malformed_stored_setting_falls_back_to_the_default(
    db: PostgresDatabase, sql: Sql, closing: dict[str, Any], stored: str
) -> None:
    db.call("planbus_store_setting", p_name="closed_lead_statuses", p_value=stored)
    assert db.call("planbus_closed_lead_statuses")["statuses"] == DEFAULT_CLOSED
    set_status(sql, closing["lead"], "won")
    assert [r["status"] for r in reminders_of(sql, closing["lead"])[:2]] == ["cancelled"] * 2


def test_planbus_leads_shows_and_changes_the_closed_statuses(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    line = "closed lead statuses (scheduled reminders are cancelled): "
    assert planbus(["leads"]) == 0
    assert capsys.readouterr().out == line + "won, lost, archived (default)\n"
    assert planbus(["leads", "--closed", "Won, signed,won"]) == 0
    assert capsys.readouterr().out == line + "won, signed\n"
    assert planbus(["leads", "--closed", "none"]) == 0
    assert capsys.readouterr().out == line + "none\n"
    assert planbus(["leads"]) == 0
    assert capsys.readouterr().out == line + "none\n"


@pytest.mark.parametrize("value", ["won,,lost", "", " , "])
def test_planbus_leads_refuses_an_empty_status_and_stores_nothing(
    database_url: str, db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    with pytest.raises(SystemExit) as exited:
        planbus(["leads", "--closed", value])
    assert exited.value.code == 2
    assert db.call("planbus_closed_lead_statuses")["stored"] is None


# -- a lead closing while one of its reminders is being sent ----------------------------------------------


def test_a_reminder_in_flight_when_its_lead_closes_is_recorded_as_sent(
    db: PostgresDatabase, sql: Sql
) -> None:
    plan = add_plan(sql)
    [claimed] = claim(db)
    set_status(sql, plan["lead"], "won")
    assert reminder(sql, claimed["id"])["status"] == "sending"
    answer = db.call(
        "planbus_mark_reminder_sent",
        p_reminder_id=claimed["id"],
        p_attempt=claimed["attempt"],
        p_via="telegram",
        p_message="",
    )
    assert answer == {"recorded": True, "status": "sent"}


def retry(db: PostgresDatabase, claimed: Row) -> Any:
    """Hand a claimed reminder back unsent, as a sender told to back off does."""
    return db.call(
        "planbus_retry_reminder",
        p_reminder_id=claimed["id"],
        p_attempt=claimed["attempt"],
        p_delay_seconds=0,
        p_error="not sent: Telegram asked to back off",
        p_max_attempts=5,
        p_counts_as_attempt=False,
    )


def test_a_reminder_handed_back_after_its_lead_closed_is_cancelled_not_scheduled_again(
    db: PostgresDatabase, sql: Sql
) -> None:
    plan = add_plan(sql)
    [claimed] = claim(db)
    set_status(sql, plan["lead"], "lost")

    answer = retry(db, claimed)

    assert (answer["recorded"], answer["status"], answer["error"]) == (True, "cancelled", "lead closed: lost")
    row = reminder(sql, claimed["id"])
    assert (row["status"], row["error"], row["lease_expires_at"]) == ("cancelled", "lead closed: lost", None)
    assert claim(db) == []


def test_a_reminder_handed_back_for_an_open_lead_is_scheduled_again(db: PostgresDatabase, sql: Sql) -> None:
    plan = add_plan(sql)
    [claimed] = claim(db)
    set_status(sql, plan["lead"], "negotiating")
    assert retry(db, claimed)["status"] == "scheduled"
    assert [r["id"] for r in claim(db)] == [claimed["id"]]


def waiting_for_a_lock(sql: Sql) -> int:
    row = sql.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def wait_until_blocked(sql: Sql, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 10
    while waiting_for_a_lock(sql) == 0:
        assert thread.is_alive(), "the call finished instead of waiting"
        assert time.monotonic() < deadline, "the call never waited for the lock"
        time.sleep(0.01)


@contextmanager
def in_background(call: Callable[[], Any]) -> Iterator[tuple[threading.Thread, list[Any]]]:
    """Run `call` in a thread; on leaving, wait for it. Yields the thread and a list that gets its result
    (or the exception it raised)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # examined by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield thread, outcome
    finally:
        thread.join(timeout=20)


def test_a_hand_back_racing_the_close_of_its_lead_waits_for_it_and_cancels(
    db: PostgresDatabase, database_url: str, sql: Sql
) -> None:
    plan = add_plan(sql)
    [claimed] = claim(db)
    with psycopg.connect(database_url) as closer:
        # The close has looked for scheduled reminders (none: this one is in flight) but not committed.
        closer.execute("UPDATE leads SET status = 'won' WHERE id = %s", (plan["lead"]["id"],))
        with in_background(lambda: retry(db, claimed)) as (thread, outcome):
            wait_until_blocked(sql, thread)
            closer.commit()
    assert outcome[0]["status"] == "cancelled"
    assert reminder(sql, claimed["id"])["error"] == "lead closed: won"


# -- the Mini App user's own reminders --------------------------------------------------------------------


def test_a_user_cancels_her_scheduled_reminder_and_gets_it_back(sql: Sql) -> None:
    plan = add_plan(sql, steps=(("First", 3600), ("Second", 7200)))
    first, second = plan["reminders"]
    outcome = run_as(sql, user(ADA), CANCEL, {"id": first["id"]})
    assert not outcome.refused, outcome.message
    assert outcome.rows == [reminder(sql, first["id"])]
    assert (outcome.rows[0]["status"], outcome.rows[0]["error"]) == ("cancelled", "cancelled by the user")
    assert reminder(sql, second["id"]) == second


def test_a_user_snoozes_her_scheduled_reminder_and_gets_it_back(sql: Sql) -> None:
    plan = add_plan(sql, steps=(("First", -60), ("Second", 7200)))
    first, second = plan["reminders"]
    due = sql.execute("SELECT date_trunc('second', now() + interval '3 days') AS at").fetchone()
    assert due is not None
    outcome = run_as(sql, user(ADA), SNOOZE, {"id": first["id"], "due_at": due["at"]})
    assert not outcome.refused, outcome.message
    assert outcome.rows == [reminder(sql, first["id"])]
    assert (outcome.rows[0]["status"], outcome.rows[0]["due_at"]) == ("scheduled", due["at"])
    assert reminder(sql, second["id"]) == second


def test_a_snoozed_reminder_is_claimed_at_its_new_due_time_and_not_before(
    db: PostgresDatabase, sql: Sql
) -> None:
    plan = add_plan(sql, steps=(("Due an hour ago", -3600),))
    [due] = plan["reminders"]
    outcome = run_as(sql, user(ADA), SNOOZE_BY, {"id": due["id"], "by": "1 second"})
    assert not outcome.refused, outcome.message
    assert claim(db) == []
    left = sql.execute(
        "SELECT greatest(extract(epoch FROM due_at - clock_timestamp()), 0)::float AS s"
        " FROM reminders WHERE id = %s",
        (due["id"],),
    ).fetchone()
    assert left is not None and 0 < left["s"] <= 1
    time.sleep(left["s"])
    assert [r["id"] for r in claim(db)] == [str(due["id"])]


@pytest.mark.parametrize("state", ["sending", "sent", "failed", "cancelled"])
@pytest.mark.parametrize("name", CONTROLS)
def test_only_a_scheduled_reminder_can_be_cancelled_or_snoozed(
    rolled_back: Sql, name: str, state: str
) -> None:
    [row] = add_plan(rolled_back)["reminders"]
    put_in_state(rolled_back, row["id"], state)
    before = snapshot(rolled_back)
    outcome = control(rolled_back, name, row["id"])
    shown = "being sent right now" if state == "sending" else state
    done = "cancelled" if name == "cancel" else "snoozed"
    assert (outcome.sqlstate, outcome.message) == (
        "PT409",
        f"reminder {row['id']} is {shown}: only a scheduled reminder can be {done}",
    )
    assert snapshot(rolled_back) == before


@pytest.mark.parametrize("name", CONTROLS)
def test_an_unknown_reminder_is_not_found_and_a_missing_id_is_refused(rolled_back: Sql, name: str) -> None:
    add_plan(rolled_back)
    before = snapshot(rolled_back)
    unknown = "00000000-0000-4000-8000-00000000dead"
    outcome = control(rolled_back, name, unknown)
    assert (outcome.sqlstate, outcome.message) == ("PT404", f"reminder {unknown} not found")
    missing = control(rolled_back, name, None)
    assert (missing.sqlstate, missing.message) == ("22023", "reminder_id is required")
    assert snapshot(rolled_back) == before


@pytest.mark.parametrize("name", CONTROLS)
def test_a_user_cannot_cancel_or_snooze_another_users_reminder(rolled_back: Sql, name: str) -> None:
    [bobs] = add_plan(rolled_back, telegram_id=BOB)["reminders"]
    before = snapshot(rolled_back)
    outcome = control(rolled_back, name, bobs["id"], telegram_id=ADA)
    assert (outcome.sqlstate, outcome.message) == ("PT404", f"reminder {bobs['id']} not found")
    assert snapshot(rolled_back) == before


@pytest.mark.parametrize(
    ("due_at", "message"),
    [
        ("now() - interval '1 minute'", "due_at must be in the future"),
        ("now()", "due_at must be in the future"),
        ("now() + interval '30 days 1 second'", "due_at must be within 30 days from now"),
        ("now() + interval '1 year'", "due_at must be within 30 days from now"),
        ("NULL", "due_at is required: the new due time"),
    ],
    ids=["past", "now", "30 days and a second", "a year", "null"],
)
def test_a_snooze_outside_the_next_30_days_is_refused_and_changes_nothing(
    rolled_back: Sql, due_at: str, message: str
) -> None:
    [row] = add_plan(rolled_back)["reminders"]
    before = snapshot(rolled_back)
    outcome = run_as(
        rolled_back, user(ADA), f"SELECT * FROM snooze_my_reminder(%(id)s, {due_at})", {"id": row["id"]}
    )
    assert outcome.sqlstate == "22023"
    assert outcome.message is not None and outcome.message.startswith(message), outcome.message
    assert snapshot(rolled_back) == before


def test_a_snooze_to_exactly_30_days_from_now_is_accepted(rolled_back: Sql) -> None:
    [row] = add_plan(rolled_back)["reminders"]
    # One statement, one now(): the bound itself.
    outcome = run_as(
        rolled_back,
        user(ADA),
        "SELECT due_at = now() + interval '30 days' AS at_bound FROM snooze_my_reminder(%(id)s, "
        "now() + interval '30 days')",
        {"id": row["id"]},
    )
    assert outcome.rows == [{"at_bound": True}]


def test_anon_and_public_may_not_execute_the_controls(sql: Sql) -> None:
    rows = sql.execute(
        """
        SELECT f, r, has_function_privilege(r, f, 'EXECUTE') AS may
          FROM unnest(ARRAY['public.cancel_my_reminder(uuid)',
                            'public.snooze_my_reminder(uuid, timestamptz)']) AS f,
               unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
        """
    ).fetchall()
    assert {(row["f"], row["r"]): row["may"] for row in rows} == {
        (f, r): r != "anon"
        for f in ("public.cancel_my_reminder(uuid)", "public.snooze_my_reminder(uuid, timestamptz)")
        for r in ("anon", "authenticated", "service_role")
    }
    public = sql.execute(
        "SELECT count(*) AS n FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
        " WHERE p.proname IN ('cancel_my_reminder', 'snooze_my_reminder') AND a.grantee = 0"
    ).fetchone()
    assert public == {"n": 0}


# -- the user racing the sender ---------------------------------------------------------------------------


def user_connection(database_url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(database_url, row_factory=dict_row)


@pytest.mark.parametrize("name", CONTROLS)
def test_a_reminder_the_sender_is_claiming_cannot_be_cancelled_or_snoozed(
    db: PostgresDatabase, database_url: str, sql: Sql, name: str
) -> None:
    [row] = add_plan(sql)["reminders"]
    with user_connection(database_url) as sender, user_connection(database_url) as mini_app:
        claimed = sender.execute("SELECT planbus_claim_due_reminders(10, 60) AS c").fetchone()
        assert claimed is not None and len(claimed["c"]) == 1  # claimed, not yet committed
        with in_background(lambda: control(mini_app, name, row["id"])) as (thread, outcome):
            wait_until_blocked(sql, thread)  # the user's call waits for the claim's row lock
            sender.commit()
    shown = "cancelled" if name == "cancel" else "snoozed"
    assert (outcome[0].sqlstate, outcome[0].message) == (
        "PT409",
        f"reminder {row['id']} is being sent right now: only a scheduled reminder can be {shown}",
    )
    after = reminder(sql, row["id"])
    assert (after["status"], after["due_at"], after["attempts"]) == ("sending", row["due_at"], 1)


@pytest.mark.parametrize("name", CONTROLS)
def test_a_reminder_the_user_is_changing_is_skipped_by_the_sender_and_not_sent(
    db: PostgresDatabase, database_url: str, sql: Sql, name: str
) -> None:
    [row] = add_plan(sql)["reminders"]
    with user_connection(database_url) as mini_app, mini_app.transaction():
        act_as(mini_app, user(ADA))
        mini_app.execute(CONTROLS[name], {"id": row["id"], "by": "1 day"})
        # Holding the row, uncommitted: the claim skips it rather than waiting or taking it.
        assert claim(db) == []
    assert claim(db) == []
    assert reminder(sql, row["id"])["status"] == ("cancelled" if name == "cancel" else "scheduled")


@pytest.mark.parametrize("name", CONTROLS)
def test_users_racing_the_sender_either_change_a_reminder_or_are_refused_never_both(
    db: PostgresDatabase, database_url: str, sql: Sql, name: str
) -> None:
    users = range(2001, 2009)
    rows = {telegram_id: add_plan(sql, telegram_id=telegram_id)["reminders"][0] for telegram_id in users}

    def change(telegram_id: int) -> Callable[[], tuple[int, str | None]]:
        def call() -> tuple[int, str | None]:
            with user_connection(database_url) as conn:
                return telegram_id, control(conn, name, rows[telegram_id]["id"], telegram_id).sqlstate

        return call

    def send() -> tuple[int, str | None]:
        return 0, ",".join(sorted(str(r["chat_id"]) for r in claim(db, limit=100)))

    results = dict(run_together([send, *(change(t) for t in users)]))

    claimed = {int(chat) for chat in (results.pop(0) or "").split(",") if chat}
    for telegram_id, sqlstate in results.items():
        row = reminder(sql, rows[telegram_id]["id"])
        if telegram_id in claimed:
            assert (sqlstate, row["status"]) == ("PT409", "sending")
        else:
            assert sqlstate is None
            assert row["status"] == ("cancelled" if name == "cancel" else "scheduled")
            assert row["attempts"] == 0
