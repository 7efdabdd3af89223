"""Calls started at the same moment, for the tests of races."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

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
