"""The request kinds deploy sets up: the one place deploy knows which kinds exist and what each is called.

Every kind-specific name deploy uses comes from `KINDS`: the webhook target each kind's trigger calls
(`handle_<kind>_request`), its Cloud Tasks worker (`process_<kind>_request`), its table, the database
settings its trigger reads (`webhook_url_<kind>`, `realtime_channel_<kind>`), the worker URL setting the
dispatching functions get (`<KIND>_WORKER_URL`) and the setting bounding one LLM call of the kind. The
rest of deploy iterates over `KINDS`: functions.conf is checked against it, the webhooks, worker URLs and
InsForge channels are set from it. Deploy reads only the attributes of `RequestKind`, so `KINDS` can as
well be the kinds planbus registers for its functions, if those carry the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from planbus.settings import Settings


@dataclass(frozen=True)
class RequestKind:
    """One kind of request on the bus, as deploy sees it."""

    name: str
    # The setting bounding one LLM call of this kind (a field of Settings), and its documented default,
    # used where these settings do not define that field.
    timeout_field: str
    default_timeout: float
    # Migration 0006's trigger, which serves plan_requests alone, reads its webhook URL and channel under
    # the unsuffixed names webhook_url and realtime_channel: those are stored too for this kind.
    unsuffixed_settings: bool = False

    @property
    def table(self) -> str:
        """The table the Mini App inserts this kind's requests into."""
        return f"{self.name}_requests"

    @property
    def webhook_target(self) -> str:
        """The function the table's trigger calls (public: a database cannot present a Google identity)."""
        return f"handle_{self.name}_request"

    @property
    def worker_target(self) -> str:
        """The private function Cloud Tasks calls with each request of this kind (DISPATCH=cloud-tasks)."""
        return f"process_{self.name}_request"

    @property
    def webhook_url_setting(self) -> str:
        """The database setting the trigger reads the webhook URL from."""
        return f"webhook_url_{self.name}"

    @property
    def channel_setting(self) -> str:
        """The database setting naming this kind's InsForge realtime channel."""
        return f"realtime_channel_{self.name}"

    @property
    def worker_url_variable(self) -> str:
        """The environment variable carrying the worker's URL to the functions that enqueue this kind."""
        return f"{self.name.upper()}_WORKER_URL"

    def channel(self, prefix: str) -> str:
        """This kind's realtime channel: REALTIME_CHANNEL, then the kind (planbus-plan)."""
        return f"{prefix}-{self.name}"

    def llm_timeout(self, settings: Settings) -> float:
        """Seconds one LLM call of this kind may take, retries included."""
        return float(getattr(settings, self.timeout_field, self.default_timeout))


KINDS: tuple[RequestKind, ...] = (
    RequestKind("plan", "openai_timeout", 60.0, unsuffixed_settings=True),
    RequestKind("draft", "draft_openai_timeout", 90.0),
)


def kind_of(target: str) -> RequestKind | None:
    """The kind whose webhook or worker `target` is, if any."""
    for kind in KINDS:
        if target in (kind.webhook_target, kind.worker_target):
            return kind
    return None
