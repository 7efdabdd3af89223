"""Plan generators: something that turns a lead's facts into a validated `Plan`.

Two exist. `openai` asks an OpenAI-compatible model for structured output; `offline` builds the plan from
templates and the lead's own fields, with no network and no key, and is the default when no
OPENAI_API_KEY is set. Both return plans checked by the same pydantic model, and say which they are, so a
stored result always records its provenance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, Protocol, TypeVar

from planbus.errors import ConfigurationError
from planbus.models import GeneratorName, LeadFacts, Plan, TokenUsage
from planbus.settings import Settings


@dataclass(frozen=True)
class Generation:
    """A plan and what produced it."""

    plan: Plan
    model: str
    usage: TokenUsage | None = None
    response_id: str | None = None


class PlanGenerator(Protocol):
    """Writes a plan for a lead or raises `GenerationError` (with `retryable` set)."""

    @property
    def name(self) -> GeneratorName:
        """`openai` or `offline`: recorded in every result."""
        ...

    def generate(self, lead: LeadFacts, *, today: date) -> Generation:
        """A plan for `lead`, with day offsets counted from `today`."""
        ...


def make_generator(settings: Settings, *, http_client: Any | None = None) -> PlanGenerator:
    """The generator PLAN_GENERATOR asks for (default: openai with an API key, else offline).

    `http_client` (an `httpx2.Client`) replaces the OpenAI client's transport, e.g. with a mock transport.
    The openai package is imported only when the first plan is generated.
    """
    if settings.generator == "offline":
        from planbus.llm.offline import OfflineGenerator

        return OfflineGenerator()
    from planbus.llm.openai_generator import OpenAIGenerator

    return OpenAIGenerator(
        api_key=openai_api_key(settings),
        model=settings.openai_model,
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout,
        http_client=http_client,
    )


def openai_api_key(settings: Settings) -> str:
    """OPENAI_API_KEY, which the openai generators need: ConfigurationError when it is not set."""
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ConfigurationError("PLAN_GENERATOR=openai needs OPENAI_API_KEY")
    return settings.openai_api_key.get_secret_value()


G = TypeVar("G")


class PerSettings(Generic[G]):
    """The process's one instance for the current settings, made again only when the settings change: a
    warm generator keeps its HTTP connections between requests."""

    def __init__(self, make: Callable[[Settings], G]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._cached: tuple[Settings, G] | None = None

    def __call__(self, settings: Settings) -> G:
        """The instance for `settings`."""
        with self._lock:
            if self._cached is None or self._cached[0] is not settings:
                self._cached = (settings, self._make(settings))
            return self._cached[1]


# The process's plan generator for these settings.
generator_for: PerSettings[PlanGenerator] = PerSettings(make_generator)
