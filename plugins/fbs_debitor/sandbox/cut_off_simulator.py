"""Demo only: a municipality moving agencies' cut-off date in the synthetic FBS (T3)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from fbs_debitor.core.db import as_date
from fbs_debitor.core.settings import age_limit_range
from fbs_debitor.core.stores import Stores


def simulate_move(stores: Stores, to: dt.date | None = None, agencies: list[str] | None = None
                  ) -> dict[str, tuple[dt.date, dt.date]]:
    """Demo only (the synthetic FBS): set agencies' cut-off date, as a municipality would in FBS.
    Default date: the first of the month of the oldest liability; default agencies: those whose
    age limit is sane (C3 agencies are held whatever their cut-off). Returns {agency: (old, new)}."""
    low, high = age_limit_range()
    with stores.fbs.begin() as conn:
        if to is None:
            oldest = conn.execute(text("SELECT MIN(created_at) FROM liability")).scalar()
            if oldest is None:
                return {}
            to = as_date(oldest).replace(day=1)
        rows = conn.execute(text("SELECT agency_id, cut_off_date, age_limit FROM agency ORDER BY agency_id")).all()
        chosen = [r for r in rows if (r.agency_id in agencies if agencies else low <= int(r.age_limit) <= high)]
        moved = {}
        for r in chosen:
            if as_date(r.cut_off_date) != to:
                conn.execute(text("UPDATE agency SET cut_off_date = :d, updated_at = :t WHERE agency_id = :a"),
                             {"d": to, "a": r.agency_id, "t": dt.datetime.now().replace(microsecond=0)})
                moved[r.agency_id] = (as_date(r.cut_off_date), to)
    return moved
