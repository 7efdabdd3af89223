"""What a request kind is: the one place that says how a request of that kind becomes a result.

The state machine, the webhook, the worker, the sweeper and the relay are shared by every kind; a kind
contributes only what differs: its table and SQL name (registered by its migration), its input and result
models, its generator and timeout, its worker-URL setting and entry-point names, and three steps the
shared use case runs between claim and completion:

    prepare(claim)            -> the job: the validated input (a bad input is a GenerationError that is
                                 not retryable, so the request fails at once, before any LLM call)
    generate(generator, job)  -> the generator's answer (the LLM call)
    finish(job, answer, ...)  -> the result to store and the arguments of the kind's SQL completion step
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel

from planbus.errors import ConfigurationError
from planbus.models import GeneratorName, TokenUsage

if TYPE_CHECKING:
    from planbus.settings import Settings
    from planbus.state import Claimed


class NamedGenerator(Protocol):
    """A generator says which it is (`openai`, `offline`); every stored result records it."""

    @property
    def name(self) -> GeneratorName: ...


class Generation(Protocol):
    """What every generator's answer carries besides its payload."""

    @property
    def model(self) -> str: ...

    @property
    def usage(self) -> TokenUsage | None: ...

    @property
    def response_id(self) -> str | None: ...


JobT = TypeVar("JobT")
GeneratorT = TypeVar("GeneratorT", bound=NamedGenerator)
GenerationT = TypeVar("GenerationT", bound=Generation)


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: the fields every result model shares."""

    generator: GeneratorName
    model: str
    usage: TokenUsage | None
    latency_ms: int
    generated_at: datetime
    attempt: int
    response_id: str | None

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for a result model."""
        return {
            "generator": self.generator,
            "model": self.model,
            "usage": self.usage,
            "latency_ms": self.latency_ms,
            "generated_at": self.generated_at,
            "attempt": self.attempt,
            "response_id": self.response_id,
        }


@dataclass(frozen=True)
class Finished:
    """A request's outcome ready to store: the result, the completion step's arguments, and what to log."""

    result: BaseModel
    completion: dict[str, Any]
    log_fields: dict[str, Any] = field(default_factory=dict)


class RequestKind(ABC, Generic[JobT, GeneratorT, GenerationT]):
    """One kind of request. Subclasses set the names and implement the steps; one instance is registered."""

    name: ClassVar[str]  # the kind in planbus_private.request_kinds
    table: ClassVar[str]  # its table in schema public
    noun: ClassVar[str]  # what a request asks for, as messages name it ("plan", "draft")
    input_model: ClassVar[type[BaseModel]]
    result_model: ClassVar[type[BaseModel]]
    handle_target: ClassVar[str]  # the webhook entry point
    process_target: ClassVar[str]  # the worker entry point (Cloud Tasks calls it)
    worker_url_setting: ClassVar[str]  # the setting that holds the worker's URL
    timeout_setting: ClassVar[str]  # the setting bounding one generation (what `timeout` returns)

    def __repr__(self) -> str:
        return f"<request kind {self.name}>"

    def worker_url(self, settings: Settings) -> str:
        """The URL of this kind's worker (`process_target`); ConfigurationError when it is not set."""
        value = getattr(settings, self.worker_url_setting, None)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"DISPATCH is cloud-tasks but {self.worker_url_setting.upper()} is not set: "
                f"nowhere to send {self.name} tasks"
            )
        return value

    def check(self, settings: Settings) -> None:
        """Raise ConfigurationError for settings this kind cannot work with, before anything is claimed
        (a configuration error must not cost a request an attempt)."""

    @abstractmethod
    def timeout(self, settings: Settings) -> float:
        """Seconds one generation may take, retries included (the lease must outlive it)."""

    @abstractmethod
    def generator(self, settings: Settings) -> GeneratorT:
        """The process's generator for these settings (kept warm between requests)."""

    @abstractmethod
    def prepare(self, claim: Claimed, *, now: datetime, settings: Settings) -> JobT:
        """The job from the claimed row and its lead; GenerationError(retryable=False) for a bad input."""

    @abstractmethod
    def generate(self, generator: GeneratorT, job: JobT, *, now: datetime, settings: Settings) -> GenerationT:
        """Run the generator (GenerationError when it gives no valid answer)."""

    @abstractmethod
    def finish(
        self, job: JobT, generation: GenerationT, provenance: Provenance, *, now: datetime, settings: Settings
    ) -> Finished:
        """The result and the completion step's arguments."""


AnyKind = RequestKind[Any, Any, Any]
