"""Every kind's webhook (handle_plan_request, handle_draft_request) in inline dispatch, through the
functions-framework app, against real PostgreSQL, with OpenAI faked at the HTTP level (the openai
client's httpx2 transport). Tests that take `kind` run once per registered kind; the OpenAI plan details
at the end are the plan kind's. The cloud-tasks mode is in test_cloud_tasks_dispatch.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx2
import psycopg
import pytest
from flask.testing import FlaskClient

from planbus import llm
from planbus.db.postgres import PostgresDatabase
from planbus.kinds import KINDS, PLAN, AnyKind
from planbus.llm import drafts
from planbus.models import PlanResult
from planbus.settings import Settings
from support import mini_app
from support.concurrency import run_together
from support.drafts import VALID_DRAFT
from support.openai_fakes import VALID_PLAN, FakeOpenAI, api_error, completion, timeout
from support.request_kinds import ready_request
from support.request_rows import request_row

Row = dict[str, Any]
SECRET = "webhook-secret-for-tests"
HEADERS = {"X-Webhook-Secret": SECRET}
# A valid answer of the model for each kind.
ANSWERS = {"plan": VALID_PLAN, "draft": VALID_DRAFT}
TABLES = ("leads", "reminders", "planbus_private.request_errors", *(kind.table for kind in KINDS))


def make_client(kind: AnyKind = PLAN) -> FlaskClient:
    return mini_app.client(kind.handle_target)


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)


@pytest.fixture
def client(app_env: None, kind: AnyKind) -> FlaskClient:
    return make_client(kind)


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeOpenAI]:
    """Switch the functions to the OpenAI generators, talking to a fake API through its HTTP transport."""

    def install(*answers: Any, delay: float = 0.0) -> FakeOpenAI:
        fake = FakeOpenAI(*answers, delay=delay)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_TIMEOUT", "20")
        monkeypatch.setenv("DRAFT_OPENAI_TIMEOUT", "20")
        client = fake.client()
        monkeypatch.setattr(llm, "generator_for", lambda s: llm.make_generator(s, http_client=client))
        monkeypatch.setattr(
            drafts, "draft_generator_for", lambda s: drafts.make_draft_generator(s, http_client=client)
        )
        return fake

    return install


def lead_of(make_lead: Callable[..., Row]) -> Row:
    return make_lead(
        company="Analytical Engines Ltd", title="Head of Research", notes="Wants Bernoulli tables."
    )


@pytest.fixture
def pending(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, make_lead: Callable[..., Row]
) -> Row:
    """A request of the test's kind that can be processed (a draft's lead has a plan)."""
    return ready_request(sql, db, kind, lead_of(make_lead))


def insert_event(row: Row, table: str, **changes: Any) -> dict[str, Any]:
    """The payload the database trigger sends for a row inserted into public.<table>."""
    record = json.loads(json.dumps(row, default=str))
    return {
        "type": "INSERT",
        "table": table,
        "schema": "public",
        "record": record,
        "old_record": None,
        **changes,
    }


def state(sql: psycopg.Connection[Row]) -> dict[str, Any]:
    """Everything a request can change, to show that nothing did."""
    return {table: sql.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES}


def reminder_count(sql: psycopg.Connection[Row], request_id: Any) -> int:
    row = sql.execute(
        "SELECT count(*) AS n FROM reminders WHERE plan_request_id = %s", (request_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


# -- every kind ----------------------------------------------------------------------------------------


def test_an_inserted_request_is_completed_by_the_offline_generator(
    client: FlaskClient, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    response = client.post("/", json=insert_event(pending, kind.table), headers=HEADERS)

    assert response.status_code == 200
    assert response.get_json() == {"request_id": str(pending["id"]), "outcome": "completed", "reason": None}
    row = request_row(sql, pending["id"], kind.table)
    assert (row["status"], row["attempts"], row["error"]) == ("completed", 1, None)
    assert kind.result_model.model_validate(row["result"]).generator == "offline"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "authenticate",
    [{"headers": {"Authorization": f"Bearer {SECRET}"}}, {"query_string": {"token": SECRET}}],
    ids=["bearer", "token"],
)
def test_the_secret_is_also_accepted_as_bearer_or_token(
    client: FlaskClient, kind: AnyKind, pending: Row, authenticate: dict[str, Any]
) -> None:
    response = client.post("/", json=insert_event(pending, kind.table), **authenticate)
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"


def test_an_openai_answer_is_stored_with_its_provenance(
    client: FlaskClient,
    sql: psycopg.Connection[Row],
    kind: AnyKind,
    pending: Row,
    fake_openai: Callable[..., FakeOpenAI],
) -> None:
    fake = fake_openai(completion(ANSWERS[kind.name], model="gpt-5-mini-2026-08-07"), delay=0.2)

    response = client.post("/", json=insert_event(pending, kind.table), headers=HEADERS)

    assert response.get_json()["outcome"] == "completed"
    assert len(fake.requests) == 1
    result = request_row(sql, pending["id"], kind.table)["result"]
    assert (result["generator"], result["model"], result["response_id"]) == (
        "openai",
        "gpt-5-mini-2026-08-07",
        "chatcmpl-test-1",
    )
    assert result["usage"] == {"prompt_tokens": 812, "completion_tokens": 345, "total_tokens": 1157}
    assert result["latency_ms"] >= 200  # the time the API took to answer


def test_the_same_webhook_delivered_twenty_times_at_once_generates_once(
    app_env: None,
    sql: psycopg.Connection[Row],
    kind: AnyKind,
    pending: Row,
    fake_openai: Callable[..., FakeOpenAI],
) -> None:
    # A slow model widens the window in which the other deliveries arrive.
    fake = fake_openai(completion(ANSWERS[kind.name]), delay=0.2)
    payload = insert_event(pending, kind.table)
    clients = [make_client(kind) for _ in range(20)]

    def deliver(client: FlaskClient) -> dict[str, Any]:
        response = client.post("/", json=payload, headers=HEADERS)
        assert response.status_code == 200
        answer: dict[str, Any] = response.get_json()
        return answer

    answers = run_together([partial(deliver, client) for client in clients])

    assert len(answers) == 20
    assert Counter(a["outcome"] for a in answers) == {"completed": 1, "skipped": 19}
    assert len(fake.requests) == 1
    row = request_row(sql, pending["id"], kind.table)
    assert (row["status"], row["attempts"]) == ("completed", 1)


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Webhook-Secret": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}],
    ids=["missing", "wrong-header", "wrong-bearer", "not-bearer"],
)
def test_a_missing_or_wrong_secret_is_refused_and_changes_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row, headers: dict[str, str]
) -> None:
    before = state(sql)
    response = client.post("/", json=insert_event(pending, kind.table), headers=headers)

    assert response.status_code == 401
    assert response.get_json() == {"error": "missing or wrong webhook secret"}
    assert state(sql) == before


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ('{"type": "INSERT", "table": ', "not a database webhook payload: Invalid JSON"),
        ("", "not a database webhook payload: Invalid JSON"),
        ('["INSERT"]', "Input should be an object"),
        ('{"type": "INSERT", "table": "{table}", "schema": "public", "record": "x"}', "record:"),
        ('{"type": 7, "table": "{table}", "schema": "public", "record": null}', "type:"),
        ('{"type": "INSERT", "table": "{table}", "schema": "public", "record": {"id": "7"}}', "not a UUID"),
        ('{"type": "INSERT", "table": "{table}", "schema": "public", "record": {}}', "must carry record.id"),
    ],
    ids=["truncated", "empty", "array", "record-string", "type-number", "id-not-uuid", "no-id"],
)
def test_a_body_that_is_not_a_webhook_payload_is_a_400_and_changes_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row, body: str, complaint: str
) -> None:
    before = state(sql)
    data = body.replace("{table}", kind.table)
    response = client.post("/", data=data, headers={**HEADERS, "Content-Type": "application/json"})

    assert response.status_code == 400
    assert complaint in response.get_json()["error"]
    assert state(sql) == before


@pytest.mark.parametrize(
    ("changes", "event"),
    [
        ({"table": "leads"}, "INSERT on public.leads"),
        ({"schema": "archive"}, "INSERT on archive.{table}"),
        ({"type": "UPDATE"}, "UPDATE on public.{table}"),
        ({"type": "DELETE"}, "DELETE on public.{table}"),
    ],
)
def test_events_other_than_an_insert_on_the_kinds_table_are_skipped_and_change_nothing(
    client: FlaskClient,
    sql: psycopg.Connection[Row],
    kind: AnyKind,
    pending: Row,
    changes: dict[str, Any],
    event: str,
) -> None:
    body = {**insert_event(pending, kind.table), **changes}
    if changes.get("type") == "DELETE":
        body = {**body, "record": None, "old_record": body["record"]}
    before = state(sql)

    response = client.post("/", json=body, headers=HEADERS)

    assert response.status_code == 200
    named = str(pending["id"]) if "table" not in changes and "schema" not in changes else None
    reason = f"not an INSERT on public.{kind.table}: " + event.replace("{table}", kind.table)
    assert response.get_json() == {"request_id": named, "outcome": "skipped", "reason": reason}
    assert state(sql) == before


def test_an_insert_on_another_kinds_table_is_skipped_by_this_kinds_webhook(
    client: FlaskClient, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    before = state(sql)
    for other in KINDS:
        if other is kind:
            continue
        response = client.post("/", json=insert_event(pending, other.table), headers=HEADERS)
        assert response.status_code == 200
        assert response.get_json() == {
            "request_id": None,
            "outcome": "skipped",
            "reason": f"not an INSERT on public.{kind.table}: INSERT on public.{other.table}",
        }
    assert state(sql) == before


def test_an_unknown_request_id_is_skipped_and_changes_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    unknown = "00000000-0000-4000-8000-00000000beef"
    before = state(sql)

    response = client.post("/", json=insert_event({**pending, "id": unknown}, kind.table), headers=HEADERS)

    assert response.status_code == 200
    assert response.get_json() == {"request_id": unknown, "outcome": "skipped", "reason": "unknown request"}
    assert state(sql) == before


def test_a_second_delivery_after_completion_is_skipped(
    client: FlaskClient, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    client.post("/", json=insert_event(pending, kind.table), headers=HEADERS)
    before = state(sql)

    response = client.post("/", json=insert_event(pending, kind.table), headers=HEADERS)

    assert response.get_json()["reason"] == "already completed"
    assert state(sql) == before


def test_only_post_is_served(client: FlaskClient, kind: AnyKind) -> None:
    response = client.get("/", headers=HEADERS)
    assert response.status_code == 405
    assert response.get_json() == {"error": f"{kind.handle_target} takes POST"}


def test_an_unreachable_database_is_a_503(monkeypatch: pytest.MonkeyPatch, kind: AnyKind) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://planbus@127.0.0.1:9/nowhere?connect_timeout=1")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    event = insert_event({"id": "00000000-0000-4000-8000-000000000001"}, kind.table)

    response = make_client(kind).post("/", json=event, headers=HEADERS)

    assert response.status_code == 503
    assert response.get_json() == {"error": "database unavailable"}


def test_without_a_configured_secret_the_function_refuses_to_serve(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    sql: psycopg.Connection[Row],
    kind: AnyKind,
    pending: Row,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    before = state(sql)

    response = make_client(kind).post(
        "/", json=insert_event(pending, kind.table), headers={"X-Webhook-Secret": ""}
    )

    assert response.status_code == 503
    assert response.get_json() == {"error": "WEBHOOK_SECRET is not set: refusing to serve"}
    assert state(sql) == before


def test_choosing_openai_without_a_key_is_a_clear_503_and_changes_nothing(
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    sql: psycopg.Connection[Row],
    kind: AnyKind,
    pending: Row,
) -> None:
    monkeypatch.setenv("PLAN_GENERATOR", "openai")
    before = state(sql)

    response = client.post("/", json=insert_event(pending, kind.table), headers=HEADERS)

    assert response.status_code == 503
    assert response.get_json() == {"error": "PLAN_GENERATOR=openai needs OPENAI_API_KEY"}
    assert state(sql) == before


def test_an_openai_connection_failure_is_retried_later(
    client: FlaskClient,
    sql: psycopg.Connection[Row],
    kind: AnyKind,
    pending: Row,
    fake_openai: Callable[..., FakeOpenAI],
) -> None:
    fake_openai(httpx2.ConnectError("connection refused"))

    response = client.post("/", json=insert_event(pending, kind.table), headers=HEADERS)

    assert response.get_json()["outcome"] == "failed"
    assert request_row(sql, pending["id"], kind.table)["status"] == "pending"


def test_each_kinds_generator_is_kept_for_a_warm_instance(kind: AnyKind) -> None:
    settings = Settings()
    assert kind.generator(settings) is kind.generator(settings)
    assert kind.generator(Settings()) is not kind.generator(settings)


# -- the plan kind with OpenAI ---------------------------------------------------------------------------


@pytest.fixture
def plan_client(app_env: None) -> FlaskClient:
    return make_client(PLAN)


@pytest.fixture
def pending_plan(make_lead: Callable[..., Row], make_request: Callable[..., Row]) -> Row:
    return make_request(lead_of(make_lead))


def test_an_openai_plan_is_asked_with_the_leads_facts_and_stored_with_its_reminders(
    plan_client: FlaskClient,
    sql: psycopg.Connection[Row],
    pending_plan: Row,
    fake_openai: Callable[..., FakeOpenAI],
) -> None:
    fake = fake_openai(completion(VALID_PLAN))

    response = plan_client.post("/", json=insert_event(pending_plan, "plan_requests"), headers=HEADERS)

    assert response.get_json()["outcome"] == "completed"
    (body,) = fake.bodies()
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "EngagementPlan"
    assert (
        body["response_format"]["json_schema"]["schema"]["$defs"]["PlanStep"]["additionalProperties"] is False
    )
    facts = body["messages"][1]["content"]
    assert all(
        f in facts for f in ("Ada Lovelace", "Analytical Engines Ltd", "Head of Research", "Bernoulli")
    )
    result = PlanResult.model_validate(request_row(sql, pending_plan["id"])["result"])
    assert result.plan.model_dump(mode="json") == VALID_PLAN
    lead = sql.execute("SELECT * FROM leads WHERE id = %s", (pending_plan["lead_id"],)).fetchone()
    assert lead is not None
    assert (lead["status"], lead["plan"]) == ("plan_ready", VALID_PLAN)
    assert reminder_count(sql, pending_plan["id"]) == 3


def test_a_rate_limit_then_success_completes_in_one_attempt(
    plan_client: FlaskClient,
    sql: psycopg.Connection[Row],
    pending_plan: Row,
    fake_openai: Callable[..., FakeOpenAI],
) -> None:
    fake = fake_openai(
        api_error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"retry-after": "0.05"}),
        completion(VALID_PLAN),
    )

    response = plan_client.post("/", json=insert_event(pending_plan, "plan_requests"), headers=HEADERS)

    assert response.get_json()["outcome"] == "completed"
    assert len(fake.requests) == 2
    assert request_row(sql, pending_plan["id"])["attempts"] == 1


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (timeout, "pending", None),
        (
            completion(None, refusal="I can't help with that."),
            "failed",
            "the model refused to write a plan: I can't help with that.",
        ),
        (
            completion("{not json"),
            "failed",
            "the model's answer is not a valid plan: Invalid JSON: key must be a string at line 1 column 2",
        ),
        (
            api_error(401, "Incorrect API key provided: sk-te***key."),
            "failed",
            "OpenAI answered 401: Incorrect API key provided: sk-te***key.",
        ),
    ],
    ids=["timeout", "refusal", "invalid-json", "unauthorized"],
)
def test_an_openai_failure_ends_in_the_right_state_with_the_right_error(
    plan_client: FlaskClient,
    sql: psycopg.Connection[Row],
    pending_plan: Row,
    fake_openai: Callable[..., FakeOpenAI],
    answer: Any,
    status: str,
    error: str | None,
) -> None:
    fake_openai(answer)

    response = plan_client.post("/", json=insert_event(pending_plan, "plan_requests"), headers=HEADERS)

    assert response.status_code == 200
    body = response.get_json()
    assert body["outcome"] == "failed"
    row = request_row(sql, pending_plan["id"])
    assert (row["status"], row["error"], row["result"], row["lease_expires_at"]) == (
        status,
        error,
        None,
        None,
    )
    assert reminder_count(sql, pending_plan["id"]) == 0
    if status == "pending":
        assert body["reason"].startswith("OpenAI did not answer within 20 s; retry scheduled at ")
    else:
        assert body["reason"] == error
