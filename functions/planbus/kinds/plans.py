"""The plan kind: an engagement plan for a lead (plan_requests, migration 0009's complete_plan_request).

The plan is written from the lead's facts with day offsets counted from today in REMINDER_TIMEZONE;
completing it stores the plan on the lead and schedules one reminder per step, all in the transaction
that completes the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from planbus.kinds.base import Finished, Provenance, RequestKind
from planbus.models import LeadFacts, PlanResult
from planbus.planning import reminder_zone, schedule_reminders

if TYPE_CHECKING:
    from planbus.llm import Generation, PlanGenerator
    from planbus.settings import Settings
    from planbus.state import Claimed


@dataclass(frozen=True)
class PlanJob:
    """A claimed plan request's input: the lead, and the zone its days are counted in."""

    lead: LeadFacts
    zone: ZoneInfo


class PlanKind(RequestKind[PlanJob, "PlanGenerator", "Generation"]):
    name = "plan"
    table = "plan_requests"
    noun = "plan"
    input_model = LeadFacts
    result_model = PlanResult
    handle_target = "handle_plan_request"
    process_target = "process_plan_request"
    worker_url_setting = "plan_worker_url"
    timeout_setting = "openai_timeout"

    def check(self, settings: Settings) -> None:
        reminder_zone(settings.reminder_timezone)

    def timeout(self, settings: Settings) -> float:
        return settings.openai_timeout

    def generator(self, settings: Settings) -> PlanGenerator:
        from planbus import llm

        return llm.generator_for(settings)

    def prepare(self, claim: Claimed, *, now: datetime, settings: Settings) -> PlanJob:
        return PlanJob(LeadFacts.model_validate(claim.lead), reminder_zone(settings.reminder_timezone))

    def generate(
        self, generator: PlanGenerator, job: PlanJob, *, now: datetime, settings: Settings
    ) -> Generation:
        return generator.generate(job.lead, today=now.astimezone(job.zone).date())

    def finish(
        self,
        job: PlanJob,
        generation: Generation,
        provenance: Provenance,
        *,
        now: datetime,
        settings: Settings,
    ) -> Finished:
        result = PlanResult(plan=generation.plan, **provenance.fields())
        reminders = schedule_reminders(
            result.plan, job.lead, now=now, hour=settings.reminder_hour, zone=job.zone
        )
        return Finished(
            result=result,
            completion={
                "plan": result.plan.model_dump(mode="json"),
                "reminders": [reminder.as_json() for reminder in reminders],
            },
            log_fields={"steps": len(result.plan.steps)},
        )


PLAN = PlanKind()
