"""The plan_requests state machine, driven through its SQL functions on real PostgreSQL.

Time is arranged, never waited for: the owner connection moves a lease or a retry time into the past, which
is what the passing of time would do, and then the functions under test make every transition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase
from support.request_rows import error_history, expire_lease, request_row

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]
LEASE = 60
MAX_ATTEMPTS = 3


def claim(db: PostgresDatabase, request_id: Any, *, max_attempts: int = MAX_ATTEMPTS) -> Any:
    return db.call(
        "planbus_claim_request",
        p_request_id=str(request_id),
        p_lease_seconds=LEASE,
        p_max_attempts=max_attempts,
    )


def fail(
    db: PostgresDatabase,
    request_id: Any,
    attempt: int,
    error: str,
    *,
    retryable: bool,
    max_attempts: int = MAX_ATTEMPTS,
) -> Any:
    return db.call(
        "planbus_fail_request",
        p_request_id=str(request_id),
        p_attempt=attempt,
        p_error=error,
        p_retryable=retryable,
        p_max_attempts=max_attempts,
    )


def complete(
    db: PostgresDatabase, request_id: Any, attempt: int, *, reminders: list[dict[str, Any]] | None = None
) -> Any:
    return db.call(
        "planbus_complete_request",
        p_request_id=str(request_id),
        p_attempt=attempt,
        p_result={"plan": {"summary": "call on Monday"}, "generator": "offline"},
        p_plan={"summary": "call on Monday"},
        p_reminders=reminders if reminders is not None else [],
    )


def reminder(step: int, text: str = "follow up", days: int = 1) -> dict[str, Any]:
    return {
        "step_index": step,
        "due_at": (datetime.now(UTC) + timedelta(days=days)).isoformat(),
        "text": text,
    }


def make_retry_due(sql: Conn, request_id: Any) -> None:
    sql.execute(
        "UPDATE plan_requests SET run_after = now() - interval '1 second' WHERE id = %s", [request_id]
    )


MakeLead = Callable[..., Row]
MakeRequest = Callable[..., Row]


def test_a_new_request_is_pending_with_no_attempts(make_lead: MakeLead, make_request: MakeRequest) -> None:
    request = make_request(make_lead())
    assert (request["status"], request["attempts"], request["result"], request["error"]) == (
        "pending",
        0,
        None,
        None,
    )


def test_claiming_a_pending_request_leases_it_and_returns_the_lead(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    lead = make_lead(company="Analytical Engines")
    request = make_request(lead)
    answer = claim(db, request["id"])
    assert answer["claimed"] is True
    assert answer["attempt"] == 1
    assert answer["request"]["id"] == str(request["id"])
    assert answer["lead"]["company"] == "Analytical Engines"
    stored = request_row(sql, request["id"])
    assert (stored["status"], stored["attempts"]) == ("processing", 1)
    lease = stored["lease_expires_at"] - datetime.now(UTC)
    assert timedelta(seconds=LEASE - 5) < lease <= timedelta(seconds=LEASE)


def test_an_unknown_request_is_not_claimed(db: PostgresDatabase) -> None:
    answer = claim(db, "00000000-0000-4000-8000-000000000000")
    assert answer == {"claimed": False, "status": None, "reason": "unknown request"}


def test_a_request_held_under_a_live_lease_is_not_claimed_again(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    claim(db, request["id"])
    again = claim(db, request["id"])
    assert again["claimed"] is False
    assert again["status"] == "processing"
    assert again["reason"].startswith("held by another worker until")
    assert request_row(sql, request["id"])["attempts"] == 1


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_a_finished_request_is_never_claimed_again(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest, final: str
) -> None:
    request = make_request(make_lead())
    attempt = claim(db, request["id"])["attempt"]
    if final == "completed":
        complete(db, request["id"], attempt)
    else:
        fail(db, request["id"], attempt, "the lead has no name", retryable=False)
    before = request_row(sql, request["id"])
    answer = claim(db, request["id"])
    assert answer == {"claimed": False, "status": final, "reason": f"already {final}"}
    assert request_row(sql, request["id"]) == before


def test_two_connections_claiming_the_same_row_exactly_one_wins(
    database_url: str, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    contenders = 8
    barrier = threading.Barrier(contenders)
    answers: list[Any] = []

    def contend() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            answers.append(
                conn.execute(
                    "SELECT planbus_claim_request("
                    "p_request_id => %s, p_lease_seconds => 60, p_max_attempts => 3)",
                    [request["id"]],
                ).fetchone()[0]  # type: ignore[index]
            )

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [a for a in answers if a["claimed"]]
    assert len(answers) == contenders
    assert len(winners) == 1
    assert winners[0]["attempt"] == 1
    assert all(a["status"] == "processing" for a in answers if not a["claimed"])


def test_an_expired_lease_is_taken_over_and_the_old_attempt_can_no_longer_write(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    first = claim(db, request["id"])["attempt"]
    expire_lease(sql, request["id"])
    second = claim(db, request["id"])
    assert second["claimed"] is True
    assert second["attempt"] == first + 1

    late_result = complete(db, request["id"], first, reminders=[reminder(0)])
    late_failure = fail(db, request["id"], first, "timed out", retryable=True)
    assert late_result["completed"] is False
    assert late_result["status"] == "processing"
    assert late_failure["recorded"] is False
    stored = request_row(sql, request["id"])
    assert (stored["status"], stored["attempts"], stored["result"]) == ("processing", 2, None)
    assert sql.execute("SELECT count(*) AS n FROM reminders").fetchone() == {"n": 0}

    assert complete(db, request["id"], second["attempt"])["completed"] is True
    assert error_history(sql, request["id"]) == [(1, "lease expired during attempt 1")]


def test_a_worker_that_outlived_its_lease_cannot_write_even_before_a_takeover(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    attempt = claim(db, request["id"])["attempt"]
    expire_lease(sql, request["id"])
    assert complete(db, request["id"], attempt)["completed"] is False
    assert fail(db, request["id"], attempt, "boom", retryable=False)["recorded"] is False
    assert request_row(sql, request["id"])["status"] == "processing"


def test_a_retryable_failure_goes_back_to_pending_after_a_backoff(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    attempt = claim(db, request["id"])["attempt"]
    answer = fail(db, request["id"], attempt, "OpenAI answered 429", retryable=True)
    assert (answer["recorded"], answer["status"], answer["error"]) == (True, "pending", None)
    stored = request_row(sql, request["id"])
    delay = stored["run_after"] - datetime.now(UTC)
    assert timedelta(seconds=3) < delay <= timedelta(seconds=5.5)
    assert (stored["status"], stored["lease_expires_at"], stored["error"]) == ("pending", None, None)
    waiting = claim(db, request["id"])
    assert waiting["claimed"] is False
    assert waiting["reason"].startswith("retry scheduled at")
    assert error_history(sql, request["id"]) == [(1, "OpenAI answered 429")]


def test_retries_back_off_further_each_time_and_end_in_failed_after_max_attempts(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    delays = []
    for expected_attempt in range(1, MAX_ATTEMPTS + 1):
        answer = claim(db, request["id"])
        assert (answer["claimed"], answer["attempt"]) == (True, expected_attempt)
        outcome = fail(db, request["id"], expected_attempt, f"timeout {expected_attempt}", retryable=True)
        stored = request_row(sql, request["id"])
        if expected_attempt < MAX_ATTEMPTS:
            assert outcome["status"] == "pending"
            delays.append((stored["run_after"] - stored["updated_at"]).total_seconds())
            make_retry_due(sql, request["id"])
    assert outcome["status"] == "failed"
    assert stored["error"] == f"gave up after {MAX_ATTEMPTS} attempts: timeout {MAX_ATTEMPTS}"
    assert 4.5 <= delays[0] <= 5.5 and 18 <= delays[1] <= 22
    assert error_history(sql, request["id"]) == [(n, f"timeout {n}") for n in range(1, MAX_ATTEMPTS + 1)]
    assert claim(db, request["id"])["reason"] == "already failed"


def test_the_backoff_is_capped_at_an_hour_however_many_attempts(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    sql.execute("UPDATE plan_requests SET attempts = 400 WHERE id = %s", [request["id"]])
    attempt = claim(db, request["id"], max_attempts=1000)["attempt"]
    answer = fail(db, request["id"], attempt, "still down", retryable=True, max_attempts=1000)
    assert answer["status"] == "pending"
    stored = request_row(sql, request["id"])
    assert stored["run_after"] - stored["updated_at"] <= timedelta(seconds=3960)


def test_a_permanent_failure_fails_at_once_with_its_reason(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    attempt = claim(db, request["id"])["attempt"]
    answer = fail(db, request["id"], attempt, "the model refused: policy", retryable=False)
    assert (answer["status"], answer["error"]) == ("failed", "the model refused: policy")
    stored = request_row(sql, request["id"])
    assert (stored["status"], stored["error"], stored["lease_expires_at"]) == (
        "failed",
        "the model refused: policy",
        None,
    )
    assert error_history(sql, request["id"]) == [(1, "the model refused: policy")]


def test_a_processing_row_out_of_attempts_is_failed_instead_of_claimed(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    for _ in range(MAX_ATTEMPTS):
        claim(db, request["id"])
        expire_lease(sql, request["id"])
    answer = claim(db, request["id"])
    reason = f"gave up after {MAX_ATTEMPTS} attempts: the lease expired before the worker finished"
    assert answer == {"claimed": False, "status": "failed", "reason": reason}
    assert request_row(sql, request["id"])["error"] == reason
    assert error_history(sql, request["id"])[-2:] == [
        (MAX_ATTEMPTS, f"lease expired during attempt {MAX_ATTEMPTS}"),
        (MAX_ATTEMPTS, reason),
    ]
