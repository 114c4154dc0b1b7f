"""A ceiling on how fast claims go to the debtor system (a backfill must not flood it).

``Pacer(per_second)`` is asked before each batch leaves: the first goes at once, and each next
one only when the claims sent so far, spread at ``per_second``, are used up. Over any stretch of
a run, claims sent <= per_second x seconds + one batch. The clock and the sleep are parameters,
so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fbs_debitor.core import settings


def backfill_max_rate() -> float:
    """``FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND`` (default 200; 0 = no ceiling; otherwise 1 to
    100000, checked in ``core.settings``)."""
    return settings.backfill_max_claims_per_second()


class Pacer:
    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not (math.isfinite(per_second) and per_second > 0):
            raise ValueError("per_second must be a positive number")
        self.per_second = per_second
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None
        self.waited = 0.0

    def wait(self, claims: int) -> None:
        """Block until ``claims`` more may go, then count them as gone."""
        now = self._clock()
        if self._next is not None and self._next > now:
            self._sleep(self._next - now)
            self.waited += self._next - now
            now = self._next
        self._next = max(self._next or now, now) + claims / self.per_second


def pacer_for_backfill() -> Pacer | None:
    rate = backfill_max_rate()
    return Pacer(rate) if rate else None
