"""What every HTTP entry point shares: the shared-secret check, JSON answers, and request log context."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import unquote, urlsplit

import flask

from planbus import logs
from planbus.settings import Settings

Response = tuple[dict[str, Any], int]


def presented_secret(request: flask.Request) -> str | None:
    """The secret as `X-Webhook-Secret`, `Authorization: Bearer`, or `?token=` (in that order)."""
    header = request.headers.get("X-Webhook-Secret")
    if header:
        return header
    authorization = request.headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.args.get("token") or None


def is_authorized(request: flask.Request, settings: Settings) -> bool:
    """Constant-time comparison of the presented secret with WEBHOOK_SECRET."""
    expected = settings.require_webhook_secret()
    presented = presented_secret(request)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def error(status: int, message: str) -> Response:
    return {"error": message}, status


def trace_of(request: flask.Request, project: str | None = None) -> str | None:
    """Cloud Logging's trace field from `X-Cloud-Trace-Context: TRACE_ID/SPAN;o=1`."""
    header = request.headers.get("X-Cloud-Trace-Context", "")
    trace_id = header.split("/", 1)[0]
    if not trace_id:
        return None
    return f"projects/{project}/traces/{trace_id}" if project else trace_id


def log_fields(request: flask.Request) -> dict[str, Any]:
    trace = trace_of(request)
    return {"logging.googleapis.com/trace": trace} if trace else {}


def register_secrets(settings: Settings) -> None:
    """Tell the log formatter every secret value it must never print."""
    for secret in (
        settings.webhook_secret,
        settings.openai_api_key,
        settings.telegram_bot_token,
        settings.supabase_service_role_key,
        settings.supabase_jwt_secret,
    ):
        logs.register_secret(secret.get_secret_value() if secret else None)
    logs.register_secret(database_password(settings.database_url))


def database_password(url: str | None) -> str | None:
    """The password in a DATABASE_URL (URL or `key=value` form), which a connection error may echo."""
    if not url:
        return None
    if "://" in url:
        try:
            password = urlsplit(url).password
        except ValueError:
            return None
        return unquote(password) if password else None
    for part in url.split():
        key, _, value = part.partition("=")
        if key == "password" and value:
            return value.strip("'")
    return None
