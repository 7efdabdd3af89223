"""Mini App sign-in: Telegram initData in, a short-lived database token out (contract section 5).

    verify initData (bot token)  ->  planbus_upsert_telegram_user  ->  HS256 JWT (SUPABASE_JWT_SECRET)

The token is what PostgREST (Supabase, InsForge) accepts from the Mini App: role `authenticated`, `sub` the
user's stable uuid from `telegram_users`, and the `telegram_id` claim. Where a gateway re-mints tokens with
only `sub` and `role`, the database finds the Telegram id through the `telegram_users` row written here.

An HS256 token is a few lines of the standard library (RFC 7515's compact form: base64url of the header,
of the claims, and of their HMAC-SHA256), written here as PyJWT writes it; PyJWT, which loads cryptography
whenever it is installed, would cost each cold start of telegram_auth about 50 ms more for that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.errors import ConfigurationError
from planbus.initdata import verify_init_data
from planbus.settings import Settings

log = logs.get_logger("telegram_auth")

JWT_ALGORITHM = "HS256"
JWT_AUDIENCE = "authenticated"
JWT_ROLE = "authenticated"
JWT_ISSUER = "planbus"
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash; Supabase's secrets are longer.
MIN_JWT_SECRET_BYTES = 32


class TelegramAuthRequest(BaseModel):
    """The body `telegram_auth` accepts: `{"init_data": "<initData>"}`."""

    # Unknown fields are ignored, so a Mini App that sends more (its version, say) is not locked out.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    init_data: str


@dataclass(frozen=True)
class AccessToken:
    """A signed token for one Telegram user."""

    access_token: str
    expires_at: datetime
    telegram_id: int
    user_id: str
    created: bool

    def as_json(self) -> dict[str, Any]:
        """The contract's answer; `expires_at` is Unix seconds, as in a Supabase session and `exp`."""
        return {
            "access_token": self.access_token,
            "expires_at": int(self.expires_at.timestamp()),
            "telegram_id": self.telegram_id,
        }


def sign_in_with_telegram(db: Database, clock: Clock, init_data: str, *, settings: Settings) -> AccessToken:
    """Verify `init_data`, record the Telegram user (keeping its uuid), and mint its access token.

    Raises ConfigurationError when the bot token or JWT secret is missing, InvalidInitData for forged, stale
    or malformed initData (before anything is written), DatabaseError from the database.
    """
    bot_token = _required(settings.telegram_bot_token, "TELEGRAM_BOT_TOKEN", "initData cannot be checked")
    jwt_secret = signing_key(settings)
    now = clock.now()
    verified = verify_init_data(
        init_data, bot_token, now=now, max_age=timedelta(seconds=settings.telegram_auth_max_age)
    )
    user = verified.user
    row = db.call(
        "planbus_upsert_telegram_user",
        p_telegram_id=user.id,
        p_username=user.username,
        p_first_name=user.first_name,
        p_last_name=user.last_name,
    )
    expires_at = now + timedelta(seconds=settings.access_token_ttl)
    token = mint_access_token(
        user_id=str(row["user_id"]), telegram_id=user.id, issued_at=now, expires_at=expires_at, key=jwt_secret
    )
    return AccessToken(token, expires_at, user.id, str(row["user_id"]), bool(row["created"]))


def mint_access_token(
    *, user_id: str, telegram_id: int, issued_at: datetime, expires_at: datetime, key: bytes
) -> str:
    """An HS256 JWT with the claims PostgREST turns into role `authenticated` and `request.jwt.claims`."""
    claims = {
        "aud": JWT_AUDIENCE,
        "role": JWT_ROLE,
        "iss": JWT_ISSUER,
        "sub": user_id,
        "telegram_id": telegram_id,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    return sign_hs256(claims, key)


def sign_hs256(claims: dict[str, Any], key: bytes) -> str:
    """The compact JWS of `claims` signed with HMAC-SHA256 under `key`: header `{"alg":"HS256","typ":"JWT"}`,
    JSON without spaces, base64url without padding (byte for byte what `jwt.encode(claims, key, "HS256")`
    returns)."""
    header = _base64url(json.dumps({"alg": JWT_ALGORITHM, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _base64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_base64url(signature)}"


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signing_key(settings: Settings) -> bytes:
    """SUPABASE_JWT_SECRET as the HS256 key (PostgREST uses the secret's text as-is, not base64-decoded).

    The key is the project's: PostgREST accepts only tokens signed with it, whatever its length. A key
    shorter than RFC 7518 asks for is used, with a warning in the log, rather than refusing every sign-in.
    """
    key = _required(settings.supabase_jwt_secret, "SUPABASE_JWT_SECRET", "tokens cannot be signed").encode()
    if len(key) < MIN_JWT_SECRET_BYTES:
        log.warning(
            "SUPABASE_JWT_SECRET is shorter than %s bytes: tokens signed with it are easier to forge",
            MIN_JWT_SECRET_BYTES,
        )
    return key


def _required(value: Any, name: str, consequence: str) -> str:
    secret: str = value.get_secret_value() if value is not None else ""
    if not secret:
        raise ConfigurationError(f"{name} is not set: {consequence}")
    return secret
