"""send_due_reminders: deliver due reminders and record each outcome through the reminder state machine.

Reminders are claimed in small batches (planbus_claim_due_reminders: FOR UPDATE SKIP LOCKED under a lease,
at most one per chat), so concurrent calls never share one. Each is sent by a few worker threads, each
message a send taken in the bot's budget in the database (telegram.SendBudget): Telegram's limits, about 30
a second in total and one a second per chat, hold across overlapping calls and instances. Each outcome is
recorded by one SQL function, fenced on the claim's attempt, and counted once:

    delivered                    sent      planbus_mark_reminder_sent (via 'telegram' or 'outbox')
    429 retry_after              retried   planbus_retry_reminder after retry_after, no attempt used; the
                                           bot's budget is paused that long for every sender, and this
                                           call backs off: claimed reminders go back unsent (deferred),
                                           nothing more is claimed
    5xx, network error           retried   planbus_retry_reminder with backoff, using an attempt (failed at
                                           the limit)
    400, 403 (blocked, ...)      failed    planbus_fail_reminder with Telegram's reason
    no slot in time              deferred  planbus_retry_reminder at once, no attempt used; nothing more is
                                           claimed (the call's time budget, or MAX_SLOT_WAIT_SECONDS, ran out)
    401, 404 (token rejected)    deferred  every claimed reminder goes back unused; ConfigurationError

A message that went out but could not be recorded (the database dropped) stays 'sending' until its lease
expires and is then sent again: delivery is at least once, never silently lost.
"""

from __future__ import annotations

import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.errors import ConfigurationError, DeliveryError
from planbus.settings import Settings
from planbus.telegram import SendBudget, Sender

DEFAULT_LIMIT = 1000
# About one second of sends at Telegram's global rate: claims stay short and concurrent calls share fairly.
BATCH_SIZE = 30
# Requests in flight at once: one at a time cannot reach the rate limit over a real network round trip.
SEND_CONCURRENCY = 8
# The claim must outlive the whole call: the budget, plus one last send's timeout and its recording.
LEASE_MARGIN_SECONDS = 60
# Telegram refuses messages longer than 4096 characters.
MAX_MESSAGE_CHARS = 4096
# The longest a message waits for its send slot. Queueing behind other senders takes a second or two; a
# slot further away means the bot is paused after a 429, and the call hands its reminders back instead of
# idling.
MAX_SLOT_WAIT_SECONDS = 5.0

log = logs.get_logger("reminders")


@dataclass
class ReminderCounts:
    """What one call did with the reminders it claimed, each counted once: delivered (`sent`), failed for
    good (`failed`), tried and rescheduled (`retried`: a transient error or a 429), or handed back untried
    (`deferred`). The contract's answer is sent/failed/retried; deferred is planbus's addition."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    deferred: int = 0

    def as_json(self) -> dict[str, int]:
        return asdict(self)


def reminder_message(reminder: dict[str, Any]) -> str:
    """The message a salesperson receives: the reminder's text, which the planner wrote to name the step,
    the lead, the channel, the action, its goal and the draft (planning.reminder_text), marked as a reminder.
    """
    message = f"Reminder: {reminder['text']}"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return message


def retry_delay(attempt: int) -> float:
    """Backoff after a failed attempt: 30 s, 2 min, 8 min, ... capped at an hour, with +-10% jitter."""
    base: float = min(3600.0, 30.0 * 4.0 ** max(attempt - 1, 0))
    return base * random.uniform(0.9, 1.1)


def send_due_reminders(
    db: Database, sender: Sender, clock: Clock, *, settings: Settings, limit: int | None = None
) -> ReminderCounts:
    """Deliver up to `limit` due reminders within settings.function_budget_seconds; return the counts."""
    budget = SendBudget(db, sender.limits) if sender.limits is not None else None
    run = _Run(db, sender, budget, clock, settings)
    wanted = DEFAULT_LIMIT if limit is None else limit
    lease = math.ceil(settings.function_budget_seconds) + LEASE_MARGIN_SECONDS
    with ThreadPoolExecutor(max_workers=SEND_CONCURRENCY, thread_name_prefix="reminders") as pool:
        while wanted > 0 and not run.stopped and run.seconds_left() > 0:
            batch = db.call(
                "planbus_claim_due_reminders",
                p_limit=min(BATCH_SIZE, wanted),
                p_lease_seconds=lease,
                p_max_attempts=settings.reminder_max_attempts,
            )
            if not batch:
                break
            wanted -= len(batch)
            # Every reminder of the batch is handled before a worker's error is re-raised: a cancelled
            # task would leave its reminder claimed until the lease ran out.
            futures = [pool.submit(run.deliver, reminder) for reminder in batch]
            wait(futures)
            for future in futures:
                future.result()
    log.info("reminders delivered", extra={"fields": {**run.counts.as_json(), "via": sender.via}})
    return run.counts


class _Run:
    """One call's shared state: the deadline, the counts, and whether the call has stopped sending."""

    def __init__(
        self, db: Database, sender: Sender, budget: SendBudget | None, clock: Clock, settings: Settings
    ) -> None:
        self.db = db
        self.sender = sender
        self.budget = budget
        self.clock = clock
        self.settings = settings
        self.deadline = clock.now() + timedelta(seconds=settings.function_budget_seconds)
        self.counts = ReminderCounts()
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._resume_after = 0.0

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    def seconds_left(self) -> float:
        return (self.deadline - self.clock.now()).total_seconds()

    def count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                setattr(self.counts, name, getattr(self.counts, name) + n)

    def stop(self, reason: str, resume_after: float = 0.0) -> None:
        with self._lock:
            self._resume_after = max(self._resume_after, resume_after)
            self._stop_reason = self._stop_reason or reason

    def deliver(self, reminder: dict[str, Any]) -> None:
        """Send one claimed reminder and record what happened; never leaves it claimed on purpose."""
        chat_id = int(reminder["chat_id"])
        with logs.bind(reminder_id=reminder["id"], attempt=reminder["attempt"]):
            send_id: int | None = None
            if self._stop_reason is None:
                left = self.seconds_left()
                granted = left > 0
                if granted and self.budget is not None:
                    send_id = self.budget.acquire(chat_id, within=min(left, MAX_SLOT_WAIT_SECONDS))
                    granted = send_id is not None
                if not granted:
                    reason = (
                        "the call's time budget ran out before it was sent"
                        if left <= MAX_SLOT_WAIT_SECONDS
                        else f"no send slot within {MAX_SLOT_WAIT_SECONDS:g} s (the bot's limits are taken, "
                        "or paused after a 429)"
                    )
                    # Stop claiming too: reminders claimed now could only be handed back unsent. A 429
                    # another worker of this call met meanwhile gives the reason and the time to resume.
                    self.stop(reason)
                    self.release(reminder, self._resume_after, self._stop_reason or reason)
                    return
            self.send(reminder, chat_id, send_id)

    def send(self, reminder: dict[str, Any], chat_id: int, send_id: int | None) -> None:
        # Checked again after the wait: another worker may have been told to back off meanwhile.
        if self._stop_reason is not None:
            self.send_over(send_id)
            self.release(reminder, self._resume_after, self._stop_reason)
            return
        text = reminder_message(reminder)
        try:
            try:
                self.sender.send(chat_id, text)
            finally:
                # Whatever came of it, before it is recorded: once it is, the chat's next reminder can be
                # claimed, and its send must wait the chat interval from now.
                self.send_over(send_id)
        except DeliveryError as exc:
            self.record_failure(reminder, exc)
            return
        except ConfigurationError as exc:
            self.stop(str(exc))
            self.release(reminder, 0.0, str(exc))
            raise
        answer = self.db.call(
            "planbus_mark_reminder_sent",
            p_reminder_id=reminder["id"],
            p_attempt=reminder["attempt"],
            p_via=self.sender.via,
            p_message=text,
        )
        if not answer.get("recorded"):
            log.warning("reminder delivered, but its claim was gone: %s", answer.get("reason"))
        self.count(sent=1)

    def send_over(self, send_id: int | None) -> None:
        if self.budget is not None and send_id is not None:
            self.budget.done(send_id)

    def record_failure(self, reminder: dict[str, Any], exc: DeliveryError) -> None:
        if exc.retry_after is not None:
            if self.budget is not None:
                self.budget.pause(exc.retry_after)
            self.stop(f"Telegram asked to back off: {exc}", exc.retry_after)
            answer = self.retry(reminder, exc.retry_after, str(exc), counts_as_attempt=False)
        elif exc.permanent:
            answer = self.db.call(
                "planbus_fail_reminder",
                p_reminder_id=reminder["id"],
                p_attempt=reminder["attempt"],
                p_error=str(exc),
            )
        else:
            answer = self.retry(
                reminder, retry_delay(int(reminder["attempt"])), str(exc), counts_as_attempt=True
            )
        if not answer.get("recorded"):
            log.warning("delivery failed and the claim was gone: %s", answer.get("reason"))
            return
        outcome = "failed" if answer.get("status") == "failed" else "retried"
        log.warning("reminder not delivered (%s): %s", outcome, exc)
        self.count(**{outcome: 1})

    def release(self, reminder: dict[str, Any], delay: float, reason: str) -> None:
        """Give a claimed reminder back unsent, without using up an attempt."""
        answer = self.retry(reminder, delay, f"not sent: {reason}", counts_as_attempt=False)
        if answer.get("recorded"):
            self.count(deferred=1)

    def retry(self, reminder: dict[str, Any], delay: float, error: str, *, counts_as_attempt: bool) -> Any:
        return self.db.call(
            "planbus_retry_reminder",
            p_reminder_id=reminder["id"],
            p_attempt=reminder["attempt"],
            p_delay_seconds=delay,
            p_error=error,
            p_max_attempts=self.settings.reminder_max_attempts,
            p_counts_as_attempt=counts_as_attempt,
        )
