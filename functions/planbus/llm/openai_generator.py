"""The OpenAI plan generator: structured output parsed into the `Plan` model, with the time budget, the
quick retry and the error mapping of `planbus.llm.structured`."""

from __future__ import annotations

from datetime import date

from planbus.llm import Generation
from planbus.llm.structured import StrictSchema, StructuredOutputGenerator
from planbus.models import LeadFacts, Plan
from planbus.planning import build_messages


class EngagementPlan(StrictSchema, Plan):
    """`Plan` as sent to the API: the same fields and checks, its JSON Schema within the strict subset."""


class OpenAIGenerator(StructuredOutputGenerator):
    """Plans from an OpenAI-compatible chat completions API, with one quick retry inside an attempt."""

    noun = "plan"

    def generate(self, lead: LeadFacts, *, today: date) -> Generation:
        """Ask the model for a plan; raise `GenerationError` when none can be had within the budget."""
        answer = self.parse(build_messages(lead, today=today), EngagementPlan)
        return Generation(
            plan=Plan.model_validate(answer.parsed.model_dump()),
            model=answer.model,
            usage=answer.usage,
            response_id=answer.response_id,
        )
