"""Backfill: an agency's older range sent month by month after its cut-off date moved back (T3).

Three steps, the tasks of DAG ``debitor_backfill`` and of ``python -m fbs_debitor backfill``:

``plan``      validates the request (agency, new cut-off date, dry run, batch size; see "Which
              requests are refused" below), brings the
              ledger's view of the cut-off dates up to date (``cut_off.detect``) and records the
              backfill of [new cut-off, the date the hourly run transfers from) with one chunk
              per calendar month. A request matching an unfinished backfill resumes it.
``run_chunk`` one month: the hourly run's steps (data-quality checks, eligibility T1-T6, build,
              send through the outbox, staff tasks, findings) on that month's liabilities only,
              as a ledger run of kind ``backfill``, at most at the configured send rate, holding
              the ``sending`` lock. A chunk already done is not done again; one that failed is
              done again (what it recorded but never got answered goes first, under its own keys).
              A dry run writes the claims it would send as files with counts, sends nothing.
``finish``    a backfill whose chunks are all done is complete; only then does the hourly run
              take over its range (``cut_off.hourly_from`` comes down to its start), and with it
              whatever the backfill could not send yet (verified later, data fixed later).

Which requests are refused, before anything is recorded (``BackfillError``, a message naming the
agency, the value and what is allowed): an agency id that is not six digits (the ISIL number without
DK-), an agency FBS does not know, a date that is not YYYY-MM-DD, in the future, or before
``EARLIEST_CUT_OFF`` (2000-01-01); a real backfill from before FBS's own cut-off date (T1/T3); an
agency held for its age limit (C3). 2000-01-01 is a fixed floor, the same for every agency and
every path (Airflow's ``plan``, the CLI, a dry run): no claim created before it can still be
collected (the Danish limitation act's absolute limit is ten years), it needs no data, so it is
known before anything is read, and it keeps a backfill to a few hundred months, far below
Airflow's ``max_map_length`` (1024 mapped tasks), where 0001-01-01 asked for 24,300.

T3 exactly: the chunk's scope is open liabilities of its month on or after FBS's cut-off date
(read live: a cut-off moved forward meanwhile stops the rest); closed and sent-to-collection ones
are counted out (T3-closed, T3-collection), ones in the ledger are never sent again
(already_sent), and responsibility is decided at each liability's creation (C5, in
``claim_source.sql``) like on the hourly path, because it is the same code.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core import ledger, storage
from fbs_debitor.core.db import as_bool, as_date, as_datetime, in_query
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.settings import age_limit_range, batch_size_default
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.eligibility import cut_off
from fbs_debitor.eligibility import rules as eligibility
from fbs_debitor.eligibility.scope import Scope, standing
from fbs_debitor.quality import checks as dq_checks
from fbs_debitor.transfer import dry_run
from fbs_debitor.transfer import run as transfer

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 5000
EARLIEST_CUT_OFF = dt.date(2000, 1, 1)     # the floor of a backfill's start (see the module doc)
AGENCY_ID = re.compile(r"^[0-9]{6}$")      # an FBS agency: the library's ISIL number without DK-


class BackfillError(ValueError):
    """A request that cannot be carried out as asked; the message names the agency and the rule."""


class ChunkIncomplete(RuntimeError):
    """A chunk ran but not everything in it reached the debtor system; doing it again finishes it."""


@dataclass(frozen=True)
class Request:
    agency_id: str
    cut_off_date: dt.date
    dry_run: bool = False
    batch_size: int | None = None


@dataclass
class Plan:
    backfill_id: str | None
    agency_id: str
    from_date: dt.date | None
    to_date: dt.date | None
    dry_run: bool
    chunks: list[dict] = field(default_factory=list)   # {"backfill_id", "chunk_from", "chunk_to"}
    note: str = ""

    def as_dict(self) -> dict:
        return {"backfill_id": self.backfill_id, "agency": self.agency_id, "dry_run": self.dry_run,
                "from": self.from_date.isoformat() if self.from_date else None,
                "to": self.to_date.isoformat() if self.to_date else None, "chunks": len(self.chunks),
                "note": self.note}


# --- request ------------------------------------------------------------------------------------

def parse_request(agency: str | None, cut_off_date: str | dt.date | None, dry_run=False,
                  batch_size=None) -> Request:
    """The request as typed by an operator (Airflow params, CLI), checked for form: what needs no
    data (the date's floor too; whether the agency exists and the date is not in the future is
    ``plan``'s to check)."""
    agency = (agency or "").strip()
    if not agency:
        raise BackfillError("agency: name the FBS agency (ISIL number without DK-, e.g. 715100)")
    if not AGENCY_ID.match(agency):
        raise BackfillError(f"agency {agency!r} is not an FBS agency id: six digits, the ISIL number without DK- "
                            "(e.g. 715100)")
    if isinstance(cut_off_date, dt.date):
        date = cut_off_date
    else:
        try:
            date = dt.date.fromisoformat(str(cut_off_date or "").strip())
        except ValueError:
            raise BackfillError(f"agency {agency}: cut_off_date {cut_off_date!r} is not a date (YYYY-MM-DD)") from None
    check_date(agency, date)
    if batch_size in (None, ""):
        size = None
    else:
        try:
            size = int(batch_size)
        except (TypeError, ValueError):
            raise BackfillError(f"agency {agency}: batch_size {batch_size!r} is not a whole number") from None
        if not 1 <= size <= MAX_BATCH_SIZE:
            raise BackfillError(f"agency {agency}: batch_size {size} must be between 1 and {MAX_BATCH_SIZE}")
    if isinstance(dry_run, str):
        if dry_run.strip().lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise BackfillError(f"agency {agency}: dry_run {dry_run!r} must be true or false")
        dry_run = dry_run.strip().lower() in ("true", "yes", "1")
    return Request(agency, date, bool(dry_run), size)


def check_date(agency_id: str, date: dt.date, today: dt.date | None = None) -> None:
    """The one rule for a backfill's start, whoever asks (Airflow, the CLI, a dry run): from
    ``EARLIEST_CUT_OFF`` up to today. Without ``today`` only the floor is checked."""
    if date < EARLIEST_CUT_OFF:
        raise BackfillError(f"agency {agency_id}: cut_off_date {date} is before {EARLIEST_CUT_OFF} (allowed: "
                            f"{EARLIEST_CUT_OFF} to today; nothing created before {EARLIEST_CUT_OFF} can still be "
                            "collected)")
    if today is not None and date > today:
        raise BackfillError(f"agency {agency_id}: cut_off_date {date} is in the future (allowed: {EARLIEST_CUT_OFF} "
                            f"to today, {today})")


def _validate(stores: Stores, request: Request, today: dt.date) -> None:
    """Against FBS: the agency exists, the date is in range (``check_date``: not in the future, not
    before the floor), a real backfill starts on or after the cut-off date FBS holds (T1/T3), and
    the agency is not held for its age limit (C3)."""

    a = request.agency_id
    with stores.fbs.connect() as conn:
        row = conn.execute(text("SELECT cut_off_date, age_limit FROM agency WHERE agency_id = :a"), {"a": a}).first()
        known = [] if row is not None else [r[0] for r in conn.execute(text(
            "SELECT agency_id FROM agency ORDER BY agency_id LIMIT 21"))]
    if row is None:
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise BackfillError(f"agency {a} is not in FBS (agencies in FBS: {listed or 'none'})")
    check_date(a, request.cut_off_date, today)
    fbs_cut_off = as_date(row.cut_off_date)
    if not request.dry_run and request.cut_off_date < fbs_cut_off:
        raise BackfillError(
            f"agency {a}: T1/T3: the cut-off date in FBS is {fbs_cut_off}; a backfill sends only what FBS's "
            f"setting says is due, so it cannot start at {request.cut_off_date}. Move the cut-off date back in FBS "
            "first (the next transfer run then starts the backfill by itself), or make a dry run to see what "
            "it would send")
    low, high = age_limit_range()
    if not low <= int(row.age_limit) <= high:
        raise BackfillError(f"agency {a}: C3: the age limit {row.age_limit} is outside {low}-{high}; every claim "
                            "would be held. Correct the setting in FBS, then run the backfill")


# --- plan ---------------------------------------------------------------------------------------

def months(from_date: dt.date, to_date: dt.date) -> list[tuple[dt.date, dt.date]]:
    """[from, to) cut at each first of a month: the chunks, oldest first."""
    out, start = [], from_date
    while start < to_date:
        nxt = dt.date(start.year + (start.month == 12), start.month % 12 + 1, 1)
        out.append((start, min(nxt, to_date)))
        start = nxt
    return out


def plan(stores: Stores, request: Request, requested_by: str = "manual", airflow_run_id: str | None = None,
         today: dt.date | None = None) -> Plan:
    """Record (or find again) the backfill the request asks for and its chunks."""

    today = today or dt.date.today()
    cut_off.detect(stores)
    _validate(stores, request, today)
    a = request.agency_id
    _seen, hourly_from = cut_off.state(stores.ledger, a)
    batch_size = request.batch_size or batch_size_default()
    existing = _find(stores.ledger, a, request, hourly_from, airflow_run_id)
    if existing is None and not request.dry_run:
        wider = _unfinished_from(stores.ledger, a)
        if wider is not None and wider[1] < request.cut_off_date:
            raise BackfillError(
                f"agency {a}: T3: backfill {wider[0]} (not finished) covers from {wider[1]}; asking for "
                f"{request.cut_off_date} would leave {wider[1]} - {request.cut_off_date} unsent. Resume it with "
                f"cut_off_date {wider[1]} (or clear its failed months in Airflow)")
    if existing is None and request.cut_off_date >= hourly_from:
        note = (f"agency {a}: nothing to backfill: the hourly run already transfers everything from {hourly_from} "
                f"(asked for {request.cut_off_date})")
        log.info(note)
        return Plan(None, a, request.cut_off_date, hourly_from, request.dry_run, note=note)
    at = ledger.now()
    with stores.ledger.begin() as conn:
        if existing is not None:
            backfill_id = existing
            conn.execute(text("UPDATE backfill SET status = 'running', airflow_run_id = COALESCE(:r, airflow_run_id), "
                              "batch_size = :n, finished_at = NULL WHERE backfill_id = :b"),
                         {"r": airflow_run_id, "n": batch_size, "b": backfill_id})
        else:
            backfill_id = str(uuid.uuid4())
            if not request.dry_run:
                cut_off.close_unfinished(conn, a, "superseded", f"superseded by backfill {backfill_id} (asked for "
                                         f"from {request.cut_off_date})", at)
            out_dir = dry_run.default_dir("backfill", backfill_id) if request.dry_run else None   # shared store
            conn.execute(text(
                "INSERT INTO backfill (backfill_id, agency_id, from_date, to_date, dry_run, batch_size, requested_by, "
                "status, airflow_run_id, out_dir, created_at, note) VALUES (:b, :a, :f, :u, :d, :n, :by, 'running', "
                ":r, :o, :t, :note)"),
                {"b": backfill_id, "a": a, "f": request.cut_off_date,
                 "u": hourly_from, "d": request.dry_run, "n": batch_size,
                 "by": requested_by, "r": airflow_run_id, "o": str(out_dir) if out_dir else None,
                 "t": at, "note": f"requested ({requested_by}) from {request.cut_off_date}"})
        bf = conn.execute(text("SELECT from_date, to_date FROM backfill WHERE backfill_id = :b"),
                          {"b": backfill_id}).one()
        from_date, to_date = as_date(bf.from_date), as_date(bf.to_date)
        have = [(as_date(r[0]), as_date(r[1])) for r in conn.execute(text(
            "SELECT chunk_from, chunk_to FROM backfill_chunk WHERE backfill_id = :b"), {"b": backfill_id})]
        # (a backfill narrowed to a date inside a month keeps that month's chunk: T1 is applied live)
        new = [(f, u) for f, u in months(from_date, to_date) if not any(hf <= f and u <= hu for hf, hu in have)]
        if new:
            conn.execute(text("INSERT INTO backfill_chunk (backfill_id, chunk_from, chunk_to, status) "
                              "VALUES (:b, :f, :u, 'pending')"),
                         [{"b": backfill_id, "f": f, "u": u} for f, u in new])
        rows = conn.execute(text("SELECT chunk_from, chunk_to, status FROM backfill_chunk WHERE backfill_id = :b "
                                 "ORDER BY chunk_from"), {"b": backfill_id}).all()
    chunks = [{"backfill_id": backfill_id, "chunk_from": as_date(r.chunk_from).isoformat(),
               "chunk_to": as_date(r.chunk_to).isoformat()} for r in rows]
    done = sum(1 for r in rows if r.status == "done")
    note = (f"agency {a}: backfill {backfill_id}{' (dry run)' if request.dry_run else ''} of liabilities created "
            f"{from_date} - {to_date} (exclusive): {len(chunks)} month(s)"
            + (f", {done} already done (resumed)" if done else ""))
    log.info(note)
    return Plan(backfill_id, a, from_date, to_date, request.dry_run, chunks, note)


def plan_detected(stores: Stores, backfill_id: str, airflow_run_id: str | None = None,
                  today: dt.date | None = None) -> Plan:
    """The plan of a backfill detection handed over (debitor_backfill run ``detected__<id>``), from
    where it stands now: narrowed by a cut-off moved forward, or stopped or superseded (nothing
    to do: the run says so and finishes)."""
    cut_off.detect(stores)
    bf = _backfill(stores.ledger, backfill_id)
    if bf.status not in cut_off.UNFINISHED:
        note = f"agency {bf.agency_id}: backfill {backfill_id} is {bf.status}: {bf.note}"
        log.warning(note)
        return Plan(None, bf.agency_id, as_date(bf.from_date), as_date(bf.to_date), False, note=note)
    if as_date(bf.from_date) < EARLIEST_CUT_OFF:
        raise BackfillError(
            f"agency {bf.agency_id}: backfill {backfill_id} would start at {as_date(bf.from_date)}, the cut-off date "
            f"FBS was moved back to, before {EARLIEST_CUT_OFF}, the earliest date a backfill can start. Move the "
            f"cut-off date in FBS to {EARLIEST_CUT_OFF} or later; the next transfer run then narrows this backfill")
    request = Request(bf.agency_id, as_date(bf.from_date), False, int(bf.batch_size))
    return plan(stores, request, requested_by="detected", airflow_run_id=airflow_run_id, today=today)


def _find(ledger_engine: Engine, agency_id: str, request: Request, hourly_from: dt.date,
          airflow_run_id: str | None) -> str | None:
    """The backfill this request continues: the same Airflow run's (a retried plan), or an
    unfinished real backfill of the same range (a resume)."""
    with ledger_engine.connect() as conn:
        if airflow_run_id:
            row = conn.execute(text("SELECT backfill_id FROM backfill WHERE airflow_run_id = :r AND agency_id = :a "
                                    "AND status NOT IN ('superseded', 'stopped')"),
                               {"r": airflow_run_id, "a": agency_id}).first()
            if row:
                return row[0]
        if request.dry_run:
            return None
        row = conn.execute(text(
            "SELECT backfill_id FROM backfill WHERE agency_id = :a AND dry_run = :f AND from_date = :c "
            "AND to_date = :u AND status IN ('planned', 'running', 'failed') ORDER BY created_at DESC"),
            {"a": agency_id, "f": False, "c": request.cut_off_date,
             "u": hourly_from}).first()
    return row[0] if row else None


def _unfinished_from(ledger_engine: Engine, agency_id: str) -> tuple[str, dt.date] | None:
    """(backfill_id, from_date) of the agency's unfinished real backfill starting earliest."""
    with ledger_engine.connect() as conn:
        rows = cut_off.unfinished(conn, agency_id)
    return rows[0] if rows else None


# --- one chunk ----------------------------------------------------------------------------------

def _backfill(ledger_engine: Engine, backfill_id: str):
    with ledger_engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM backfill WHERE backfill_id = :b"), {"b": backfill_id}).first()
    if row is None:
        raise BackfillError(f"backfill {backfill_id} is not in the ledger")
    return row


def _chunk(ledger_engine: Engine, backfill_id: str, chunk_from: dt.date):
    with ledger_engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM backfill_chunk WHERE backfill_id = :b AND chunk_from = :f"),
                           {"b": backfill_id, "f": chunk_from}).first()
    if row is None:
        raise BackfillError(f"backfill {backfill_id} has no chunk from {chunk_from}")
    return row


def _set_chunk(ledger_engine: Engine, backfill_id: str, chunk_from: dt.date, status: str, **fields) -> None:
    sets = ["status = :s"] + [f"{k} = :{k}" for k in fields]
    params = {"s": status, "b": backfill_id, "f": chunk_from,
              **{k: v for k, v in fields.items()}}
    with ledger_engine.begin() as conn:
        conn.execute(text(f"UPDATE backfill_chunk SET {', '.join(sets)} "  # noqa: S608 - fixed column names
                          "WHERE backfill_id = :b AND chunk_from = :f"), params)


def chunk_run_id(backfill_id: str, chunk_from: dt.date) -> str:
    """The ledger run of a chunk: the same on every retry of that chunk."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fbs-debitor/backfill/{backfill_id}/{chunk_from.isoformat()}"))


def run_chunk(stores: Stores, backfill_id: str, chunk_from: dt.date | str, client=None, pacer=None,
              today: dt.date | None = None, airflow_run_id: str | None = None) -> dict:
    """Do one month of a backfill (see the module doc). ``client`` is the debtor system's (None
    for a dry run); ``pacer`` caps the send rate. Returns small counts for the UI."""
    chunk_from = as_date(chunk_from)
    bf = _backfill(stores.ledger, backfill_id)
    chunk = _chunk(stores.ledger, backfill_id, chunk_from)
    chunk_to, agency_id, dry = as_date(chunk.chunk_to), bf.agency_id, as_bool(bf.dry_run)
    label = f"backfill {backfill_id} agency {agency_id} month {chunk_from} - {chunk_to}"
    if chunk.status == "done":
        log.info("%s: done earlier (%s claims), not done again", label, chunk.claims)
        return {"status": "done", "claims": int(chunk.claims or 0), "earlier": 1}
    if bf.status in ("stopped", "superseded", "complete") or chunk.status == "stopped":
        note = chunk.note or bf.note or bf.status
        _set_chunk(stores.ledger, backfill_id, chunk_from, "stopped", note=note)
        log.warning("%s: not run: %s", label, note)
        return {"status": "stopped", "claims": 0}
    if not dry:
        fbs_cut_off = cut_off.fbs_cut_offs(stores.fbs).get(agency_id)
        if fbs_cut_off is None or chunk_to <= fbs_cut_off:
            note = (f"before the cut-off date {fbs_cut_off} in FBS (moved forward since the backfill was planned): "
                    "not sent (T1); claims already sent stay sent")
            _set_chunk(stores.ledger, backfill_id, chunk_from, "stopped", note=note, finished_at=ledger.now())
            log.warning("%s: %s", label, note)
            return {"status": "stopped", "claims": 0}
    _set_chunk(stores.ledger, backfill_id, chunk_from, "running", started_at=ledger.now(), note=None)
    scope = Scope.chunk(agency_id, chunk_from, chunk_to, follow_cut_off=not dry)
    try:
        if dry:
            result = _dry_chunk(stores, bf, scope, today)
        else:
            result = _real_chunk(stores, bf, scope, client, pacer, airflow_run_id)
    except BaseException as exc:   # also Airflow's task timeout, a BaseException
        _set_chunk(stores.ledger, backfill_id, chunk_from, "failed", finished_at=ledger.now(),
                   note=mask_cprs_in(f"{type(exc).__name__}: {exc}")[:2000])
        raise
    _set_chunk(stores.ledger, backfill_id, chunk_from, "done", finished_at=ledger.now(),
               in_range=result["in_range"], claims=result["claims"], run_id=result.get("run_id"))
    log.info("%s: done: %s", label, result)
    return result


def _dry_chunk(stores: Stores, bf, scope: Scope, today: dt.date | None) -> dict:
    out = dry_run.location(bf.out_dir) / scope.from_date.isoformat()
    summary = dry_run.run(stores, out, batch_size=int(bf.batch_size), today=today, scope=scope)
    totals = summary["totals"]
    in_range = sum(n for k, n in totals.items() if k.split(":")[0] in eligibility.CATEGORIES) + totals.get("claims", 0) \
        + sum(n for k, n in totals.items() if k.startswith("not_built:"))
    return {"status": "done", "in_range": in_range, "claims": int(totals.get("claims", 0)), "dry_run": True}


def _real_chunk(stores: Stores, bf, scope: Scope, client, pacer, airflow_run_id: str | None) -> dict:
    if client is None:
        raise BackfillError(f"backfill {bf.backfill_id}: a real backfill needs the debtor system's client")
    run_id = ledger.start_run(stores.ledger, "backfill", airflow_dag_id="debitor_backfill",
                              airflow_run_id=airflow_run_id,
                              interval=(dt.datetime.combine(scope.from_date, dt.time()),
                                        dt.datetime.combine(scope.to_date, dt.time())),
                              run_id=chunk_run_id(bf.backfill_id, scope.from_date))
    try:
        dq_checks.run_checks(stores, run_id, scope=scope)
        transfer.resend_unconfirmed(stores, client, run_id, int(bf.batch_size))
        link = delivery.Link(pacer=pacer)
        counts = transfer.deliver(stores, client, run_id, int(bf.batch_size), scope=scope, link=link)
        counts.update(transfer.close_delivery(stores, run_id))
        transfer.resolve_findings(stores, run_id, scope)
    except BaseException as exc:
        ledger.finish_run(stores.ledger, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    totals = transfer.totals(counts)
    # Only this month's own liabilities decide whether it is done: the resend at the start may have
    # carried other runs' messages (other months, the hourly run's), whose outcome is theirs.
    # An agency failed part-way (delivery's (agency, "failed", <exception>) counts): not done either.
    missing = {k: v for k, v in {"deferred": totals.get("deferred", 0), "failed": totals.get(transfer.FAILED, 0),
                                 "unconfirmed": len(_unconfirmed_in(stores, scope))}.items() if v}
    failed = transfer.failure_message(transfer.agency_failures(counts))
    if missing or link.down:
        error = (f"not everything reached the debtor system ({missing}{'; ' + link.down if link.down else ''}"
                 f"{'; ' + failed if failed else ''}); "
                 "run the chunk again: what was recorded goes again under its own keys, the rest is sent new")
        ledger.finish_run(stores.ledger, run_id, "failed", error)
        raise ChunkIncomplete(f"backfill {bf.backfill_id} agency {bf.agency_id} month {scope.from_date}: {error}")
    ledger.finish_run(stores.ledger, run_id, "success")
    in_range = sum(n for (_a, c, _r), n in counts.items() if c in eligibility.CATEGORIES)
    with stores.ledger.connect() as conn:   # the claims this month recorded (on every try of it)
        states = Counter({r.state: int(r.n) for r in conn.execute(text(
            "SELECT state, COUNT(*) AS n FROM claim WHERE first_run_id = :r GROUP BY state"), {"r": run_id})})
    rejected = states.pop("rejected", 0)
    return {"status": "done", "run_id": run_id, "in_range": in_range, "claims": rejected + sum(states.values()),
            "accepted": sum(states.values()), "rejected": rejected,
            "eligible": totals.get("eligible", 0), "blocked": totals.get("blocked", 0),
            "already_sent": totals.get("already_sent", 0), "out_of_scope": totals.get("out_of_scope", 0)}


def _unconfirmed_in(stores: Stores, scope: Scope) -> set[int]:
    """This month's liabilities whose message still waits for an answer (pending or sent)."""

    with stores.ledger.connect() as conn:
        waiting = {r[0] for r in conn.execute(text("SELECT liability_id FROM outbox WHERE state IN ('pending', 'sent')"))}
    return {r.liability_id for r in standing(stores.fbs, scope, waiting) if r.in_universe} if waiting else set()


# --- finish -------------------------------------------------------------------------------------

def finish(stores: Stores, backfill_id: str) -> dict:
    """Close the backfill: complete when every chunk is done or was stopped by a cut-off moved
    forward (a real one then hands its range to the hourly run), failed otherwise; a dry run's
    chunk summaries are added up in ``summary.json``."""
    bf = _backfill(stores.ledger, backfill_id)
    with stores.ledger.connect() as conn:
        chunks = conn.execute(text("SELECT chunk_from, status, claims, in_range, note FROM backfill_chunk "
                                   "WHERE backfill_id = :b ORDER BY chunk_from"), {"b": backfill_id}).all()
    per_status = Counter(c.status for c in chunks)
    result = {"backfill_id": backfill_id, "agency": bf.agency_id, "dry_run": as_bool(bf.dry_run),
              "chunks": dict(per_status), "claims": sum(int(c.claims or 0) for c in chunks),
              "in_range": sum(int(c.in_range or 0) for c in chunks)}
    if bf.status in ("stopped", "superseded"):
        result["status"] = bf.status
        log.warning("backfill %s (agency %s) %s: %s", backfill_id, bf.agency_id, bf.status, bf.note)
        return result
    unfinished = [c for c in chunks if c.status not in ("done", "stopped")]
    at = ledger.now()
    if unfinished:
        note = (f"{len(unfinished)} month(s) not done: " + ", ".join(as_date(c.chunk_from).strftime('%Y-%m')
                                                                      for c in unfinished[:12])
                + ("..." if len(unfinished) > 12 else "") + "; run the backfill again with the same parameters "
                "(or clear the failed chunks in Airflow) to resume")
        with stores.ledger.begin() as conn:
            conn.execute(text("UPDATE backfill SET status = 'failed', note = :n WHERE backfill_id = :b"),
                         {"n": note, "b": backfill_id})
        raise ChunkIncomplete(f"backfill {backfill_id} agency {bf.agency_id}: {note}")
    with stores.ledger.begin() as conn:
        closed = conn.execute(text("UPDATE backfill SET status = 'complete', finished_at = :t WHERE backfill_id = :b "
                                   "AND status IN ('planned', 'running', 'failed')"),
                              {"t": at, "b": backfill_id}).rowcount
        if not closed:    # stopped or superseded meanwhile (a cut-off moved): that stands
            now = conn.execute(text("SELECT status FROM backfill WHERE backfill_id = :b"), {"b": backfill_id}).scalar()
            result["status"] = now
            return result
        if not as_bool(bf.dry_run):
            # The hourly run takes the range over (never raising its start, whatever happened meanwhile).
            moved = conn.execute(text(
                "UPDATE cut_off SET hourly_from = :f, updated_at = :t WHERE agency_id = :a AND hourly_from > :f "
                "AND hourly_from <= :u"),
                {"f": as_date(bf.from_date), "t": at, "a": bf.agency_id,
                 "u": as_date(bf.to_date)}).rowcount
            result["hourly_from"] = as_date(bf.from_date).isoformat() if moved else None
            gap = conn.execute(text("SELECT seen_cut_off, hourly_from FROM cut_off WHERE agency_id = :a"),
                               {"a": bf.agency_id}).first()
            if gap is not None and as_date(gap.seen_cut_off) < as_date(gap.hourly_from) \
                    and _unfinished_from(stores.ledger, bf.agency_id) is None:
                log.warning("agency %s: liabilities created %s - %s still wait for a backfill (the cut-off date in "
                            "FBS is earlier than this backfill's start): run debitor_backfill with cut_off_date %s",
                            bf.agency_id, as_date(gap.seen_cut_off), as_date(gap.hourly_from),
                            as_date(gap.seen_cut_off))
    result["status"] = "complete"
    if as_bool(bf.dry_run):
        result["summary"] = str(_add_up_dry_run(dry_run.location(bf.out_dir), chunks))
    log.info("backfill %s (agency %s) complete: %s", backfill_id, bf.agency_id, result)
    return result


def _add_up_dry_run(out_dir, chunks):
    totals: Counter = Counter()
    files = 0
    per_month = {}
    for c in chunks:
        path = out_dir / as_date(c.chunk_from).isoformat() / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        totals.update(summary["totals"])
        files += summary["files"]
        per_month[as_date(c.chunk_from).isoformat()] = summary["totals"].get("claims", 0)
    out = out_dir / "summary.json"
    storage.write(out, (json.dumps({"dry_run": True, "out_dir": str(out_dir), "files": files,
                                    "totals": dict(sorted(totals.items())), "claims_per_month": per_month},
                                   indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return out


# --- status -------------------------------------------------------------------------------------

ANSWERS = (delivery.ACCEPTED, delivery.REJECTED, delivery.UNCONFIRMED)   # the debtor system's answers, as counted


def status(ledger_engine: Engine, agency_id: str | None = None, limit: int = 10,
           backfill_id: str | None = None) -> list[dict]:
    """The newest backfills (or the one ``backfill_id``) with their months per status, what the
    months sent and the debtor system's answers (summed over the months' ledger runs), and the
    cut-off changes behind them."""
    with ledger_engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT b.backfill_id, b.agency_id, b.from_date, b.to_date, b.dry_run, b.status, b.requested_by, "
            "b.created_at, b.finished_at, b.note, "
            "(SELECT COUNT(*) FROM backfill_chunk c WHERE c.backfill_id = b.backfill_id) AS chunks, "
            "(SELECT COUNT(*) FROM backfill_chunk c WHERE c.backfill_id = b.backfill_id AND c.status = 'done') AS done, "
            "(SELECT COALESCE(SUM(c.claims), 0) FROM backfill_chunk c WHERE c.backfill_id = b.backfill_id) AS claims, "
            "(SELECT COALESCE(SUM(c.in_range), 0) FROM backfill_chunk c WHERE c.backfill_id = b.backfill_id) "
            "AS in_range, "
            "(SELECT MIN(c.started_at) FROM backfill_chunk c WHERE c.backfill_id = b.backfill_id) AS first_start, "
            "(SELECT MAX(c.finished_at) FROM backfill_chunk c WHERE c.backfill_id = b.backfill_id) AS last_finish "
            "FROM backfill b WHERE (CAST(:a AS VARCHAR(20)) IS NULL OR b.agency_id = :a) "
            "AND (CAST(:b AS VARCHAR(36)) IS NULL OR b.backfill_id = :b) "
            "ORDER BY b.created_at DESC LIMIT :n"), {"a": agency_id, "b": backfill_id, "n": limit}).all()
    out = []
    for r in rows:
        answers = sum(_answers(ledger_engine, [m["run_id"] for m in _month_runs(ledger_engine, r.backfill_id)])
                      .values(), Counter())
        out.append({"backfill_id": r.backfill_id, "agency": r.agency_id, "from": str(as_date(r.from_date)),
                    "to": str(as_date(r.to_date)), "dry_run": as_bool(r.dry_run), "status": r.status,
                    "requested_by": r.requested_by, "chunks": int(r.chunks), "done": int(r.done),
                    "claims": int(r.claims), "in_range": int(r.in_range), "note": r.note,
                    **{a: answers.get(a, 0) for a in ANSWERS},
                    "seconds": (as_datetime(r.last_finish) - as_datetime(r.first_start)).total_seconds()
                    if r.first_start and r.last_finish else None})
    return out


def months_of(ledger_engine: Engine, backfill_id: str) -> list[dict]:
    """Every month of a backfill, oldest first: its range, status, liabilities in range, claims
    sent (or written), the debtor system's answers and the ledger run that did it (``run_id``,
    None while the month has not run)."""
    months_ = _month_runs(ledger_engine, backfill_id)
    ids = [m["run_id"] for m in months_]
    with ledger_engine.connect() as conn:
        existing = {r[0] for r in conn.execute(in_query("SELECT run_id FROM run WHERE run_id IN :ids", "ids"),
                                               {"ids": ids or [""]})}
    answers = _answers(ledger_engine, ids)
    return [{**m, "run_id": m["run_id"] if m["run_id"] in existing else None,
             **{a: answers.get(m["run_id"], Counter()).get(a, 0) for a in ANSWERS}} for m in months_]


def of_run(ledger_engine: Engine, run_id: str) -> str | None:
    """The backfill one of whose months the ledger run ``run_id`` did (None: not a backfill's)."""
    with ledger_engine.connect() as conn:
        start = conn.execute(text("SELECT data_interval_start FROM run WHERE run_id = :r AND kind = 'backfill'"),
                             {"r": run_id}).scalar()
        if start is None:
            return None
        rows = conn.execute(text("SELECT backfill_id, chunk_from FROM backfill_chunk WHERE chunk_from = :f"),
                            {"f": as_datetime(start).date()}).all()
    return next((r.backfill_id for r in rows if chunk_run_id(r.backfill_id, as_date(r.chunk_from)) == run_id), None)


def _month_runs(ledger_engine: Engine, backfill_id: str) -> list[dict]:
    with ledger_engine.connect() as conn:
        rows = conn.execute(text("SELECT chunk_from, chunk_to, status, in_range, claims, note FROM backfill_chunk "
                                 "WHERE backfill_id = :b ORDER BY chunk_from"), {"b": backfill_id}).all()
    return [{"from": str(as_date(r.chunk_from)), "to": str(as_date(r.chunk_to)), "status": r.status,
             "in_range": int(r.in_range or 0), "claims": int(r.claims or 0), "note": r.note,
             "run_id": chunk_run_id(backfill_id, as_date(r.chunk_from))} for r in rows]


def _answers(ledger_engine: Engine, run_ids: list[str]) -> dict[str, Counter]:
    """run id -> the debtor system's answers its run counted (``ANSWERS``)."""
    if not run_ids:
        return {}
    with ledger_engine.connect() as conn:
        rows = conn.execute(in_query("SELECT run_id, category, SUM(n) AS n FROM run_count WHERE run_id IN :ids "
                                     "AND category IN :cats GROUP BY run_id, category", "ids", "cats"),
                            {"ids": run_ids, "cats": list(ANSWERS)}).all()
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(r.run_id, Counter())[r.category] = int(r.n)
    return out


def is_dry_run(ledger_engine: Engine, backfill_id: str) -> bool:
    return bool(as_bool(_backfill(ledger_engine, backfill_id).dry_run))
