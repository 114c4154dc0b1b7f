"""Eligible liabilities to built claims, streamed page by page (set-based extracts, flat memory).

Each eligibility page (``eligibility.iter_verdicts``) is followed by one query of
``claim_rows.sql`` for exactly its eligible liabilities, whose rows ``claims.builder.build`` turns
into claims. Replacement CPR numbers already in FBS are loaded once, so new ones never
collide with them or with each other.

Each row's amount and dates are read here first, one row at a time (``read_values``): a value
that cannot be read exactly as FBS holds it (an amount as text or with a third decimal, a date
that is not a date or lies beyond what a claim can carry) makes that liability a Problem naming
its rule and check code, and the rest of the page is built as usual. Nothing is rounded, cut or
guessed to make it fit.

The settings the build needs (``core.settings.BuildSettings``) are read once, when the stream
starts, never per row; a setting changed meanwhile is for the next run. A page's rows are built
from plain named tuples of the same columns (``plain_rows``), with the cyclic garbage collector
paused while the page is read and built (``eligibility.rules.paused_gc``).
"""

from __future__ import annotations

import datetime as dt
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.claims.builder import build
from fbs_debitor.claims.model import Built, Problem
from fbs_debitor.core.db import Unreadable, exact_amount, in_query, shown, sql_file, usable_date, usable_timestamp
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.core.settings import BuildSettings, build_settings
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


@dataclass(frozen=True)
class Value:
    """A column of ``claim_rows.sql`` read before building, and what it means when it cannot be."""

    column: str
    read: Callable
    rule: str
    code: str
    what: str          # Danish / English
    kind: str          # what it should be, Danish / English
    party: str = "d"   # whose patron id the finding names: the debtor (d) or the guardian (g)


AMOUNT = "kroner og øre / kroner and øre"
DATE = "en dato / a date"
VALUES = (
    Value("amount", exact_amount, "F2", "F2_amount_not_exact", "Beløbet / the amount", AMOUNT),
    Value("created_at", usable_timestamp, "F2", "F2_date_unreadable", "Oprettelsestidspunktet / the creation time",
          DATE),
    Value("loan_date", usable_date, "F2", "F2_date_unreadable", "Udlånsdatoen / the loan date", DATE),
    Value("due_date", usable_date, "F2", "F2_date_unreadable", "Afleveringsfristen / the loan's due date", DATE),
    Value("reloan_date", usable_date, "F2", "F2_date_unreadable", "Genlånsdatoen / the re-loan date", DATE),
    # A birth date decides the replacement CPR (I1) and whether the debtor is a minor (C1).
    Value("d_birth_date", usable_date, "I1", "I1_replacement_cpr_not_possible",
          "Lånerens fødselsdato / the patron's birth date", DATE),
    Value("g_birth_date", usable_date, "I1", "I1_replacement_cpr_not_possible",
          "Den økonomisk ansvarliges fødselsdato / the guardian's birth date", DATE, party="g"),
)


_READERS = tuple((v.column, v.read) for v in VALUES)
_RAW = attrgetter(*(v.column for v in VALUES))


def read_values(row) -> tuple[dict[str, object], Problem | None]:
    """The row's amount and dates as Python values ({column: value}, None where unreadable) and
    the Problem of the first one that cannot be read as it is (None when all can). Never raises:
    one row's values never stop the page."""
    try:
        return {column: read(raw) for (column, read), raw in zip(_READERS, _RAW(row), strict=True)}, None
    except Unreadable:
        pass
    values: dict[str, object] = {}
    problem = None
    for v in VALUES:
        raw = getattr(row, v.column)
        try:
            values[v.column] = v.read(raw)
        except Unreadable as exc:
            values[v.column] = None
            if problem is None:
                da, en = v.what.split(" / ")
                kind_da, kind_en = v.kind.split(" / ")
                patron = row.g_patron_id if v.party == "g" else (row.d_patron_id or row.b_patron_id)
                problem = Problem(row.liability_id, row.agency_id, patron, v.rule,
                                  f"{da} {shown(raw)} kan ikke læses som {kind_da} ({exc}) / "
                                  f"{en} {shown(raw)} cannot be read as {kind_en}", code=v.code)
    return values, problem


def build_row(row, registry: ReplacementCprRegistry, today: dt.date, *,
              settings: BuildSettings | None = None) -> Built:
    """The claim of one eligible liability's row, or its Problem when a value cannot be read.
    ``settings``: the run's snapshot (``core.settings.build_settings``), read once per run."""
    values, problem = read_values(row)
    if problem is not None:
        return Built(problem=problem)
    return build(row, registry, today, settings=settings, values=values)


def taken_replacement_cprs(fbs: Engine) -> set[str]:
    with fbs.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT replacement_cpr FROM patron WHERE replacement_cpr IS NOT NULL"))}


IN_LIST_MAX = 10_000  # bound parameters per query (SQLite's limit is 32,766)


def claim_rows(fbs: Engine, liability_ids: list[int], today: dt.date) -> list:
    query = in_query(sql_file("queries/claim_rows.sql"), "ids")
    rows: list = []
    with fbs.connect() as conn:
        for start in range(0, len(liability_ids), IN_LIST_MAX):
            part = liability_ids[start:start + IN_LIST_MAX]
            rows += conn.execute(query, {"ids": part, "today": today}).all()
    return rows


@lru_cache(maxsize=32)
def _record(fields: tuple[str, ...]) -> type:
    return namedtuple("ClaimRow", fields)


def plain_rows(rows: list) -> list:
    """The rows as plain named tuples (same names, same values, same order): a build reads some
    eighty of a row's fields, and a tuple's field is read several times faster than a SQLAlchemy
    Row's, whose attribute access goes through its result's key map."""
    if not rows:
        return rows
    make = _record(tuple(rows[0]._fields))._make
    return [make(row) for row in rows]


def iter_pages(fbs: Engine, ledger: Engine, page_size: int | None = None, today: dt.date | None = None,
               scope=None, *, settings: BuildSettings | None = None) -> Iterator[Page]:
    """The run's pages. The settings the pages need are read once, here, at the start of the
    stream (``settings``: a snapshot the caller already read), never per row or per page."""
    today = today or dt.date.today()
    settings = settings or build_settings()
    registry = ReplacementCprRegistry(taken_replacement_cprs(fbs))
    for verdicts in eligibility.iter_verdicts(fbs, ledger, page_size, scope, settings=settings):
        eligible = [v.liability_id for v in verdicts if v.category == eligibility.ELIGIBLE]
        with eligibility.paused_gc():     # reading and building the page; never across the yield
            rows = plain_rows(claim_rows(fbs, eligible, today)) if eligible else []    # one copy of the rows
            built = [(row, build_row(row, registry, today, settings=settings)) for row in rows]
        yield Page(verdicts, built)
