"""Draft generators: something that turns a `DraftInput` into a validated `Draft` for one plan step.

PLAN_GENERATOR chooses for drafts as for plans. `openai` asks a model that takes image input
(DRAFT_OPENAI_MODEL) for structured output, with the request's screenshot as an `image_url` content part;
`offline` returns the plan step's own draft, with no network and no key. Both check the screenshot URL
first, so a bad `proof_url` fails the request for good before any call, whichever generator runs.

The OpenAI draft makes one call per attempt, bounded by DRAFT_OPENAI_TIMEOUT: a transient failure
(timeout, connection, 429, 5xx) is reported retryable and the request's next attempt is the retry, so a
failing provider costs one call per attempt. Errors are classified exactly as for plans.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

import pydantic

from planbus.clock import Clock, SystemClock
from planbus.drafting import Draft, DraftInput, build_draft_messages, check_proof_url
from planbus.errors import ConfigurationError, GenerationError
from planbus.llm.openai_generator import _without_keywords, classify, openai_client
from planbus.models import GeneratorName, TokenUsage, describe_errors
from planbus.planning import reminder_zone
from planbus.settings import Settings

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.chat import ParsedChatCompletion

OFFLINE_MODEL = "planbus-offline-drafts-1"
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class DraftGeneration:
    """A draft and what produced it."""

    draft: Draft
    model: str
    usage: TokenUsage | None = None
    response_id: str | None = None


class DraftGenerator(Protocol):
    """Writes a draft for one plan step or raises `GenerationError` (with `retryable` set)."""

    @property
    def name(self) -> GeneratorName:
        """`openai` or `offline`: recorded in every result."""
        ...

    def generate(self, draft_input: DraftInput) -> DraftGeneration:
        """A draft of the message for `draft_input.step`."""
        ...


def make_draft_generator(
    settings: Settings, *, http_client: Any | None = None, clock: Clock | None = None
) -> DraftGenerator:
    """The draft generator PLAN_GENERATOR asks for, checking proof URLs against PROOF_URL_HOSTS.

    `http_client` (an `httpx2.Client`) replaces the OpenAI client's transport, e.g. with a mock transport;
    `clock` says what day it is for the prompt (in REMINDER_TIMEZONE, the salesperson's zone).
    """
    hosts = settings.proof_url_allowed_hosts
    if settings.generator == "offline":
        return OfflineDraftGenerator(proof_url_hosts=hosts)
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ConfigurationError("PLAN_GENERATOR=openai needs OPENAI_API_KEY")
    return OpenAIDraftGenerator(
        api_key=settings.openai_api_key.get_secret_value(),
        model=settings.draft_openai_model,
        base_url=settings.openai_base_url,
        timeout=settings.draft_openai_timeout,
        proof_url_hosts=hosts,
        zone=reminder_zone(settings.reminder_timezone),
        clock=clock or SystemClock(),
        http_client=http_client,
    )


_lock = threading.Lock()
_cached: tuple[Settings, DraftGenerator] | None = None


def draft_generator_for(settings: Settings) -> DraftGenerator:
    """The process's draft generator for these settings: a warm instance keeps its HTTP connections."""
    global _cached
    with _lock:
        if _cached is None or _cached[0] is not settings:
            _cached = (settings, make_draft_generator(settings))
        return _cached[1]


class OfflineDraftGenerator:
    """The plan step's own draft, unchanged: deterministic, no network, honest about what it ignores."""

    def __init__(self, *, proof_url_hosts: Collection[str]) -> None:
        self._proof_url_hosts = frozenset(proof_url_hosts)

    @property
    def name(self) -> GeneratorName:
        return "offline"

    def generate(self, draft_input: DraftInput) -> DraftGeneration:
        """The step's draft; a bad proof_url is refused as by the OpenAI generator."""
        check_proof_url(draft_input.proof_url, self._proof_url_hosts)
        return DraftGeneration(draft=offline_draft(draft_input), model=OFFLINE_MODEL)


def offline_draft(draft_input: DraftInput) -> Draft:
    """The draft the offline generator returns for a request."""
    ignored = []
    if draft_input.instructions and draft_input.instructions.strip():
        ignored.append("apply the instructions given")
    if draft_input.proof_url is not None:
        ignored.append("read the screenshot")
    rationale = f"Step {draft_input.step_index + 1}'s draft from the plan, " + (
        f"unchanged: the offline generator does not {' or '.join(ignored)}."
        if ignored
        else "as written (offline generator)."
    )
    step = draft_input.step
    return Draft(text=step.message_draft, channel=step.channel, rationale=rationale)


class MessageDraft(Draft):
    """`Draft` as sent to the API: the same fields and checks, its JSON Schema within the strict subset."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema: dict[str, Any] = _without_keywords(super().model_json_schema(*args, **kwargs))
        return schema


class OpenAIDraftGenerator:
    """Drafts from an OpenAI-compatible chat completions API with image input."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None,
        timeout: float,
        proof_url_hosts: Collection[str],
        zone: tzinfo = UTC,
        clock: Clock | None = None,
        http_client: Any | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._api_key = api_key
        self._base_url = base_url
        self._proof_url_hosts = frozenset(proof_url_hosts)
        self._zone = zone
        self._clock = clock or SystemClock()
        self._http_client = http_client
        self._client: OpenAI | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> GeneratorName:
        return "openai"

    def generate(self, draft_input: DraftInput) -> DraftGeneration:
        """Ask the model for the draft; raise `GenerationError` when none can be had within the timeout."""
        check_proof_url(draft_input.proof_url, self._proof_url_hosts)
        today = self._clock.now().astimezone(self._zone).date()
        messages: Any = build_draft_messages(draft_input, today=today)
        client = self._openai()
        try:
            completion = client.chat.completions.parse(
                model=self.model, messages=messages, response_format=MessageDraft, timeout=self.timeout
            )
        except Exception as exc:
            raise _generation_error(exc, self.timeout) from exc
        return _read(completion)

    def _openai(self) -> OpenAI:
        with self._lock:
            if self._client is None:
                self._client = openai_client(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    timeout=self.timeout,
                    http_client=self._http_client,
                )
            return self._client


def _generation_error(exc: Exception, timeout: float) -> GenerationError:
    """The plan generator's classification, with the two answers that name what was asked for."""
    import openai

    if isinstance(exc, pydantic.ValidationError):
        return GenerationError(
            _clip(f"the model's answer is not a valid draft: {describe_errors(exc)}"), retryable=False
        )
    if isinstance(exc, openai.LengthFinishReasonError):
        return GenerationError(
            "the answer was cut off at the token limit before the draft was complete", retryable=False
        )
    error, _ = classify(exc, timeout)
    return error


def _read(completion: ParsedChatCompletion[MessageDraft]) -> DraftGeneration:
    if not completion.choices:
        raise GenerationError("OpenAI answered with no choices", retryable=False)
    message = completion.choices[0].message
    if message.refusal:
        refusal = f"the model refused to write a draft: {message.refusal}"
        raise GenerationError(_clip(refusal), retryable=False)
    if message.parsed is None:
        raise GenerationError("the model answered without a draft", retryable=False)
    usage = completion.usage
    return DraftGeneration(
        draft=Draft.model_validate(message.parsed.model_dump()),
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


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"
