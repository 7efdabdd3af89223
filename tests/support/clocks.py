"""A clock for the tests that check a request reads the time once."""

from __future__ import annotations

from datetime import datetime

from planbus.clock import FixedClock


class OneReadingClock(FixedClock):
    """A fixed clock that counts how often it is read."""

    def __init__(self, at: datetime) -> None:
        super().__init__(at)
        self.readings = 0

    def now(self) -> datetime:
        self.readings += 1
        return super().now()
