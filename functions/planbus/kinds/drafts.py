"""The draft kind: a ready-to-send message for one step of a lead's current plan (draft_requests,
migration 0010's complete_draft_request).

The step is read from the plan stored on the lead at claim time; a lead without a plan, a step index the
plan does not have, or a refused proof_url fails the request at once, before any LLM call. Completing a
draft stores it and puts it into that step's reminder, if the reminder is still scheduled and its plan is
still the lead's current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from planbus.drafting import DraftInput, DraftResult, validate_proof_url
from planbus.errors import GenerationError
from planbus.kinds.base import Finished, Provenance, RequestKind
from planbus.models import LeadFacts, Plan, describe_errors
from planbus.planning import reminder_text, reminder_zone

if TYPE_CHECKING:
    from planbus.llm.drafts import DraftGeneration, DraftGenerator
    from planbus.settings import Settings
    from planbus.state import Claimed


@dataclass(frozen=True)
class DraftJob:
    """A claimed draft request's input, and the plan its step belongs to."""

    input: DraftInput
    plan_request_id: str | None
    steps: int
    zone: ZoneInfo  # the salesperson's (REMINDER_TIMEZONE): the prompt's day is theirs


class DraftKind(RequestKind[DraftJob, "DraftGenerator", "DraftGeneration"]):
    name = "draft"
    table = "draft_requests"
    noun = "draft"
    input_model = DraftInput
    result_model = DraftResult
    handle_target = "handle_draft_request"
    process_target = "process_draft_request"
    worker_url_setting = "draft_worker_url"
    timeout_setting = "draft_openai_timeout"

    def check(self, settings: Settings) -> None:
        reminder_zone(settings.reminder_timezone)

    def timeout(self, settings: Settings) -> float:
        return settings.draft_openai_timeout

    def generator(self, settings: Settings) -> DraftGenerator:
        from planbus.llm import drafts

        return drafts.draft_generator_for(settings)

    def prepare(self, claim: Claimed, *, now: datetime, settings: Settings) -> DraftJob:
        request = claim.request
        step_index = int(request["step_index"])
        lead = LeadFacts.model_validate(claim.lead)
        plan = _current_plan(lead, step_index)
        if step_index >= len(plan.steps):
            raise GenerationError(
                f"step_index {step_index} is not a step of the lead's current plan, which has "
                f"{len(plan.steps)} steps (step_index 0 to {len(plan.steps) - 1})",
                retryable=False,
            )
        validate_proof_url(request.get("proof_url"), settings)
        try:
            draft_input = DraftInput(
                lead=lead,
                step_index=step_index,
                step=plan.steps[step_index],
                proof_url=request.get("proof_url"),
                instructions=request.get("instructions"),
            )
        except ValidationError as exc:
            raise GenerationError(
                f"the draft request cannot be read: {describe_errors(exc)}", retryable=False
            ) from exc
        plan_request_id = claim.lead.get("plan_request_id")
        return DraftJob(
            draft_input,
            str(plan_request_id) if plan_request_id else None,
            len(plan.steps),
            reminder_zone(settings.reminder_timezone),
        )

    def generate(
        self, generator: DraftGenerator, job: DraftJob, *, now: datetime, settings: Settings
    ) -> DraftGeneration:
        return generator.generate(job.input, today=now.astimezone(job.zone).date())

    def finish(
        self,
        job: DraftJob,
        generation: DraftGeneration,
        provenance: Provenance,
        *,
        now: datetime,
        settings: Settings,
    ) -> Finished:
        result = DraftResult(draft=generation.draft, **provenance.fields())
        draft = result.draft
        step = job.input.step.model_copy(update={"message_draft": draft.text, "channel": draft.channel})
        text = reminder_text(step, job.input.lead, number=job.input.step_index + 1, total=job.steps)
        completion: dict[str, Any] = {
            "plan_request_id": job.plan_request_id,
            "step_index": job.input.step_index,
            "reminder_text": text,
        }
        return Finished(result=result, completion=completion, log_fields={"step_index": job.input.step_index})


def _current_plan(lead: LeadFacts, step_index: int) -> Plan:
    if lead.plan is None:
        raise GenerationError(
            f"the lead has no plan yet: make a plan before drafting step_index {step_index}", retryable=False
        )
    try:
        return Plan.model_validate(lead.plan)
    except ValidationError as exc:
        raise GenerationError(
            f"the lead's current plan cannot be read: {describe_errors(exc)}", retryable=False
        ) from exc


DRAFT = DraftKind()
