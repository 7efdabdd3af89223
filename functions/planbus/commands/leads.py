"""`planbus leads`: show or change the lead statuses that close a lead.

    planbus leads                              the closed statuses in force
    planbus leads --closed won,lost,archived   these statuses close a lead
    planbus leads --closed none                no status closes a lead

When a lead's status changes to a closed one, the database cancels its scheduled reminders in the same
transaction (migrations/0012); this only reads and stores the setting, through DATABASE_URL or the
Supabase REST API.
"""

from __future__ import annotations

import argparse
from typing import Any

from planbus.db import connect
from planbus.settings import get_settings

NONE = "none"


def register(sub: Any) -> None:
    parser = sub.add_parser("leads", help="show or change the lead statuses that stop a lead's reminders")
    parser.add_argument(
        "--closed",
        type=closed_statuses,
        metavar="STATUS,...|none",
        help="lead statuses that close a lead and cancel its scheduled reminders ('none': no status does)",
    )
    parser.set_defaults(run=run)


def closed_statuses(text: str) -> list[str]:
    """argparse type: comma-separated statuses (lower case, trimmed, each once), or `none` (empty)."""
    if text.strip().lower() == NONE:
        return []
    statuses = [part.strip().lower() for part in text.split(",")]
    if not all(statuses):
        raise argparse.ArgumentTypeError(f"an empty status in {text!r}: give STATUS,... or '{NONE}'")
    return list(dict.fromkeys(statuses))


def run(args: argparse.Namespace) -> int:
    db = connect(get_settings())
    try:
        if args.closed is not None:
            answer = db.call("planbus_set_closed_lead_statuses", p_statuses=args.closed)
        else:
            answer = db.call("planbus_closed_lead_statuses")
    finally:
        db.close()
    print(describe(answer))
    return 0


def describe(answer: dict[str, Any]) -> str:
    """The human-readable line for planbus_closed_lead_statuses's answer."""
    statuses = answer.get("statuses") or []
    line = "closed lead statuses (scheduled reminders are cancelled): " + (", ".join(statuses) or NONE)
    if answer.get("stored") is None:
        line += " (default)"
    return line
