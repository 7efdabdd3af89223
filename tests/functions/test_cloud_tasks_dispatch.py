"""DISPATCH=cloud-tasks through the functions-framework app, for every kind, against real PostgreSQL: the
webhook enqueues and answers without any LLM call, the worker does the work, and the sweeper enqueues
what was lost. Cloud Tasks is faked at its transport (an in-process gRPC server speaking CreateTask), so
each test asserts the CreateTask requests exactly as the client sent them; OpenAI is faked at its HTTP
transport and must see no call from a webhook."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
import psycopg
import pytest
from flask.testing import FlaskClient

from planbus import llm
from planbus.clock import FixedClock
from planbus.db.postgres import PostgresDatabase
from planbus.dispatch import SWEEP_ROUND_SECONDS, cloud_tasks, cloud_tasks_queue, sweep_round
from planbus.kinds import KINDS, AnyKind
from planbus.kinds.plans import PLAN
from planbus.llm import drafts
from planbus.services import recovery
from planbus.settings import get_settings
from support import mini_app
from support.cloud_tasks import QUEUE, FakeCloudTasks
from support.concurrency import run_together
from support.drafts import VALID_DRAFT
from support.openai_fakes import VALID_PLAN, FakeOpenAI, api_error, completion
from support.request_kinds import claimed_attempt, complete_request, ready_request
from support.request_rows import expire_lease, request_row

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]
SECRET = "cloud-tasks-secret-for-tests"
HEADERS = {"X-Webhook-Secret": SECRET}
ACCOUNT = "planbus-tasks@planbus-test.iam.gserviceaccount.com"
ANSWERS = {"plan": VALID_PLAN, "draft": VALID_DRAFT}


def worker_url(kind: AnyKind) -> str:
    return f"https://worker.example.test/{kind.process_target}"


@pytest.fixture
def tasks() -> Iterator[FakeCloudTasks]:
    with FakeCloudTasks() as fake:
        yield fake


def install_openai(monkeypatch: pytest.MonkeyPatch, *answers: Any) -> FakeOpenAI:
    """Both kinds' generators on OpenAI, faked at its transport."""
    fake = FakeOpenAI(*answers)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    client = fake.client()
    monkeypatch.setattr(llm, "generator_for", lambda s: llm.make_generator(s, http_client=client))
    monkeypatch.setattr(
        drafts, "draft_generator_for", lambda s: drafts.make_draft_generator(s, http_client=client)
    )
    return fake


@pytest.fixture
def openai(monkeypatch: pytest.MonkeyPatch, kind: AnyKind) -> FakeOpenAI:
    """OpenAI answering with a valid result of the test's kind."""
    return install_openai(monkeypatch, completion(ANSWERS[kind.name]))


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tasks: FakeCloudTasks) -> None:
    for name, value in {
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": SECRET,
        "DISPATCH": "cloud-tasks",
        "CLOUD_TASKS_QUEUE": QUEUE,
        "CLOUD_TASKS_EMULATOR_HOST": tasks.host,
        "CLOUD_TASKS_SERVICE_ACCOUNT": ACCOUNT,
        "OPENAI_TIMEOUT": "20",
        "DRAFT_OPENAI_TIMEOUT": "25",
        "LEASE_SECONDS": "120",
        **{kind.worker_url_setting.upper(): worker_url(kind) for kind in KINDS},
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def pending(db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]) -> Row:
    return ready_request(sql, db, kind, make_lead(company="Analytical Engines Ltd"))


def webhook(kind: AnyKind) -> FlaskClient:
    return mini_app.client(kind.handle_target)


def worker(kind: AnyKind) -> FlaskClient:
    return mini_app.client(kind.process_target)


def insert_event(row: Row, kind: AnyKind) -> dict[str, Any]:
    record = json.loads(json.dumps(row, default=str))
    return {"type": "INSERT", "table": kind.table, "schema": "public", "record": record, "old_record": None}


def deliveries(sql: Sql) -> list[Row]:
    return sql.execute(
        "SELECT kind, request_id, channel, outcome, detail"
        " FROM planbus_private.webhook_deliveries ORDER BY id"
    ).fetchall()


def run_task(task: Any, kind: AnyKind) -> Any:
    """Deliver a created task to the kind's worker as Cloud Tasks would: its URL, headers and body."""
    assert task.url == worker_url(kind)
    return worker(kind).post("/", data=task.body, headers=task.headers)


# -- the webhook -----------------------------------------------------------------------------------------


def test_the_webhook_enqueues_the_first_attempt_and_answers_without_calling_the_llm(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, tasks: FakeCloudTasks, openai: FakeOpenAI
) -> None:
    before = request_row(sql, pending["id"], kind.table)

    response = webhook(kind).post("/", json=insert_event(pending, kind), headers=HEADERS)

    assert response.status_code == 200
    assert response.get_json() == {"request_id": str(pending["id"]), "outcome": "queued", "reason": None}
    assert openai.requests == []
    assert request_row(sql, pending["id"], kind.table) == before  # still pending, attempt 0: nothing claimed
    [task] = tasks.tasks
    assert task.queue == QUEUE
    assert task.name == f"{QUEUE}/tasks/{kind.name}-{pending['id']}-1"
    assert (task.url, task.method) == (worker_url(kind), "POST")
    assert task.headers == {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}
    assert task.json() == {"request_id": str(pending["id"])}
    assert (task.oidc_service_account, task.oidc_audience) == (ACCOUNT, worker_url(kind))
    assert task.dispatch_deadline == kind.timeout(get_settings()) + 30
    assert task.schedule_time is None


def test_three_concurrent_deliveries_make_one_task_and_one_generation(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, tasks: FakeCloudTasks, openai: FakeOpenAI
) -> None:
    clients = [webhook(kind) for _ in range(3)]
    responses = run_together(
        [partial(client.post, "/", json=insert_event(pending, kind), headers=HEADERS) for client in clients]
    )
    answers = [response.get_json() for response in responses]

    assert sorted(a["outcome"] for a in answers) == ["queued", "skipped", "skipped"]
    assert [a["reason"] for a in answers if a["outcome"] == "skipped"] == ["already queued"] * 2
    assert len(tasks.calls) == 3 and len(tasks.tasks) == 1
    [task] = tasks.tasks
    done = run_task(task, kind)
    assert (done.status_code, done.get_json()["outcome"]) == (200, "completed")
    assert len(openai.requests) == 1
    row = request_row(sql, pending["id"], kind.table)
    assert (row["status"], row["attempts"]) == ("completed", 1)
    if kind.name == "plan":
        reminders = sql.execute(
            "SELECT count(*) AS n FROM reminders WHERE plan_request_id = %s", (pending["id"],)
        )
        assert reminders.fetchone() == {"n": len(VALID_PLAN["steps"])}


def test_a_webhook_costs_one_database_read_and_shares_the_processs_queue_client(
    app_env: None,
    db: PostgresDatabase,
    sql: Sql,
    kind: AnyKind,
    make_lead: Callable[..., Row],
    tasks: FakeCloudTasks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The webhook must answer in milliseconds: per delivery, one read of the row's state and one CreateTask
    # on the client (and channel) the instance made for its first delivery, whatever the thread.
    rows = [ready_request(sql, db, kind, make_lead(company=f"Company {n}")) for n in range(4)]
    database_calls: list[str] = []
    clients: list[str | None] = []
    real_call, real_client = PostgresDatabase.call, cloud_tasks._client

    def counted_call(self: PostgresDatabase, function: str, /, **params: Any) -> Any:
        database_calls.append(function)
        return real_call(self, function, **params)

    def counted_client(emulator_host: str | None) -> Any:
        clients.append(emulator_host)
        return real_client(emulator_host)

    monkeypatch.setattr(PostgresDatabase, "call", counted_call)
    monkeypatch.setattr(cloud_tasks, "_client", counted_client)

    def deliver(row: Row) -> Any:
        return webhook(kind).post("/", json=insert_event(row, kind), headers=HEADERS).get_json()

    first = deliver(rows[0])
    answers = [first, *run_together([partial(deliver, row) for row in rows[1:]])]

    assert [a["outcome"] for a in answers] == ["queued"] * 4
    assert database_calls == ["planbus_dispatch_check"] * 4
    assert clients == [tasks.host]
    assert len(tasks.calls) == 4


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED], ids=lambda code: code.name
)
def test_a_refused_enqueue_leaves_the_row_pending_says_so_and_the_sweeper_enqueues_it_later(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, tasks: FakeCloudTasks, code: grpc.StatusCode
) -> None:
    tasks.fail_with(code)
    before = request_row(sql, pending["id"], kind.table)

    response = webhook(kind).post("/", json=insert_event(pending, kind), headers=HEADERS)

    assert response.status_code == 200
    answer = response.get_json()
    assert answer["outcome"] == "skipped"
    assert answer["reason"].startswith(
        f"not queued (Cloud Tasks did not take task {kind.name}-{pending['id']}-1:"
    )
    assert code.name in answer["reason"]
    assert answer["reason"].endswith(
        "the request stays pending and the sweeper (reset_stale_requests) will enqueue it"
    )
    assert request_row(sql, pending["id"], kind.table) == before
    [delivery] = deliveries(sql)
    assert (delivery["kind"], delivery["request_id"], delivery["channel"], delivery["outcome"]) == (
        kind.name,
        pending["id"],
        "cloud_tasks",
        "enqueue_failed",
    )
    assert code.name in delivery["detail"] and SECRET not in delivery["detail"]

    tasks.recover()
    overdue(sql, pending, kind)
    round_ = sweep_round(datetime.now(UTC))
    swept = mini_app.client("reset_stale_requests").post("/", headers=HEADERS)
    assert swept.status_code == 200
    assert (swept.get_json()["redispatched"], swept.get_json()["outcomes"]) == (1, {"queued": 1})
    assert tasks.task_ids() == [f"{kind.name}-{pending['id']}-1-s{round_}"]


def test_an_enqueue_that_times_out_is_answered_in_time_and_left_to_the_sweeper(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, tasks: FakeCloudTasks
) -> None:
    tasks.hang(10)

    started = datetime.now(UTC)
    answer = webhook(kind).post("/", json=insert_event(pending, kind), headers=HEADERS).get_json()

    assert (datetime.now(UTC) - started).total_seconds() < 5
    assert answer["outcome"] == "skipped" and "DEADLINE_EXCEEDED" in answer["reason"]
    assert request_row(sql, pending["id"], kind.table)["status"] == "pending"
    assert [d["outcome"] for d in deliveries(sql)] == ["enqueue_failed"]


def overdue(sql: Sql, request: Row, kind: AnyKind) -> None:
    sql.execute(
        f"UPDATE {kind.table} SET run_after = now() - interval '10 minutes' WHERE id = %s", (request["id"],)
    )


@pytest.mark.parametrize("state", ["held", "completed"])
def test_a_row_no_task_would_claim_is_skipped_and_nothing_is_enqueued(
    app_env: None,
    db: PostgresDatabase,
    sql: Sql,
    kind: AnyKind,
    pending: Row,
    tasks: FakeCloudTasks,
    state: str,
) -> None:
    attempt = claimed_attempt(db, kind, pending["id"])
    if state == "completed":
        complete_request(db, kind, pending["id"], attempt=attempt)

    answer = webhook(kind).post("/", json=insert_event(pending, kind), headers=HEADERS).get_json()

    assert answer["outcome"] == "skipped"
    expected = "already completed" if state == "completed" else "held by another worker until"
    assert answer["reason"].startswith(expected)
    assert tasks.calls == []


def test_a_webhook_for_a_row_waiting_for_its_retry_enqueues_it_for_then(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, tasks: FakeCloudTasks
) -> None:
    later = sql.execute(
        f"UPDATE {kind.table} SET run_after = now() + interval '5 minutes' WHERE id = %s RETURNING run_after",
        (pending["id"],),
    ).fetchone()
    assert later is not None

    answer = webhook(kind).post("/", json=insert_event(pending, kind), headers=HEADERS).get_json()

    assert answer == {
        "request_id": str(pending["id"]),
        "outcome": "queued",
        "reason": f"attempt 1 scheduled for {later['run_after'].isoformat()}",
    }
    assert tasks.tasks[0].schedule_time == later["run_after"]


def test_without_the_kinds_worker_url_the_webhook_is_a_503_and_nothing_is_enqueued(
    app_env: None,
    monkeypatch: pytest.MonkeyPatch,
    sql: Sql,
    kind: AnyKind,
    pending: Row,
    tasks: FakeCloudTasks,
) -> None:
    monkeypatch.delenv(kind.worker_url_setting.upper())

    response = webhook(kind).post("/", json=insert_event(pending, kind), headers=HEADERS)

    assert response.status_code == 503
    assert kind.worker_url_setting.upper() in response.get_json()["error"]
    assert tasks.calls == [] and deliveries(sql) == []


# -- the worker ------------------------------------------------------------------------------------------


def test_the_worker_answers_every_data_outcome_with_200(
    app_env: None, db: PostgresDatabase, sql: Sql, kind: AnyKind, pending: Row, openai: FakeOpenAI
) -> None:
    client = worker(kind)
    first = client.post("/", json={"request_id": str(pending["id"])}, headers=HEADERS)
    again = client.post("/", json={"request_id": str(pending["id"])}, headers=HEADERS)
    unknown = client.post("/", json={"request_id": "00000000-0000-4000-8000-000000000000"}, headers=HEADERS)

    assert (first.status_code, first.get_json()["outcome"]) == (200, "completed")
    assert (again.status_code, again.get_json()) == (
        200,
        {"request_id": str(pending["id"]), "outcome": "skipped", "reason": "already completed"},
    )
    assert (unknown.status_code, unknown.get_json()["reason"]) == (200, "unknown request")


def test_a_permanent_failure_is_a_200_with_the_reason(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, openai: FakeOpenAI, tasks: FakeCloudTasks
) -> None:
    openai.answers = [api_error(401, "Incorrect API key provided")]

    response = worker(kind).post("/", json={"request_id": str(pending["id"])}, headers=HEADERS)

    assert response.status_code == 200
    assert response.get_json()["outcome"] == "failed"
    assert request_row(sql, pending["id"], kind.table)["status"] == "failed"
    assert tasks.calls == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ('{"request_id": "7"}', HEADERS, 400),
        ('{"id": "00000000-0000-4000-8000-000000000000"}', HEADERS, 400),
        ("{", HEADERS, 400),
        ('{"request_id": "00000000-0000-4000-8000-000000000000"}', {}, 401),
        ('{"request_id": "00000000-0000-4000-8000-000000000000"}', {"X-Webhook-Secret": "wrong"}, 401),
    ],
    ids=["not-a-uuid", "wrong-key", "truncated", "no-secret", "wrong-secret"],
)
def test_the_worker_refuses_a_bad_call_and_changes_nothing(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, body: str, headers: dict[str, str], status: int
) -> None:
    before = request_row(sql, pending["id"], kind.table)
    response = worker(kind).post("/", data=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == status
    assert request_row(sql, pending["id"], kind.table) == before


def test_the_worker_is_a_503_when_the_database_is_unreachable(
    app_env: None, monkeypatch: pytest.MonkeyPatch, kind: AnyKind
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://planbus@127.0.0.1:9/nowhere?connect_timeout=1")
    response = worker(kind).post(
        "/", json={"request_id": "00000000-0000-4000-8000-000000000001"}, headers=HEADERS
    )
    assert response.status_code == 503


def test_a_retryable_failure_enqueues_the_next_attempt_at_its_run_after(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, openai: FakeOpenAI, tasks: FakeCloudTasks
) -> None:
    openai.answers = [api_error(503, "overloaded")]

    response = worker(kind).post("/", json={"request_id": str(pending["id"])}, headers=HEADERS)

    assert response.status_code == 200
    answer = response.get_json()
    row = request_row(sql, pending["id"], kind.table)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert answer["outcome"] == "failed" and answer["reason"].endswith("; attempt 2 queued")
    [task] = tasks.tasks
    assert task.task_id == f"{kind.name}-{pending['id']}-2"
    assert task.schedule_time == row["run_after"]
    # When it runs (its backoff passed), the task's attempt is the one a claim starts.
    sql.execute(f"UPDATE {kind.table} SET run_after = now() WHERE id = %s", (pending["id"],))
    openai.answers = [completion(ANSWERS[kind.name])]
    assert run_task(task, kind).get_json()["outcome"] == "completed"
    assert request_row(sql, pending["id"], kind.table)["attempts"] == 2


def test_a_retry_the_queue_refuses_is_recorded_and_left_to_the_sweeper(
    app_env: None, sql: Sql, kind: AnyKind, pending: Row, openai: FakeOpenAI, tasks: FakeCloudTasks
) -> None:
    openai.answers = [api_error(503, "overloaded")]
    tasks.fail_with(grpc.StatusCode.UNAVAILABLE)

    answer = worker(kind).post("/", json={"request_id": str(pending["id"])}, headers=HEADERS).get_json()

    assert answer["outcome"] == "failed"
    assert "; attempt 2 not queued (Cloud Tasks did not take task" in answer["reason"]
    assert request_row(sql, pending["id"], kind.table)["status"] == "pending"
    assert [d["outcome"] for d in deliveries(sql)] == ["enqueue_failed"]


# -- the sweeper -----------------------------------------------------------------------------------------


def test_the_sweeper_enqueues_lost_reset_and_due_rows_of_every_kind_without_generating(
    app_env: None,
    monkeypatch: pytest.MonkeyPatch,
    db: PostgresDatabase,
    sql: Sql,
    make_lead: Callable[..., Row],
    tasks: FakeCloudTasks,
) -> None:
    openai = install_openai(monkeypatch)
    expected = []
    for n, kind in enumerate(KINDS):
        lost = ready_request(sql, db, kind, make_lead(telegram_id=100 + n))
        overdue(sql, lost, kind)
        stale = ready_request(sql, db, kind, make_lead(telegram_id=200 + n))
        claimed_attempt(db, kind, stale["id"])
        expire_lease(sql, stale["id"], kind.table)
        expected += [f"{kind.name}-{lost['id']}-1", f"{kind.name}-{stale['id']}-2"]

    round_ = sweep_round(datetime.now(UTC))
    response = mini_app.client("reset_stale_requests").post("/", headers=HEADERS)

    assert response.status_code == 200
    answer = response.get_json()
    assert (answer["reset"], answer["failed"], answer["redispatched"]) == (len(KINDS), 0, 2 * len(KINDS))
    assert answer["outcomes"] == {"queued": 2 * len(KINDS)}
    assert answer["kinds"] == {kind.name: {"reset": 1, "failed": 0, "redispatched": 2} for kind in KINDS}
    assert sorted(tasks.task_ids()) == sorted(f"{name}-s{round_}" for name in expected)
    assert openai.requests == []
    # A second sweep finds the same rows still pending: the queue refuses the duplicates.
    again = mini_app.client("reset_stale_requests").post("/", headers=HEADERS).get_json()
    assert again["outcomes"] == {"already_queued": 2 * len(KINDS)}
    assert len(tasks.tasks) == 2 * len(KINDS)


def test_a_sweeper_task_that_gave_up_is_followed_by_a_new_one_in_the_next_round(
    app_env: None, db: PostgresDatabase, sql: Sql, make_lead: Callable[..., Row], tasks: FakeCloudTasks
) -> None:
    # Cloud Tasks refuses a name for about an hour after its task ran out of retries: a row left pending
    # at that attempt must still get a task from the next sweep round, not ALREADY_EXISTS for an hour.
    lost = ready_request(sql, db, PLAN, make_lead(telegram_id=300))
    overdue(sql, lost, PLAN)
    settings = get_settings()
    queue = cloud_tasks_queue(settings)
    first = FixedClock(datetime.now(UTC))
    later = FixedClock(first.now() + timedelta(seconds=SWEEP_ROUND_SECONDS))
    try:
        for clock in (first, first, later):
            recovery.reset_stale_requests(
                KINDS, db, clock, generator_for=lambda kind: None, settings=settings, queue=queue
            )
    finally:
        queue.close()

    rounds = [sweep_round(first.now()), sweep_round(later.now())]
    assert tasks.task_ids() == [f"plan-{lost['id']}-1-s{r}" for r in rounds]
