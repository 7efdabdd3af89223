"""`planbus status`: the queue's health from `planbus_status()`, for a terminal or (`--json`) for scripts.

The numbers come from one SQL function called through the database port, so the command works against
any DATABASE_URL and, with only SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY set, over the REST API.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from planbus.db import connect
from planbus.settings import get_settings


def register(sub: Any) -> None:
    parser = sub.add_parser("status", help="queue depth, oldest pending age, stale rows, recent failures")
    parser.add_argument("--json", action="store_true", help="print the raw status object as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    database = connect(get_settings())
    try:
        status = database.call("planbus_status")
    finally:
        database.close()
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 0


def age(seconds: float | None) -> str:
    """`45 s`, `3 m 05 s`, `2 h 10 m`, `3 d 4 h`."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f} s"
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} m"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def limit_text(limit: dict[str, Any]) -> str:
    """The daily limit in force, and where it comes from when that is not obvious."""
    stored = limit.get("stored")
    if limit["unlimited"]:
        return "unlimited" + (" (not set)" if stored is None else "")
    if stored is None:
        return f"{limit['limit']} (the default; not set)"
    if str(stored).strip() != str(limit["limit"]):
        return f"{limit['limit']} (the default, since the stored value {stored!r} is not a number)"
    return str(limit["limit"])


def render(status: dict[str, Any]) -> str:
    """The status object as a few aligned sections."""
    requests, failures = status["requests"], status["failures_24h"]
    reminders = status["reminders"]
    lines = [f"planbus status at {status['generated_at']}", "", "plan requests"]
    pending = f"  {'pending':<11}{requests['pending']:>7}"
    if requests["pending"]:
        pending += f"   oldest {age(requests['oldest_pending_seconds'])} ({requests['oldest_pending_id']})"
        if requests["waiting_retry"]:
            pending += f", {requests['waiting_retry']} waiting to retry"
    lines.append(pending)
    lines.append(
        f"  {'processing':<11}{requests['processing']:>7}   stale (lease expired): {requests['stale']}"
    )
    lines.append(f"  {'completed':<11}{requests['completed']:>7}")
    lines.append(f"  {'failed':<11}{requests['failed']:>7}")
    lines.append(f"  created in the last 24 h: {requests['created_24h']}")
    lines.append(
        f"  daily plan-request limit per user: {limit_text(status['limits']['daily_plan_request_limit'])}"
    )
    lines += [
        "",
        f"failures in the last 24 h: {failures['failed']} request(s) failed, "
        f"{failures['errors']} attempt error(s)",
    ]
    for item in failures["top_errors"]:
        lines.append(f"  {item['count']:>5}  {item['error']}")
    lines += ["", "reminders"]
    scheduled = f"  {'scheduled':<11}{reminders['scheduled']:>7}   due now: {reminders['due']}"
    if reminders["due"]:
        scheduled += f" (oldest due {age(reminders['oldest_due_seconds'])} ago)"
    lines.append(scheduled)
    lines.append(f"  {'sending':<11}{reminders['sending']:>7}   stuck (lease expired): {reminders['stuck']}")
    lines.append(f"  {'sent':<11}{reminders['sent']:>7}   in the last 24 h: {reminders['sent_24h']}")
    lines.append(f"  {'cancelled':<11}{reminders['cancelled']:>7}")
    lines.append(f"  {'failed':<11}{reminders['failed']:>7}   in the last 24 h: {reminders['failed_24h']}")
    return "\n".join(lines)
