"""The data planbus exchanges: the database webhook payload (of any request kind's table) and a worker's
body, the lead's facts, the engagement plan, and the result stored on a completed plan request (its JSON
Schema is committed under schemas/).

Every model is built when first used (`defer_build`), not when this module is imported: a cold start pays
for the validators its request needs, not for every model of the modules it loads.

Bounds are part of the model so that a plan from any generator is checked the same way before it is
written: a plan that a salesperson can act on has a few ordered steps over weeks, not months, each short
enough to read on a phone and to send as one Telegram message.
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

MIN_STEPS = 2
MAX_STEPS = 10
MAX_DAY_OFFSET = 90
MAX_SUMMARY = 800
MAX_ACTION = 200
MAX_MESSAGE = 1200
MAX_GOAL = 300

Channel = Literal["telegram", "email", "linkedin", "call", "meeting", "whatsapp", "sms"]
GeneratorName = Literal["openai", "offline"]

# A UUID as PostgreSQL writes it (8-4-4-4-12 hex digits).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID_TEXT = re.compile(UUID_PATTERN)


def _text(max_length: int, description: str) -> Any:
    return Field(
        min_length=1, max_length=max_length, description=f"{description} (at most {max_length} characters)"
    )


class PlanStep(BaseModel):
    """One action of the plan, taken `day_offset` days after the plan is made."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True, str_strip_whitespace=True)

    day_offset: int = Field(
        ge=0, le=MAX_DAY_OFFSET, description="days after the plan is made when this step is due (0 = today)"
    )
    channel: Channel = Field(description="where the step happens")
    action: str = _text(MAX_ACTION, "what the salesperson does, as an imperative sentence")
    message_draft: str = _text(MAX_MESSAGE, "a ready-to-send message (or call script) in the lead's context")
    goal: str = _text(MAX_GOAL, "what this step should achieve")


class Plan(BaseModel):
    """An engagement plan for one lead: a summary and its steps in the order they are to be taken."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True, str_strip_whitespace=True)

    summary: str = _text(MAX_SUMMARY, "the approach in two or three sentences")
    steps: list[PlanStep] = Field(
        min_length=MIN_STEPS,
        max_length=MAX_STEPS,
        description=f"{MIN_STEPS} to {MAX_STEPS} steps in order; day offsets never decrease",
    )

    @field_validator("steps")
    @classmethod
    def _steps_in_order(cls, steps: list[PlanStep]) -> list[PlanStep]:
        for index, (before, after) in enumerate(itertools.pairwise(steps), start=1):
            if after.day_offset < before.day_offset:
                raise ValueError(
                    f"steps must be in order: step {index + 1} is on day {after.day_offset}, "
                    f"before step {index} on day {before.day_offset}"
                )
        return steps


class TokenUsage(BaseModel):
    """Tokens the LLM call consumed, as the API reported them."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class PlanResult(BaseModel):
    """What a completed plan request's `result` holds: the plan and where it came from."""

    model_config = ConfigDict(
        defer_build=True,
        extra="forbid",
        frozen=True,
        title="planbus plan request result",
        # Stored results always carry every field, defaults included: the schema says so.
        json_schema_serialization_defaults_required=True,
        json_schema_extra={"description": "The `result` column of a completed `plan_requests` row."},
    )

    schema_version: Literal[1] = Field(default=1, description="bumped when this shape changes incompatibly")
    plan: Plan
    generator: GeneratorName = Field(
        description="`openai`: an OpenAI-compatible model wrote the plan; `offline`: the built-in templates"
    )
    model: str = Field(min_length=1, description="the model that answered, or the offline template set")
    usage: TokenUsage | None = Field(description="token usage of the LLM call; null when offline")
    latency_ms: int = Field(ge=0, description="time spent generating the plan, in milliseconds")
    generated_at: datetime = Field(description="when the plan was generated")
    attempt: int = Field(ge=1, description="which attempt of the request produced the plan")
    response_id: str | None = Field(default=None, description="the LLM API's id for the answer, if any")


class WorkerCall(BaseModel):
    """The body a worker takes (from Cloud Tasks): the request to process."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    request_id: str = Field(pattern=UUID_PATTERN)


class LeadFacts(BaseModel):
    """The lead registry row, as the claim returns it: what a plan is built from."""

    model_config = ConfigDict(defer_build=True, extra="ignore", frozen=True)

    id: UUID
    full_name: str
    company: str | None = None
    title: str | None = None
    notes: str | None = None
    status: str | None = None
    plan: Any = None  # whatever an earlier version stored: it is shown to the model, not interpreted
    plan_generated_at: datetime | None = None


class WebhookPayload(BaseModel):
    """A Supabase-style database webhook: `{type, table, schema, record, old_record}`.

    Unknown keys are ignored (platforms add their own). Which table matters is the reader's to say: parsed
    with `for_table(raw, table)`, an INSERT on public.<table> must carry the new row's `id` as a UUID;
    other events are accepted, and the webhook answers them as skipped.
    """

    model_config = ConfigDict(defer_build=True, extra="ignore", frozen=True)

    type: str = Field(min_length=1)
    table: str = Field(min_length=1)
    schema_name: str = Field(alias="schema", min_length=1)
    record: dict[str, Any] | None
    old_record: dict[str, Any] | None = None

    @classmethod
    def for_table(cls, raw: str | bytes, table: str) -> WebhookPayload:
        """Parse a webhook body sent to the webhook of public.<table> (ValidationError when it is none)."""
        return cls.model_validate_json(raw, context={"table": table})

    @model_validator(mode="after")
    def _insert_names_its_row(self, info: ValidationInfo) -> WebhookPayload:
        table = (info.context or {}).get("table")
        if isinstance(table, str) and self.is_insert_on(table):
            identifier = (self.record or {}).get("id")
            if not isinstance(identifier, str):
                raise ValueError(f"an INSERT on public.{table} must carry record.id")
            if not _is_uuid(identifier):
                raise ValueError(f"record.id is not a UUID: {identifier[:64]!r}")
        return self

    def is_insert_on(self, table: str) -> bool:
        """Whether this event is an INSERT on public.<table>."""
        return self.type == "INSERT" and (self.schema_name, self.table) == ("public", table)

    def request_id_on(self, table: str) -> str | None:
        """The row the event is about, when it is on public.<table> and names one by UUID."""
        if (self.schema_name, self.table) != ("public", table):
            return None
        for row in (self.record, self.old_record):
            identifier = (row or {}).get("id")
            if isinstance(identifier, str) and _is_uuid(identifier):
                return identifier
        return None


def _is_uuid(text: str) -> bool:
    # Only the form PostgreSQL writes (8-4-4-4-12 hex): Python's UUID() also takes "urn:uuid:...", "{...}"
    # and stray hyphens, which PostgreSQL refuses, and a refused cast would be a 500, not a 400.
    return _UUID_TEXT.fullmatch(text) is not None


def describe_errors(exc: ValidationError, *, limit: int = 3) -> str:
    """A one-line account of what failed validation: `where: why` for the first few errors."""
    parts = []
    for item in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
