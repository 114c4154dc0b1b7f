"""Eligible liabilities to built claims, streamed page by page (set-based extracts, flat memory).

Each eligibility page (``eligibility.iter_verdicts``) is followed by one range query of
``claim_rows.sql`` for its liabilities; the rows of the eligible ones are built by
``claim_builder.build``. Replacement CPR numbers already in FBS are loaded once, so new ones never
collide with them or with each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor import eligibility
from fbs_debitor.claim_builder import build
from fbs_debitor.claims import Built
from fbs_debitor.db import sql_file
from fbs_debitor.identity import ReplacementCprRegistry


@dataclass
class Page:
    verdicts: list[eligibility.Verdict]
    built: list[tuple[object, Built]]      # (claim row, result) for each eligible liability


def taken_replacement_cprs(fbs: Engine) -> set[str]:
    with fbs.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT replacement_cpr FROM patron WHERE replacement_cpr IS NOT NULL"))}


def claim_rows(fbs: Engine, low_id: int, high_id: int) -> list:
    with fbs.connect() as conn:
        return conn.execute(text(sql_file("queries/claim_rows.sql")), {"low_id": low_id, "high_id": high_id}).all()


def iter_pages(fbs: Engine, ledger: Engine, page_size: int | None = None, today: dt.date | None = None) -> Iterator[Page]:
    registry = ReplacementCprRegistry(taken_replacement_cprs(fbs))
    for verdicts in eligibility.iter_verdicts(fbs, ledger, page_size):
        eligible = {v.liability_id for v in verdicts if v.category == eligibility.ELIGIBLE}
        built = []
        if eligible:
            rows = claim_rows(fbs, min(eligible), max(eligible))
            built = [(row, build(row, registry, today)) for row in rows if row.liability_id in eligible]
        yield Page(verdicts, built)
