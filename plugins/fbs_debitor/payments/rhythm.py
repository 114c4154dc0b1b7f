"""Each debtor system's rhythm for payments coming back (P1), one definition for both sides: the
emulator delivers files on it, and the ``debitor_payments`` DAG is scheduled from it.

| vendor   | delivers a file                                     | debitor_payments picks up     |
|----------|-----------------------------------------------------|-------------------------------|
| KMD_OPUS | nightly, 02:00, the day's movements                 | 05:00 (visible next morning)  |
| PRISME   | FBS_DEBITOR_PRISME_PAYMENT_RHYTHM: ``hourly`` (default, on the hour) or ``nightly`` (as KMD OPUS) | 10 past each hour / 05:00 |
| EG       | every FBS_DEBITOR_EG_PAYMENT_MINUTES (default 15), small files | 5 minutes after each delivery |

Times are Europe/Copenhagen. FBS_DEBITOR_PAYMENT_VENDORS (default all three) says which vendors the
municipality's agencies use, so the DAG is not woken every 15 minutes for an EG rhythm nobody has.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from fbs_debitor.core.settings import TIMEZONE

VENDORS = ("KMD_OPUS", "PRISME", "EG")
NIGHTLY_HOUR = 2
PICKUP_HOUR = 5


@dataclass(frozen=True)
class Rhythm:
    vendor: str
    name: str                 # nightly | hourly | every N minutes
    minutes: int              # length of one delivery period
    anchor_minute: int        # minutes after local midnight of one delivery
    pickup_cron: str

    def deliveries(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        """The deliveries due in (start, end]: each (period start, delivery time); a file holds the
        movements booked in its period. Times are aware (Europe/Copenhagen)."""
        tz = ZoneInfo(TIMEZONE)
        start, end = start.astimezone(tz), end.astimezone(tz)
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        first = day + dt.timedelta(minutes=self.anchor_minute % self.minutes)
        step = dt.timedelta(minutes=self.minutes)
        if first > start:
            first -= step * ((first - start) // step + 1)
        at = first + step * ((start - first) // step + 1)
        out = []
        while at <= end:
            out.append((at - step, at))
            at += step
        return out


def rhythm(vendor: str) -> Rhythm:
    if vendor == "KMD_OPUS":
        return Rhythm(vendor, "nightly", 24 * 60, NIGHTLY_HOUR * 60, f"0 {PICKUP_HOUR} * * *")
    if vendor == "PRISME":
        setting = os.environ.get("FBS_DEBITOR_PRISME_PAYMENT_RHYTHM", "hourly")
        if setting == "nightly":
            return Rhythm(vendor, "nightly", 24 * 60, NIGHTLY_HOUR * 60, f"0 {PICKUP_HOUR} * * *")
        if setting != "hourly":
            raise ValueError(f"FBS_DEBITOR_PRISME_PAYMENT_RHYTHM must be hourly or nightly, not {setting!r}")
        return Rhythm(vendor, "hourly", 60, 0, "10 * * * *")
    if vendor == "EG":
        raw = os.environ.get("FBS_DEBITOR_EG_PAYMENT_MINUTES", "15")
        minutes = int(raw) if raw.strip().isdigit() else 0
        if minutes <= 0 or 60 % minutes:
            raise ValueError(f"FBS_DEBITOR_EG_PAYMENT_MINUTES must divide 60 (5, 10, 15, 20, 30), not {raw!r}")
        return Rhythm(vendor, f"every {minutes} minutes", minutes, 0, f"{5 % minutes}-59/{minutes} * * * *")
    raise ValueError(f"unknown vendor {vendor!r}: one of {', '.join(VENDORS)}")


def vendors_in_use() -> list[str]:
    raw = os.environ.get("FBS_DEBITOR_PAYMENT_VENDORS", ",".join(VENDORS))
    chosen = [v.strip() for v in raw.split(",") if v.strip()]
    unknown = set(chosen) - set(VENDORS)
    if unknown or not chosen:
        raise ValueError(f"FBS_DEBITOR_PAYMENT_VENDORS: {raw!r}; a comma list of {', '.join(VENDORS)}")
    return chosen


def pickup_crons() -> list[str]:
    """The ``debitor_payments`` schedule: one cron per rhythm in use (duplicates merged)."""
    return sorted({rhythm(v).pickup_cron for v in vendors_in_use()})
