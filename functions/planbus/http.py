"""What every HTTP entry point shares: the shared-secret check, a bounded body, JSON answers, and request
log context."""

from __future__ import annotations

import hmac
import io
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import flask

from planbus import logs

if TYPE_CHECKING:
    from planbus.settings import Settings

Response = tuple[dict[str, Any], int]

# Bytes read from the request body at a time.
READ_CHUNK_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    """The request body is longer than the entry point accepts (answered 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than {limit} bytes")
        self.limit = limit


class _BoundedBody(io.RawIOBase):
    """A request body that ends after `limit + 1` bytes, however long the upload: one byte past the limit
    is enough to know it is too large."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__()
        self._stream = stream
        self._left = limit + 1

    def readable(self) -> bool:
        return True

    def stop(self) -> None:
        """End the body here: later reads get nothing."""
        self._left = 0

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._left)
        if wanted <= 0:
            return 0
        data = self._stream.read(wanted)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def leave_unread(request: flask.Request) -> None:
    """Read no more of this request's body, whoever asks: the entry point has answered.

    functions-framework reads whatever is left of a body into memory once the function returns (so that a
    client still sending sees the answer rather than a reset); for a refused upload of any size that would
    be all of it. Every entry point calls this when it is done; what is left stays unread, and the server
    drains a little of it and closes the connection.
    """
    _bounded(request, 0).stop()


def _bounded(request: flask.Request, limit: int) -> _BoundedBody:
    if not isinstance(request.stream, _BoundedBody):
        request.stream = cast(IO[bytes], _BoundedBody(request.stream, limit))
    return cast(_BoundedBody, request.stream)


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes, counted as they are read.

    A `Content-Length` over the limit is refused before anything is read. A body without one (chunked
    transfer encoding), or longer than it claims, is read in chunks and refused as soon as it passes the
    limit; the rest is never read (see `leave_unread`), so any upload costs the worker at most `limit` plus
    one chunk. Raises BodyTooLarge.
    """
    if (request.content_length or 0) > limit:
        raise BodyTooLarge(limit)
    stream = _bounded(request, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)


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


def caller_address(request: flask.Request) -> str | None:
    """The client's address: the first `X-Forwarded-For` hop (Cloud Run's front end sets it), else the
    socket's peer."""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",", 1)[0].strip()
    return forwarded or request.remote_addr


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
