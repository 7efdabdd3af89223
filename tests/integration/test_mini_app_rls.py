"""The token telegram_auth issues, run through row-level security as PostgREST would run it.

PostgREST verifies the JWT with the project's secret, then runs the request as the token's `role` with its
claims in request.jwt.claims. Both shapes are covered: the claims as issued (with `telegram_id`), and the
`{sub, email, role}` an InsForge gateway re-mints, where the database maps `sub` through telegram_users.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import psycopg
import pytest
from flask.testing import FlaskClient

from support.mini_app import JWT_SECRET, as_postgrest, init_data
from support.rls import Caller, run_as, snapshot

Sql = psycopg.Connection[dict[str, Any]]
ADA, BOB = 1001, 1002
NEW_REQUEST = (
    "INSERT INTO plan_requests (lead_id, telegram_id) VALUES (%(lead)s, %(telegram_id)s) RETURNING id"
)


def reminted(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims left after a gateway re-mints the token: no custom claims survive."""
    return {"sub": claims["sub"], "email": None, "role": claims["role"], "aud": "authenticated"}


def token_for(auth: FlaskClient, telegram_id: int) -> str:
    response = auth.post("/", json={"init_data": init_data(telegram_id)})
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["access_token"]
    return token


@pytest.fixture
def world(auth: FlaskClient, sql: Sql) -> dict[str, Any]:
    """Ada and Bob signed in; each owns a lead; Bob has a request with a reminder, Ada a second lead."""
    ada_claims = as_postgrest(token_for(auth, ADA))
    bob_claims = as_postgrest(token_for(auth, BOB))

    def insert(statement: str, **params: Any) -> Any:
        row = sql.execute(statement, params).fetchone()
        assert row is not None
        return row["id"]

    ada_lead = insert("INSERT INTO leads (telegram_id, full_name) VALUES (%(t)s, 'Ann') RETURNING id", t=ADA)
    ada_other = insert("INSERT INTO leads (telegram_id, full_name) VALUES (%(t)s, 'Al') RETURNING id", t=ADA)
    bob_lead = insert("INSERT INTO leads (telegram_id, full_name) VALUES (%(t)s, 'Bea') RETURNING id", t=BOB)
    bob_request = insert(
        "INSERT INTO plan_requests (lead_id, telegram_id) VALUES (%(l)s, %(t)s) RETURNING id",
        l=bob_lead,
        t=BOB,
    )
    bob_reminder = insert(
        "INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)"
        " VALUES (%(l)s, %(t)s, %(r)s, 0, now(), 'call Bea') RETURNING id",
        l=bob_lead,
        t=BOB,
        r=bob_request,
    )
    return {
        "ada": ada_claims,
        "bob": bob_claims,
        "ada_lead": ada_lead,
        "ada_other_lead": ada_other,
        "bob_lead": bob_lead,
        "bob_request": bob_request,
        "bob_reminder": bob_reminder,
    }


SHAPES = ["as issued", "re-minted by a gateway"]


def ada(world: dict[str, Any], shape: str) -> Caller:
    claims = world["ada"] if shape == "as issued" else reminted(world["ada"])
    return Caller(f"ada ({shape})", claims["role"], claims)


@pytest.mark.parametrize("shape", SHAPES)
def test_with_her_token_ada_inserts_and_reads_her_own_request(
    world: dict[str, Any], sql: Sql, shape: str
) -> None:
    me = ada(world, shape)
    inserted = run_as(sql, me, NEW_REQUEST, {"lead": world["ada_lead"], "telegram_id": ADA})
    assert not inserted.refused, inserted.message
    request_id = inserted.rows[0]["id"]
    polled = run_as(sql, me, "SELECT id, status, telegram_id FROM plan_requests WHERE id = %s", [request_id])
    assert polled.rows == [{"id": request_id, "status": "pending", "telegram_id": ADA}]
    mine = run_as(sql, me, "SELECT id FROM plan_requests")
    assert [r["id"] for r in mine.rows] == [request_id]


@pytest.mark.parametrize("shape", SHAPES)
def test_with_her_token_ada_sees_nothing_of_bobs(world: dict[str, Any], sql: Sql, shape: str) -> None:
    me = ada(world, shape)
    leads = run_as(sql, me, "SELECT id FROM leads ORDER BY full_name")
    assert {r["id"] for r in leads.rows} == {world["ada_lead"], world["ada_other_lead"]}
    for statement, row_id in [
        ("SELECT * FROM plan_requests WHERE id = %s", world["bob_request"]),
        ("SELECT * FROM reminders WHERE id = %s", world["bob_reminder"]),
        ("SELECT * FROM leads WHERE id = %s", world["bob_lead"]),
    ]:
        outcome = run_as(sql, me, statement, [row_id])
        assert not outcome.refused and outcome.rows == [], statement
    assert run_as(sql, me, "SELECT count(*) AS n FROM reminders").rows == [{"n": 0}]
    users = run_as(sql, me, "SELECT telegram_id FROM telegram_users").rows
    assert users == [{"telegram_id": ADA}]


REFUSED_WRITES: dict[str, tuple[str, dict[str, Any]]] = {
    "a request for bob's lead as bob": (NEW_REQUEST, {"lead": "bob_lead", "telegram_id": BOB}),
    "a request for bob's lead as herself": (NEW_REQUEST, {"lead": "bob_lead", "telegram_id": ADA}),
    "a request for her lead in bob's name": (NEW_REQUEST, {"lead": "ada_lead", "telegram_id": BOB}),
    "a request inserted as completed": (
        "INSERT INTO plan_requests (lead_id, telegram_id, status)"
        " VALUES (%(lead)s, %(telegram_id)s, 'completed')",
        {"lead": "ada_lead", "telegram_id": ADA},
    ),
    "a request with a result": (
        "INSERT INTO plan_requests (lead_id, telegram_id, result) VALUES (%(lead)s, %(telegram_id)s, '{}')",
        {"lead": "ada_lead", "telegram_id": ADA},
    ),
    "a request with attempts used up": (
        "INSERT INTO plan_requests (lead_id, telegram_id, attempts) VALUES (%(lead)s, %(telegram_id)s, 9)",
        {"lead": "ada_lead", "telegram_id": ADA},
    ),
    "an update of bob's request": (
        "UPDATE plan_requests SET status = 'failed', error = 'x' WHERE id = %(lead)s",
        {"lead": "bob_request"},
    ),
    "a delete of bob's lead": ("DELETE FROM leads WHERE id = %(lead)s", {"lead": "bob_lead"}),
    "a new telegram mapping": (
        "INSERT INTO telegram_users (user_id, telegram_id) VALUES (gen_random_uuid(), %(telegram_id)s)",
        {"telegram_id": BOB},
    ),
    "a claim through the state machine": (
        "SELECT planbus_claim_request('plan', %(lead)s, 60, 3)",
        {"lead": "bob_request"},
    ),
    "a change of the daily limit": ("SELECT planbus_set_daily_plan_request_limit(1000)", {}),
    "a read of the private settings": ("SELECT * FROM planbus_private.settings", {}),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", sorted(REFUSED_WRITES))
def test_ada_cannot_write_bobs_rows_or_forge_state(
    world: dict[str, Any], sql: Sql, shape: str, case: str
) -> None:
    statement, params = REFUSED_WRITES[case]
    resolved = {k: world.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    before = snapshot(sql)
    outcome = run_as(sql, ada(world, shape), statement, resolved)
    assert outcome.refused, f"{case} was allowed: {outcome.rows}"
    assert outcome.sqlstate in {"42501", "42P01", "3F000"}, outcome
    assert snapshot(sql) == before


@pytest.mark.parametrize("shape", SHAPES)
def test_ada_cannot_change_or_remove_her_own_request(world: dict[str, Any], sql: Sql, shape: str) -> None:
    me = ada(world, shape)
    request_id = run_as(sql, me, NEW_REQUEST, {"lead": world["ada_lead"], "telegram_id": ADA}).rows[0]["id"]
    before = snapshot(sql)
    for statement in [
        "UPDATE plan_requests SET status = 'completed', result = '{}' WHERE id = %s",
        "UPDATE plan_requests SET attempts = 0 WHERE id = %s",
        "DELETE FROM plan_requests WHERE id = %s",
    ]:
        outcome = run_as(sql, me, statement, [request_id])
        assert outcome.refused and outcome.sqlstate == "42501", statement
    assert snapshot(sql) == before


def test_a_token_for_a_sub_with_no_telegram_mapping_sees_and_inserts_nothing(
    world: dict[str, Any], sql: Sql
) -> None:
    stranger = Caller(
        "stranger", "authenticated", reminted({**world["ada"], "sub": "00000000-0000-4000-8000-000000000000"})
    )
    assert run_as(sql, stranger, "SELECT * FROM plan_requests").rows == []
    assert run_as(sql, stranger, "SELECT * FROM leads").rows == []
    outcome = run_as(sql, stranger, NEW_REQUEST, {"lead": world["ada_lead"], "telegram_id": ADA})
    assert outcome.refused and outcome.sqlstate == "42501"


def test_anon_gets_nothing(world: dict[str, Any], sql: Sql) -> None:
    anon = Caller("anon", "anon", {"role": "anon"})
    for statement in ["SELECT * FROM plan_requests", "SELECT * FROM leads", "SELECT * FROM telegram_users"]:
        assert run_as(sql, anon, statement).sqlstate == "42501", statement
    outcome = run_as(sql, anon, NEW_REQUEST, {"lead": world["ada_lead"], "telegram_id": ADA})
    assert outcome.sqlstate == "42501"


def test_postgrest_refuses_a_token_not_signed_with_the_project_secret(auth: FlaskClient) -> None:
    claims = as_postgrest(token_for(auth, ADA))
    forged = jwt.encode(
        {**claims, "telegram_id": BOB}, "another-secret-that-is-at-least-32-bytes-long", "HS256"
    )
    with pytest.raises(jwt.InvalidSignatureError):
        as_postgrest(forged)
    unsigned = jwt.encode({**claims, "telegram_id": BOB}, None, "none")  # type: ignore[arg-type]
    with pytest.raises(jwt.InvalidAlgorithmError):
        as_postgrest(unsigned)


def test_postgrest_refuses_an_expired_token(auth: FlaskClient) -> None:
    claims = as_postgrest(token_for(auth, ADA))
    expired = jwt.encode(
        {**claims, "iat": time.time() - 7200, "exp": time.time() - 3600}, JWT_SECRET, "HS256"
    )
    with pytest.raises(jwt.ExpiredSignatureError):
        as_postgrest(expired)
