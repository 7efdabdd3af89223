"""handle_plan_request through the functions-framework app, against real PostgreSQL, with OpenAI faked at
the HTTP level (the openai client's httpx2 transport)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx2
import psycopg
import pytest
from flask.testing import FlaskClient

from planbus import llm
from planbus.models import PlanResult
from planbus.settings import Settings
from support import mini_app
from support.openai_fakes import VALID_PLAN, FakeOpenAI, api_error, completion, timeout
from support.request_rows import request_row

Row = dict[str, Any]
SECRET = "webhook-secret-for-tests"
HEADERS = {"X-Webhook-Secret": SECRET}


def make_client() -> FlaskClient:
    return mini_app.client("handle_plan_request")


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, database_url: str) -> FlaskClient:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    return make_client()


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeOpenAI]:
    """Switch the function to the OpenAI generator, talking to a fake API through its HTTP transport."""

    def install(*answers: Any, delay: float = 0.0) -> FakeOpenAI:
        fake = FakeOpenAI(*answers, delay=delay)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_TIMEOUT", "20")
        client = fake.client()
        monkeypatch.setattr(llm, "generator_for", lambda s: llm.make_generator(s, http_client=client))
        return fake

    return install


@pytest.fixture
def pending(make_lead: Callable[..., Row], make_request: Callable[..., Row]) -> Row:
    lead = make_lead(
        company="Analytical Engines Ltd", title="Head of Research", notes="Wants Bernoulli tables."
    )
    return make_request(lead)


def insert_event(row: Row, **changes: Any) -> dict[str, Any]:
    """The payload the database trigger sends for an inserted row."""
    record = json.loads(json.dumps(row, default=str))
    return {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": record,
        "old_record": None,
        **changes,
    }


def state(sql: psycopg.Connection[Row]) -> dict[str, Any]:
    """Everything a request can change, to show that nothing did."""
    return {
        table: sql.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        for table in ("plan_requests", "leads", "reminders", "planbus_private.plan_request_errors")
    }


def reminder_count(sql: psycopg.Connection[Row], request_id: Any) -> int:
    row = sql.execute(
        "SELECT count(*) AS n FROM reminders WHERE plan_request_id = %s", (request_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_an_inserted_request_is_completed_with_the_offline_plan(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row
) -> None:
    response = client.post("/", json=insert_event(pending), headers=HEADERS)

    assert response.status_code == 200
    assert response.get_json() == {"request_id": str(pending["id"]), "outcome": "completed", "reason": None}
    row = request_row(sql, pending["id"])
    assert (row["status"], row["attempts"], row["error"]) == ("completed", 1, None)
    result = PlanResult.model_validate(row["result"])
    assert result.generator == "offline"
    lead = sql.execute("SELECT * FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    assert lead is not None
    assert (lead["status"], lead["plan"]) == ("plan_ready", result.plan.model_dump(mode="json"))
    assert lead["plan_generated_at"] is not None
    assert reminder_count(sql, pending["id"]) == len(result.plan.steps)


@pytest.mark.parametrize(
    "authenticate",
    [
        {"headers": {"Authorization": f"Bearer {SECRET}"}},
        {"query_string": {"token": SECRET}},
    ],
)
def test_the_secret_is_also_accepted_as_bearer_or_token(
    client: FlaskClient, pending: Row, authenticate: dict[str, Any]
) -> None:
    response = client.post("/", json=insert_event(pending), **authenticate)
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"


def test_an_openai_plan_is_stored_with_its_provenance(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, fake_openai: Callable[..., FakeOpenAI]
) -> None:
    fake = fake_openai(completion(VALID_PLAN, model="gpt-5-mini-2026-08-07"))

    response = client.post("/", json=insert_event(pending), headers=HEADERS)

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
    result = request_row(sql, pending["id"])["result"]
    assert result["plan"] == VALID_PLAN
    assert (result["generator"], result["model"], result["response_id"]) == (
        "openai",
        "gpt-5-mini-2026-08-07",
        "chatcmpl-test-1",
    )
    assert result["usage"] == {"prompt_tokens": 812, "completion_tokens": 345, "total_tokens": 1157}
    assert result["latency_ms"] >= 0
    assert reminder_count(sql, pending["id"]) == 3


def test_a_rate_limit_then_success_completes_in_one_attempt(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, fake_openai: Callable[..., FakeOpenAI]
) -> None:
    fake = fake_openai(
        api_error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"retry-after": "0.05"}),
        completion(VALID_PLAN),
    )

    response = client.post("/", json=insert_event(pending), headers=HEADERS)

    assert response.get_json()["outcome"] == "completed"
    assert len(fake.requests) == 2
    assert (request_row(sql, pending["id"])["attempts"]) == 1


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
    client: FlaskClient,
    sql: psycopg.Connection[Row],
    pending: Row,
    fake_openai: Callable[..., FakeOpenAI],
    answer: Any,
    status: str,
    error: str | None,
) -> None:
    fake_openai(answer)

    response = client.post("/", json=insert_event(pending), headers=HEADERS)

    assert response.status_code == 200
    body = response.get_json()
    assert body["outcome"] == "failed"
    row = request_row(sql, pending["id"])
    assert (row["status"], row["error"], row["result"], row["lease_expires_at"]) == (
        status,
        error,
        None,
        None,
    )
    assert reminder_count(sql, pending["id"]) == 0
    if status == "pending":
        assert body["reason"].startswith("OpenAI did not answer within 20 s; retry scheduled at ")
    else:
        assert body["reason"] == error


def test_the_same_webhook_delivered_twenty_times_at_once_generates_one_plan(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, fake_openai: Callable[..., FakeOpenAI]
) -> None:
    # A slow model widens the window in which the other deliveries arrive.
    fake = fake_openai(completion(VALID_PLAN), delay=0.2)
    payload = insert_event(pending)
    start = threading.Barrier(20)
    answers: list[dict[str, Any]] = []

    def deliver() -> None:
        own_client = make_client()
        start.wait()
        response = own_client.post("/", json=payload, headers=HEADERS)
        assert response.status_code == 200
        answers.append(response.get_json())

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(answers) == 20
    assert Counter(a["outcome"] for a in answers) == {"completed": 1, "skipped": 19}
    assert len(fake.requests) == 1
    row = request_row(sql, pending["id"])
    assert (row["status"], row["attempts"]) == ("completed", 1)
    assert reminder_count(sql, pending["id"]) == 3


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Webhook-Secret": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}],
    ids=["missing", "wrong-header", "wrong-bearer", "not-bearer"],
)
def test_a_missing_or_wrong_secret_is_refused_and_changes_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, headers: dict[str, str]
) -> None:
    before = state(sql)
    response = client.post("/", json=insert_event(pending), headers=headers)

    assert response.status_code == 401
    assert response.get_json() == {"error": "missing or wrong webhook secret"}
    assert state(sql) == before


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b'{"type": "INSERT", "table": ', "not a database webhook payload: Invalid JSON"),
        (b"", "not a database webhook payload: Invalid JSON"),
        (b'["INSERT"]', "Input should be an object"),
        (b'{"type": "INSERT", "table": "plan_requests", "schema": "public", "record": "x"}', "record:"),
        (b'{"type": 7, "table": "plan_requests", "schema": "public", "record": null}', "type:"),
        (
            b'{"type": "INSERT", "table": "plan_requests", "schema": "public", "record": {"id": "7"}}',
            "not a UUID",
        ),
    ],
    ids=["truncated", "empty", "array", "record-string", "type-number", "id-not-uuid"],
)
def test_a_body_that_is_not_a_webhook_payload_is_a_400_and_changes_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, body: bytes, complaint: str
) -> None:
    before = state(sql)
    response = client.post("/", data=body, headers={**HEADERS, "Content-Type": "application/json"})

    assert response.status_code == 400
    assert complaint in response.get_json()["error"]
    assert state(sql) == before


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"table": "leads"}, "not an INSERT on public.plan_requests: INSERT on public.leads"),
        ({"schema": "archive"}, "not an INSERT on public.plan_requests: INSERT on archive.plan_requests"),
        ({"type": "UPDATE"}, "not an INSERT on public.plan_requests: UPDATE on public.plan_requests"),
        ({"type": "DELETE"}, "not an INSERT on public.plan_requests: DELETE on public.plan_requests"),
    ],
)
def test_events_other_than_an_insert_on_plan_requests_are_skipped_and_change_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, changes: dict[str, Any], reason: str
) -> None:
    event = insert_event(pending, **changes)
    if changes.get("type") == "DELETE":
        event = {**event, "record": None, "old_record": event["record"]}
    before = state(sql)

    response = client.post("/", json=event, headers=HEADERS)

    assert response.status_code == 200
    named = str(pending["id"]) if "table" not in changes and "schema" not in changes else None
    assert response.get_json() == {"request_id": named, "outcome": "skipped", "reason": reason}
    assert state(sql) == before


def test_an_unknown_request_id_is_skipped_and_changes_nothing(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row
) -> None:
    unknown = "00000000-0000-4000-8000-00000000beef"
    before = state(sql)

    response = client.post("/", json=insert_event({**pending, "id": unknown}), headers=HEADERS)

    assert response.status_code == 200
    assert response.get_json() == {"request_id": unknown, "outcome": "skipped", "reason": "unknown request"}
    assert state(sql) == before


def test_a_second_delivery_after_completion_is_skipped(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row
) -> None:
    client.post("/", json=insert_event(pending), headers=HEADERS)
    before = state(sql)

    response = client.post("/", json=insert_event(pending), headers=HEADERS)

    assert response.get_json()["reason"] == "already completed"
    assert state(sql) == before


def test_only_post_is_served(client: FlaskClient) -> None:
    response = client.get("/", headers=HEADERS)
    assert response.status_code == 405
    assert response.get_json() == {"error": "handle_plan_request takes POST"}


def test_an_unreachable_database_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://planbus@127.0.0.1:9/nowhere?connect_timeout=1")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    event = insert_event({"id": "00000000-0000-4000-8000-000000000001"})

    response = make_client().post("/", json=event, headers=HEADERS)

    assert response.status_code == 503
    assert response.get_json() == {"error": "database unavailable"}


def test_without_a_configured_secret_the_function_refuses_to_serve(
    monkeypatch: pytest.MonkeyPatch, database_url: str, sql: psycopg.Connection[Row], pending: Row
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    before = state(sql)

    response = make_client().post("/", json=insert_event(pending), headers={"X-Webhook-Secret": ""})

    assert response.status_code == 503
    assert response.get_json() == {"error": "WEBHOOK_SECRET is not set: refusing to serve"}
    assert state(sql) == before


def test_choosing_openai_without_a_key_is_a_clear_503_and_changes_nothing(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, sql: psycopg.Connection[Row], pending: Row
) -> None:
    monkeypatch.setenv("PLAN_GENERATOR", "openai")
    before = state(sql)

    response = client.post("/", json=insert_event(pending), headers=HEADERS)

    assert response.status_code == 503
    assert response.get_json() == {"error": "PLAN_GENERATOR=openai needs OPENAI_API_KEY"}
    assert state(sql) == before


def test_the_generator_is_kept_for_a_warm_instance() -> None:
    settings = Settings()
    assert llm.generator_for(settings) is llm.generator_for(settings)
    assert llm.generator_for(Settings()) is not llm.generator_for(settings)


def test_an_openai_connection_failure_is_retried_later(
    client: FlaskClient, sql: psycopg.Connection[Row], pending: Row, fake_openai: Callable[..., FakeOpenAI]
) -> None:
    fake_openai(httpx2.ConnectError("connection refused"))

    response = client.post("/", json=insert_event(pending), headers=HEADERS)

    assert response.get_json()["outcome"] == "failed"
    assert request_row(sql, pending["id"])["status"] == "pending"
