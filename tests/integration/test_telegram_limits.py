"""Telegram's limits as one budget in the database (migration 0011): slots spaced for the bot and for each
chat, across connections; and two overlapping send_due_reminders calls against a fake Telegram that
enforces both limits, which together stay inside them."""

from __future__ import annotations

import itertools
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
from planbus.telegram import make_sender
from support.concurrency import run_together
from support.fake_telegram import FakeTelegram
from support.reminder_rows import TOKEN, Sql, add_plan, reminder


def take(
    db: PostgresDatabase, chat: int, *, bot: str = "1", within: float = 60, rate: float = 10, gap: float = 1
) -> dict[str, Any]:
    answer: dict[str, Any] = db.call(
        "planbus_take_telegram_slot",
        p_bot=bot,
        p_chat_id=chat,
        p_within_seconds=within,
        p_per_second=rate,
        p_chat_interval_seconds=gap,
    )
    answer["slot_at"] = datetime.fromisoformat(answer["slot_at"])
    return answer


def test_slots_are_spaced_at_the_bots_rate_and_a_chats_interval(db: PostgresDatabase) -> None:
    first, second, third = (take(db, chat) for chat in (1, 2, 3))
    again = take(db, 1)

    assert all(slot["granted"] for slot in (first, second, third, again))
    assert second["slot_at"] - first["slot_at"] == timedelta(seconds=0.1)
    assert third["slot_at"] - second["slot_at"] == timedelta(seconds=0.1)
    assert again["slot_at"] - first["slot_at"] == timedelta(seconds=1)
    assert 0.9 < again["wait_seconds"] <= 1.0


def test_a_slot_beyond_the_callers_time_is_refused_and_takes_nothing(db: PostgresDatabase) -> None:
    first = take(db, 1)
    refused = take(db, 1, within=0.5)
    other_chat = take(db, 2, within=0.5)

    assert not refused["granted"]
    assert 0.5 < refused["wait_seconds"] <= 1.0
    # The refused take moved nothing on: the next chat gets the bot's very next slot.
    assert other_chat["granted"]
    assert other_chat["slot_at"] - first["slot_at"] == timedelta(seconds=0.1)


def test_a_pause_holds_every_chat_of_the_bot_and_no_other_bot(db: PostgresDatabase) -> None:
    take(db, 1)
    db.call("planbus_pause_telegram", p_bot="1", p_seconds=30)
    db.call("planbus_pause_telegram", p_bot="1", p_seconds=1)  # a shorter pause never shortens a longer one

    paused = take(db, 2, within=10)
    later = take(db, 2, within=60)
    other_bot = take(db, 2, bot="2", within=1)

    assert not paused["granted"]
    assert later["granted"] and 29 < later["wait_seconds"] <= 30
    assert other_bot["granted"] and other_bot["wait_seconds"] < 0.5


def test_a_delivery_spaces_the_chats_next_slot_from_when_it_was_delivered(
    db: PostgresDatabase, sql: Sql
) -> None:
    reserved = take(db, 1)
    # The message went out late, as a stalled sender's would: 0.5 s after its slot.
    sql.execute("SELECT pg_sleep(0.5)")
    delivered = db.call("planbus_telegram_delivered", p_bot="1", p_chat_id=1, p_chat_interval_seconds=1)
    following = take(db, 1)

    assert datetime.fromisoformat(delivered["next_slot_at"]) - reserved["slot_at"] >= timedelta(seconds=1.5)
    assert following["slot_at"] == datetime.fromisoformat(delivered["next_slot_at"])


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("p_bot", " "),
        ("p_within_seconds", -1),
        ("p_within_seconds", float("nan")),
        ("p_per_second", 0),
        ("p_per_second", float("inf")),
        ("p_chat_interval_seconds", -0.5),
    ],
)
def test_arguments_that_make_no_sense_are_refused_and_change_nothing(
    db: PostgresDatabase, sql: Sql, argument: str, value: Any
) -> None:
    arguments = {
        "p_bot": "1",
        "p_chat_id": 1,
        "p_within_seconds": 60,
        "p_per_second": 10,
        "p_chat_interval_seconds": 1,
        argument: value,
    }
    with pytest.raises(DatabaseError) as raised:
        db.call("planbus_take_telegram_slot", **arguments)
    assert raised.value.sqlstate == "22023"
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.telegram_send_budget").fetchone() == {
        "n": 0
    }


def test_concurrent_takers_on_separate_connections_never_share_or_crowd_a_slot(database_url: str) -> None:
    callers = [PostgresDatabase(database_url) for _ in range(4)]

    def take_many(db: PostgresDatabase, first_chat: int) -> list[datetime]:
        return [take(db, chat, rate=50, within=600)["slot_at"] for chat in range(first_chat, first_chat + 25)]

    try:
        results = run_together([partial(take_many, db, 1000 * n) for n, db in enumerate(callers)])
    finally:
        for db in callers:
            db.close()
    slots = sorted(itertools.chain.from_iterable(results))
    assert len(slots) == len(set(slots)) == 100
    assert all(b - a == timedelta(seconds=0.02) for a, b in itertools.pairwise(slots))


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
