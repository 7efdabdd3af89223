"""A lead, a plan step and a model's draft for the draft tests, and a DraftInput built from them."""

from __future__ import annotations

import uuid
from typing import Any

from planbus.drafting import DraftInput
from planbus.models import LeadFacts, PlanStep
from support.openai_fakes import VALID_PLAN

ADA = LeadFacts(
    id=uuid.UUID("6f1c2a4e-8b1d-4c55-9a2e-3d7b0c9e1f42"),
    full_name="Ada Lovelace",
    company="Analytical Engines Ltd",
    title="Head of Research",
    notes="Met at the Royal Society. Wants to automate Bernoulli tables.",
    status="contacted",
)
# The second step of VALID_PLAN: an email on day 3.
STEP_INDEX = 1
STEP = PlanStep.model_validate(VALID_PLAN["steps"][STEP_INDEX])

VALID_DRAFT: dict[str, Any] = {
    "text": "Hi Ada, thanks for your note on the tables. Here is the one-pager on the pilot we discussed.",
    "channel": "email",
    "rationale": "Answers her question from the chat and sends the promised one-pager.",
}


def draft_input(**changes: Any) -> DraftInput:
    """The draft request for ADA's second step, with `changes` (proof_url, instructions, ...) applied."""
    return DraftInput(lead=ADA, step_index=STEP_INDEX, step=STEP, **changes)
