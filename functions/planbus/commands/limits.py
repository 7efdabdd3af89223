"""`planbus limits`: show or change the daily plan-request limit per Mini App user.

    planbus limits                          the limit in force
    planbus limits --daily 50               at most 50 plan requests per user per UTC day
    planbus limits --daily unlimited        no limit
    planbus limits --user 279058397         also that user's requests today

The database enforces the limit on every insert by a Mini App user (migrations/0007); this only reads and
stores the setting, through DATABASE_URL or the Supabase REST API.
"""

from __future__ import annotations

import argparse
from typing import Any

from planbus.db import connect
from planbus.settings import get_settings

UNLIMITED = "unlimited"
# `--daily unlimited` parses to None, so "not given" needs a value of its own.
_NOT_GIVEN: Any = object()


def register(sub: Any) -> None:
    parser = sub.add_parser("limits", help="show or change the daily plan-request limit per user")
    parser.add_argument(
        "--daily",
        type=daily_limit,
        metavar="N|unlimited",
        default=_NOT_GIVEN,
        help="plan requests one user may make per UTC day (0 pauses them, 'unlimited' lifts the limit)",
    )
    parser.add_argument("--user", type=int, metavar="TELEGRAM_ID", help="show this user's requests today")
    parser.set_defaults(run=run)


def daily_limit(text: str) -> int | None:
    """argparse type: a non-negative count, or `unlimited` (None)."""
    if text.strip().lower() == UNLIMITED:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or '{UNLIMITED}': {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a daily limit cannot be negative: {value}")
    return value


def run(args: argparse.Namespace) -> int:
    db = connect(get_settings())
    try:
        if args.daily is not _NOT_GIVEN:
            db.call("planbus_set_daily_plan_request_limit", p_limit=args.daily)
        params = {} if args.user is None else {"p_telegram_id": args.user}
        answer = db.call("planbus_daily_plan_request_limit", **params)
    finally:
        db.close()
    print(describe(answer))
    return 0


def describe(answer: dict[str, Any]) -> str:
    """Human-readable lines for planbus_daily_plan_request_limit's answer."""
    limit = answer.get("limit")
    lines = [f"daily plan requests per user (UTC day): {UNLIMITED if limit is None else limit}"]
    if answer.get("stored") is None:
        lines[0] += " (default)"
    if "used_today" in answer:
        of = "" if limit is None else f" of {limit}"
        lines.append(f"user {answer['telegram_id']}: {answer['used_today']}{of} used today")
    return "\n".join(lines)
