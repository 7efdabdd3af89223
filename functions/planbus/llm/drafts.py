"""Draft generators: something that turns a `DraftInput` into a validated `Draft` for one plan step.

PLAN_GENERATOR chooses for drafts as for plans. `openai` asks a model that takes image input
(DRAFT_OPENAI_MODEL) for structured output, with the request's screenshot as an `image_url` content part;
`offline` returns the plan step's own draft, with no network and no key. Both check the screenshot URL
first, so a bad `proof_url` fails the request for good before any call, whichever generator runs.

The OpenAI draft goes through `planbus.llm.structured` as plans do, with one call per attempt, bounded by
DRAFT_OPENAI_TIMEOUT: a transient failure (timeout, connection, 429, 5xx) is reported retryable and the
request's next attempt is the retry, so a failing provider costs one call per attempt. Errors are
classified exactly as for plans. The day the prompt states is the caller's: one clock reading per
request, as for plans.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, Unpack

from planbus.drafting import Draft, DraftInput, build_draft_messages, check_proof_url
from planbus.llm import PerSettings, openai_api_key
from planbus.llm.structured import ApiOptions, StrictSchema, StructuredOutputGenerator
from planbus.models import GeneratorName, TokenUsage
from planbus.settings import Settings

OFFLINE_MODEL = "planbus-offline-drafts-1"


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

    def generate(self, draft_input: DraftInput, *, today: date) -> DraftGeneration:
        """A draft of the message for `draft_input.step`, written on `today` (the salesperson's day)."""
        ...


def make_draft_generator(settings: Settings, *, http_client: Any | None = None) -> DraftGenerator:
    """The draft generator PLAN_GENERATOR asks for, checking proof URLs against PROOF_URL_HOSTS.

    `http_client` (an `httpx2.Client`) replaces the OpenAI client's transport, e.g. with a mock transport.
    """
    hosts = settings.proof_url_allowed_hosts
    if settings.generator == "offline":
        return OfflineDraftGenerator(proof_url_hosts=hosts)
    return OpenAIDraftGenerator(
        api_key=openai_api_key(settings),
        model=settings.draft_openai_model,
        base_url=settings.openai_base_url,
        timeout=settings.draft_openai_timeout,
        proof_url_hosts=hosts,
        http_client=http_client,
    )


# The process's draft generator for these settings.
draft_generator_for: PerSettings[DraftGenerator] = PerSettings(make_draft_generator)


class OfflineDraftGenerator:
    """The plan step's own draft, unchanged: deterministic, no network, honest about what it ignores."""

    def __init__(self, *, proof_url_hosts: Collection[str]) -> None:
        self._proof_url_hosts = frozenset(proof_url_hosts)

    @property
    def name(self) -> GeneratorName:
        return "offline"

    def generate(self, draft_input: DraftInput, *, today: date) -> DraftGeneration:
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


class MessageDraft(StrictSchema, Draft):
    """`Draft` as sent to the API: the same fields and checks, its JSON Schema within the strict subset."""


class OpenAIDraftGenerator(StructuredOutputGenerator):
    """Drafts from an OpenAI-compatible chat completions API with image input."""

    noun = "draft"
    # One call per attempt: the request's next attempt is the retry.
    tries_per_attempt = 1

    def __init__(self, *, proof_url_hosts: Collection[str], **api: Unpack[ApiOptions]) -> None:
        super().__init__(**api)
        self._proof_url_hosts = frozenset(proof_url_hosts)

    def generate(self, draft_input: DraftInput, *, today: date) -> DraftGeneration:
        """Ask the model for the draft; raise `GenerationError` when none can be had within the timeout."""
        check_proof_url(draft_input.proof_url, self._proof_url_hosts)
        answer = self.parse(build_draft_messages(draft_input, today=today), MessageDraft)
        return DraftGeneration(
            draft=Draft.model_validate(answer.parsed.model_dump()),
            model=answer.model,
            usage=answer.usage,
            response_id=answer.response_id,
        )
