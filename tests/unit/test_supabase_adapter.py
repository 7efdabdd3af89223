"""The Supabase REST adapter: what it sends to PostgREST (checked with respx) and how errors come back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from planbus.db import connect
from planbus.db.supabase import SupabaseDatabase
from planbus.errors import DatabaseError, DatabaseUnavailable, LimitExceeded, UniqueViolation
from planbus.settings import get_settings

URL = "https://abcdefgh.supabase.co"
KEY = "service-role-key-for-tests"
RPC = f"{URL}/rest/v1/rpc/planbus_claim_request"


@pytest.fixture
def supabase() -> Iterator[SupabaseDatabase]:
    database = SupabaseDatabase(URL, KEY, timeout=2)
    yield database
    database.close()


def postgrest_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "details": None, "hint": None})


@respx.mock
def test_a_call_posts_the_named_arguments_to_the_rpc_endpoint_with_the_service_key(
    supabase: SupabaseDatabase,
) -> None:
    route = respx.post(RPC).mock(return_value=httpx.Response(200, json={"claimed": True, "attempt": 1}))
    answer = supabase.call(
        "planbus_claim_request", p_request_id="6f1c0c8e-0000-4000-8000-000000000001", p_lease_seconds=180
    )
    assert answer == {"claimed": True, "attempt": 1}
    [call] = route.calls
    request = call.request
    assert (request.method, str(request.url)) == ("POST", RPC)
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "p_request_id": "6f1c0c8e-0000-4000-8000-000000000001",
        "p_lease_seconds": 180,
    }


@respx.mock
def test_json_values_and_timestamps_are_sent_as_json(supabase: SupabaseDatabase) -> None:
    route = respx.post(f"{URL}/rest/v1/rpc/planbus_complete_request").mock(
        return_value=httpx.Response(200, json={"completed": True})
    )
    due = datetime(2030, 1, 2, 10, 0, tzinfo=UTC)
    supabase.call(
        "planbus_complete_request",
        p_result={"plan": {"steps": [1, 2]}},
        p_reminders=[{"step_index": 0, "due_at": due.isoformat()}],
        p_when=due,
    )
    assert json.loads(route.calls[0].request.content) == {
        "p_result": {"plan": {"steps": [1, 2]}},
        "p_reminders": [{"step_index": 0, "due_at": "2030-01-02T10:00:00+00:00"}],
        "p_when": "2030-01-02 10:00:00+00:00",
    }


@respx.mock
@pytest.mark.parametrize(("body", "expected"), [("null", None), ("[]", []), ('["a", "b"]', ["a", "b"])])
def test_the_functions_json_answer_is_returned_as_decoded(
    supabase: SupabaseDatabase, body: str, expected: Any
) -> None:
    respx.post(RPC).mock(
        return_value=httpx.Response(200, text=body, headers={"content-type": "application/json"})
    )
    assert supabase.call("planbus_claim_request") == expected


@respx.mock
@pytest.mark.parametrize(
    ("response", "error", "sqlstate"),
    [
        (postgrest_error(409, "23505", "duplicate key value"), UniqueViolation, "23505"),
        (postgrest_error(429, "PT429", "daily limit reached"), LimitExceeded, "PT429"),
        (postgrest_error(400, "22023", "p_error must be a non-empty reason"), DatabaseError, "22023"),
        (postgrest_error(500, "40P01", "deadlock detected"), DatabaseError, "40P01"),
        (
            postgrest_error(500, "57014", "canceling statement due to statement timeout"),
            DatabaseError,
            "57014",
        ),
        (postgrest_error(404, "PGRST202", "Could not find the function"), DatabaseError, None),
        (postgrest_error(401, "PGRST301", "JWT expired"), DatabaseError, None),
    ],
)
def test_a_refused_statement_keeps_its_sqlstate(
    supabase: SupabaseDatabase, response: httpx.Response, error: type[DatabaseError], sqlstate: str | None
) -> None:
    respx.post(RPC).mock(return_value=response)
    with pytest.raises(DatabaseError) as raised:
        supabase.call("planbus_claim_request")
    assert type(raised.value) is error
    assert raised.value.sqlstate == sqlstate


@respx.mock
@pytest.mark.parametrize(
    "response",
    [
        postgrest_error(503, "PGRST000", "Could not connect with the database"),
        postgrest_error(503, "PGRST001", "Database client error"),
        postgrest_error(503, "PGRST002", "Could not query the database for the schema cache"),
        postgrest_error(504, "PGRST003", "Timed out acquiring connection from connection pool"),
        postgrest_error(503, "57P01", "terminating connection due to administrator command"),
        postgrest_error(503, "08006", "connection failure"),
        postgrest_error(503, "53300", "too many connections"),
        httpx.Response(502, text="<html>502 Bad Gateway</html>"),
        httpx.Response(503, text=""),
        httpx.Response(504, json={"message": "upstream request timeout"}),
    ],
    ids=["PGRST000", "PGRST001", "PGRST002", "PGRST003", "57P01", "08006", "53300", "502", "503", "504"],
)
def test_an_unreachable_database_is_database_unavailable(
    supabase: SupabaseDatabase, response: httpx.Response
) -> None:
    respx.post(RPC).mock(return_value=response)
    with pytest.raises(DatabaseUnavailable):
        supabase.call("planbus_claim_request")


@respx.mock
@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("eof"),
    ],
)
def test_transport_errors_are_database_unavailable(supabase: SupabaseDatabase, failure: Exception) -> None:
    respx.post(RPC).mock(side_effect=failure)
    with pytest.raises(DatabaseUnavailable, match="Supabase unreachable"):
        supabase.call("planbus_claim_request")


def test_a_client_error_page_without_json_is_a_database_error_not_an_outage(
    supabase: SupabaseDatabase,
) -> None:
    with respx.mock:
        respx.post(RPC).mock(return_value=httpx.Response(401, text="Unauthorized"))
        with pytest.raises(DatabaseError) as raised:
            supabase.call("planbus_claim_request")
    assert type(raised.value) is DatabaseError
    assert "HTTP 401" in str(raised.value)


def test_names_that_are_not_sql_identifiers_are_refused_before_any_request(
    supabase: SupabaseDatabase,
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(url__startswith=URL)
        with pytest.raises(ValueError, match="not a SQL identifier"):
            supabase.call("planbus_claim_request; drop table leads")
        with pytest.raises(ValueError, match="not a SQL identifier"):
            supabase.call("planbus_claim_request", **{"p_id) --": 1})
    assert not route.called


def test_the_settings_choose_the_rest_adapter_when_url_and_key_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPABASE_URL", URL)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", KEY)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/unused")
    database = connect(get_settings())
    try:
        assert isinstance(database, SupabaseDatabase)
    finally:
        database.close()
