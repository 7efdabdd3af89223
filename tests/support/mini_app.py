"""What the Mini App tests share: signed initData for a bot, the function under test, and the check
PostgREST makes of the token telegram_auth issues."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from flask.testing import FlaskClient
from functions_framework import create_app

from planbus.initdata import sign_init_data

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
BOT_TOKEN = "7000000001:AAFtestTOKENforPLANBUSsignINchecks_0"
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"


def client(target: str) -> FlaskClient:
    """The deployed target served by functions-framework, as a test client."""
    app = create_app(target, str(MAIN))  # type: ignore[no-untyped-call]
    test_client: FlaskClient = app.test_client()
    return test_client


def init_data(
    telegram_id: int = 279058397,
    *,
    bot_token: str = BOT_TOKEN,
    auth_date: float | None = None,
    **user: Any,
) -> str:
    """initData as Telegram signs it for a user opening the Mini App now (or at `auth_date`)."""
    fields = {
        "query_id": "AAHdF6IQAAAAAN0XohDhrOrc",
        "user": json.dumps({"id": telegram_id, "first_name": "Ada", "username": "ada", **user}),
        "auth_date": str(int(time.time() if auth_date is None else auth_date)),
    }
    return sign_init_data(fields, bot_token)


def as_postgrest(token: str) -> dict[str, Any]:
    """What PostgREST does with a bearer token: verify it (HS256, project secret, audience) or refuse it."""
    claims: dict[str, Any] = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="authenticated")
    return claims
