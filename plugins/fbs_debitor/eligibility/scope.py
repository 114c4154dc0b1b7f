"""Which liabilities a run covers: the hourly run's, or one backfill chunk's (T1, T3).

The queries that select, count and check liabilities (``include/sql/queries/eligibility_*.sql``)
carry placeholders that a ``Scope`` fills with SQL conditions on ``liability l`` joined with
``agency a``, values always as bound parameters:

  {universe}       the liabilities this run accounts for: all of them (hourly), or one agency's
                   liabilities created in [from, to) (a backfill chunk)
  {t1}             on or after the cut-off date (T1): FBS's own setting, read live, so a cut-off
                   moved forward in the middle of a backfill stops it at the next page; a dry-run
                   preview of a cut-off not yet moved in FBS counts from its own date instead
  {after_cut_off}  on or after FBS's cut-off date (whatever the run's preview)
  {held}           the ranges the hourly run leaves to debitor_backfill: per agency, created
                   before the ledger's ``cut_off.hourly_from`` (with {t1}: the range between FBS's
                   cut-off date and that date)

A creation time that is not a timestamp at all (SQLite keeps any value in any column) is neither
before nor after a date: such a liability is in the hourly run's scope, never in a backfill
chunk's or a held range, so eligibility refuses it with a finding (F2) instead of counting it as
older than the cut-off (``db.is_timestamp``).

Nothing here decides a rule's outcome; it only says which liabilities a run is about, so that an
hourly run never sends a backlog that waits for the backfill, and a chunk never reaches outside
its month.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from fbs_debitor.core.db import as_date, chunked, in_query, is_timestamp, sql_file
from fbs_debitor.eligibility.delta import Delta


@dataclass(frozen=True)
class Scope:
    held: tuple[tuple[str, dt.date], ...] = ()   # hourly: (agency, hourly_from) awaiting the backfill
    agency_id: str | None = None                  # a chunk: one agency's [from_date, to_date)
    from_date: dt.date | None = None
    to_date: dt.date | None = None
    follow_cut_off: bool = True                   # False only for a dry-run preview (see above)
    agencies: tuple[str, ...] = ()                # hourly, one unit: only these agencies (empty: all)
    changed: Delta | None = None                  # hourly, incremental: only the run's delta (None: all)

    @property
    def is_chunk(self) -> bool:
        return self.agency_id is not None

    @classmethod
    def chunk(cls, agency_id: str, from_date: dt.date, to_date: dt.date, follow_cut_off: bool = True) -> Scope:
        if not from_date < to_date:
            raise ValueError(f"empty chunk {from_date} - {to_date}")
        return cls(agency_id=agency_id, from_date=from_date, to_date=to_date, follow_cut_off=follow_cut_off)

    def conditions(self, bind: Engine | Connection) -> tuple[dict[str, str], dict]:
        """The placeholders' SQL and their parameters (for the FBS database ``bind``)."""
        params: dict = {}
        dated = is_timestamp(bind, "l.created_at")
        if self.is_chunk:
            universe = ("(l.agency_id = :scope_agency AND l.created_at >= :scope_from "
                        "AND l.created_at < :scope_to)")
            params.update(scope_agency=self.agency_id, scope_from=self.from_date,
                          scope_to=self.to_date)
        elif self.agencies:
            names = [f":scope_unit_{i}" for i in range(len(self.agencies))]
            # With a delta, the unit's agencies are a filter, not the way in: written so that no
            # index serves them (``|| ''``), the plan starts from the delta (its ids: the primary
            # key) instead of walking each agency's whole liability index (0.2 s per agency at 1M).
            column = "l.agency_id || ''" if self.changed is not None else "l.agency_id"
            universe = f"({column} IN ({', '.join(names)}))"
            params.update({f"scope_unit_{i}": a for i, a in enumerate(self.agencies)})
        else:
            universe = "(1 = 1)"
        if self.changed is not None and not self.is_chunk:
            condition, delta_params = self.changed.condition("l")
            universe = f"({universe} AND {condition})"
            params.update(delta_params)
        after_cut_off = f"(l.created_at >= a.cut_off_date OR NOT {dated})"
        t1 = after_cut_off if self.follow_cut_off else "(1 = 1)"
        parts = []
        for i, (agency_id, until) in enumerate(self.held):
            parts.append(f"(l.agency_id = :scope_held_{i} AND l.created_at < :scope_until_{i} AND {dated})")
            params[f"scope_held_{i}"] = agency_id
            params[f"scope_until_{i}"] = until
        held = "(" + " OR ".join(parts) + ")" if parts else "(1 = 0)"
        return {"{universe}": universe, "{t1}": t1, "{after_cut_off}": after_cut_off, "{held}": held}, params

    def render(self, relpath: str, bind: Engine | Connection) -> tuple[str, dict]:
        """``include/sql/<relpath>`` with the placeholders filled for the FBS database ``bind``, and
        the parameters they bind."""
        sql = sql_file(relpath)
        fragments, params = self.conditions(bind)
        for marker, condition in fragments.items():
            sql = sql.replace(marker, condition)
        return sql, params

    def describe(self) -> str:
        delta = f" ({self.changed.describe()})" if self.changed is not None and not self.is_chunk else ""
        return self._describe() + delta

    def _describe(self) -> str:
        if self.is_chunk:
            return (f"agency {self.agency_id}, created {self.from_date} - {self.to_date} (exclusive)"
                    + ("" if self.follow_cut_off else ", counted from its own start (dry-run preview)"))
        if self.agencies:
            return (f"agencies {', '.join(self.agencies)} from their cut-off date"
                    + "".join(f", except {a} before {d} (awaiting debitor_backfill)" for a, d in self.held
                              if a in self.agencies))
        if not self.held:
            return "every agency from its cut-off date"
        return "every agency from its cut-off date, except " + ", ".join(
            f"{a} before {d} (awaiting debitor_backfill)" for a, d in self.held)


def standing(fbs: Engine, scope: Scope, liability_ids) -> list:
    """Where each of these liabilities stands against the scope (``liability_in_scope.sql``: rows
    of liability_id, in_universe, due, waiting); ids no longer in FBS have no row."""
    sql, params = scope.render("queries/liability_in_scope.sql", fbs)
    query = in_query(sql, "ids")
    rows: list = []
    with fbs.connect() as conn:
        for part in chunked(sorted(liability_ids), 10_000):
            rows += conn.execute(query, {**params, "ids": part}).all()
    return rows


EVERYTHING = Scope()   # every agency from its cut-off date: before any backfill was ever recorded


def hourly(ledger: Engine, since: dt.datetime | None = None, agencies=None, changed: Delta | None = None) -> Scope:
    """The hourly run's scope: everything from each agency's cut-off date, except what lies before
    the date the hourly run has taken over (``cut_off.hourly_from``). Every known agency is listed,
    not only those with a backfill recorded: a cut-off moved back in FBS that no detection has seen
    yet is then still held back instead of sent at once. (Where ``hourly_from`` is not later than
    the cut-off, the condition excludes nothing T1 does not.) An agency never seen has no row: its
    first run transfers everything from its cut-off date, as it always did.

    ``since`` (a run's start): also hold what backfills completed since then had held, so that a
    run resolving its findings at its end decides only about what it looked at.

    ``agencies`` (one unit's, ``transfer.units``): only those agencies' liabilities.

    ``changed`` (the incremental run's, ``eligibility.delta.changes``): only those liabilities."""
    with ledger.connect() as conn:
        rows = [(r.agency_id, as_date(r.hourly_from))
                for r in conn.execute(text("SELECT agency_id, hourly_from FROM cut_off ORDER BY agency_id"))]
        if since is not None:
            rows += [(r.agency_id, as_date(r.to_date)) for r in conn.execute(text(
                "SELECT agency_id, to_date FROM backfill WHERE status = 'complete' AND dry_run = :f "
                "AND finished_at >= :t ORDER BY agency_id, to_date"),
                {"f": False, "t": since})]
    if agencies:
        unit = tuple(sorted(set(agencies)))
        return Scope(held=tuple(r for r in rows if r[0] in unit), agencies=unit, changed=changed)
    return Scope(held=tuple(rows), changed=changed)
