"""Telegram's limits as one budget in the database (migrations 0011, 0016): a window of sends for the bot,
an interval per chat and a pause after a 429, across connections; and two overlapping send_due_reminders
calls against a fake Telegram that enforces both limits, which together stay inside them."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
from pydantic import SecretStr

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.services.reminders import send_due_reminders
from planbus.settings import Settings
from planbus.telegram import SendBudget, SendLimits, make_sender
from support.concurrency import run_together
from support.fake_telegram import FakeTelegram
from support.reminder_rows import TOKEN, Sql, add_plan, reminder


def take(
    db: PostgresDatabase,
    chat: int,
    *,
    bot: str = "1",
    per_window: int = 3,
    window: float = 60,
    hold: float = 60,
) -> dict[str, Any]:
    answer: dict[str, Any] = db.call(
        "planbus_take_telegram_send",
        p_bot=bot,
        p_chat_id=chat,
        p_per_window=per_window,
        p_window_seconds=window,
        p_hold_seconds=hold,
    )
    return answer


def done(db: PostgresDatabase, send_id: int, *, window: float = 60, gap: float = 1) -> dict[str, Any]:
    answer: dict[str, Any] = db.call(
        "planbus_telegram_send_done", p_send_id=send_id, p_window_seconds=window, p_chat_interval_seconds=gap
    )
    return answer


def test_a_full_window_grants_nothing_until_a_send_done_has_counted_a_window(
    db: PostgresDatabase, sql: Sql
) -> None:
    sends = [take(db, chat, window=0.3) for chat in (1, 2, 3)]
    full = take(db, 4, window=0.3)
    done(db, sends[0]["send_id"], window=0.3)
    still_full = take(db, 4, window=0.3)
    sql.execute("SELECT pg_sleep(0.35)")
    freed = take(db, 4, window=0.3)

    assert all(send["granted"] for send in sends)
    assert len({send["send_id"] for send in sends}) == 3
    # Three in flight: none can free the window sooner than a window after it is done.
    assert not full["granted"] and full["window_full"]
    assert 0.25 < full["wait_seconds"] <= 0.3
    assert not still_full["granted"] and still_full["window_full"]
    assert 0.2 < still_full["wait_seconds"] <= 0.3
    assert freed["granted"]


def test_a_send_never_reported_done_stops_counting_when_its_hold_runs_out(
    db: PostgresDatabase, sql: Sql
) -> None:
    first = take(db, 1, per_window=1, hold=0.2)
    blocked = take(db, 2, per_window=1, hold=0.2)
    sql.execute("SELECT pg_sleep(0.25)")
    after_hold = take(db, 2, per_window=1, hold=0.2)

    assert first["granted"] and not blocked["granted"]
    assert after_hold["granted"]
    # The forgotten send is gone from the table, not only past its time.
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.telegram_sends").fetchone() == {"n": 1}


def test_a_chats_next_send_waits_the_interval_from_when_the_last_was_done(
    db: PostgresDatabase, sql: Sql
) -> None:
    sent = take(db, 1)
    # The message went out late, as a stalled sender's would: 0.5 s after it was taken.
    sql.execute("SELECT pg_sleep(0.5)")
    over = done(db, sent["send_id"], gap=1)
    again = done(db, sent["send_id"], gap=5)
    same_chat = take(db, 1)
    other_chat = take(db, 2)

    taken_at = sql.execute(
        "SELECT taken_at FROM planbus_private.telegram_sends WHERE id = %s", (sent["send_id"],)
    ).fetchone()
    assert taken_at is not None
    assert datetime.fromisoformat(over["next_chat_slot_at"]) - taken_at["taken_at"] >= timedelta(seconds=1.5)
    # Reported twice (a retried call): the second report changes nothing.
    assert over["recorded"] and again == {"recorded": False, "next_chat_slot_at": None}
    assert not same_chat["granted"] and not same_chat["window_full"]
    assert 0.9 < same_chat["wait_seconds"] <= 1.0
    assert other_chat["granted"]


def test_a_pause_holds_every_chat_of_the_bot_and_no_other_bot(db: PostgresDatabase) -> None:
    take(db, 1)
    db.call("planbus_pause_telegram", p_bot="1", p_seconds=30)
    db.call("planbus_pause_telegram", p_bot="1", p_seconds=1)  # a shorter pause never shortens a longer one

    paused = take(db, 2)
    other_bot = take(db, 2, bot="2")

    assert not paused["granted"] and not paused["window_full"]
    assert 29 < paused["wait_seconds"] <= 30
    assert other_bot["granted"]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("p_bot", " "),
        ("p_chat_id", None),
        ("p_per_window", 0),
        ("p_window_seconds", 0),
        ("p_window_seconds", float("nan")),
        ("p_hold_seconds", float("inf")),
    ],
)
def test_arguments_that_make_no_sense_are_refused_and_change_nothing(
    db: PostgresDatabase, sql: Sql, argument: str, value: Any
) -> None:
    arguments = {
        "p_bot": "1",
        "p_chat_id": 1,
        "p_per_window": 3,
        "p_window_seconds": 1,
        "p_hold_seconds": 15,
        argument: value,
    }
    with pytest.raises(DatabaseError) as raised:
        db.call("planbus_take_telegram_send", **arguments)
    assert raised.value.sqlstate == "22023"
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.telegram_sends").fetchone() == {"n": 0}


def test_concurrent_takers_on_separate_connections_never_overfill_the_window(database_url: str) -> None:
    callers = [PostgresDatabase(database_url) for _ in range(4)]

    def take_many(db: PostgresDatabase, first_chat: int) -> list[int]:
        answers = [take(db, chat, per_window=10) for chat in range(first_chat, first_chat + 25)]
        return [answer["send_id"] for answer in answers if answer["granted"]]

    try:
        results = run_together([partial(take_many, db, 1000 * n) for n, db in enumerate(callers)])
    finally:
        for db in callers:
            db.close()
    granted = list(itertools.chain.from_iterable(results))
    assert len(granted) == len(set(granted)) == 10


def test_the_budget_waits_for_the_window_and_gives_up_at_once_on_a_longer_pause(database_url: str) -> None:
    db = PostgresDatabase(database_url)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    budget = SendBudget(db, SendLimits("1", per_second=2, window=0.3), sleep=sleep)
    try:
        first, second = budget.acquire(1, within=5), budget.acquire(2, within=5)
        assert first is not None and second is not None
        budget.done(first)
        third = budget.acquire(3, within=5)  # waits for the first to have counted its window
        db.call("planbus_pause_telegram", p_bot="1", p_seconds=30)
        paused = budget.acquire(4, within=5)
    finally:
        db.close()

    assert third is not None and len({first, second, third}) == 3
    assert len(waits) == 1 and 0.2 < waits[0] <= 0.3
    assert paused is None


def test_two_overlapping_calls_keep_telegrams_limits_together(database_url: str, sql: Sql) -> None:
    fake = FakeTelegram(TOKEN, per_second=30, chat_interval=1.0).start()
    # Chats with one reminder each (the global limit binds) and a few with five (the per-chat one does).
    ids = [add_plan(sql, telegram_id=70_000 + i)["reminders"][0]["id"] for i in range(60)]
    for i in range(4):
        plan = add_plan(sql, telegram_id=80_000 + i, steps=tuple((f"step {s}", -60 + s) for s in range(5)))
        ids += [row["id"] for row in plan["reminders"]]
    settings = Settings(
        telegram_bot_token=SecretStr(TOKEN), telegram_api_base=fake.base_url, function_budget_seconds=40
    )

    def one_call(db: PostgresDatabase) -> dict[str, int]:
        sender = make_sender(settings)  # as the function builds it: Telegram's limits, nothing per call
        try:
            return send_due_reminders(db, sender, SystemClock(), settings=settings).as_json()
        finally:
            sender.close()

    callers = [PostgresDatabase(database_url, max_size=9) for _ in range(2)]
    try:
        results = run_together([partial(one_call, db) for db in callers])
    finally:
        for db in callers:
            db.close()
        fake.stop()

    tally = fake.tally
    assert (tally.over_global, tally.over_chat) == (0, 0)
    assert tally.busiest_second() <= 30
    gap = tally.min_chat_gap()
    assert gap is not None and gap >= 1.0
    assert len(tally.delivered) == len({(chat, text) for chat, text, _ in tally.delivered}) == 80
    assert sum(r["sent"] for r in results) == 80
    assert all(r["retried"] == r["failed"] == 0 for r in results)
    assert {reminder(sql, reminder_id)["status"] for reminder_id in ids} == {"sent"}
