"""Telegram Mini App initData: parse it, check Telegram's signature, and read the user out of it.

Telegram signs the query string it hands the Mini App (`window.Telegram.WebApp.initData`):

    secret = HMAC_SHA256(key=b"WebAppData", msg=bot_token)
    hash   = hex(HMAC_SHA256(key=secret, msg=data_check_string))

where the data-check-string is every field but `hash` as `key=value`, sorted by key, joined by `\\n`.
Pure: no I/O, and the current time is an argument. Anything that is not exactly such a string, signed with
this bot's token and fresh, raises `InvalidInitData` with a reason safe to show to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from planbus.errors import PlanbusError

# Telegram's own initData is well under 2 KiB; anything far larger is not from Telegram.
MAX_INIT_DATA_LENGTH = 8192
MAX_FIELDS = 32
# Clocks drift: an auth_date this far ahead of ours is still accepted.
ALLOWED_CLOCK_SKEW = timedelta(seconds=60)
MAX_NAME_LENGTH = 256

# Telegram's field names (query_id, user, auth_date, signature, chat_instance, ...). Restricting names and
# refusing line breaks in values keeps the data-check-string unambiguous: no field can be re-split into
# others that sign the same bytes.
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
_BIGINT_MAX = 2**63 - 1


class InvalidInitData(PlanbusError):
    """The initData is forged, stale, or malformed; the message says which, never what the secret is."""


@dataclass(frozen=True)
class TelegramUser:
    """The Telegram user the initData was issued to."""

    id: int
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True)
class VerifiedInitData:
    """initData whose signature and freshness were checked."""

    user: TelegramUser
    auth_date: datetime
    fields: Mapping[str, str]


def secret_key(bot_token: str) -> bytes:
    """The HMAC key Telegram derives from the bot token for Mini App data."""
    return hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()


def data_check_string(fields: Mapping[str, str]) -> str:
    """Every field but `hash`, as `key=value` sorted by key, joined by newlines."""
    return "\n".join(f"{key}={fields[key]}" for key in sorted(fields) if key != "hash")


def signature(fields: Mapping[str, str], bot_token: str) -> str:
    """The hex `hash` Telegram would put on these fields for this bot."""
    return hmac.new(secret_key(bot_token), data_check_string(fields).encode(), hashlib.sha256).hexdigest()


def sign_init_data(fields: Mapping[str, str], bot_token: str) -> str:
    """A signed initData query string, as Telegram issues it (the local stack and tests use it)."""
    unsigned = {key: value for key, value in fields.items() if key != "hash"}
    return urlencode({**unsigned, "hash": signature(unsigned, bot_token)})


def verify_init_data(
    init_data: str, bot_token: str, *, now: datetime, max_age: timedelta
) -> VerifiedInitData:
    """Check initData's signature against `bot_token`, its `auth_date` against `now`, and read its user."""
    fields = _parse(init_data)
    presented = fields.pop("hash", None)
    if presented is None:
        raise InvalidInitData("initData carries no hash")
    if not _HEX_SHA256.fullmatch(presented):
        raise InvalidInitData("initData hash is not a hex SHA-256 digest")
    expected = signature(fields, bot_token)
    if not hmac.compare_digest(expected.encode(), presented.encode()):
        raise InvalidInitData("initData signature does not match")
    auth_date = _auth_date(fields, now=now, max_age=max_age)
    return VerifiedInitData(user=_user(fields), auth_date=auth_date, fields=fields)


def _parse(init_data: str) -> dict[str, str]:
    if not isinstance(init_data, str) or not init_data:
        raise InvalidInitData("initData is empty")
    if len(init_data) > MAX_INIT_DATA_LENGTH:
        raise InvalidInitData(f"initData is longer than {MAX_INIT_DATA_LENGTH} characters")
    try:
        pairs = parse_qsl(
            init_data,
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise InvalidInitData("initData is not a URL-encoded query string") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        if not _FIELD_NAME.fullmatch(key):
            raise InvalidInitData("initData has a field that is not a Telegram field name")
        if key in fields:
            raise InvalidInitData(f"initData repeats the field {key!r}")
        if "\n" in value or "\r" in value:
            raise InvalidInitData(f"initData field {key!r} contains a line break")
        fields[key] = value
    return fields


def _auth_date(fields: Mapping[str, str], *, now: datetime, max_age: timedelta) -> datetime:
    raw = fields.get("auth_date")
    if raw is None or not _UNIX_TIME.fullmatch(raw):
        raise InvalidInitData("initData has no valid auth_date")
    issued = datetime.fromtimestamp(int(raw), UTC)
    if now - issued > max_age:
        raise InvalidInitData("initData is stale: open the Mini App again")
    if issued - now > ALLOWED_CLOCK_SKEW:
        raise InvalidInitData("initData auth_date is in the future")
    return issued


def _user(fields: Mapping[str, str]) -> TelegramUser:
    raw = fields.get("user")
    if raw is None:
        raise InvalidInitData("initData has no user")
    try:
        decoded: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidInitData("initData user is not JSON") from exc
    if not isinstance(decoded, dict):
        raise InvalidInitData("initData user is not a JSON object")
    user_id = decoded.get("id")
    # bool is an int subclass in Python; JSON true is not a user id.
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id <= _BIGINT_MAX:
        raise InvalidInitData("initData user has no positive integer id")
    return TelegramUser(
        id=user_id,
        username=_optional_name(decoded, "username"),
        first_name=_optional_name(decoded, "first_name"),
        last_name=_optional_name(decoded, "last_name"),
    )


def _optional_name(user: Mapping[str, Any], key: str) -> str | None:
    value = user.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH:
        raise InvalidInitData(f"initData user {key} is not a short string")
    return value
