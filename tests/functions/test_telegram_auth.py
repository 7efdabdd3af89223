"""telegram_auth served by functions-framework on real PostgreSQL: the token, the user mapping, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import psycopg
import pytest
from flask.testing import FlaskClient

from support.concurrency import run_together
from support.mini_app import BOT_TOKEN, as_postgrest, init_data
from support.rls import snapshot

Sql = psycopg.Connection[dict[str, Any]]


def sign_in(auth: FlaskClient, data: str) -> Any:
    return auth.post("/", json={"init_data": data})


def test_valid_initdata_gets_a_token_postgrest_accepts_for_that_user(auth: FlaskClient, sql: Sql) -> None:
    before = time.time()
    response = sign_in(auth, init_data(279058397, username="ada", first_name="Ada", last_name="L"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"access_token", "expires_at", "telegram_id"}
    assert body["telegram_id"] == 279058397
    claims = as_postgrest(body["access_token"])
    user = sql.execute("SELECT * FROM telegram_users WHERE telegram_id = 279058397").fetchone()
    assert user is not None
    assert (user["username"], user["first_name"], user["last_name"]) == ("ada", "Ada", "L")
    assert claims["sub"] == str(user["user_id"])
    assert claims["role"] == "authenticated"
    assert claims["aud"] == "authenticated"
    assert claims["telegram_id"] == 279058397
    assert claims["exp"] == body["expires_at"]
    assert claims["exp"] - claims["iat"] == 3600
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_token_lives_as_long_as_access_token_ttl(
    auth: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCESS_TOKEN_TTL", "600")
    claims = as_postgrest(sign_in(auth, init_data()).get_json()["access_token"])
    assert claims["exp"] - claims["iat"] == 600


def test_a_user_keeps_the_same_uuid_across_sign_ins_and_name_changes(auth: FlaskClient, sql: Sql) -> None:
    first = as_postgrest(sign_in(auth, init_data(42, username="old")).get_json()["access_token"])
    again = as_postgrest(sign_in(auth, init_data(42, username="old")).get_json()["access_token"])
    renamed = as_postgrest(sign_in(auth, init_data(42, username="new")).get_json()["access_token"])
    assert first["sub"] == again["sub"] == renamed["sub"]
    rows = sql.execute("SELECT user_id::text AS user_id, username FROM telegram_users").fetchall()
    assert rows == [{"user_id": first["sub"], "username": "new"}]


def test_a_repeat_sign_in_with_unchanged_names_writes_nothing(auth: FlaskClient, sql: Sql) -> None:
    sign_in(auth, init_data(42))
    before = sql.execute("SELECT xmin::text AS version, updated_at FROM telegram_users").fetchone()
    assert sign_in(auth, init_data(42)).status_code == 200
    assert sql.execute("SELECT xmin::text AS version, updated_at FROM telegram_users").fetchone() == before


def test_an_existing_mapping_is_kept_rather_than_replaced(auth: FlaskClient, sql: Sql) -> None:
    existing = "0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"
    sql.execute("INSERT INTO telegram_users (user_id, telegram_id) VALUES (%s, 42)", (existing,))
    claims = as_postgrest(sign_in(auth, init_data(42)).get_json()["access_token"])
    assert claims["sub"] == existing


def test_users_get_different_uuids(auth: FlaskClient) -> None:
    a = as_postgrest(sign_in(auth, init_data(1)).get_json()["access_token"])
    b = as_postgrest(sign_in(auth, init_data(2)).get_json()["access_token"])
    assert a["sub"] != b["sub"]


def test_simultaneous_first_sign_ins_of_one_user_agree_on_one_uuid(auth: FlaskClient, sql: Sql) -> None:
    data = init_data(77)

    def sign_in_now() -> str:
        response = sign_in(auth, data)
        assert response.status_code == 200, response.get_json()
        sub: str = as_postgrest(response.get_json()["access_token"])["sub"]
        return sub

    subs = run_together([sign_in_now] * 8)
    assert len(subs) == 8 and len(set(subs)) == 1
    assert sql.execute("SELECT count(*) AS n FROM telegram_users").fetchone() == {"n": 1}


REFUSED_INITDATA: dict[str, Callable[[], str]] = {
    "wrong hash": lambda: init_data()[:-64] + "0" * 64,
    "wrong bot token": lambda: init_data(bot_token="7000000002:AAFanotherBOTtoken_______________0"),
    "stale": lambda: init_data(auth_date=time.time() - 86400 - 120),
    "from the future": lambda: init_data(auth_date=time.time() + 3600),
    "user edited after signing": lambda: init_data(42).replace("42", "43", 1),
    "duplicated user": lambda: init_data(42) + "&user=" + json.dumps({"id": 1}),
    "duplicated hash": lambda: init_data(42) + "&hash=" + "f" * 64,
    "empty": lambda: "",
    "junk": lambda: "definitely not initData",
    "huge": lambda: "user=" + "x" * 60_000,
    "json instead of a query string": lambda: json.dumps({"user": {"id": 42}, "hash": "0" * 64}),
}


@pytest.mark.parametrize("case", sorted(REFUSED_INITDATA))
def test_forged_stale_or_malformed_initdata_is_401_with_nothing_written(
    auth: FlaskClient, sql: Sql, case: str
) -> None:
    before = snapshot(sql)
    response = sign_in(auth, REFUSED_INITDATA[case]())
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"].startswith("invalid initData: ")
    assert "access_token" not in response.get_json()
    assert snapshot(sql) == before


def _signed_without_user() -> str:
    from planbus.initdata import sign_init_data

    return sign_init_data({"auth_date": str(int(time.time())), "query_id": "AAH"}, BOT_TOKEN)


def _signed_user_without_id() -> str:
    from planbus.initdata import sign_init_data

    user = json.dumps({"first_name": "Ada"})
    return sign_init_data({"auth_date": str(int(time.time())), "user": user}, BOT_TOKEN)


@pytest.mark.parametrize(
    ("make", "reason"),
    [(_signed_without_user, "has no user"), (_signed_user_without_id, "no positive integer id")],
)
def test_signed_initdata_without_a_usable_user_is_401(
    auth: FlaskClient, sql: Sql, make: Callable[[], str], reason: str
) -> None:
    before = snapshot(sql)
    response = sign_in(auth, make())
    assert response.status_code == 401
    assert reason in response.get_json()["error"]
    assert snapshot(sql) == before


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"initData"',
        b"{}",
        b'{"init_data": 5}',
        b'{"init_data": null}',
        b'{"init_data": ["a"]}',
        b'{"initData": "query_id=1"}',
        b'{"init_data": "query_id=1"',
        b"\xff\xfe{\x00}",
        b'{"init_data": "\xff"}',
        b"init_data=query_id%3D1",
    ],
)
def test_a_body_that_is_not_an_init_data_object_is_400(auth: FlaskClient, sql: Sql, body: bytes) -> None:
    before = snapshot(sql)
    response = auth.post("/", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "init_data" in response.get_json()["error"]
    assert snapshot(sql) == before


def test_a_body_larger_than_the_limit_is_400(auth: FlaskClient) -> None:
    response = auth.post("/", json={"init_data": "x" * 70_000})
    assert response.status_code == 400
    assert "larger than" in response.get_json()["error"]


def test_only_post_signs_in_and_the_browser_preflight_is_answered(auth: FlaskClient) -> None:
    assert auth.get("/").status_code == 405
    preflight = auth.options("/", headers={"Origin": "https://t.me", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]


def test_the_webhook_secret_is_neither_needed_nor_accepted_instead(
    auth: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "the-shared-webhook-secret")
    assert sign_in(auth, init_data()).status_code == 200
    response = auth.post(
        "/", json={"init_data": "junk"}, headers={"X-Webhook-Secret": "the-shared-webhook-secret"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ("SUPABASE_JWT_SECRET", "SUPABASE_JWT_SECRET is not set"),
        ("TELEGRAM_BOT_TOKEN", "TELEGRAM_BOT_TOKEN is not set"),
    ],
)
def test_without_its_secrets_telegram_auth_answers_503_and_writes_nothing(
    auth: FlaskClient, sql: Sql, monkeypatch: pytest.MonkeyPatch, unset: str, named: str
) -> None:
    monkeypatch.delenv(unset)
    before = snapshot(sql)
    response = sign_in(auth, init_data())
    assert response.status_code == 503
    assert named in response.get_json()["error"]
    assert snapshot(sql) == before


def test_a_short_jwt_secret_still_signs_tokens_it_verifies_with_a_warning(
    auth: FlaskClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", "short-secret")
    response = sign_in(auth, init_data())
    assert response.status_code == 200
    with pytest.warns(jwt.InsecureKeyLengthWarning):  # PyJWT's own verdict on the verifying side
        claims = jwt.decode(
            response.get_json()["access_token"],
            "short-secret",
            algorithms=["HS256"],
            audience="authenticated",
        )
    assert claims["role"] == "authenticated"
    assert "shorter than 32 bytes" in capsys.readouterr().out


def test_extra_fields_beside_init_data_are_ignored(auth: FlaskClient) -> None:
    response = auth.post("/", json={"init_data": init_data(), "platform": "ios", "version": "8.0"})
    assert response.status_code == 200
    assert response.get_json()["telegram_id"] == 279058397


def test_an_unreachable_database_is_503(auth: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=1")
    response = sign_in(auth, init_data())
    assert response.status_code == 503
    assert response.get_json() == {"error": "database unavailable"}
