"""Noticing that an agency's cut-off date moved (T3), and what that means for the hourly run.

The cut-off date is the municipality's setting in FBS. The ledger keeps, per agency, the date as
last seen (``cut_off.seen_cut_off``) and the date from which the hourly run transfers
(``cut_off.hourly_from``). Each transfer run (and each backfill plan) first calls ``detect``:

* first sight of an agency: both dates are its cut-off; its first run transfers everything from
  there, as always.
* moved **back**: the change is recorded, and the range from the new date up to ``hourly_from``
  becomes a backfill (``backfill``, requested by detection) for ``debitor_backfill``, which sends
  it month by month at a limited rate. The hourly run keeps leaving that range alone (see
  ``scope``) until the backfill completes; only then does ``hourly_from`` come down. An unfinished
  backfill of the agency is superseded: the new one covers its range too (what it sent stays sent).
* moved **forward**: the change is recorded and said (a warning in the log, a note on the change
  and on the backfill). Liabilities now before the cut-off are no longer sent (T1): a backfill
  whose range lies wholly before the new date is stopped; one that straddles it continues from
  the new date; nothing already sent is recalled.

An agency whose cut-off date cannot be read (SQLite keeps text in a DATE column; PostgreSQL a
year Python cannot hold) is left out of detection with an error in the log, and the other agencies
are detected as usual: nothing is recorded or moved for it until the date is readable.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from fbs_debitor.core import ledger
from fbs_debitor.core.db import Unreadable, as_date, shown
from fbs_debitor.core.settings import batch_size_default
from fbs_debitor.core.stores import Stores

log = logging.getLogger(__name__)

UNFINISHED = ("planned", "running", "failed")


@dataclass(frozen=True)
class Change:
    agency_id: str
    old: dt.date
    new: dt.date
    direction: str                 # back | forward
    backfill_id: str | None        # the backfill a move back handed its range to
    note: str

    def as_dict(self) -> dict:
        return {"agency": self.agency_id, "old": self.old.isoformat(), "new": self.new.isoformat(),
                "direction": self.direction, "backfill_id": self.backfill_id, "note": self.note}


def fbs_cut_offs(fbs: Engine) -> dict[str, dt.date]:
    """Every agency's cut-off date in FBS; one that cannot be read is logged and left out."""
    with fbs.connect() as conn:
        rows = conn.execute(text("SELECT agency_id, cut_off_date FROM agency ORDER BY agency_id")).all()
    found = {}
    for r in rows:
        try:
            cut = as_date(r.cut_off_date)
        except Unreadable as exc:
            log.error("agency %s: the cut-off date %s in FBS cannot be read (%s); no cut-off move is detected "
                      "for it until it is corrected (T1, T3)", r.agency_id, shown(r.cut_off_date), exc)
            continue
        if cut is None:
            log.error("agency %s has no cut-off date in FBS (T1)", r.agency_id)
            continue
        found[r.agency_id] = cut
    return found


def state(ledger_engine: Engine, agency_id: str) -> tuple[dt.date, dt.date] | None:
    """(seen_cut_off, hourly_from) of an agency, or None before its first detection."""
    with ledger_engine.connect() as conn:
        row = conn.execute(text("SELECT seen_cut_off, hourly_from FROM cut_off WHERE agency_id = :a"),
                           {"a": agency_id}).first()
    return None if row is None else (as_date(row.seen_cut_off), as_date(row.hourly_from))


def detect(stores: Stores, run_id: str | None = None, batch_size: int | None = None) -> list[Change]:
    """Compare every agency's cut-off date in FBS with the ledger's; record and act on each move.
    Safe to run concurrently: each agency's move is taken by exactly one caller."""

    changes = []
    for agency_id, cut in fbs_cut_offs(stores.fbs).items():
        try:
            with stores.ledger.begin() as conn:
                change = _detect_one(conn, agency_id, cut, run_id, batch_size or batch_size_default())
        except IntegrityError:   # another run recorded this agency at the same moment
            continue
        if change is not None:
            changes.append(change)
            (log.warning if change.direction == "forward" else log.info)("agency %s: %s", agency_id, change.note)
    return changes


def _detect_one(conn: Connection, agency_id: str, cut: dt.date, run_id: str | None,
                batch_size: int) -> Change | None:
    at = ledger.now()
    row = conn.execute(text("SELECT seen_cut_off, hourly_from FROM cut_off WHERE agency_id = :a"),
                       {"a": agency_id}).first()
    if row is None:
        conn.execute(text("INSERT INTO cut_off (agency_id, seen_cut_off, hourly_from, updated_at) "
                          "VALUES (:a, :c, :c, :t)"),
                     {"a": agency_id, "c": cut, "t": at})
        return None
    seen, hourly_from = as_date(row.seen_cut_off), as_date(row.hourly_from)
    if cut == seen:
        return None
    # Taken by whoever moves seen_cut_off from the value it read (a concurrent detection gets 0 rows).
    taken = conn.execute(text("UPDATE cut_off SET seen_cut_off = :c, updated_at = :t "
                              "WHERE agency_id = :a AND seen_cut_off = :old"),
                         {"c": cut, "t": at, "a": agency_id,
                          "old": seen}).rowcount
    if taken != 1:
        return None
    # Read again under the row lock just taken: a backfill finishing meanwhile may have moved it.
    hourly_from = as_date(conn.execute(text("SELECT hourly_from FROM cut_off WHERE agency_id = :a"),
                                       {"a": agency_id}).scalar())
    backfill_id = None
    if cut < seen:
        direction = "back"
        if cut < hourly_from:
            backfill_id = str(uuid.uuid4())
            superseded = close_unfinished(conn, agency_id, "superseded",
                                         f"superseded by backfill {backfill_id}: the cut-off moved back to {cut}",
                                         at)
            conn.execute(text(
                "INSERT INTO backfill (backfill_id, agency_id, from_date, to_date, dry_run, batch_size, requested_by, "
                "status, created_at, note) VALUES (:b, :a, :f, :u, :d, :n, 'detected', 'planned', :t, :note)"),
                {"b": backfill_id, "a": agency_id, "f": cut, "u": hourly_from,
                 "d": False, "n": batch_size, "t": at,
                 "note": f"cut-off moved back from {seen} to {cut}"})
            note = (f"cut-off date moved back from {seen} to {cut}: liabilities created {cut} - {hourly_from} "
                    f"(exclusive) are handed to debitor_backfill (backfill {backfill_id}); the hourly run leaves "
                    "them alone until it completes (T3)"
                    + (f"; {superseded} unfinished backfill(s) superseded, what they sent stays sent"
                       if superseded else ""))
        else:
            note = (f"cut-off date moved back from {seen} to {cut}; the hourly run already transfers from "
                    f"{hourly_from}: nothing to backfill")
    else:
        direction = "forward"
        if cut >= hourly_from:
            conn.execute(text("UPDATE cut_off SET hourly_from = :c WHERE agency_id = :a"),
                         {"c": cut, "a": agency_id})
            stopped = close_unfinished(conn, agency_id, "stopped",
                                      f"stopped: the cut-off moved forward to {cut}, the rest of the range is "
                                      "before it (T1); claims already sent stay sent (not recalled)", at)
            note = (f"cut-off date moved forward from {seen} to {cut}: liabilities created before {cut} are no "
                    "longer transferred (T1); nothing already sent is recalled"
                    + (f"; {stopped} unfinished backfill(s) stopped" if stopped else ""))
        else:
            n = _narrow_unfinished(conn, agency_id, cut, at)
            note = (f"cut-off date moved forward from {seen} to {cut}: liabilities created before {cut} are no "
                    f"longer transferred (T1); nothing already sent is recalled; the backfill continues from {cut} "
                    f"({n} unfinished backfill(s) narrowed, months before {cut} stopped)")
    conn.execute(text("INSERT INTO cut_off_change (change_id, agency_id, old_cut_off, new_cut_off, direction, "
                      "detected_at, run_id, backfill_id, note) VALUES (:i, :a, :o, :n, :d, :t, :r, :b, :note)"),
                 {"i": str(uuid.uuid4()), "a": agency_id, "o": seen, "n": cut,
                  "d": direction, "t": at, "r": run_id, "b": backfill_id, "note": note})
    return Change(agency_id, seen, cut, direction, backfill_id, note)


def unfinished(conn: Connection, agency_id: str) -> list[tuple[str, dt.date]]:
    """(backfill_id, from_date) of the agency's unfinished real backfills, earliest start first."""
    rows = conn.execute(text(
        "SELECT backfill_id, from_date FROM backfill WHERE agency_id = :a AND dry_run = :f "
        "AND status IN ('planned', 'running', 'failed') ORDER BY from_date, backfill_id"),
        {"a": agency_id, "f": False}).all()
    return [(r.backfill_id, as_date(r.from_date)) for r in rows]


def close_unfinished(conn: Connection, agency_id: str, status: str, note: str, at: dt.datetime) -> int:
    """Close the agency's unfinished real backfills (and their open chunks) with a status
    (stopped, superseded) and why."""
    ids = [backfill_id for backfill_id, _ in unfinished(conn, agency_id)]
    for backfill_id in ids:
        conn.execute(text("UPDATE backfill SET status = :s, finished_at = :t, note = :n WHERE backfill_id = :b"),
                     {"s": status, "t": at, "n": note, "b": backfill_id})
        conn.execute(text("UPDATE backfill_chunk SET status = 'stopped', note = :n "
                          "WHERE backfill_id = :b AND status IN ('pending', 'failed')"), {"n": note, "b": backfill_id})
    return len(ids)


def _narrow_unfinished(conn: Connection, agency_id: str, cut: dt.date, at: dt.datetime) -> int:
    """A cut-off moved forward into an unfinished backfill's range: it continues from the new date;
    its months wholly before it are stopped (a month straddling it sends only from the date: T1
    is applied live)."""
    note = f"the cut-off moved forward to {cut}: not sent (T1); claims already sent stay sent"
    ids = [backfill_id for backfill_id, start in unfinished(conn, agency_id) if start < cut]
    for backfill_id in ids:
        conn.execute(text("UPDATE backfill SET from_date = :c, note = :n WHERE backfill_id = :b"),
                     {"c": cut, "n": f"narrowed: {note}", "b": backfill_id})
        conn.execute(text("UPDATE backfill_chunk SET status = 'stopped', note = :n WHERE backfill_id = :b "
                          "AND chunk_to <= :c AND status IN ('pending', 'failed')"),
                     {"n": note, "b": backfill_id, "c": cut})
    return len(ids)


def waiting_backfills(ledger_engine: Engine) -> list[dict]:
    """Backfills detection handed over that no backfill run has taken up yet: what the transfer
    DAG triggers ``debitor_backfill`` with (keys and dates only)."""
    with ledger_engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT backfill_id, agency_id, from_date, batch_size FROM backfill WHERE requested_by = 'detected' "
            "AND status = 'planned' AND dry_run = :f ORDER BY created_at, agency_id"),
            {"f": False}).all()
    return [{"backfill_id": r.backfill_id, "agency": r.agency_id, "cut_off_date": as_date(r.from_date).isoformat(),
             "batch_size": int(r.batch_size)} for r in rows]
