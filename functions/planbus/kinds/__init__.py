"""The registry of request kinds: every kind planbus serves, each one registration.

    KINDS            every registered kind, in a fixed order (plans first)
    kind_named(n)    the kind whose SQL name is n ("plan", "draft")
    kind_for_table   the kind whose table an event names

A kind is also a row in planbus_private.request_kinds (its migration registers it there); the use cases,
entry points, sweeper and relay iterate over KINDS. Importing this package loads no generator: each kind
imports its LLM client only when its first request is generated.
"""

from __future__ import annotations

from planbus.kinds.base import AnyKind, Finished, Provenance, RequestKind
from planbus.kinds.drafts import DRAFT
from planbus.kinds.plans import PLAN

KINDS: tuple[AnyKind, ...] = (PLAN, DRAFT)

__all__ = [
    "DRAFT",
    "KINDS",
    "PLAN",
    "AnyKind",
    "Finished",
    "Provenance",
    "RequestKind",
    "kind_for_table",
    "kind_named",
]


def kind_named(name: str) -> AnyKind:
    """The registered kind called `name`; KeyError for any other."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f"no request kind {name!r}; registered: {', '.join(k.name for k in KINDS)}")


def kind_for_table(table: str) -> AnyKind | None:
    """The registered kind stored in public.<table>, if any."""
    return next((kind for kind in KINDS if kind.table == table), None)
