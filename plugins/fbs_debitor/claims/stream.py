"""Eligible liabilities to built claims, streamed page by page (set-based extracts, flat memory).

Each eligibility page (``eligibility.iter_verdicts``) is followed by one query of
``claim_rows.sql`` for exactly its eligible liabilities, whose rows ``claims.builder.build`` turns
into claims. Replacement CPR numbers already in FBS are loaded once, so new ones never
collide with them or with each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

from fbs_debitor.claims.builder import build
from fbs_debitor.claims.model import Built
from fbs_debitor.core.db import sql_file
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.eligibility import rules as eligibility


@dataclass
class Page:
    verdicts: list[eligibility.Verdict]
    built: list[tuple[object, Built]]      # (claim row, result) for each eligible liability


class RowWith:
    """A claim row with some fields replaced (e.g. the amount the debtor system was told, when a
    message is sent again after FBS changed it: the change goes as its own message)."""

    def __init__(self, row, **fields):
        self._row, self._fields = row, fields

    def __getattr__(self, name):
        if name in self._fields:
            return self._fields[name]
        return getattr(self._row, name)


def taken_replacement_cprs(fbs: Engine) -> set[str]:
    with fbs.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT replacement_cpr FROM patron WHERE replacement_cpr IS NOT NULL"))}


IN_LIST_MAX = 10_000  # bound parameters per query (SQLite's limit is 32,766)


def claim_rows(fbs: Engine, liability_ids: list[int], today: dt.date) -> list:
    query = text(sql_file("queries/claim_rows.sql")).bindparams(bindparam("ids", expanding=True))
    rows: list = []
    with fbs.connect() as conn:
        for start in range(0, len(liability_ids), IN_LIST_MAX):
            part = liability_ids[start:start + IN_LIST_MAX]
            rows += conn.execute(query, {"ids": part, "today": today}).all()
    return rows


def iter_pages(fbs: Engine, ledger: Engine, page_size: int | None = None, today: dt.date | None = None,
               scope=None) -> Iterator[Page]:
    today = today or dt.date.today()
    registry = ReplacementCprRegistry(taken_replacement_cprs(fbs))
    for verdicts in eligibility.iter_verdicts(fbs, ledger, page_size, scope):
        eligible = [v.liability_id for v in verdicts if v.category == eligibility.ELIGIBLE]
        rows = claim_rows(fbs, eligible, today) if eligible else []
        yield Page(verdicts, [(row, build(row, registry, today)) for row in rows])
