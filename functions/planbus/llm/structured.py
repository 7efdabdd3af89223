"""Structured output from an OpenAI-compatible chat completions API, under one time budget: what the plan
and the draft generators share.

The timeout bounds the whole call, retries included, so a claim (LEASE_SECONDS, always longer) outlives
it. A request has one retry budget, kept by the queue: at most MAX_ATTEMPTS attempts, each one call to the
API plus at most `tries_per_attempt - 1` quick retries inside the attempt (plans: one; drafts: none),
taken only when the API was not reached at all (a refused or dropped connection: the server did no work)
or asked to come back within MAX_IN_CALL_WAIT_SECONDS (a short Retry-After, as OpenAI's token limits
send). Everything else transient (a timeout, 408, 409, 5xx, a longer Retry-After) ends the attempt as
retryable, so a failing provider sees at most `tries_per_attempt` calls per attempt, and one when it
keeps answering 5xx or asks for a longer pause.
A 429 or 503 that says when to come back (`retry-after-ms` or `retry-after`, seconds or an HTTP date,
capped at an hour) carries it as `GenerationError.retry_after` and in the message, for the queue to
schedule the next attempt no earlier. Anything another try cannot fix (a refusal, a cut-off or filtered
answer, output that fails validation, another 4xx) is permanent; its message names what was asked for
(`noun`: "plan", "draft").
The openai package is imported on first use: it costs about a second, which a cold start should not pay
when the offline generator or another target is in use.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Required, TypedDict, TypeVar

import pydantic

from planbus.errors import GenerationError
from planbus.models import GeneratorName, TokenUsage, describe_errors

if TYPE_CHECKING:
    from openai import OpenAI

# Tries within one attempt: the first, and one quick retry for an unreached API or a short Retry-After.
MAX_TRIES = 2
# The longest Retry-After waited out inside a call; a longer one is left to the queue.
MAX_IN_CALL_WAIT_SECONDS = 2.0
MAX_ERROR_LENGTH = 500
# The longest Retry-After honoured: a server asking for more is asked again after an hour.
MAX_RETRY_AFTER_SECONDS = 3600.0
# Statuses whose Retry-After says when the API will take requests again.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Keywords strict structured outputs do not accept; the limits stay in the descriptions and are checked
# when the answer is validated against the model.
UNSUPPORTED_SCHEMA_KEYWORDS = frozenset({"minLength", "maxLength"})

T = TypeVar("T", bound=pydantic.BaseModel)


class StrictSchema(pydantic.BaseModel):
    """Mixed in before a model, it keeps the model's fields and checks and sends a JSON Schema within
    the strict structured-output subset."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema: dict[str, Any] = _without_keywords(super().model_json_schema(*args, **kwargs))
        return schema


@dataclass(frozen=True)
class Answer(Generic[T]):
    """The model's answer parsed into the response format, and its provenance."""

    parsed: T
    model: str
    usage: TokenUsage | None
    response_id: str | None


class ApiOptions(TypedDict, total=False):
    """StructuredOutputGenerator's arguments, for a subclass that adds its own and passes these on."""

    api_key: Required[str]
    model: Required[str]
    base_url: Required[str | None]
    timeout: Required[float]
    max_tries: int | None
    backoff: float
    http_client: Any | None
    sleep: Callable[[float], None]


class StructuredOutputGenerator:
    """A generator backed by one model of an OpenAI-compatible API (OPENAI_BASE_URL selects another server),
    asked for answers of a pydantic model. Subclasses say what they ask for (`noun`) and how many tries an
    attempt takes at most (`tries_per_attempt`); the client is made on first use and kept, with its
    connections."""

    noun: ClassVar[str]
    tries_per_attempt: ClassVar[int] = MAX_TRIES

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None,
        timeout: float,
        max_tries: int | None = None,
        backoff: float = 0.5,
        http_client: Any | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._api_key = api_key
        self._base_url = base_url
        self._max_tries = self.tries_per_attempt if max_tries is None else max_tries
        self._backoff = backoff
        self._http_client = http_client
        self._sleep = sleep
        self._client: OpenAI | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> GeneratorName:
        """Recorded in every result."""
        return "openai"

    def parse(self, messages: Any, response_format: type[T]) -> Answer[T]:
        """Ask for an answer in `response_format`; raise `GenerationError` when none can be had within the
        budget."""
        client = self._openai()
        deadline = time.monotonic() + self.timeout
        tries = 0
        while True:
            tries += 1
            try:
                completion = client.chat.completions.parse(
                    model=self.model,
                    messages=messages,
                    response_format=response_format,
                    # The first try has the whole budget; a retry what is left of it.
                    timeout=self.timeout if tries == 1 else max(deadline - time.monotonic(), 0.001),
                )
                return self._read(completion)
            except GenerationError:
                raise
            except Exception as exc:
                error, retry_after = classify(exc, self.timeout, self.noun)
                delay = self._quick_retry_delay(exc, retry_after, tries)
                if delay is None or tries >= self._max_tries or time.monotonic() + delay >= deadline:
                    if tries > 1:
                        error = GenerationError(
                            f"{error} (after {tries} tries)",
                            retryable=error.retryable,
                            retry_after=error.retry_after,
                        )
                    raise error from exc
                self._sleep(delay)

    def _quick_retry_delay(self, exc: Exception, retry_after: float | None, tries: int) -> float | None:
        """How long to wait before trying again within this attempt, or None to end the attempt."""
        if retry_after is not None:
            return retry_after if retry_after <= MAX_IN_CALL_WAIT_SECONDS else None
        if _unreachable(exc):
            return self._backoff * 2.0 ** (tries - 1) * random.uniform(0.8, 1.2)
        return None

    def _read(self, completion: Any) -> Answer[Any]:
        if not completion.choices:
            raise GenerationError("OpenAI answered with no choices", retryable=False)
        message = completion.choices[0].message
        if message.refusal:
            refusal = f"the model refused to write a {self.noun}: {message.refusal}"
            raise GenerationError(_clip(refusal), retryable=False)
        if message.parsed is None:
            raise GenerationError(f"the model answered without a {self.noun}", retryable=False)
        usage = completion.usage
        return Answer(
            parsed=message.parsed,
            model=completion.model or "unknown",
            usage=TokenUsage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            )
            if usage is not None
            else None,
            response_id=completion.id or None,
        )

    def _openai(self) -> OpenAI:
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                # Retries are ours (one budget for all tries); the client must not add its own.
                self._client = OpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    timeout=self.timeout,
                    max_retries=0,
                    http_client=self._http_client,
                )
            return self._client


def classify(exc: Exception, timeout: float, noun: str) -> tuple[GenerationError, float | None]:
    """Translate an exception from the openai client into a `GenerationError`, and its Retry-After.

    The second value is the error's `retry_after`: seconds the server asked to wait (429 and 503 only,
    capped at MAX_RETRY_AFTER_SECONDS), or None. `noun` names what was asked for.
    """
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return GenerationError(f"OpenAI did not answer within {timeout:g} s", retryable=True), None
    if isinstance(exc, openai.APIConnectionError):
        return GenerationError(_clip(f"could not reach OpenAI: {_cause(exc)}"), retryable=True), None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = f"OpenAI answered {status}: {_api_message(exc)}"
        if status == 429 and exc.code == "insufficient_quota":
            return GenerationError(_clip(detail), retryable=False), None
        if status in (408, 409, 429) or status >= 500:
            retry_after, asked = (
                retry_after_seconds(exc.response.headers) if status in RETRY_AFTER_STATUSES else (None, None)
            )
            if retry_after is None:
                return GenerationError(_clip(detail), retryable=True), None
            note = f" (retry after {_seconds(retry_after)} s"
            if asked is not None and asked > retry_after:
                note += f"; the server asked for {_seconds(asked)} s"
            note += ")"
            message = _clip(detail, MAX_ERROR_LENGTH - len(note)) + note
            return GenerationError(message, retryable=True, retry_after=retry_after), retry_after
        return GenerationError(_clip(detail), retryable=False), None
    if isinstance(exc, openai.LengthFinishReasonError):
        return GenerationError(
            f"the answer was cut off at the token limit before the {noun} was complete", retryable=False
        ), None
    if isinstance(exc, openai.ContentFilterFinishReasonError):
        return GenerationError("OpenAI's content filter stopped the answer", retryable=False), None
    if isinstance(exc, pydantic.ValidationError):
        return GenerationError(
            _clip(f"the model's answer is not a valid {noun}: {describe_errors(exc)}"), retryable=False
        ), None
    if isinstance(exc, openai.OpenAIError):
        return GenerationError(_clip(f"OpenAI client error: {exc}"), retryable=False), None
    raise exc


def _api_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc.message)


def retry_after_seconds(headers: Any) -> tuple[float | None, float | None]:
    """(seconds to wait, capped at MAX_RETRY_AFTER_SECONDS; what the server asked) from an answer's headers.

    `retry-after-ms` (OpenAI's, milliseconds) is preferred over `retry-after`, which is seconds or an HTTP
    date. A header that is missing, unreadable, negative or not a number gives (None, None).
    """
    asked: float | None = None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            asked = float(value) * scale
        except ValueError:
            asked = _http_date_from_now(value) if name == "retry-after" else None
        if asked is not None:
            break
    if asked is None or math.isnan(asked) or asked < 0:
        return None, None
    return min(asked, MAX_RETRY_AFTER_SECONDS), asked


def _http_date_from_now(value: str) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def _unreachable(exc: Exception) -> bool:
    """The API was not reached (refused, reset, DNS): worth one quick retry. A timeout is not: it has used
    the call's whole budget, and the server may still be working on the request."""
    import openai

    return isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{exc} ({cause})" if cause is not None and str(cause) else str(exc)


def _clip(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_keywords(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_keywords(v) for k, v in node.items() if k not in UNSUPPORTED_SCHEMA_KEYWORDS}
    if isinstance(node, list):
        return [_without_keywords(v) for v in node]
    return node
