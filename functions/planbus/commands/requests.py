"""`planbus requests`: one request of any kind, for an operator.

    planbus requests show ID                      the row, its error history, reminders and deliveries
    planbus requests retry ID [--note TEXT]       a failed request back to pending, attempts reset
    planbus requests list [--status failed] [--since 1d] [--kind K] [--limit N] [--json]

Each verb is one SQL function (planbus_request_show, planbus_retry_request, planbus_list_requests) called
through the database port, so it works against DATABASE_URL and over the Supabase REST API alike. In
cloud-tasks mode a retried request's first attempt is enqueued at once; otherwise the sweeper
(reset_stale_requests) picks it up as it picks up a request whose webhook was lost.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from planbus.db import Database, connect
from planbus.errors import ConfigurationError
from planbus.kinds import KINDS, kind_named
from planbus.settings import Settings, get_settings

STATUSES = ("pending", "processing", "completed", "failed")
_SPAN = re.compile(r"(\d{1,6})\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(sub: Any) -> None:
    parser = sub.add_parser("requests", help="show, retry or list requests of any kind")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    show = verbs.add_parser("show", help="a request's row, error history, reminders and deliveries")
    show.add_argument("id", type=request_id, metavar="ID")
    show.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    show.set_defaults(run=run_show)

    retry = verbs.add_parser("retry", help="put a failed request back to pending with a fresh attempt budget")
    retry.add_argument("id", type=request_id, metavar="ID")
    retry.add_argument("--note", help="why, kept in the request's error history")
    retry.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    retry.set_defaults(run=run_retry)

    listing = verbs.add_parser("list", help="requests in one status changed within a time span")
    listing.add_argument("--status", choices=STATUSES, default="failed", help="default: failed")
    listing.add_argument(
        "--since",
        type=span,
        default=timedelta(days=1),
        metavar="SPAN",
        help="how far back: 90s, 30m, 6h, 1d, 2w (default 1d)",
    )
    listing.add_argument("--kind", type=kind_name, help=f"one kind only ({', '.join(k.name for k in KINDS)})")
    listing.add_argument("--limit", type=limit, default=100, help="at most this many rows, 1 to 1000")
    listing.add_argument("--json", action="store_true", help="print the rows as a JSON array")
    listing.set_defaults(run=run_list)


def request_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a request id (a UUID)") from None


def span(text: str) -> timedelta:
    """`90s`, `30m`, `6h`, `1d`, `2w` (or a sum: `1d12h`)."""
    compact = text.strip().lower()
    parts = _SPAN.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact.replace(" ", ""):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time span: give e.g. 90s, 30m, 6h, 1d or 2w")
    return sum((timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())


def kind_name(text: str) -> str:
    try:
        return kind_named(text).name
    except KeyError as exc:
        raise argparse.ArgumentTypeError(str(exc.args[0])) from None


def limit(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to 1000")
    return int(text)


def _dump(answer: Any) -> str:
    return json.dumps(answer, indent=2, sort_keys=True, default=str)


def run_show(args: argparse.Namespace) -> int:
    db = connect(get_settings())
    try:
        answer = db.call("planbus_request_show", p_request_id=args.id)
    finally:
        db.close()
    if not answer["found"]:
        print(f"planbus requests show: no request {args.id} in any kind", file=sys.stderr)
        return 1
    print(_dump(answer) if args.json else render_show(answer))
    return 0


def run_retry(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = connect(settings)
    try:
        answer = db.call("planbus_retry_request", p_request_id=args.id, p_note=args.note)
        if not answer["retried"]:
            print(f"planbus requests retry: {answer['reason']}", file=sys.stderr)
            return 1
        answer["dispatch"] = dispatch(db, settings, answer["kind"], args.id)
    finally:
        db.close()
    print(
        _dump(answer)
        if args.json
        else f"{answer['kind']} request {args.id} is pending again (attempts "
        f"reset to 0); {answer['dispatch']}"
    )
    return 0


def dispatch(db: Database, settings: Settings, kind: str, request: str) -> str:
    """Start the retried request's first attempt: its task in cloud-tasks mode, else the sweeper's."""
    sweeper = (
        "the sweeper (reset_stale_requests) picks it up on its first run after "
        f"LOST_WEBHOOK_SECONDS ({settings.lost_webhook_seconds} s)"
    )
    if settings.dispatch_mode != "cloud-tasks":
        return sweeper
    from planbus import bootstrap
    from planbus.dispatch import TaskRequest
    from planbus.services.dispatch import enqueue_attempt
    from planbus.state import RequestStates

    try:
        queue = bootstrap.task_queue(settings)
        worker = kind_named(kind).worker_url(settings)
    except ConfigurationError as exc:
        return f"not enqueued ({exc}); {sweeper}"
    assert queue is not None
    handed = enqueue_attempt(RequestStates(db, kind), queue, TaskRequest(kind, request, 1, worker))
    if handed.handed == "not_queued":
        return f"not enqueued ({handed.outcome.reason})"
    return f"attempt 1 {handed.handed.replace('_', ' ')}"


def run_list(args: argparse.Namespace) -> int:
    since = datetime.now(UTC) - args.since
    db = connect(get_settings())
    try:
        rows = db.call(
            "planbus_list_requests",
            p_status=args.status,
            p_since=since.isoformat(),
            p_kind=args.kind,
            p_limit=args.limit,
        )
    finally:
        db.close()
    print(_dump(rows) if args.json else render_list(rows, args.status, since))
    return 0


def render_show(answer: dict[str, Any]) -> str:
    row = answer["request"]
    lines = [
        f"{answer['kind']} request {row['id']}",
        f"  status      {row['status']}   attempts {row['attempts']}   lead {row['lead_id']}",
        f"  created     {row['created_at']}   updated {row['updated_at']}",
        f"  run after   {row['run_after']}   lease until {row['lease_expires_at'] or '-'}",
    ]
    if row.get("error"):
        lines.append(f"  error       {row['error']}")
    lines += ["", f"error history ({len(answer['errors'])})"]
    for error in answer["errors"]:
        retry = f" -> retry at {error['retry_at']} ({error['retry_basis']})" if error.get("retry_at") else ""
        lines.append(f"  {error['at']}  attempt {error['attempt']}: {error['message']}{retry}")
    lines += ["", f"reminders ({len(answer['reminders'])})"]
    for reminder in answer["reminders"]:
        lines.append(
            f"  step {reminder['step_index']:>2}  {reminder['status']:<10} due {reminder['due_at']}"
            + (f"  ({reminder['error']})" if reminder.get("error") else "")
        )
    lines += ["", f"deliveries ({len(answer['deliveries'])})"]
    for delivery in answer["deliveries"]:
        what = delivery.get("cause") or delivery.get("outcome") or _answered(delivery)
        detail = delivery.get("detail") or delivery.get("error_msg")
        lines.append(
            f"  {delivery['created_at']}  {delivery['channel']:<11} {what}"
            + (f": {detail}" if detail else "")
        )
    return "\n".join(lines)


def _answered(delivery: dict[str, Any]) -> str:
    if delivery.get("status_code") is not None:
        return f"HTTP {delivery['status_code']}"
    return "sent (no answer recorded)"


def render_list(rows: list[dict[str, Any]], status: str, since: datetime) -> str:
    if not rows:
        return f"no {status} requests since {since.isoformat(timespec='seconds')}"
    lines = [f"{len(rows)} {status} request(s) since {since.isoformat(timespec='seconds')}"]
    for row in rows:
        line = f"  {row['updated_at']}  {row['kind']:<6} {row['id']}  attempts {row['attempts']}"
        if row.get("error"):
            line += f"  {row['error']}"
        lines.append(line)
    return "\n".join(lines)
