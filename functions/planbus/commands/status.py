"""`planbus status`: the queue's health from `planbus_status()`, for a terminal or (`--json`) for scripts.

The numbers come from one SQL function called through the database port, so the command works against
any DATABASE_URL and, with only SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY set, over the REST API.
`--check` is for an uptime check: it exits 1, saying why on stderr, while webhook deliveries are failing
or a request has waited too long.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from planbus.db import connect
from planbus.settings import get_settings


def register(sub: Any) -> None:
    parser = sub.add_parser("status", help="queue depth, oldest pending age, stale rows, recent failures")
    parser.add_argument("--json", action="store_true", help="print the raw status object as JSON")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 (why on stderr) when deliveries are failing or the oldest pending request is older "
        "than twice LOST_WEBHOOK_SECONDS",
    )
    parser.add_argument(
        "--max-failures",
        type=_count,
        default=0,
        metavar="N",
        help="with --check: failed deliveries in the last 5 minutes that still pass (default 0)",
    )
    parser.set_defaults(run=run)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a count cannot be negative")
    return value


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    database = connect(settings)
    try:
        status = database.call("planbus_status")
    finally:
        database.close()
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    if not args.check:
        return 0
    problems = check(
        status, max_failures=args.max_failures, max_pending_seconds=2 * settings.lost_webhook_seconds
    )
    for problem in problems:
        print(f"planbus status --check: {problem}", file=sys.stderr)
    return 1 if problems else 0


def check(status: dict[str, Any], *, max_failures: int, max_pending_seconds: float) -> list[str]:
    """What makes an uptime check fail: more than `max_failures` failed deliveries in the last 5 minutes,
    or a pending request of any kind that has been runnable for more than `max_pending_seconds` (a retry
    waiting for its backoff is not late). Empty when all is well."""
    problems = []
    deliveries = status.get("deliveries")
    if deliveries is not None and deliveries["last_5m"] > max_failures:
        last = deliveries.get("last_failure") or {}
        problems.append(
            f"{deliveries['last_5m']} webhook deliveries failed in the last 5 minutes "
            f"(allowed {max_failures}); the last: {last.get('cause')} on {last.get('channel')} "
            f"for {last.get('kind')} request {last.get('request_id')}"
        )
    # A database before migration 0013 has only the plan kind's numbers.
    pending = status["pending_by_kind"] if "pending_by_kind" in status else {"plan": status["requests"]}
    for kind, counts in sorted(pending.items()):
        oldest = counts.get("oldest_due_seconds", counts.get("oldest_pending_seconds"))
        if oldest is not None and oldest > max_pending_seconds:
            problems.append(
                f"the oldest pending {kind} request has waited {age(oldest)} "
                f"(more than twice LOST_WEBHOOK_SECONDS: {age(max_pending_seconds)})"
            )
    return problems


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
    if "pending_by_kind" in status:
        lines += ["", "pending by kind"]
        for kind, counts in sorted(status["pending_by_kind"].items()):
            line = f"  {kind:<11}{counts['pending']:>7}"
            if counts["pending"]:
                line += f"   oldest {age(counts['oldest_pending_seconds'])}"
            lines.append(line)
    if "deliveries" in status:
        lines += ["", *render_deliveries(status["deliveries"])]
    return "\n".join(lines)


CAUSES = {
    "refused_401": "refused (401)",
    "server_error": "server error (5xx)",
    "client_error": "other non-2xx",
    "timeout": "timeout",
    "connection_error": "connection error",
    "enqueue_failed": "enqueue failed",
}


def render_deliveries(deliveries: dict[str, Any]) -> list[str]:
    """Webhook deliveries without a 2xx, by cause, in the last hour and day; the sweeper's recoveries."""
    hour, day = deliveries["last_hour"], deliveries["last_day"]
    lines = [f"{'webhook deliveries without a 2xx':<34}{'last hour':>10}{'last day':>10}"]
    for cause, label in CAUSES.items():
        lines.append(f"  {label:<32}{hour['causes'].get(cause, 0):>10}{day['causes'].get(cause, 0):>10}")
    lines.append(f"  {'total':<32}{hour['total']:>10}{day['total']:>10}")
    if day["kinds"]:
        by_kind = ", ".join(f"{kind} {sum(causes.values())}" for kind, causes in sorted(day["kinds"].items()))
        lines.append(f"  by kind (last day): {by_kind}")
    last = deliveries.get("last_failure")
    if last:
        lines.append(
            f"  in the last 5 min: {deliveries['last_5m']}; the last at {deliveries['last_failure_at']}: "
            f"{last['cause']} ({last['channel']}) for {last['kind']} request {last['request_id']}"
        )
        if last.get("detail"):
            lines.append(f"    {last['detail']}")
    if not deliveries["pg_net_responses"]:
        lines.append("  (no pg_net here: only enqueue failures and relay give-ups are counted)")
    recovered = deliveries["recovered_lost_24h"]
    line = f"recovered as lost by the sweeper in the last 24 h: {recovered['total']}"
    if recovered["kinds"]:
        line += " (" + ", ".join(f"{kind} {n}" for kind, n in sorted(recovered["kinds"].items())) + ")"
    return [*lines, line]
