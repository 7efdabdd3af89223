"""The request state machine, driven through its SQL functions on real PostgreSQL, for every registered
kind (each test runs once per kind, on that kind's table).

Time is arranged, never waited for: the owner connection moves a lease or a retry time into the past, which
is what the passing of time would do, and then the functions under test make every transition.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.kinds import KINDS, AnyKind
from support.concurrency import connections, run_together
from support.request_kinds import claim_request, complete_request
from support.request_rows import error_history, make_due, request_row
from support.request_rows import expire_lease as expire
from support.rls import snapshot

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]
LEASE = 60
MAX_ATTEMPTS = 3


def claim(db: PostgresDatabase, kind: AnyKind, request_id: Any, *, max_attempts: int = MAX_ATTEMPTS) -> Any:
    return claim_request(db, kind, request_id, lease=LEASE, max_attempts=max_attempts)


def fail(
    db: PostgresDatabase,
    kind: AnyKind,
    request_id: Any,
    attempt: int,
    error: str,
    *,
    retryable: bool,
    max_attempts: int = MAX_ATTEMPTS,
    retry_after: float | None = None,
) -> Any:
    return db.call(
        "planbus_fail_request",
        p_kind=kind.name,
        p_request_id=str(request_id),
        p_attempt=attempt,
        p_error=error,
        p_retryable=retryable,
        p_max_attempts=max_attempts,
        p_retry_after_seconds=retry_after,
    )


def complete(db: PostgresDatabase, kind: AnyKind, request_id: Any, attempt: int) -> Any:
    return complete_request(
        db, kind, request_id, attempt=attempt, result={"summary": "call on Monday", "generator": "offline"}
    )


MakeLead = Callable[..., Row]
MakeRequest = Callable[..., Row]


def test_a_new_request_is_pending_with_no_attempts(
    make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    assert (request["status"], request["attempts"], request["result"], request["error"]) == (
        "pending",
        0,
        None,
        None,
    )


def test_claiming_a_pending_request_leases_it_and_returns_the_lead(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    lead = make_lead(company="Analytical Engines")
    request = make_kind_request(lead)
    answer = claim(db, kind, request["id"])
    assert answer["claimed"] is True
    assert answer["attempt"] == 1
    assert answer["request"]["id"] == str(request["id"])
    assert answer["lead"]["company"] == "Analytical Engines"
    stored = request_row(sql, request["id"], kind.table)
    assert (stored["status"], stored["attempts"]) == ("processing", 1)
    lease = stored["lease_expires_at"] - datetime.now(UTC)
    assert timedelta(seconds=LEASE - 5) < lease <= timedelta(seconds=LEASE)


def test_an_unknown_request_is_not_claimed(db: PostgresDatabase, kind: AnyKind) -> None:
    answer = claim(db, kind, "00000000-0000-4000-8000-000000000000")
    assert answer == {"claimed": False, "status": None, "reason": "unknown request"}


def test_a_request_of_another_kind_is_unknown_to_this_kind(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    for other in KINDS:
        if other is not kind:
            assert claim(db, other, request["id"])["reason"] == "unknown request"
    assert request_row(sql, request["id"], kind.table)["status"] == "pending"


def test_a_request_held_under_a_live_lease_is_not_claimed_again(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    claim(db, kind, request["id"])
    again = claim(db, kind, request["id"])
    assert again["claimed"] is False
    assert again["status"] == "processing"
    assert again["reason"].startswith("held by another worker until")
    assert request_row(sql, request["id"], kind.table)["attempts"] == 1


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_a_finished_request_is_never_claimed_again(
    db: PostgresDatabase,
    sql: Conn,
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
    final: str,
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"])["attempt"]
    if final == "completed":
        complete(db, kind, request["id"], attempt)
    else:
        fail(db, kind, request["id"], attempt, "the lead has no name", retryable=False)
    before = request_row(sql, request["id"], kind.table)
    answer = claim(db, kind, request["id"])
    assert answer == {"claimed": False, "status": final, "reason": f"already {final}"}
    assert request_row(sql, request["id"], kind.table) == before


def test_two_connections_claiming_the_same_row_exactly_one_wins(
    database_url: str, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    contenders = 8

    def contend(conn: psycopg.Connection[Any]) -> Any:
        row = conn.execute(
            "SELECT planbus_claim_request("
            "p_kind => %s, p_request_id => %s, p_lease_seconds => 60, p_max_attempts => 3)",
            [kind.name, request["id"]],
        ).fetchone()
        assert row is not None
        return row[0]

    with connections(database_url, contenders, autocommit=True) as conns:
        answers = run_together([partial(contend, conn) for conn in conns])
    winners = [a for a in answers if a["claimed"]]
    assert len(answers) == contenders
    assert len(winners) == 1
    assert winners[0]["attempt"] == 1
    assert all(a["status"] == "processing" for a in answers if not a["claimed"])


def test_an_expired_lease_is_taken_over_and_the_old_attempt_can_no_longer_write(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    first = claim(db, kind, request["id"])["attempt"]
    expire(sql, request["id"], kind.table)
    second = claim(db, kind, request["id"])
    assert second["claimed"] is True
    assert second["attempt"] == first + 1
    before = snapshot(sql)

    late_result = complete(db, kind, request["id"], first)
    late_failure = fail(db, kind, request["id"], first, "timed out", retryable=True)
    assert late_result == {
        "completed": False,
        "status": "processing",
        "reason": "the claim is no longer held (lease expired or taken over)",
    }
    assert late_failure["recorded"] is False
    assert snapshot(sql) == before
    stored = request_row(sql, request["id"], kind.table)
    assert (stored["status"], stored["attempts"], stored["result"]) == ("processing", 2, None)

    assert complete(db, kind, request["id"], second["attempt"])["completed"] is True
    assert error_history(sql, request["id"]) == [(1, "lease expired during attempt 1")]


def test_a_worker_that_outlived_its_lease_cannot_write_even_before_a_takeover(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"])["attempt"]
    expire(sql, request["id"], kind.table)
    assert complete(db, kind, request["id"], attempt)["completed"] is False
    assert fail(db, kind, request["id"], attempt, "boom", retryable=False)["recorded"] is False
    assert request_row(sql, request["id"], kind.table)["status"] == "processing"


def test_a_retryable_failure_goes_back_to_pending_after_a_backoff(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"])["attempt"]
    answer = fail(db, kind, request["id"], attempt, "OpenAI answered 429", retryable=True)
    assert (answer["recorded"], answer["status"], answer["error"]) == (True, "pending", None)
    stored = request_row(sql, request["id"], kind.table)
    delay = stored["run_after"] - datetime.now(UTC)
    assert timedelta(seconds=3) < delay <= timedelta(seconds=5.5)
    assert (stored["status"], stored["lease_expires_at"], stored["error"]) == ("pending", None, None)
    waiting = claim(db, kind, request["id"])
    assert waiting["claimed"] is False
    assert waiting["reason"].startswith("retry scheduled at")
    assert error_history(sql, request["id"]) == [(1, "OpenAI answered 429")]


def test_retries_back_off_further_each_time_and_end_in_failed_after_max_attempts(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    delays = []
    for expected_attempt in range(1, MAX_ATTEMPTS + 1):
        answer = claim(db, kind, request["id"])
        assert (answer["claimed"], answer["attempt"]) == (True, expected_attempt)
        outcome = fail(
            db, kind, request["id"], expected_attempt, f"timeout {expected_attempt}", retryable=True
        )
        stored = request_row(sql, request["id"], kind.table)
        if expected_attempt < MAX_ATTEMPTS:
            assert outcome["status"] == "pending"
            delays.append((stored["run_after"] - stored["updated_at"]).total_seconds())
            make_due(sql, request["id"], kind.table)
    assert outcome["status"] == "failed"
    assert stored["error"] == f"gave up after {MAX_ATTEMPTS} attempts: timeout {MAX_ATTEMPTS}"
    assert 4.5 <= delays[0] <= 5.5 and 18 <= delays[1] <= 22
    assert error_history(sql, request["id"]) == [(n, f"timeout {n}") for n in range(1, MAX_ATTEMPTS + 1)]
    assert claim(db, kind, request["id"])["reason"] == "already failed"


def test_the_backoff_is_capped_at_an_hour_however_many_attempts(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead(), attempts=400)
    attempt = claim(db, kind, request["id"], max_attempts=1000)["attempt"]
    answer = fail(db, kind, request["id"], attempt, "still down", retryable=True, max_attempts=1000)
    assert answer["status"] == "pending"
    stored = request_row(sql, request["id"], kind.table)
    assert stored["run_after"] - stored["updated_at"] <= timedelta(seconds=3960)


def retry_schedule(sql: Conn, request_id: Any) -> tuple[float, str, float | None]:
    """The last failure's wait (seconds from when it was recorded), its basis and the Retry-After asked."""
    row = sql.execute(
        "SELECT extract(epoch FROM retry_at - at)::float AS wait, retry_basis, retry_after_seconds"
        " FROM planbus_private.request_errors WHERE request_id = %s ORDER BY id DESC LIMIT 1",
        [request_id],
    ).fetchone()
    assert row is not None
    return row["wait"], row["retry_basis"], row["retry_after_seconds"]


@pytest.mark.parametrize(
    ("retry_after", "wait", "basis"),
    [
        (None, (4.5, 5.5), "backoff"),
        (1.0, (4.5, 5.5), "backoff"),
        (120.0, (120, 120), "retry_after"),
        (7200.0, (3600, 3600), "retry_after_capped"),
    ],
    ids=["no-retry-after", "shorter-than-backoff", "longer-than-backoff", "capped-at-an-hour"],
)
def test_a_retry_waits_for_the_later_of_the_backoff_and_the_servers_retry_after_at_most_an_hour(
    db: PostgresDatabase,
    sql: Conn,
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
    retry_after: float | None,
    wait: tuple[float, float],
    basis: str,
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"])["attempt"]
    answer = fail(
        db, kind, request["id"], attempt, "OpenAI answered 429", retryable=True, retry_after=retry_after
    )
    stored = request_row(sql, request["id"], kind.table)
    assert answer["status"] == "pending"
    waited = (stored["run_after"] - stored["updated_at"]).total_seconds()
    assert wait[0] - 0.01 <= waited <= wait[1] + 0.01
    delay, stored_basis, stored_retry_after = retry_schedule(sql, request["id"])
    assert delay == pytest.approx(waited, abs=0.01)
    assert (stored_basis, stored_retry_after) == (basis, retry_after)
    assert claim(db, kind, request["id"])["reason"].startswith("retry scheduled at")


def test_a_retry_after_on_the_last_attempt_does_not_keep_the_request_alive(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"], max_attempts=1)["attempt"]
    answer = fail(
        db, kind, request["id"], attempt, "rate limited", retryable=True, max_attempts=1, retry_after=60
    )
    assert (answer["status"], answer["error"]) == ("failed", "gave up after 1 attempts: rate limited")
    row = sql.execute(
        "SELECT retry_at, retry_basis, retry_after_seconds FROM planbus_private.request_errors"
        " WHERE request_id = %s",
        [request["id"]],
    ).fetchone()
    assert row == {"retry_at": None, "retry_basis": None, "retry_after_seconds": 60.0}


@pytest.mark.parametrize("retry_after", [-1.0, float("nan")])
def test_a_nonsense_retry_after_is_refused_and_the_claim_kept(
    db: PostgresDatabase,
    sql: Conn,
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
    retry_after: float,
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"])["attempt"]
    with pytest.raises(DatabaseError, match="p_retry_after_seconds must be zero or more") as refused:
        fail(db, kind, request["id"], attempt, "429", retryable=True, retry_after=retry_after)
    assert refused.value.sqlstate == "22023"
    assert request_row(sql, request["id"], kind.table)["status"] == "processing"


def test_a_permanent_failure_fails_at_once_with_its_reason(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    attempt = claim(db, kind, request["id"])["attempt"]
    answer = fail(db, kind, request["id"], attempt, "the model refused: policy", retryable=False)
    assert (answer["status"], answer["error"]) == ("failed", "the model refused: policy")
    stored = request_row(sql, request["id"], kind.table)
    assert (stored["status"], stored["error"], stored["lease_expires_at"]) == (
        "failed",
        "the model refused: policy",
        None,
    )
    assert error_history(sql, request["id"]) == [(1, "the model refused: policy")]


def test_a_processing_row_out_of_attempts_is_failed_instead_of_claimed(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    for _ in range(MAX_ATTEMPTS):
        claim(db, kind, request["id"])
        expire(sql, request["id"], kind.table)
    answer = claim(db, kind, request["id"])
    reason = f"gave up after {MAX_ATTEMPTS} attempts: the lease expired before the worker finished"
    assert answer == {"claimed": False, "status": "failed", "reason": reason}
    assert request_row(sql, request["id"], kind.table)["error"] == reason
    assert error_history(sql, request["id"])[-2:] == [
        (MAX_ATTEMPTS, f"lease expired during attempt {MAX_ATTEMPTS}"),
        (MAX_ATTEMPTS, reason),
    ]


def test_an_unknown_kind_is_refused_clearly(db: PostgresDatabase) -> None:
    with pytest.raises(DatabaseError, match="unknown request kind: invoice") as refused:
        db.call(
            "planbus_claim_request",
            p_kind="invoice",
            p_request_id="00000000-0000-4000-8000-000000000000",
            p_lease_seconds=60,
            p_max_attempts=3,
        )
    assert refused.value.sqlstate == "22023"
