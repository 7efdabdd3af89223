"""The access token telegram_auth signs (pure): an HS256 JWT that PyJWT writes byte for byte the same and
verifies with the same key, and that no other key verifies."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from planbus.services.auth import JWT_ALGORITHM, mint_access_token, sign_hs256

KEY = b"a-project-jwt-secret-of-at-least-32-bytes"
ISSUED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def pyjwt_encode(claims: dict[str, object], key: bytes) -> str:
    with warnings.catch_warnings():
        # Short keys are generated on purpose: PyJWT's warning about them is not what is compared here.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=JWT_ALGORITHM)


@given(
    sub=st.text(max_size=60),
    telegram_id=st.integers(min_value=1, max_value=2**53),
    iat=st.integers(min_value=0, max_value=2**40),
    ttl=st.integers(min_value=1, max_value=10**6),
    key=st.binary(min_size=1, max_size=80).filter(lambda k: b"-----BEGIN" not in k and b"ssh-" not in k),
)
def test_a_signed_token_is_what_pyjwt_writes_for_the_same_claims_and_key(
    sub: str, telegram_id: int, iat: int, ttl: int, key: bytes
) -> None:
    claims = {"aud": "authenticated", "sub": sub, "telegram_id": telegram_id, "iat": iat, "exp": iat + ttl}
    assert sign_hs256(claims, key) == pyjwt_encode(claims, key)


def test_a_minted_token_carries_the_claims_postgrest_reads_and_verifies_only_with_its_key() -> None:
    token = mint_access_token(
        user_id="5d0a9c4e-8f7b-4b52-9d1e-0c6f3a2b1e77",
        telegram_id=7401,
        issued_at=ISSUED,
        expires_at=ISSUED + timedelta(hours=1),
        key=KEY,
    )
    claims = jwt.decode(
        token, KEY, algorithms=[JWT_ALGORITHM], audience="authenticated", options={"verify_exp": False}
    )
    assert claims == {
        "aud": "authenticated",
        "role": "authenticated",
        "iss": "planbus",
        "sub": "5d0a9c4e-8f7b-4b52-9d1e-0c6f3a2b1e77",
        "telegram_id": 7401,
        "iat": int(ISSUED.timestamp()),
        "exp": int((ISSUED + timedelta(hours=1)).timestamp()),
    }
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, KEY + b"x", algorithms=[JWT_ALGORITHM], audience="authenticated")
