"""The registry of request kinds: every kind planbus serves, each one registration.

    KINDS            every registered kind, in a fixed order (plans first)
    kind_named(n)    the kind whose SQL name is n ("plan", "draft")
    kind_for_table   the kind whose table an event names

A kind is also a row in planbus_private.request_kinds (its migration registers it there); the use cases,
entry points, sweeper and relay iterate over KINDS. Importing this package loads no kind: `KINDS`, `PLAN`
and `DRAFT` import their modules when first read (`from planbus.kinds import KINDS`), so an entry point
serving one kind (`from planbus.kinds.plans import PLAN`) loads no other, and no kind imports its LLM client
before its first request is generated.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from planbus.kinds.base import AnyKind, Finished, Provenance, RequestKind

if TYPE_CHECKING:
    from planbus.kinds.drafts import DRAFT
    from planbus.kinds.plans import PLAN

    KINDS: tuple[AnyKind, ...]

# Every registered kind in its fixed order (plans first): its name here, and the module defining it.
_REGISTERED = (("PLAN", "planbus.kinds.plans"), ("DRAFT", "planbus.kinds.drafts"))


def __getattr__(name: str) -> object:
    """`KINDS` and each registered kind, imported on first use and kept."""
    if name == "KINDS":
        value: object = tuple(getattr(import_module(module), kind) for kind, module in _REGISTERED)
    elif name in dict(_REGISTERED):
        value = getattr(import_module(dict(_REGISTERED)[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


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
    for kind in _kinds():
        if kind.name == name:
            return kind
    raise KeyError(f"no request kind {name!r}; registered: {', '.join(k.name for k in _kinds())}")


def kind_for_table(table: str) -> AnyKind | None:
    """The registered kind stored in public.<table>, if any."""
    return next((kind for kind in _kinds() if kind.table == table), None)


def _kinds() -> tuple[AnyKind, ...]:
    from planbus.kinds import KINDS  # read as any importer reads it: the first read imports every kind

    return KINDS
