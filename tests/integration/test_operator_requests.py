"""`planbus requests show | retry | list` and their SQL functions, for every registered kind, against real
PostgreSQL; retry racing claimers on separate connections; one verb over the Supabase REST API (respx)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx
from psycopg import sql as q

from planbus import bootstrap
from planbus.cli import main
from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.kinds import KINDS, AnyKind
from support.cloud_tasks import QUEUE, FakeCloudTasks
from support.concurrency import run_together
from support.request_kinds import claim_request, claimed_attempt, complete_request, insert_request
from support.request_rows import request_row

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]
FAKE_PG_NET = (Path(__file__).parents[1] / "fakes" / "pg_net_responses.sql").read_text()
UNKNOWN = "6a1f7b1e-0000-4000-8000-000000000000"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOST_WEBHOOK_SECONDS", "60")
    yield
    bootstrap.reset()


def failed(db: PostgresDatabase, sql: Sql, kind: AnyKind, lead: Row, error: str = "the model refused") -> Row:
    """A request of `kind` that failed for good on its first attempt."""
    request = insert_request(sql, kind, lead)
    attempt = claimed_attempt(db, kind, request["id"])
    answer = db.call(
        "planbus_fail_request",
        p_kind=kind.name,
        p_request_id=request["id"],
        p_attempt=attempt,
        p_error=error,
        p_retryable=False,
        p_max_attempts=3,
    )
    assert answer["status"] == "failed", answer
    return request_row(sql, request["id"], kind.table)


def in_state(db: PostgresDatabase, sql: Sql, kind: AnyKind, lead: Row, status: str) -> Row:
    request = insert_request(sql, kind, lead)
    if status in ("processing", "completed"):
        attempt = claimed_attempt(db, kind, request["id"])
    if status == "completed":
        answer = complete_request(db, kind, request["id"], attempt=attempt)
        assert answer["completed"], answer
    return request_row(sql, request["id"], kind.table)


# -- show ---------------------------------------------------------------------------------------------------


def test_show_finds_a_request_of_any_kind_with_its_history_and_deliveries(
    db: PostgresDatabase,
    sql: Sql,
    cli_env: None,
    kind: AnyKind,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sql.execute(FAKE_PG_NET)
    db.call("planbus_store_setting", p_name=f"webhook_url_{kind.name}", p_value="https://fn.test/hook")
    request = failed(db, sql, kind, make_lead(1001), "the model refused: policy")
    net_id = sql.execute(
        "SELECT net_request_id FROM planbus_private.webhook_deliveries WHERE request_id = %s",
        (request["id"],),
    ).fetchone()
    assert net_id is not None
    sql.execute(
        "INSERT INTO net._http_response (id, status_code, timed_out, content) VALUES (%s, 401, false, 'no')",
        (net_id["net_request_id"],),
    )

    answer = db.call("planbus_request_show", p_request_id=request["id"])
    assert answer["found"] is True and answer["kind"] == kind.name
    assert answer["request"]["id"] == str(request["id"]) and answer["request"]["status"] == "failed"
    assert [e["message"] for e in answer["errors"]] == ["the model refused: policy"]
    assert answer["reminders"] == []
    [delivery] = answer["deliveries"]
    assert delivery["channel"] == "pg_net" and delivery["status_code"] == 401
    assert delivery["cause"] == "refused_401"

    assert main(["requests", "show", str(request["id"])]) == 0
    out = capsys.readouterr().out
    assert f"{kind.name} request {request['id']}" in out
    assert "attempt 1: the model refused: policy" in out
    assert "pg_net      refused_401" in out

    assert main(["requests", "show", str(request["id"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request"]["error"] == "the model refused: policy"


def test_show_lists_the_reminders_a_plan_scheduled(
    db: PostgresDatabase,
    sql: Sql,
    make_plan: Callable[..., list[str]],
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reminders = make_plan(2)
    owner = sql.execute("SELECT plan_request_id FROM reminders WHERE id = %s", (reminders[0],)).fetchone()
    assert owner is not None
    request_id = str(owner["plan_request_id"])

    answer = db.call("planbus_request_show", p_request_id=request_id)
    assert answer["found"] and answer["kind"] == "plan"
    assert [r["id"] for r in answer["reminders"]] == reminders
    assert main(["requests", "show", request_id]) == 0
    out = capsys.readouterr().out
    assert "reminders (2)" in out and "step  0  scheduled" in out


def test_show_of_an_unknown_request_says_so(
    db: PostgresDatabase, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert db.call("planbus_request_show", p_request_id=UNKNOWN) == {"found": False, "id": UNKNOWN}
    assert main(["requests", "show", UNKNOWN]) == 1
    assert f"no request {UNKNOWN} in any kind" in capsys.readouterr().err


def test_an_id_that_is_not_a_uuid_is_refused_before_the_database(
    cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["requests", "show", "42"])
    assert refused.value.code == 2
    assert "'42' is not a request id (a UUID)" in capsys.readouterr().err


# -- retry --------------------------------------------------------------------------------------------------


def test_retry_puts_a_failed_request_back_to_pending_with_a_fresh_budget(
    db: PostgresDatabase,
    sql: Sql,
    cli_env: None,
    kind: AnyKind,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = failed(db, sql, kind, make_lead(1001), "the model refused")

    assert main(["requests", "retry", str(request["id"]), "--note", "prompt fixed"]) == 0
    out = capsys.readouterr().out
    assert f"{kind.name} request {request['id']} is pending again (attempts reset to 0)" in out
    assert (
        "the sweeper (reset_stale_requests) picks it up on its first run after LOST_WEBHOOK_SECONDS (60 s)"
        in out
    )

    row = request_row(sql, request["id"], kind.table)
    assert (row["status"], row["attempts"], row["error"], row["lease_expires_at"]) == (
        "pending",
        0,
        None,
        None,
    )
    history = db.call("planbus_request_show", p_request_id=request["id"])["errors"]
    assert [e["message"] for e in history] == [
        "the model refused",
        "retried by hand after 1 attempt(s) (prompt fixed); it had failed with: the model refused",
    ]
    # The fresh budget: a claim starts attempt 1 again.
    assert claimed_attempt(db, kind, request["id"]) == 1


@pytest.mark.parametrize("status", ["pending", "processing", "completed"])
def test_retry_is_refused_for_any_other_state_and_changes_nothing(
    db: PostgresDatabase,
    sql: Sql,
    cli_env: None,
    kind: AnyKind,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
    status: str,
) -> None:
    request = in_state(db, sql, kind, make_lead(1001), status)
    errors_before = db.call("planbus_request_show", p_request_id=request["id"])["errors"]

    assert main(["requests", "retry", str(request["id"])]) == 1
    assert (
        f"request {request['id']} is {status}: only a failed request can be retried"
        in capsys.readouterr().err
    )
    assert request_row(sql, request["id"], kind.table) == request
    assert db.call("planbus_request_show", p_request_id=request["id"])["errors"] == errors_before


def test_retry_of_an_unknown_request_is_refused(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["requests", "retry", UNKNOWN]) == 1
    assert f"no request {UNKNOWN} in any kind" in capsys.readouterr().err


def test_retry_is_refused_while_the_lead_has_another_active_request(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> None:
    lead = make_lead(1001)
    request = failed(db, sql, kind, lead)
    insert_request(sql, kind, lead)

    answer = db.call("planbus_retry_request", p_request_id=request["id"])
    assert answer["retried"] is False and answer["status"] == "failed"
    assert "another request of its lead is active" in answer["reason"]
    assert request_row(sql, request["id"], kind.table) == request


def test_retry_racing_claimers_never_claims_twice(
    database_url: str, db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> None:
    for n in range(8):
        request = failed(db, sql, kind, make_lead(2000 + n))
        databases = [PostgresDatabase(database_url) for _ in range(3)]
        try:
            retry, *claimers = databases
            answers = run_together(
                [
                    partial(retry.call, "planbus_retry_request", p_request_id=request["id"]),
                    *[partial(claim_request, d, kind, request["id"]) for d in claimers],
                ]
            )
        finally:
            for database in databases:
                database.close()
        retried = [a for a in answers if "retried" in a]
        claims = [a for a in answers if a.get("claimed")]
        assert retried == [retried[0]] and retried[0]["retried"] is True
        assert len(claims) <= 1
        row = request_row(sql, request["id"], kind.table)
        if claims:
            assert claims[0]["attempt"] == 1
            assert (row["status"], row["attempts"]) == ("processing", 1)
        else:
            assert (row["status"], row["attempts"]) == ("pending", 0)


def test_two_retries_at_once_retry_once(
    database_url: str, db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> None:
    request = failed(db, sql, kind, make_lead(1001))
    databases = [PostgresDatabase(database_url) for _ in range(2)]
    try:
        answers = run_together(
            [partial(d.call, "planbus_retry_request", p_request_id=request["id"]) for d in databases]
        )
    finally:
        for database in databases:
            database.close()
    assert sorted(a["retried"] for a in answers) == [False, True]
    assert (
        "is pending: only a failed request can be retried"
        in next(a for a in answers if not a["retried"])["reason"]
    )
    history = db.call("planbus_request_show", p_request_id=request["id"])["errors"]
    assert sum(e["message"].startswith("retried by hand") for e in history) == 1


def test_in_cloud_tasks_mode_retry_enqueues_the_first_attempt(
    monkeypatch: pytest.MonkeyPatch,
    db: PostgresDatabase,
    sql: Sql,
    cli_env: None,
    kind: AnyKind,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = failed(db, sql, kind, make_lead(1001))
    with FakeCloudTasks() as tasks:
        for name, value in {
            "WEBHOOK_SECRET": "cloud-tasks-secret",
            "DISPATCH": "cloud-tasks",
            "CLOUD_TASKS_QUEUE": QUEUE,
            "CLOUD_TASKS_EMULATOR_HOST": tasks.host,
            **{k.worker_url_setting.upper(): f"https://worker.test/{k.process_target}" for k in KINDS},
        }.items():
            monkeypatch.setenv(name, value)
        assert main(["requests", "retry", str(request["id"])]) == 0
        bootstrap.reset()
    assert "attempt 1 queued" in capsys.readouterr().out
    [task] = tasks.tasks
    assert task.url == f"https://worker.test/{kind.process_target}"


# -- list ---------------------------------------------------------------------------------------------------


def age(sql: Sql, kind: AnyKind, request_id: Any, interval: str) -> None:
    """Move a row's updated_at back (the touch trigger would set it to now, so it is switched off here)."""
    with sql.transaction():
        sql.execute("SET LOCAL session_replication_role = replica")
        sql.execute(
            q.SQL("UPDATE public.{} SET updated_at = now() - %s::interval WHERE id = %s").format(
                q.Identifier(kind.table)
            ),
            (interval, request_id),
        )


def test_list_shows_failed_requests_of_the_span_newest_first(
    db: PostgresDatabase,
    sql: Sql,
    cli_env: None,
    make_lead: Callable[..., Row],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = {}
    for n, kind in enumerate(KINDS):
        rows[kind.name] = recent = failed(db, sql, kind, make_lead(3000 + n), f"{kind.name} failed")
        age(sql, kind, recent["id"], f"{n + 1} minutes")
        old = failed(db, sql, kind, make_lead(3100 + n))
        age(sql, kind, old["id"], "2 days")
        in_state(db, sql, kind, make_lead(3200 + n), "completed")

    assert main(["requests", "list", "--status", "failed", "--since", "1d", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["id"]) for r in listed] == [(k.name, str(rows[k.name]["id"])) for k in KINDS]
    assert listed[0]["error"] == f"{KINDS[0].name} failed" and listed[0]["attempts"] == 1

    for kind in KINDS:
        assert main(["requests", "list", "--kind", kind.name, "--json"]) == 0
        assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [str(rows[kind.name]["id"])]

    assert main(["requests", "list", "--since", "3d"]) == 0
    out = capsys.readouterr().out
    assert f"{2 * len(KINDS)} failed request(s) since" in out
    assert f"{KINDS[0].name} failed" in out

    assert main(["requests", "list", "--status", "pending", "--since", "30m"]) == 0
    assert "no pending requests since" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--since", "yesterday"], "'yesterday' is not a time span"),
        (["--since", "1d2"], "'1d2' is not a time span"),
        (["--kind", "memo"], "no request kind 'memo'"),
        (["--status", "lost"], "invalid choice: 'lost'"),
        (["--limit", "0"], "'0': give a whole number from 1 to 1000"),
    ],
)
def test_list_refuses_bad_arguments(
    cli_env: None, capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["requests", "list", *argv])
    assert refused.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"p_status": "lost", "p_since": "2026-01-01"}, "p_status must be"),
        ({"p_status": "failed", "p_since": None}, "p_since is required"),
        ({"p_status": "failed", "p_since": "2026-01-01", "p_limit": 0}, "p_limit must be from 1 to 1000"),
        ({"p_status": "failed", "p_since": "2026-01-01", "p_kind": "memo"}, "unknown request kind: memo"),
    ],
)
def test_list_function_refuses_bad_arguments(
    db: PostgresDatabase, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(DatabaseError, match=message) as refused:
        db.call("planbus_list_requests", **params)
    assert refused.value.sqlstate == "22023"


def test_the_verbs_are_for_the_service_role_only(sql: Sql) -> None:
    for call in (
        f"public.planbus_request_show('{UNKNOWN}')",
        f"public.planbus_retry_request('{UNKNOWN}')",
        "public.planbus_list_requests('failed', now())",
    ):
        for role in ("anon", "authenticated"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), sql.transaction():
                sql.execute(f"SET LOCAL ROLE {role}")
                sql.execute(f"SELECT {call}")


# -- over Supabase REST -------------------------------------------------------------------------------------


def test_retry_works_over_the_supabase_rest_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-role-key")
    monkeypatch.setenv("DISPATCH", "inline")
    answer = {"retried": True, "kind": "plan", "request": {"id": UNKNOWN, "status": "pending", "attempts": 0}}
    with respx.mock(assert_all_called=True) as router:
        route = router.post("https://project.supabase.co/rest/v1/rpc/planbus_retry_request").mock(
            return_value=httpx.Response(200, json=answer)
        )
        assert main(["requests", "retry", UNKNOWN, "--note", "by hand"]) == 0
    sent = route.calls.last.request
    assert sent.headers["apikey"] == "service-role-key"
    assert json.loads(sent.content) == {"p_request_id": UNKNOWN, "p_note": "by hand"}
    assert f"plan request {UNKNOWN} is pending again" in capsys.readouterr().out
