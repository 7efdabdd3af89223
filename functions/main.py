"""Cloud Run functions entry points: one function per deployed target, each thin.

Each validates its input, calls one use case, and maps the outcome to the contract's JSON answer
(contract section 5). No SQL and no LLM calls here. Every request kind has the same two targets, one line
each over shared code: its webhook (`handle_<kind>_request`) and its worker (`process_<kind>_request`).
Infrastructure failures are mapped in one place (`_serve`): an unconfigured function or an unreachable
database is 503, a statement the database refused is 500; everything else is an answer of the use case.

Cold starts are paid per target: importing this module loads only flask, functions_framework and the
light planbus modules every target shares (http, logs, errors). pydantic, the settings, the request kind a
target serves (and no other), the database adapters, the generators, Telegram and the token signer are
imported by the code path that uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flask
import functions_framework

from planbus import http, logs
from planbus.errors import ConfigurationError, DatabaseError, DatabaseUnavailable

if TYPE_CHECKING:
    from planbus.calls import ScheduledCall
    from planbus.dispatch import TaskQueue
    from planbus.kinds import AnyKind
    from planbus.services.outcomes import RequestOutcome
    from planbus.settings import Settings

Response = tuple[dict[str, Any], int]

WEBHOOK_MAX_BODY = 256 * 1024
WORKER_MAX_BODY = 4 * 1024
SCHEDULED_MAX_BODY = 4 * 1024
TELEGRAM_AUTH_MAX_BODY = 64 * 1024

# The Mini App calls telegram_auth from the browser: any origin may, since the credential is the signed
# initData in the body and no cookie is involved.
TELEGRAM_AUTH_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "3600",
}


@functions_framework.http
def handle_plan_request(request: flask.Request) -> Response:
    """Database webhook on plan_requests (see `_webhook`)."""
    from planbus.kinds.plans import PLAN

    return _webhook(PLAN, request)


@functions_framework.http
def process_plan_request(request: flask.Request) -> Response:
    """Worker for one plan request (see `_worker`)."""
    from planbus.kinds.plans import PLAN

    return _worker(PLAN, request)


@functions_framework.http
def handle_draft_request(request: flask.Request) -> Response:
    """Database webhook on draft_requests (see `_webhook`)."""
    from planbus.kinds.drafts import DRAFT

    return _webhook(DRAFT, request)


@functions_framework.http
def process_draft_request(request: flask.Request) -> Response:
    """Worker for one draft request (see `_worker`)."""
    from planbus.kinds.drafts import DRAFT

    return _worker(DRAFT, request)


def _webhook(kind: AnyKind, request: flask.Request) -> Response:
    """A database webhook on the kind's table. DISPATCH=cloud-tasks: enqueue the inserted row's attempt for
    the kind's worker and answer at once (`queued`, or `skipped` for a duplicate, a row no task would
    claim, or a queue that refused: the sweeper enqueues it later). DISPATCH=inline: claim the row,
    generate its result and write it here (`completed`, `failed`, `skipped`).

    200 {request_id, outcome, reason} for every event it understands (`skipped` for anything but an INSERT
    on the kind's table); 401 without the secret; 400 for a body that is not a webhook payload; 503 when
    the database is unreachable or the function is not configured.
    """

    def work() -> Response:
        from pydantic import ValidationError

        from planbus import bootstrap
        from planbus.models import WebhookPayload, describe_errors
        from planbus.services import requests

        settings = bootstrap.settings()
        refusal = _refusal(kind.handle_target, request, settings=settings)
        if refusal:
            return refusal
        try:
            event = WebhookPayload.for_table(http.read_body(request, WEBHOOK_MAX_BODY), kind.table)
        except ValidationError as exc:
            return _error(400, f"not a database webhook payload: {describe_errors(exc)}")
        request_id = event.request_id_on(kind.table)
        if not event.is_insert_on(kind.table) or request_id is None:
            return requests.skipped_event(kind, event).as_json(), 200
        queue = bootstrap.task_queue(settings)
        if queue is not None:
            from planbus.services.dispatch import enqueue_request

            outcome = enqueue_request(kind, bootstrap.database(), queue, request_id, settings=settings)
        else:
            outcome = _process(kind, request_id, settings, queue=None)
        return outcome.as_json(), 200

    return _serve(kind.handle_target, request, work)


def _worker(kind: AnyKind, request: flask.Request) -> Response:
    """POST {"request_id": "<uuid>"}: claim the request, generate its result, complete or fail it; with
    Cloud Tasks, a retryable failure enqueues the next attempt at its run_after.

    200 {request_id, outcome, reason} for every outcome that is data (completed, failed, skipped); 401
    without the secret; 400 for another body; 5xx only for infrastructure, so a task queue retries
    exactly those.
    """

    def work() -> Response:
        from pydantic import ValidationError

        from planbus import bootstrap
        from planbus.models import WorkerCall, describe_errors

        settings = bootstrap.settings()
        refusal = _refusal(kind.process_target, request, settings=settings)
        if refusal:
            return refusal
        try:
            call = WorkerCall.model_validate_json(http.read_body(request, WORKER_MAX_BODY))
        except ValidationError as exc:
            return _error(400, f'body must be {{"request_id": "<uuid>"}}: {describe_errors(exc)}')
        outcome = _process(kind, call.request_id, settings, queue=bootstrap.task_queue(settings))
        return outcome.as_json(), 200

    return _serve(kind.process_target, request, work)


def _process(
    kind: AnyKind, request_id: str, settings: Settings, *, queue: TaskQueue | None
) -> RequestOutcome:
    """Claim, generate and complete (or fail) one request here, with the kind's generator."""
    from planbus import bootstrap
    from planbus.clock import SystemClock
    from planbus.services.requests import process_request

    return process_request(
        kind,
        bootstrap.database(),
        bootstrap.generator(kind, settings),
        SystemClock(),
        request_id,
        settings=settings,
        queue=queue,
    )


@functions_framework.http
def send_due_reminders(request: flask.Request) -> Response:
    """Scheduled: deliver due reminders over Telegram (or to the local outbox without a bot token).

    200 {sent, failed, retried, deferred}; 401 without the secret; 400 for a body that is
    not empty or {"limit": n}; 503 when the database is unreachable or the function is not configured.
    """

    def run(settings: Settings, call: ScheduledCall) -> dict[str, Any]:
        from planbus import bootstrap, telegram
        from planbus.clock import SystemClock
        from planbus.services import reminders

        sender = telegram.make_sender(settings)
        try:
            counts = reminders.send_due_reminders(
                bootstrap.database(), sender, SystemClock(), settings=settings, limit=call.limit
            )
        finally:
            sender.close()
        return counts.as_json()

    return _scheduled("send_due_reminders", request, run)


@functions_framework.http
def reset_stale_requests(request: flask.Request) -> Response:
    """Scheduled, over every request kind: reset expired leases, prune past retention, process requests
    whose webhook was lost.

    200 {reset, failed, redispatched, outcomes, pruned, kinds}; otherwise as send_due_reminders.
    """

    def run(settings: Settings, call: ScheduledCall) -> dict[str, Any]:
        from planbus import bootstrap
        from planbus.clock import SystemClock
        from planbus.kinds import KINDS
        from planbus.services import recovery

        counts = recovery.reset_stale_requests(
            KINDS,
            bootstrap.database(),
            SystemClock(),
            generator_for=lambda kind: bootstrap.generator(kind, settings),
            settings=settings,
            queue=bootstrap.task_queue(settings),
            limit=call.limit,
        )
        return counts.as_json()

    return _scheduled("reset_stale_requests", request, run)


@functions_framework.http
def telegram_auth(request: flask.Request) -> tuple[dict[str, Any] | str, int, dict[str, str]]:
    """Mini App sign-in: POST {"init_data": ...} -> 200 {access_token, expires_at, telegram_id}, else 401.

    No webhook secret: the caller proves who it is with initData signed by Telegram for this bot.
    """
    if request.method == "OPTIONS":
        http.leave_unread(request)
        return "", 204, TELEGRAM_AUTH_CORS

    def work() -> Response:
        from pydantic import ValidationError

        from planbus import bootstrap
        from planbus.clock import SystemClock
        from planbus.initdata import InvalidInitData
        from planbus.services.auth import TelegramAuthRequest, sign_in_with_telegram

        refusal = _refusal("telegram_auth", request, settings=None)
        if refusal:
            return refusal
        settings = bootstrap.settings()
        try:
            body = TelegramAuthRequest.model_validate_json(http.read_body(request, TELEGRAM_AUTH_MAX_BODY))
            token = sign_in_with_telegram(
                bootstrap.database(), SystemClock(), body.init_data, settings=settings
            )
        except ValidationError:
            return _error(400, 'body must be {"init_data": "<Telegram WebApp initData>"}')
        except InvalidInitData as exc:
            logs.get_logger("telegram_auth").warning("sign-in refused: %s", exc)
            return _error(401, f"invalid initData: {exc}")
        with logs.bind(telegram_id=token.telegram_id):
            logs.get_logger("telegram_auth").info(
                "signed in", extra={"fields": {"user_id": token.user_id, "new_user": token.created}}
            )
        return token.as_json(), 200

    body, status = _serve("telegram_auth", request, work)
    return body, status, TELEGRAM_AUTH_CORS


def _scheduled(
    name: str, request: flask.Request, run: Callable[[Settings, ScheduledCall], dict[str, Any]]
) -> Response:
    """What both scheduled functions share: the secret, POST, and the optional {"limit": n} body."""

    def work() -> Response:
        from pydantic import ValidationError

        from planbus import bootstrap
        from planbus.calls import ScheduledCall

        settings = bootstrap.settings()
        refusal = _refusal(name, request, settings=settings)
        if refusal:
            return refusal
        raw = http.read_body(request, SCHEDULED_MAX_BODY)
        try:
            call = ScheduledCall.model_validate_json(raw) if raw.strip() else ScheduledCall()
        except ValidationError as exc:
            from planbus.models import describe_errors

            return _error(400, f'body must be empty or {{"limit": n}} (1 to 10000): {describe_errors(exc)}')
        return run(settings, call), 200

    return _serve(name, request, work)


def _refusal(name: str, request: flask.Request, *, settings: Settings | None) -> Response | None:
    """401 without the shared secret (when `settings` are given to check it), 405 unless POST; None when
    the request may go on (its body is then read with `http.read_body`, which refuses one too large)."""
    if settings is not None and not http.is_authorized(request, settings):
        # The path only, never the query string (`?token=` may carry the presented secret).
        logs.get_logger(name).warning(
            "refused: missing or wrong webhook secret",
            extra={"fields": {"caller": http.caller_address(request), "path": request.path}},
        )
        return _error(401, "missing or wrong webhook secret")
    if request.method != "POST":
        return _error(405, f"{name} takes POST")
    return None


def _error(status: int, message: str) -> Response:
    return {"error": message}, status


def _serve(name: str, request: flask.Request, work: Callable[[], Response]) -> Response:
    """Run an entry point's work with the request's log context, mapping infrastructure failures."""
    log = logs.get_logger(name)
    with logs.bind(**http.log_fields(request)):
        try:
            return work()
        except http.BodyTooLarge as exc:
            return http.error(400, str(exc))
        except ConfigurationError as exc:
            log.error("%s is not configured: %s", name, exc)
            return _error(503, str(exc))
        except DatabaseUnavailable as exc:
            log.error("database unavailable: %s", exc)
            return _error(503, "database unavailable")
        except DatabaseError as exc:
            log.error("database refused %s (SQLSTATE %s): %s", name, exc.sqlstate, exc)
            return _error(500, "database error")
        finally:
            http.leave_unread(request)
