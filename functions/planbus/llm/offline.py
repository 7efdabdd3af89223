"""The offline generator: a plan from templates and the lead's own fields, with no network and no key.

It is what planbus uses when no OPENAI_API_KEY is configured (local runs, demos, a deployment that has not
chosen a model yet). The same lead always gets the same plan, and the result says `generator: offline`, so
nobody mistakes it for a model's work. It follows a common outreach cadence: open on a direct channel
today, connect on LinkedIn, bring something useful, ask for a call, and close the loop politely.
"""

from __future__ import annotations

from datetime import date

from planbus.llm import Generation
from planbus.models import GeneratorName, LeadFacts, Plan, PlanStep

MODEL = "planbus-offline-templates-1"

# Statuses that mean the lead already buys from us: the plan is about growing the account, not opening it.
CUSTOMER_STATUSES = {"customer", "won", "closed_won", "active"}


class OfflineGenerator:
    """Deterministic plans built from the lead registry row."""

    @property
    def name(self) -> GeneratorName:
        return "offline"

    def generate(self, lead: LeadFacts, *, today: date) -> Generation:
        """A plan for `lead`; `today` is unused because offsets are relative and the plan must not drift."""
        return Generation(plan=offline_plan(lead), model=MODEL)


def offline_plan(lead: LeadFacts) -> Plan:
    """The template plan for one lead."""
    first = _first_name(lead.full_name)
    at_company = f" at {_clip(lead.company, 80)}" if lead.company else ""
    role = _clip(lead.title, 80)
    hook = _first_sentence(lead.notes)
    customer = (lead.status or "").strip().lower() in CUSTOMER_STATUSES
    follow_up = bool(lead.plan)

    if customer:
        aim = "grow the account with a concrete next project"
        opener = f"Hi {first}, thanks again for working with us. I would love to hear how things are going"
    elif follow_up:
        aim = "restart the conversation where the last plan left it and agree on a next step"
        opener = f"Hi {first}, picking up where we left off: I have been thinking about our last exchange"
    else:
        aim = "open a conversation and agree on a first call"
        teams = _clip(lead.company, 60) or "yours"
        opener = f"Hi {first}, I help teams like {teams} and wanted to introduce myself"
    # The notes are the salesperson's, not the lead's words: they shape the action, not the draft.
    opening = (
        f"Send {first} a short opening message that picks up on: {hook}"
        if hook
        else (f"Send {first} a short personal opening message")
    )

    summary = (
        f"Reach {_clip(lead.full_name, 80)}{at_company}{f' ({role})' if role else ''} to {aim}. "
        "Open on a direct channel today, add a personal LinkedIn touch, bring something useful, "
        "then ask for a short call and close the loop politely if there is no answer."
    )
    if follow_up:
        summary += " Builds on the previous plan rather than starting over."

    steps = [
        PlanStep(
            day_offset=0,
            channel="telegram" if customer or follow_up else "email",
            action=opening,
            message_draft=f"{opener}. Would a 15-minute chat this week be useful?",
            goal="Get a first reply and a sense of current priorities.",
        ),
        PlanStep(
            day_offset=2,
            channel="linkedin",
            action=f"Connect with {first} on LinkedIn with a personal note",
            message_draft=(
                f"Hi {first}, I reached out earlier about {_clip(lead.company, 60) or 'your work'}. "
                "Happy to connect and share what has worked for others in a similar position."
            ),
            goal="Add a second, lighter touch point and some visibility.",
        ),
        PlanStep(
            day_offset=5,
            channel="email",
            action=f"Share one useful example relevant to {first}'s work{f' as {role}' if role else ''}",
            message_draft=(
                f"Hi {first}, here is a short example of how a team in a similar situation approached "
                "this. If it resonates, I can walk you through it in a few minutes."
            ),
            goal="Show value before asking for time.",
        ),
        PlanStep(
            day_offset=9,
            channel="call",
            action=f"Call {first} to agree on a concrete next step",
            message_draft=(
                f"Hi {first}, it is about the messages I sent last week. Do you have two minutes? "
                "I would like to understand your priorities and whether a proper conversation makes sense."
            ),
            goal="Book a meeting or learn what is in the way.",
        ),
        PlanStep(
            day_offset=14,
            channel="email",
            action=f"Send {first} a polite closing-the-loop message",
            message_draft=(
                f"Hi {first}, I do not want to crowd your inbox. Should I check back next quarter, "
                "or is there someone else I should talk to?"
            ),
            goal="Get a clear yes, no, or later, and keep the relationship warm.",
        ),
    ]
    return Plan(summary=summary, steps=steps)


def _first_name(full_name: str) -> str:
    parts = full_name.split()
    return _clip(parts[0], 40) if parts else "there"


def _first_sentence(notes: str | None) -> str | None:
    if not notes or not notes.strip():
        return None
    text = " ".join(notes.split())
    for mark in (". ", "! ", "? ", "\n"):
        text = text.split(mark, 1)[0]
    return _clip(text.rstrip(".!?"), 120)


def _clip(text: str | None, limit: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
