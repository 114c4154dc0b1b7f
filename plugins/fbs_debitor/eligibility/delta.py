"""What changed in FBS since the last run: the hourly run's delta, and the nightly sweep (issue 19).

FBS marks every row it inserts or changes (``updated_at`` on liability, patron, guardianship and
agency: the extract contract, ``include/sql/fbs/schema.sql``). The ledger keeps, per agency, the
mark up to which every change has been looked at (``change_mark``). A run opens its **window**
when it starts (``open_window``, ledger ``run_window``): per agency, ``since`` (the agency's mark)
and ``until`` (FBS's mark now: the newest marker in FBS, but never later than FBS's own clock less
``FBS_DEBITOR_CHANGE_OVERLAP_MINUTES``, the longest FBS may take to commit a change after marking
it: every row marked up to ``until`` is committed, and so seen by the run). Every task of the run,
and a retried one, reads the same window. Then each step looks only at the **delta**
(``changes``): the liabilities whose row, borrower, debtor, guardianship or guardian FBS marked
changed after ``since`` (``queries/changed_liabilities.sql``), as a condition on the run's
``Scope``. (A row marked after ``until`` is looked at in this run and again in the next: harmless.)
An agency is looked at whole when it has no mark yet (its first run), when FBS marked the agency
itself changed (a cut-off date, an age limit, a setting), in a sweep, and when its delta is larger
than ``FBS_DEBITOR_CHANGE_DELTA_MAX`` (a list that long costs more than looking at everything).

The mark moves forward (``advance``) only when the agency's municipality finished its part of the
run: nothing failed, nothing held, nothing left unconfirmed or deferred to the next run. Otherwise
the next run looks at the same changes again, which is safe: every step is idempotent (a claim is
recorded once, a change once per version, a finding once).

What no marker shows (a row FBS changed without marking it, a deleted row, a setting of this
integration changed) is caught by the **nightly sweep** (``debitor_sweep``, at
``FBS_DEBITOR_SWEEP_HOUR``): the same run over everything, which then says what it found that the
markers had missed (``missed``): the liabilities it recorded a claim or a change message for that
were not marked changed since the agency's previous mark.

A run without a window (a library call, a test, a backfill chunk) looks at everything, as before.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from fbs_debitor.core import ledger
from fbs_debitor.core.db import as_datetime, chunked, in_query, local_clock, refresh_planner_statistics, sql_file
from fbs_debitor.core.settings import change_delta_max, change_overlap_minutes
from fbs_debitor.core.stores import MARKED_TABLES, Stores

CREATE_VERSION = 1   # the outbox version of a claim's creation (delivery.outbox.CREATE_VERSION)

log = logging.getLogger(__name__)

INCREMENTAL = "incremental"
SWEEP = "sweep"
MISSED = "missed_by_markers"      # run count category of a sweep: (agency, MISSED, "claim" | "change")
MARKER_TABLES = ("liability", *MARKED_TABLES)   # the tables FBS marks (core.stores adds the column to the rest)


@dataclass(frozen=True)
class Delta:
    """What a step looks at: these liabilities (sorted ids), and every liability of the agencies
    in ``whole``."""
    liability_ids: tuple[int, ...] = ()
    whole: tuple[str, ...] = ()

    def condition(self, alias: str = "l") -> tuple[str, dict]:
        """A SQL condition on ``<alias>.liability_id`` / ``<alias>.agency_id`` and its parameters.
        The ids are written into the SQL as integers (they come from FBS's own integer key, through
        ``int``), so a list of tens of thousands needs no bound parameter each."""
        parts, params = [], {}
        if self.whole:
            names = [f":delta_whole_{i}" for i in range(len(self.whole))]
            parts.append(f"{alias}.agency_id IN ({', '.join(names)})")
            params.update({f"delta_whole_{i}": a for i, a in enumerate(self.whole)})
        if self.liability_ids:
            parts.append(f"{alias}.liability_id IN ({id_list(self.liability_ids)})")
        return ("(" + " OR ".join(parts) + ")" if parts else "(1 = 0)"), params

    def describe(self) -> str:
        return (f"{len(self.liability_ids)} changed liability(ies)"
                + (f", agencies looked at whole: {', '.join(self.whole)}" if self.whole else ""))


def id_list(ids: Iterable[int]) -> str:
    """Integer ids as a SQL list (each through ``int``: nothing but digits reaches the SQL)."""
    return ",".join(str(int(i)) for i in ids)


def fbs_clock(fbs: Engine) -> dt.datetime:
    """FBS's own clock, local time (the database's, not this machine's)."""
    return local_clock(fbs)


def fbs_mark(fbs: Engine) -> dt.datetime:
    """FBS's mark now: the newest change marker in FBS, never later than FBS's clock less the
    overlap (a row marked since may not be committed yet; rows marked in the future count as
    changed until the clock passes them, never as seen)."""
    newest = []
    with fbs.connect() as conn:
        for table in MARKER_TABLES:
            value = conn.execute(text(f"SELECT MAX(updated_at) FROM {table}")).scalar()  # noqa: S608 - fixed names
            try:
                newest.append(as_datetime(value))
            except ValueError:   # SQLite keeps anything: a marker that is not a time marks nothing
                log.warning("FBS's %s.updated_at holds a value that is not a time; the nightly sweep covers it", table)
    clock = fbs_clock(fbs) - dt.timedelta(minutes=change_overlap_minutes())
    known = [v for v in newest if v is not None]
    return min(max(known), clock) if known else clock


def _agencies(fbs: Engine) -> dict[str, dt.datetime | None]:
    """Every FBS agency with its own change marker."""
    out: dict[str, dt.datetime | None] = {}
    with fbs.connect() as conn:
        for r in conn.execute(text("SELECT agency_id, updated_at FROM agency ORDER BY agency_id")):
            try:
                out[str(r.agency_id)] = as_datetime(r.updated_at)
            except ValueError:
                out[str(r.agency_id)] = None
    return out


def marks(ledger_engine: Engine) -> dict[str, tuple[dt.datetime, dt.datetime | None]]:
    """agency -> (its mark, the agency row's own marker when the mark was set)."""
    with ledger_engine.connect() as conn:
        return {str(r.agency_id): (as_datetime(r.marked_until), as_datetime(r.agency_marker))
                for r in conn.execute(text("SELECT agency_id, marked_until, agency_marker FROM change_mark"))}


def open_window(stores: Stores, run_id: str, sweep: bool = False) -> dict:
    """Fix what this run looks at, per agency (see the module doc), once: a retried task finds the
    window already open and gets the same. Returns a summary small enough for XCom."""
    existing = _window_rows(stores.ledger, run_id)
    if existing:
        return _summary(existing)
    for engine in (stores.fbs, stores.ledger):   # the delta's lookups beat an agency's index walk
        refresh_planner_statistics(engine)
    until = fbs_mark(stores.fbs)
    known = marks(stores.ledger)
    opened = ledger.now()
    rows = []
    for agency, agency_marker in _agencies(stores.fbs).items():
        previous, seen_marker = known.get(agency, (None, None))
        # Whole: a sweep; the agency's first run; the agency row itself changed (its marker is not
        # the one its mark was set with, or unknown): a cut-off date, an age limit, a setting.
        whole = sweep or previous is None or agency_marker is None or agency_marker != seen_marker
        rows.append({"r": run_id, "a": agency, "m": SWEEP if sweep else INCREMENTAL,
                     "s": None if whole else previous, "u": until, "p": previous, "k": agency_marker,
                     "t": opened})
    try:
        with stores.ledger.begin() as conn:
            for part in chunked(rows, 500):
                conn.execute(text("INSERT INTO run_window (run_id, agency_id, mode, since, until, previous_mark, "
                                  "agency_marker, opened_at) VALUES (:r, :a, :m, :s, :u, :p, :k, :t)"), part)
    except IntegrityError:   # opened meanwhile by a second try of the same task: theirs stands
        pass
    summary = _summary(_window_rows(stores.ledger, run_id))
    log.info("run window (%s): FBS's mark %s; %d agency(ies) from their last mark, looked at whole: %s",
             summary["mode"], summary["until"], summary["incremental"], ", ".join(summary["whole"]) or "none")
    return summary


def _window_rows(ledger_engine: Engine, run_id: str) -> list:
    with ledger_engine.connect() as conn:
        return conn.execute(text("SELECT agency_id, mode, since, until, previous_mark, agency_marker FROM run_window "
                                 "WHERE run_id = :r ORDER BY agency_id"), {"r": run_id}).all()


def _summary(rows) -> dict:
    modes = {r.mode for r in rows}
    return {"mode": SWEEP if SWEEP in modes else INCREMENTAL,
            "until": str(as_datetime(rows[0].until)) if rows else None,
            "whole": sorted(str(r.agency_id) for r in rows if r.since is None),
            "incremental": sum(1 for r in rows if r.since is not None)}


def window(ledger_engine: Engine, run_id: str) -> dict[str, dt.datetime | None] | None:
    """agency -> since (None: whole) of the run's window; None when the run opened none (it looks
    at everything). An agency missing from it (new since the run opened) is looked at whole."""
    rows = _window_rows(ledger_engine, run_id)
    if not rows:
        return None
    return {str(r.agency_id): as_datetime(r.since) for r in rows}


def changed_liabilities(fbs: Engine, since: dt.datetime, agencies: Iterable[str]) -> set[int]:
    """The ids of these agencies' liabilities FBS marked changed after ``since`` (directly or
    through their parties: ``queries/changed_liabilities.sql``)."""
    query = in_query(sql_file("queries/changed_liabilities.sql"), "agencies")
    with fbs.connect() as conn:
        return {int(r[0]) for r in conn.execute(query, {"since": since, "agencies": sorted(set(agencies))})}


_KEPT: dict[tuple, Delta | None] = {}   # (ledger, run, agencies) -> delta: a run's steps in one process ask again


def changes(stores: Stores, run_id: str, agencies: Iterable[str] | None = None) -> Delta | None:
    """What this run's step looks at among these agencies (None: every FBS agency): the delta, or
    None when the run has no window (everything). The window is fixed for the run, so a process
    works it out once per run and set of agencies (the unit's eligibility and its change
    detection, the checks and the findings ask the same); a row FBS marks meanwhile is the next
    run's (its marker is after this run's ``until``)."""
    key = (str(stores.ledger.url), run_id, tuple(sorted(set(agencies))) if agencies is not None else None)
    if key not in _KEPT:
        if len(_KEPT) > 64:
            _KEPT.clear()
        _KEPT[key] = _changes(stores, run_id, agencies)
    return _KEPT[key]


def _changes(stores: Stores, run_id: str, agencies: Iterable[str] | None) -> Delta | None:
    since_of = window(stores.ledger, run_id)
    if since_of is None:
        return None
    wanted = sorted(set(agencies)) if agencies is not None else sorted(_agencies(stores.fbs))
    whole = [a for a in wanted if since_of.get(a) is None]
    groups: dict[dt.datetime, list[str]] = {}
    for a in wanted:
        if since_of.get(a) is not None:
            groups.setdefault(since_of[a], []).append(a)
    ids: set[int] = set()
    limit = change_delta_max()
    for since, group in sorted(groups.items()):
        found = changed_liabilities(stores.fbs, since, group)
        if len(found) > limit:
            log.info("agencies %s: %d liabilities marked changed, more than FBS_DEBITOR_CHANGE_DELTA_MAX (%d): "
                     "looked at whole this run", ", ".join(group), len(found), limit)
            whole += group
        else:
            ids |= found
    return Delta(tuple(sorted(ids)), tuple(sorted(whole)))


def advance(stores: Stores, run_id: str, agencies: Iterable[str]) -> list[str]:
    """Move these agencies' marks forward to the run's ``until`` (never back: a slower run that
    finishes later leaves a newer mark alone). Returns the agencies moved."""
    rows = {str(r.agency_id): r for r in _window_rows(stores.ledger, run_id)}
    moved = []
    at = ledger.now()
    for agency in sorted(set(agencies)):
        row = rows.get(agency)
        if row is None:
            continue
        values = {"u": as_datetime(row.until), "k": as_datetime(row.agency_marker), "r": run_id, "t": at, "a": agency}
        for _attempt in range(2):
            try:
                with stores.ledger.begin() as conn:
                    n = conn.execute(text("UPDATE change_mark SET marked_until = :u, agency_marker = :k, run_id = :r, "
                                          "updated_at = :t WHERE agency_id = :a AND marked_until <= :u"), values).rowcount
                    if not n and conn.execute(text("SELECT 1 FROM change_mark WHERE agency_id = :a"),
                                              {"a": agency}).first() is None:
                        conn.execute(text("INSERT INTO change_mark (agency_id, marked_until, agency_marker, run_id, "
                                          "updated_at) VALUES (:a, :u, :k, :r, :t)"), values)
                        n = 1
                break
            except IntegrityError:   # another run inserted it meanwhile: compare again
                continue
        if n:
            moved.append(agency)
    if moved:
        log.info("change marks moved to %s for agencies %s", as_datetime(rows[moved[0]].until), ", ".join(moved))
    return moved


def missed(stores: Stores, run_id: str) -> Counter:
    """A sweep's finding about the markers: per agency, the liabilities it recorded a new claim or
    a change message for (ledger outbox, this run) that FBS had not marked changed after the agency's
    previous mark: what an hourly run would not have looked at. Counts
    (agency, MISSED, "claim" | "change"). Agencies without a previous mark (never run
    incrementally) are left out: there was nothing to miss."""
    with stores.ledger.connect() as conn:
        previous = {str(r.agency_id): as_datetime(r.previous_mark) for r in conn.execute(text(
            "SELECT agency_id, previous_mark FROM run_window WHERE run_id = :r AND previous_mark IS NOT NULL"),
            {"r": run_id})}
        recorded = conn.execute(text(
            "SELECT o.liability_id, c.agency_id, MIN(o.version) AS version FROM outbox o "
            "JOIN claim c ON c.liability_id = o.liability_id WHERE o.run_id = :r GROUP BY o.liability_id, c.agency_id"),
            {"r": run_id}).all()
    counts: Counter = Counter()
    by_since: dict[dt.datetime, list] = {}
    for r in recorded:
        mark = previous.get(str(r.agency_id))
        if mark is not None:
            by_since.setdefault(mark, []).append(r)
    for since, rows in by_since.items():
        plain = {str(r.agency_id) for r in rows} - _marked_agencies(stores.fbs, since, {str(r.agency_id) for r in rows})
        rows = [r for r in rows if str(r.agency_id) in plain]
        if not rows:
            continue
        marked = changed_liabilities(stores.fbs, since, plain)
        for r in rows:
            if int(r.liability_id) not in marked:
                counts[(str(r.agency_id), MISSED, "claim" if int(r.version) == CREATE_VERSION else "change")] += 1
    return counts


def _marked_agencies(fbs: Engine, since: dt.datetime, agencies: set[str]) -> set[str]:
    """Those of these agencies FBS marked changed themselves since ``since`` (the hourly run looks at
    such an agency whole: nothing of it was missed)."""
    query = in_query("SELECT agency_id FROM agency WHERE agency_id IN :a AND (updated_at > :s OR updated_at IS NULL)",
                     "a")
    with fbs.connect() as conn:
        return {str(r[0]) for r in conn.execute(query, {"a": sorted(agencies), "s": since})}
