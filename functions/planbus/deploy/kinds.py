"""The request kinds deploy sets up: the kinds planbus registers (planbus.kinds.KINDS), under deploy's names.

Every kind-specific name deploy uses comes from `KINDS`: the webhook target each kind's trigger calls
(`handle_<kind>_request`), its Cloud Tasks worker (`process_<kind>_request`), its table, the database
settings its trigger reads (`webhook_url_<kind>`, `realtime_channel_<kind>`), the worker URL setting the
dispatching functions get (`<KIND>_WORKER_URL`) and the setting bounding one LLM call of the kind. The
rest of deploy iterates over `KINDS`: functions.conf is checked against it, the webhooks, worker URLs and
InsForge channels are set from it. A kind registered in planbus.kinds is a kind deploy sets up.
"""

from __future__ import annotations

from dataclasses import dataclass

from planbus.kinds import KINDS as REGISTERED
from planbus.kinds import PLAN, AnyKind
from planbus.settings import Settings


@dataclass(frozen=True)
class RequestKind:
    """One registered kind of request, as deploy sees it."""

    registered: AnyKind

    @property
    def name(self) -> str:
        return self.registered.name

    @property
    def table(self) -> str:
        """The table the Mini App inserts this kind's requests into."""
        return self.registered.table

    @property
    def webhook_target(self) -> str:
        """The function the table's trigger calls (public: a database cannot present a Google identity)."""
        return self.registered.handle_target

    @property
    def worker_target(self) -> str:
        """The private function Cloud Tasks calls with each request of this kind (DISPATCH=cloud-tasks)."""
        return self.registered.process_target

    @property
    def timeout_field(self) -> str:
        """The setting bounding one LLM call of this kind (a field of Settings)."""
        return self.registered.timeout_setting

    @property
    def default_timeout(self) -> float:
        """That setting's documented default."""
        return float(Settings.model_fields[self.timeout_field].default)

    @property
    def unsuffixed_settings(self) -> bool:
        """Migration 0006's trigger, which serves plan_requests alone, reads its webhook URL and channel
        under the unsuffixed names webhook_url and realtime_channel: those are stored too for plans."""
        return self.registered is PLAN

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
        return self.registered.worker_url_setting.upper()

    def channel(self, prefix: str) -> str:
        """This kind's realtime channel: REALTIME_CHANNEL, then the kind (planbus-plan)."""
        return f"{prefix}-{self.name}"

    def llm_timeout(self, settings: Settings) -> float:
        """Seconds one LLM call of this kind may take, retries included."""
        return self.registered.timeout(settings)


KINDS: tuple[RequestKind, ...] = tuple(RequestKind(kind) for kind in REGISTERED)


def kind_of(target: str) -> RequestKind | None:
    """The kind whose webhook or worker `target` is, if any."""
    for kind in KINDS:
        if target in (kind.webhook_target, kind.worker_target):
            return kind
    return None
