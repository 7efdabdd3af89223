"""Calls started at the same moment, for the tests of races: the one way the tests run callables together.

with connections(url, 4) as conns:                       # opened before the race, not during it
    answers = run_together([partial(claim, conn) for conn in conns])
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


def run_together(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run each call in its own thread, all released at once by a barrier, and wait for every one.

    Returns the results in the order the calls finished; fails with what any call raised (an assertion in
    a call included), which a thread would otherwise swallow.
    """
    start = threading.Barrier(len(calls))
    results: list[T] = []
    errors: list[BaseException] = []

    def run(call: Callable[[], T]) -> None:
        try:
            start.wait(timeout=10)
            results.append(call())
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise AssertionError(f"{len(errors)} of {len(calls)} calls failed: {errors!r}") from errors[0]
    return results


@contextmanager
def connections(url: str, count: int, **options: Any) -> Iterator[list[psycopg.Connection[Any]]]:
    """`count` connections to `url` (psycopg.connect `options`), each for one racer, closed afterwards."""
    with ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(url, **options)) for _ in range(count)]
