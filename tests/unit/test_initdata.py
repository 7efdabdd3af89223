"""Telegram initData verification (pure): what Telegram signed passes, everything else is refused."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planbus.initdata import (
    MAX_INIT_DATA_LENGTH,
    InvalidInitData,
    VerifiedInitData,
    data_check_string,
    sign_init_data,
    verify_init_data,
)

BOT_TOKEN = "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def fields(**overrides: str | None) -> dict[str, str]:
    """The fields Telegram sends a Mini App opened from the bot's menu, with overrides (None drops one)."""
    base: dict[str, str | None] = {
        "query_id": "AAHdF6IQAAAAAN0XohDhrOrc",
        "user": json.dumps({"id": 279058397, "first_name": "Vladislav", "username": "vdkfrost"}),
        "auth_date": str(int(NOW.timestamp()) - 60),
        "signature": "6fbdaab833d39f54518bd5c3eb3f511d035e68cb",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def verify(init_data: str, bot_token: str = BOT_TOKEN) -> VerifiedInitData:
    return verify_init_data(init_data, bot_token, now=NOW, max_age=DAY)


def test_initdata_signed_by_telegram_for_this_bot_is_accepted() -> None:
    verified = verify_init_data(sign_init_data(fields(), BOT_TOKEN), BOT_TOKEN, now=NOW, max_age=DAY)
    assert verified.user.id == 279058397
    assert verified.user.username == "vdkfrost"
    assert verified.user.first_name == "Vladislav"
    assert verified.user.last_name is None
    assert verified.auth_date == NOW - timedelta(seconds=60)
    assert "hash" not in verified.fields


def test_the_signature_follows_telegrams_recipe_exactly() -> None:
    # Written out independently of planbus.initdata: key = HMAC(b"WebAppData", token), sorted lines.
    data = fields()
    dcs = "\n".join(f"{k}={data[k]}" for k in sorted(data))
    key = hmac.new(b"WebAppData", BOT_TOKEN.encode(), hashlib.sha256).digest()
    digest = hmac.new(key, dcs.encode(), hashlib.sha256).hexdigest()
    init_data = "&".join(f"{k}={quote(v, safe='')}" for k, v in data.items()) + f"&hash={digest}"
    assert data_check_string({**data, "hash": digest}) == dcs
    assert verify_init_data(init_data, BOT_TOKEN, now=NOW, max_age=DAY).user.id == 279058397


def test_initdata_signed_with_another_bots_token_is_refused() -> None:
    forged = sign_init_data(fields(), "654321:ZZZdqTcvCH1vGWJxfSeofSAs0K5PALDsaw")
    with pytest.raises(InvalidInitData, match="signature does not match"):
        verify(forged)


def test_a_hash_that_was_tampered_with_is_refused() -> None:
    signed = sign_init_data(fields(), BOT_TOKEN)
    head, digest = signed.rsplit("hash=", 1)
    flipped = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(InvalidInitData, match="signature does not match"):
        verify(f"{head}hash={flipped}")


def test_a_field_changed_after_signing_is_refused() -> None:
    signed = sign_init_data(fields(), BOT_TOKEN)
    tampered = signed.replace("279058397", "279058398")
    assert tampered != signed
    with pytest.raises(InvalidInitData, match="signature does not match"):
        verify(tampered)


def test_a_field_added_after_signing_is_refused() -> None:
    with pytest.raises(InvalidInitData, match="signature does not match"):
        verify(sign_init_data(fields(), BOT_TOKEN) + "&start_param=admin")


@pytest.mark.parametrize(
    ("hash_value", "reason"),
    [
        (None, "no hash"),
        ("", "not a hex SHA-256"),
        ("abc", "not a hex SHA-256"),
        ("G" * 64, "not a hex SHA-256"),
        ("A" * 64, "not a hex SHA-256"),
        ("a" * 65, "not a hex SHA-256"),
    ],
)
def test_a_missing_or_malformed_hash_is_refused(hash_value: str | None, reason: str) -> None:
    init_data = urlencode(fields()) + ("" if hash_value is None else f"&hash={hash_value}")
    with pytest.raises(InvalidInitData, match=reason):
        verify(init_data)


def test_initdata_older_than_the_maximum_age_is_refused() -> None:
    stale = sign_init_data(fields(auth_date=str(int((NOW - DAY).timestamp()) - 1)), BOT_TOKEN)
    with pytest.raises(InvalidInitData, match="stale"):
        verify(stale)


def test_initdata_exactly_at_the_maximum_age_is_still_accepted() -> None:
    edge = sign_init_data(fields(auth_date=str(int((NOW - DAY).timestamp()))), BOT_TOKEN)
    assert verify_init_data(edge, BOT_TOKEN, now=NOW, max_age=DAY).user.id == 279058397


def test_initdata_from_the_future_beyond_clock_skew_is_refused() -> None:
    ahead = sign_init_data(fields(auth_date=str(int(NOW.timestamp()) + 3600)), BOT_TOKEN)
    with pytest.raises(InvalidInitData, match="future"):
        verify(ahead)


def test_initdata_a_few_seconds_ahead_of_our_clock_is_accepted() -> None:
    ahead = sign_init_data(fields(auth_date=str(int(NOW.timestamp()) + 30)), BOT_TOKEN)
    assert verify_init_data(ahead, BOT_TOKEN, now=NOW, max_age=DAY).user.id == 279058397


@pytest.mark.parametrize("auth_date", [None, "", "yesterday", "-5", "1.5", "1e9", "9" * 13, " 1"])
def test_a_missing_or_non_numeric_auth_date_is_refused(auth_date: str | None) -> None:
    signed = sign_init_data(fields(auth_date=auth_date), BOT_TOKEN)
    with pytest.raises(InvalidInitData, match="auth_date"):
        verify(signed)


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (None, "has no user"),
        ("", "not JSON"),
        ("{", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"279058397"', "not a JSON object"),
        ('{"first_name": "Ann"}', "no positive integer id"),
        ('{"id": "279058397"}', "no positive integer id"),
        ('{"id": 2.5}', "no positive integer id"),
        ('{"id": 1e3}', "no positive integer id"),
        ('{"id": true}', "no positive integer id"),
        ('{"id": null}', "no positive integer id"),
        ('{"id": 0}', "no positive integer id"),
        ('{"id": -5}', "no positive integer id"),
        ('{"id": 9223372036854775808}', "no positive integer id"),
        ('{"id": NaN}', "no positive integer id"),
        ('{"id": 7, "username": 5}', "username is not a short string"),
        ('{"id": 7, "first_name": ["x"]}', "first_name is not a short string"),
        ('{"id": 7, "last_name": "' + "x" * 300 + '"}', "last_name is not a short string"),
        ("[" * 5000 + "]" * 5000, "not JSON|not a JSON object"),
        ('{"id": 1' + "0" * 5000 + "}", "not JSON"),
    ],
)
def test_a_signed_user_that_is_missing_or_has_no_integer_id_is_refused(user: str | None, reason: str) -> None:
    signed = sign_init_data(fields(user=user), BOT_TOKEN)
    if len(signed) > MAX_INIT_DATA_LENGTH:
        reason = "longer than"
    with pytest.raises(InvalidInitData, match=reason):
        verify(signed)


def test_a_repeated_field_is_refused_even_when_one_copy_is_signed() -> None:
    signed = sign_init_data(fields(), BOT_TOKEN)
    with pytest.raises(InvalidInitData, match="repeats the field 'user'"):
        verify(signed + "&user=" + quote(json.dumps({"id": 1})))
    with pytest.raises(InvalidInitData, match="repeats the field 'hash'"):
        verify(signed + "&hash=" + "0" * 64)


def test_fields_cannot_be_re_split_to_sign_other_data() -> None:
    # "auth_date=1\nuser=..." as one value would give the data-check-string of two fields.
    data = fields()
    merged = {"auth_date": data["auth_date"] + "\nuser=" + data["user"], "query_id": data["query_id"]}
    with pytest.raises(InvalidInitData, match="line break"):
        verify(sign_init_data(merged, BOT_TOKEN))
    renamed = {"auth_date=1\nuser": "x"}
    with pytest.raises(InvalidInitData, match="not a Telegram field name"):
        verify(sign_init_data(renamed, BOT_TOKEN))


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        ("", "empty"),
        ("hash", "not a URL-encoded query string"),
        ("&&&", "not a URL-encoded query string"),
        ("user=%ff%fe&hash=" + "0" * 64, "not a URL-encoded query string"),
        ("=x&hash=" + "0" * 64, "not a Telegram field name"),
        ("User=x&hash=" + "0" * 64, "not a Telegram field name"),
        ("a=1&" * 40 + "hash=" + "0" * 64, "not a URL-encoded query string"),
        ("x" * (MAX_INIT_DATA_LENGTH + 1), "longer than"),
        ('{"user": {"id": 1}}', "not a URL-encoded query string"),
        ("user=1;auth_date=2&hash=" + "0" * 64, "signature does not match"),
        ("\x00=\x00", "not a Telegram field name"),
    ],
)
def test_junk_is_refused_with_a_reason(junk: str, reason: str) -> None:
    with pytest.raises(InvalidInitData, match=reason):
        verify(junk)


FUZZ_EXAMPLES = 500


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.text(max_size=2 * MAX_INIT_DATA_LENGTH))
def test_arbitrary_text_is_refused_with_invalid_initdata_and_nothing_else(text: str) -> None:
    with pytest.raises(InvalidInitData):
        verify(text)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.text(max_size=200),
        max_size=12,
    ),
    st.sampled_from(["drop", "other token", "edit"]),
)
def test_well_formed_initdata_verifies_only_when_signed_by_this_bot(
    extra: dict[str, str], attack: str
) -> None:
    data = {**fields(), **extra}
    data.pop("hash", None)
    signed = sign_init_data(data, BOT_TOKEN)
    if attack == "drop":
        forged = sign_init_data(data, BOT_TOKEN).replace("&hash=", "&hash_=", 1)
    elif attack == "other token":
        forged = sign_init_data(data, BOT_TOKEN + "x")
    else:
        forged = signed.replace("auth_date=", "auth_date=1", 1)
    with pytest.raises(InvalidInitData):
        verify(forged)
    try:
        verified = verify(signed)
    except InvalidInitData as exc:
        # Telegram never sends these; whatever the reason, it is not the signature.
        assert "signature" not in str(exc)
    else:
        assert verified.user.id == 279058397
