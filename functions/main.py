"""Cloud Run functions entry points: one function per deployed target, each thin.

Each validates its input, calls one use case, and maps the outcome to the contract's JSON answer
(contract section 5). No SQL and no LLM calls here; heavy libraries are imported where they are used.
Infrastructure failures are mapped in one place (`_serve`): an unconfigured function or an unreachable
database is 503, a statement the database refused is 500; everything else is an answer of the use case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
import functions_framework
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planbus import bootstrap, http, llm, logs, telegram
from planbus.clock import SystemClock
from planbus.errors import ConfigurationError, DatabaseError, DatabaseUnavailable
from planbus.http import Response
from planbus.initdata import InvalidInitData
from planbus.models import WebhookPayload, describe_errors
from planbus.services import recovery, reminders
from planbus.services.auth import TelegramAuthRequest, sign_in_with_telegram
from planbus.services.plan_requests import process_plan_request
from planbus.settings import Settings

PLAN_REQUEST_MAX_BODY = 256 * 1024
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
    """Database webhook on plan_requests: claim the inserted row, generate its plan, write it.

    200 {request_id, outcome, reason} for every event it understands (`skipped` for anything but an INSERT
    on public.plan_requests); 401 without the secret; 400 for a body that is not a webhook payload; 503
    when the database is unreachable or the function is not configured.
    """

    def work() -> Response:
        settings = bootstrap.settings()
        refusal = _refusal("handle_plan_request", request, settings=settings)
        if refusal:
            return refusal
        try:
            event = WebhookPayload.model_validate_json(http.read_body(request, PLAN_REQUEST_MAX_BODY))
        except ValidationError as exc:
            return http.error(400, f"not a database webhook payload: {describe_errors(exc)}")
        request_id = event.request_id
        if not event.is_plan_request_insert or request_id is None:
            reason = (
                f"not an INSERT on public.plan_requests: {event.type} on {event.schema_name}.{event.table}"
            )
            return {"request_id": request_id, "outcome": "skipped", "reason": reason[:300]}, 200
        outcome = process_plan_request(
            bootstrap.database(), llm.generator_for(settings), SystemClock(), request_id, settings=settings
        )
        return outcome.as_json(), 200

    return _serve("handle_plan_request", request, work)


class ScheduledCall(BaseModel):
    """The optional body of a scheduled call: at most how many rows this call may take on."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, ge=1, le=10_000)


@functions_framework.http
def send_due_reminders(request: flask.Request) -> Response:
    """Scheduled: deliver due reminders over Telegram (or to the local outbox without a bot token).

    200 {sent, failed, retried, deferred}; 401 without the secret; 400 for a body that is
    not empty or {"limit": n}; 503 when the database is unreachable or the function is not configured.
    """

    def run(settings: Settings, call: ScheduledCall) -> dict[str, Any]:
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
    """Scheduled: reset expired leases, prune past retention, process requests whose webhook was lost.

    200 {reset, failed, redispatched, outcomes, pruned}; otherwise as send_due_reminders.
    """

    def run(settings: Settings, call: ScheduledCall) -> dict[str, Any]:
        counts = recovery.reset_stale_requests(
            bootstrap.database(),
            llm.generator_for(settings),
            SystemClock(),
            settings=settings,
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
            return http.error(400, 'body must be {"init_data": "<Telegram WebApp initData>"}')
        except InvalidInitData as exc:
            logs.get_logger("telegram_auth").warning("sign-in refused: %s", exc)
            return http.error(401, f"invalid initData: {exc}")
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
        settings = bootstrap.settings()
        refusal = _refusal(name, request, settings=settings)
        if refusal:
            return refusal
        raw = http.read_body(request, SCHEDULED_MAX_BODY)
        try:
            call = ScheduledCall.model_validate_json(raw) if raw.strip() else ScheduledCall()
        except ValidationError as exc:
            return http.error(
                400, f'body must be empty or {{"limit": n}} (1 to 10000): {describe_errors(exc)}'
            )
        return run(settings, call), 200

    return _serve(name, request, work)


def _refusal(name: str, request: flask.Request, *, settings: Settings | None) -> Response | None:
    """401 without the shared secret (when `settings` are given to check it), 405 unless POST; None when
    the request may go on (its body is then read with `http.read_body`, which refuses one too large)."""
    if settings is not None and not http.is_authorized(request, settings):
        return http.error(401, "missing or wrong webhook secret")
    if request.method != "POST":
        return http.error(405, f"{name} takes POST")
    return None


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
            return http.error(503, str(exc))
        except DatabaseUnavailable as exc:
            log.error("database unavailable: %s", exc)
            return http.error(503, "database unavailable")
        except DatabaseError as exc:
            log.error("database refused %s (SQLSTATE %s): %s", name, exc.sqlstate, exc)
            return http.error(500, "database error")
        finally:
            http.leave_unread(request)
