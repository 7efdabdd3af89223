"""Row-level security as a matrix: every caller the Mini App can be, against every action.

Callers: two users whose tokens carry a `telegram_id` claim (as a number and as a string), a user known only
by `sub` through the telegram_users mapping (InsForge re-mints tokens without custom claims), a token whose
`telegram_id` claim is forged junk, and `anon`; for the reminder controls also the service role, whose
claims name no user. Each case runs in a transaction that is rolled back, so the cases share one database;
a refused action must also leave every table exactly as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql as q
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from planbus.kinds import KINDS, AnyKind
from support.request_kinds import INSERT_DEFAULTS, insert_request
from support.rls import Caller, Outcome, claims, run_as, snapshot

SUB_A, SUB_B, SUB_M, SUB_F = (str(uuid.UUID(int=n, version=4)) for n in (1, 2, 3, 4))
TG = {"A": 1001, "B": 2002, "M": 3003}

CALLERS = {
    "A": Caller("user A (telegram_id claim)", "authenticated", claims(SUB_A, telegram_id=TG["A"])),
    "B": Caller(
        "user B (telegram_id claim as text)", "authenticated", claims(SUB_B, telegram_id=str(TG["B"]))
    ),
    "M": Caller("user M (sub only, mapped)", "authenticated", claims(SUB_M, email="m@example.com")),
    "F": Caller("forged telegram_id claim", "authenticated", claims(SUB_F, telegram_id="1001 OR true")),
    "anon": Caller("anon", "anon", {"role": "anon"}),
}
# Whose rows each caller may see; the forged token and anon own nothing.
OWNER = {"A": "A", "B": "B", "M": "M", "F": None, "anon": None}
# Whose lead a caller without a lead of its own tries to use.
TARGET = {"A": "A", "B": "B", "M": "M", "F": "A", "anon": "A"}
OTHER = {"A": "B", "B": "A", "M": "A", "F": "B", "anon": "B"}
COUNTS = "planbus_private.daily_request_counts"


@dataclass(frozen=True)
class World:
    leads: dict[str, str]
    requests: dict[str, str]  # each user's plan request (its reminder's plan)
    reminders: dict[str, str]
    by_kind: dict[str, dict[str, str]]  # each user's request of every kind


def kind_ids(kind: AnyKind) -> str:
    return kind.name


@pytest.fixture(scope="module")
def conn(module_database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_database_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture(scope="module")
def world(conn: psycopg.Connection[dict[str, Any]]) -> World:
    """A lead, a completed request of every kind and a reminder for A, B and M; the mapping for A and M;
    internals."""
    leads, requests, reminders = {}, {}, {}
    by_kind: dict[str, dict[str, str]] = {kind.name: {} for kind in KINDS}
    for who, telegram_id in TG.items():
        lead = conn.execute(
            "INSERT INTO leads (telegram_id, full_name) VALUES (%s, %s) RETURNING id",
            [telegram_id, f"Lead {who}"],
        ).fetchone()
        assert lead is not None
        request = conn.execute(
            "INSERT INTO plan_requests (lead_id, telegram_id, status, result)"
            " VALUES (%s, %s, 'completed', '{}') RETURNING id",
            [lead["id"], telegram_id],
        ).fetchone()
        assert request is not None
        reminder = conn.execute(
            "INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)"
            " VALUES (%s, %s, %s, 0, now(), 'call') RETURNING id",
            [lead["id"], telegram_id, request["id"]],
        ).fetchone()
        assert reminder is not None
        leads[who], requests[who], reminders[who] = str(lead["id"]), str(request["id"]), str(reminder["id"])
        by_kind["plan"][who] = requests[who]
        for kind in KINDS:
            if kind.name != "plan":
                row = {"id": lead["id"], "telegram_id": telegram_id}
                done = insert_request(conn, kind, row, status="completed", result=Jsonb({}))
                by_kind[kind.name][who] = str(done["id"])
    conn.execute(
        "INSERT INTO telegram_users (user_id, telegram_id) VALUES (%s, %s), (%s, %s)",
        [SUB_A, TG["A"], SUB_M, TG["M"]],
    )
    conn.execute(
        "INSERT INTO planbus_private.request_errors (kind, request_id, attempt, message)"
        " VALUES ('plan', %s, 1, 'x')",
        [requests["A"]],
    )
    conn.execute("INSERT INTO planbus_private.settings (name, value) VALUES ('webhook_secret', 's3cret')")
    conn.execute("INSERT INTO planbus_private.telegram_outbox (chat_id, text) VALUES (%s, 'hi')", [TG["A"]])
    return World(leads, requests, reminders, by_kind)


@pytest.fixture
def rolled_back(conn: psycopg.Connection[dict[str, Any]]) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """The shared connection inside a transaction that is always rolled back."""
    with conn.transaction(force_rollback=True):
        yield conn


def ids(outcome: Outcome, column: str = "id") -> set[str]:
    return {str(row[column]) for row in outcome.rows}


def own(world: World, rows: str, who: str) -> set[str]:
    owner = OWNER[who]
    if owner is None:
        return set()
    return {world.by_kind[rows][owner] if rows in world.by_kind else getattr(world, rows)[owner]}


# -- reading ---------------------------------------------------------------------------------------------

READS = {
    "leads": ("SELECT id FROM leads", "leads"),
    **{kind.table: (f"SELECT id FROM {kind.table}", kind.name) for kind in KINDS},
    "reminders": ("SELECT id FROM reminders", "reminders"),
}


@pytest.mark.parametrize("table", READS)
@pytest.mark.parametrize("who", CALLERS)
def test_a_caller_reads_only_its_own_rows(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, who: str, table: str
) -> None:
    statement, kind = READS[table]
    outcome = run_as(rolled_back, CALLERS[who], statement)
    if who == "anon":
        assert outcome.sqlstate == "42501"
    else:
        assert not outcome.refused, outcome.message
        assert ids(outcome) == own(world, kind, who)


@pytest.mark.parametrize("who", CALLERS)
def test_a_caller_reads_only_its_own_telegram_mapping(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, who: str
) -> None:
    outcome = run_as(rolled_back, CALLERS[who], "SELECT user_id FROM telegram_users")
    expected = {"A": {SUB_A}, "B": set(), "M": {SUB_M}, "F": set()}
    if who == "anon":
        assert outcome.sqlstate == "42501"
    else:
        assert ids(outcome, "user_id") == expected[who]


@pytest.mark.parametrize("who", CALLERS)
def test_the_callers_telegram_id_comes_from_the_claim_or_else_the_mapping(
    rolled_back: psycopg.Connection[dict[str, Any]], who: str
) -> None:
    outcome = run_as(rolled_back, CALLERS[who], "SELECT planbus_current_telegram_id() AS id")
    if who == "anon":
        assert outcome.sqlstate == "42501"
    else:
        owner = OWNER[who]
        assert outcome.rows == [{"id": TG[owner] if owner else None}]


# -- the one write the Mini App may make -----------------------------------------------------------------


@pytest.mark.parametrize("with_id", [False, True], ids=["server id", "client id"])
@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("kind", KINDS, ids=kind_ids)
def test_a_caller_may_insert_a_pending_request_only_for_its_own_lead(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, kind: AnyKind, who: str, with_id: bool
) -> None:
    target = TARGET[who]
    values = {
        "lead_id": world.leads[target],
        "telegram_id": TG[target],
        "status": "pending",
        **INSERT_DEFAULTS[kind.name],
    }
    if with_id:
        values["id"] = str(uuid.uuid4())
    before = snapshot(rolled_back)
    statement = insert(values, kind, returning="id, status, attempts, telegram_id")
    outcome = run_as(rolled_back, CALLERS[who], statement)
    if OWNER[who] is None:
        assert outcome.sqlstate == "42501", outcome.message
        assert snapshot(rolled_back) == before
        return
    assert not outcome.refused, outcome.message
    [created] = outcome.rows
    assert (created["status"], created["attempts"], created["telegram_id"]) == ("pending", 0, TG[target])
    if with_id:
        assert str(created["id"]) == values["id"]
    after = snapshot(rolled_back)
    table = f"public.{kind.table}"
    assert len(after[table]) == len(before[table]) + 1
    # The accepted insert counts against its Telegram user's daily limit (the limit: test_daily_limit.py).
    today = rolled_back.execute("SELECT (now() AT TIME ZONE 'UTC')::date AS day").fetchone()
    assert today is not None
    assert before[COUNTS] == []
    assert after[COUNTS] == [(kind.name, TG[target], today["day"], 1)]
    changed = {table, COUNTS}
    assert {k: v for k, v in after.items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }


@pytest.mark.parametrize("who", CALLERS)
def test_the_insert_policies_check_holds_only_for_the_callers_own_lead_in_her_own_name(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, who: str
) -> None:
    target, other = TARGET[who], OTHER[who]
    cases = {
        "own lead, own id": (target, target),
        "another's lead, own id": (other, target),
        "own lead, another's id": (target, other),
    }
    answers = {}
    for case, (lead_of, telegram_of) in cases.items():
        outcome = run_as(
            rolled_back,
            CALLERS[who],
            "SELECT planbus_policy.may_insert_request(%s, %s) AS ok",
            [world.leads[lead_of], TG[telegram_of]],
        )
        answers[case] = outcome.sqlstate if outcome.refused else outcome.rows[0]["ok"]
    if who == "anon":
        assert set(answers.values()) == {"42501"}
        return
    assert answers == {
        "own lead, own id": OWNER[who] is not None,
        "another's lead, own id": False,
        "own lead, another's id": False,
    }


def insert(values: dict[str, Any], kind: AnyKind, *, returning: str = "id") -> q.Composed:
    return q.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
        q.Identifier(kind.table),
        q.SQL(", ").join(map(q.Identifier, values)),
        q.SQL(", ").join(map(q.Literal, values.values())),
        q.SQL(returning),
    )


# -- everything else is refused, and changes nothing -------------------------------------------------------

Statement = Callable[[World, str], q.Composable]
RequestStatement = Callable[[World, str, AnyKind], q.Composable]


def request_as(
    who: str, world: World, kind: AnyKind, lead_of: str, telegram_of: str, **extra: Any
) -> q.Composable:
    values = {"lead_id": world.leads[lead_of], "telegram_id": TG[telegram_of], **INSERT_DEFAULTS[kind.name]}
    return insert({**values, **extra}, kind)


def own_request(world: World, who: str, kind: AnyKind) -> q.Composable:
    return q.Literal(world.by_kind[kind.name][TARGET[who]])


# What the Mini App may not do to a request, of any kind.
REFUSED_ON_REQUESTS: dict[str, RequestStatement] = {
    "insert for another user's lead": lambda w, who, k: request_as(who, w, k, OTHER[who], TARGET[who]),
    "insert with another telegram_id": lambda w, who, k: request_as(who, w, k, TARGET[who], OTHER[who]),
    "insert as processing": lambda w, who, k: request_as(
        who, w, k, TARGET[who], TARGET[who], status="processing"
    ),
    "insert as completed": lambda w, who, k: request_as(
        who, w, k, TARGET[who], TARGET[who], status="completed", result='{"plan": {}}'
    ),
    "insert with a result": lambda w, who, k: request_as(
        who, w, k, TARGET[who], TARGET[who], result='{"plan": {}}'
    ),
    "insert with an error": lambda w, who, k: request_as(who, w, k, TARGET[who], TARGET[who], error="x"),
    "insert with attempts": lambda w, who, k: request_as(who, w, k, TARGET[who], TARGET[who], attempts=1),
    "insert with a lease": lambda w, who, k: request_as(
        who, w, k, TARGET[who], TARGET[who], lease_expires_at="2030-01-01T00:00:00Z"
    ),
    "insert with a retry time": lambda w, who, k: request_as(
        who, w, k, TARGET[who], TARGET[who], run_after="2030-01-01T00:00:00Z"
    ),
    "update a request": lambda w, who, k: q.SQL("UPDATE {} SET error = 'x' WHERE id = {}").format(
        q.Identifier(k.table), own_request(w, who, k)
    ),
    "delete a request": lambda w, who, k: q.SQL("DELETE FROM {} WHERE id = {}").format(
        q.Identifier(k.table), own_request(w, who, k)
    ),
}


@pytest.mark.parametrize("action", REFUSED_ON_REQUESTS)
@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("kind", KINDS, ids=kind_ids)
def test_every_other_action_on_a_request_is_refused_and_changes_nothing(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, kind: AnyKind, who: str, action: str
) -> None:
    before = snapshot(rolled_back)
    outcome = run_as(rolled_back, CALLERS[who], REFUSED_ON_REQUESTS[action](world, who, kind))
    assert outcome.refused, f"{CALLERS[who]} could {action} on {kind.table}: {outcome.rows}"
    assert outcome.sqlstate in {"42501", "23514"}, outcome.message
    assert snapshot(rolled_back) == before


REFUSED: dict[str, Statement] = {
    "insert a lead": lambda w, who: q.SQL(
        "INSERT INTO leads (telegram_id, full_name) VALUES ({}, 'x')"
    ).format(q.Literal(TG[TARGET[who]])),
    "update a lead": lambda w, who: q.SQL("UPDATE leads SET notes = 'x' WHERE id = {}").format(
        q.Literal(w.leads[TARGET[who]])
    ),
    "delete a lead": lambda w, who: q.SQL("DELETE FROM leads WHERE id = {}").format(
        q.Literal(w.leads[TARGET[who]])
    ),
    "insert a reminder": lambda w, who: q.SQL(
        "INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)"
        " VALUES ({}, {}, {}, 9, now(), 'spam')"
    ).format(q.Literal(w.leads[TARGET[who]]), q.Literal(TG[TARGET[who]]), q.Literal(w.requests[TARGET[who]])),
    "update a reminder": lambda w, who: q.SQL(
        "UPDATE reminders SET status = 'cancelled' WHERE id = {}"
    ).format(q.Literal(w.reminders[TARGET[who]])),
    "delete a reminder": lambda w, who: q.SQL("DELETE FROM reminders WHERE id = {}").format(
        q.Literal(w.reminders[TARGET[who]])
    ),
    "map itself to another telegram_id": lambda w, who: q.SQL(
        "INSERT INTO telegram_users (user_id, telegram_id) VALUES ({}, {})"
    ).format(q.Literal(str(uuid.uuid4())), q.Literal(TG[OTHER[who]])),
    "change a mapping": lambda w, who: q.SQL("UPDATE telegram_users SET telegram_id = {}").format(
        q.Literal(TG[OTHER[who]])
    ),
    "read the settings": lambda w, who: q.SQL("SELECT * FROM planbus_private.settings"),
    "read the error history": lambda w, who: q.SQL("SELECT * FROM planbus_private.request_errors"),
    "read the kinds": lambda w, who: q.SQL("SELECT * FROM planbus_private.request_kinds"),
    "read the deliveries": lambda w, who: q.SQL("SELECT * FROM planbus_private.webhook_deliveries"),
    "read the outbox": lambda w, who: q.SQL("SELECT * FROM planbus_private.telegram_outbox"),
    "read the migrations": lambda w, who: q.SQL("SELECT * FROM planbus_private.schema_migrations"),
    "read a setting through its function": lambda w, who: q.SQL(
        "SELECT planbus_private.setting('webhook_secret')"
    ),
}


@pytest.mark.parametrize("action", REFUSED)
@pytest.mark.parametrize("who", CALLERS)
def test_every_other_action_is_refused_and_changes_nothing(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, who: str, action: str
) -> None:
    before = snapshot(rolled_back)
    outcome = run_as(rolled_back, CALLERS[who], REFUSED[action](world, who))
    assert outcome.refused, f"{CALLERS[who]} could {action}: {outcome.rows}"
    assert outcome.sqlstate in {"42501", "23514"}, outcome.message
    assert snapshot(rolled_back) == before


def planbus_functions(conn: psycopg.Connection[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [
        (r["schema"], r["name"], r["args"])
        for r in conn.execute(
            """
            SELECT n.nspname AS schema, p.proname AS name, p.pronargs AS args
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE (n.nspname = 'public' AND p.proname LIKE 'planbus\\_%%'
                    AND p.proname <> 'planbus_current_telegram_id')
                OR n.nspname = 'planbus_private'
             ORDER BY 1, 2
            """
        ).fetchall()
    ]


@pytest.mark.parametrize("who", CALLERS)
def test_no_planbus_function_may_be_executed_by_the_mini_app(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, who: str
) -> None:
    functions = planbus_functions(rolled_back)
    assert ("public", "planbus_claim_request", 4) in functions
    before = snapshot(rolled_back)
    allowed = []
    for schema, name, args in functions:
        call = q.SQL("SELECT {}.{}({})").format(
            q.Identifier(schema), q.Identifier(name), q.SQL(", ").join([q.NULL] * args)
        )
        outcome = run_as(rolled_back, CALLERS[who], call)
        if outcome.sqlstate != "42501":
            allowed.append(f"{schema}.{name}: {outcome.sqlstate} {outcome.message}")
    assert allowed == []
    assert snapshot(rolled_back) == before


# -- the Mini App's reminder controls: one's own scheduled reminder, nobody else's ------------------------

# The matrix's callers, and the service role with no user in its claims (as its key is).
CONTROL_CALLERS = {
    **CALLERS,
    "service": Caller("service role (no user claims)", "service_role", {"role": "service_role"}),
}
CONTROLS = {
    "cancel": "SELECT id, status, error, due_at FROM cancel_my_reminder({})",
    "snooze": "SELECT id, status, error, due_at FROM snooze_my_reminder({}, now() + interval '1 day')",
}


@pytest.mark.parametrize("whose", ["own", "another user's"])
@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("who", CONTROL_CALLERS)
def test_a_caller_may_cancel_or_snooze_only_its_own_reminder(
    rolled_back: psycopg.Connection[dict[str, Any]], world: World, who: str, control: str, whose: str
) -> None:
    target = world.reminders[TARGET.get(who, "A") if whose == "own" else OTHER.get(who, "B")]
    before = snapshot(rolled_back)
    outcome = run_as(rolled_back, CONTROL_CALLERS[who], q.SQL(CONTROLS[control]).format(q.Literal(target)))
    if OWNER.get(who) is None:
        # anon may not execute them; a token naming no Telegram user acts for nobody.
        assert outcome.sqlstate == "42501", outcome.message
        assert snapshot(rolled_back) == before
        return
    if whose != "own":
        assert (outcome.sqlstate, outcome.message) == ("PT404", f"reminder {target} not found")
        assert snapshot(rolled_back) == before
        return
    assert not outcome.refused, outcome.message
    [changed] = outcome.rows
    assert str(changed["id"]) == target
    if control == "cancel":
        assert (changed["status"], changed["error"]) == ("cancelled", "cancelled by the user")
    else:
        # One transaction (the savepoint's): now() here is the now() the snooze was computed from.
        moved = rolled_back.execute("SELECT now() + interval '1 day' AS due_at").fetchone()
        assert moved is not None
        assert (changed["status"], changed["due_at"]) == ("scheduled", moved["due_at"])
    after = snapshot(rolled_back)
    untouched = [row for row in after["public.reminders"] if str(row[0]) != target]
    assert untouched == [row for row in before["public.reminders"] if str(row[0]) != target]
    assert {k: v for k, v in after.items() if k != "public.reminders"} == {
        k: v for k, v in before.items() if k != "public.reminders"
    }
