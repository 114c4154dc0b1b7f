"""Payments back (P1, P2): the debtor system's files applied to the ledger and written to FBS,
each movement exactly once.

**The municipality is the unit of isolation** (issue 18, ``transfer.units``): each
municipality's files are applied by its own step (``ingest_unit``: a mapped Airflow task, one loop
turn of the CLI's ``ingest``) under its own ``payments`` lock (``db.exclusive(..., part=unit.lock)``),
and its held movements and write-back go with it; whatever fails there fails that step only.

**Which municipality a file belongs to** (``owner``), decided before it is applied and again, from
the bytes read, by the step that applies it:

* a file the inbound service landed (``b01a-<time>-<cvr>-<key>.xml``, ``payments.inbound``): the
  municipality of the CVR in its name (the caller Serviceplatformen vouched for), unless one of its
  movements names a claim the ledger holds for another municipality; one that cannot be read or is
  not valid is its name's (its quarantine is that municipality's);
* a file delivered to the folder (SF1590_B_01A names no municipality: its ``Hovedoplysninger``
  hold only TransaktionsId and TransaktionsTid): the one municipality whose claims its movements'
  FordringIDs are in the ledger (a FordringID replaced at an increase, U1, counts as its claim's; a
  claim the ledger does not know counts by the agency its FBS form ``FBS-<agency>-<n>`` names, if
  that agency is a municipality's, and is held as P_UNKNOWN_CLAIM anyway);
* anything else is **no single municipality's**: movements of two municipalities, none placed, a
  claim of an agency FBS no longer has, a folder file that cannot be read or is not valid. The
  run-level rest (``ingest_rest``) takes it, with every unit's lock held, and applies (or
  quarantines) it **whole, as one file, as before**: never split, never lost.

Inside the ledger transaction a municipality's step refuses a file that names another
municipality's claim (``NotThisUnit``; such a claim appeared since the file was sorted): it is left
for the rest, so a claim is only ever changed under its own unit's lock.

A run, step by step:

0. **checks** (``sort_inbox``, the run's first step): the settings (``files.preflight``) and the
   inbox's layout (``Inbox.check``: archive and quarantine are fbs-debitor's own) before anything
   is read or moved; a problem there is the run's error. The inbox is surveyed: only regular files
   with a delivery name are taken (``payments.inbox``); every other entry is left as it is and
   reported (``report_ignored``: logged with its name escaped, counted as ``files_ignored``,
   recorded in ``payment_inbox_entry``; a file with another name or a link gets one staff task,
   once). The waiting files are sorted by municipality (above; of a folder file only its
   FordringIDs are read, ``files.fordring_ids``, and looked up in one staged query).
1. **files** (each municipality's step, then the rest's), oldest name first, each on its own:
   whatever goes wrong with one file never stops
   the next. A file whose bytes (SHA-256) were seen before is recognised and only moved out of the
   inbox again. A new file is read without following links or blocking, parsed safely and
   validated (``payments.files.parse``); a bad one is recorded as quarantined with its reason,
   staff get a task, and the file moves to ``quarantine/``. One that cannot be read
   (``P_UNREADABLE``) or whose handling fails in any other way (``P_FAILED``: a bug, a value the
   ledger cannot hold) is quarantined the same way, recorded under a key derived from its bytes so
   that, put back once the cause is fixed, it is read again. A good file is applied all or
   nothing: the file, every movement (applied or held, with its reason), the claims' sums,
   balance and settlement, and the audit trail, in a savepoint of its own inside a ledger
   transaction that several files share (``_file_batch``: a file that fails is rolled back alone
   and then handled on its own; a crash anywhere leaves nothing of the batch). Set-based
   (issue 19): each movement is decided in order by the rules below, in memory, but the file is
   read and written with a fixed dozen statements, however many movements it holds (``apply_file``).
   Once the transaction that holds it is committed, the file moves to ``archive/``. Only a cause outside the file (the ledger unreachable or locked, a
   folder that cannot be written) leaves it in the inbox: the run does everything else, then fails
   with ``FilesLeft`` naming it, and the next run takes it.
2. **held movements looked at again** (a municipality's step: its own; the rest: all): one held
   because its claim was not yet confirmed or not known, or because the movement a reversal undoes
   had not arrived, is applied once that changed.
3. **write-back to FBS** (likewise: a municipality's own, then the rest everything left): every
   applied movement becomes an ``fbs.payment`` row (keyed by the
   movement, so a crash between the ledger and FBS is finished by the next run, never doubled);
   held movements become staff tasks, ONE per file, reason and liability, or, where the claim is
   not known, per file, reason and agency (``hold_tasks``: 20,000 movements on unknown claims in
   one file are one task, its text naming the first 20, ``movement.hold_task`` all); a task is
   resolved when none of its movements is held any more. A claim paid or written off in full
   closes the liability in FBS (status ``closed``), and a reversal that leaves a balance again
   opens it again, only where fbs-debitor closed it. Then the ledger marks them written back.

Names are shown through ``inbox.shown`` everywhere (logs, reasons, tasks, ledger).

How a movement is decided (``_Book.decide``; the reason codes are in the staff tasks and reports):

| movement                         | applied when                             | else held as          |
|----------------------------------|------------------------------------------|-----------------------|
| any                              | its FordringID is an accepted claim      | P_UNKNOWN_CLAIM, P_CLAIM_UNCONFIRMED (looked at again), P_CLAIM_REPLACED (an earlier claim cancelled by an increase, U1) |
| payment / write-off              | the claim is live and the amount at most its balance | P_CLAIM_CANCELLED, P_OVERPAYMENT |
| repayment (U3)                   | at most what was paid and not yet repaid | P_REPAYMENT_EXCEEDS_PAID |
| reversal                         | it names an applied payment or write-off of the same claim and amount, not reversed before | P_REVERSAL_NO_REFERENCE, P_REVERSAL_UNKNOWN (looked at again), P_REVERSAL_MISMATCH |

A movement delivered again (same BevaegelseID, same content) is skipped and counted; the same
BevaegelseID with other content quarantines the file (P_CONFLICTING_REDELIVERY): nothing in it
is applied blindly.
"""

from __future__ import annotations

import datetime as dt
import errno
import gc
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from fbs_debitor.claims.model import StaffTask
from fbs_debitor.claims.writeback import raise_tasks
from fbs_debitor.core import db, ledger
from fbs_debitor.core.db import (
    as_amount,
    as_date,
    chunked,
    exclusive,
    in_query,
    keyset_pages,
    select_in,
    sql_file,
)
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.ledger import add_events, execute_many, insert_rows
from fbs_debitor.core.stores import Stores
from fbs_debitor.core.trail import movement_text
from fbs_debitor.payments.files import (
    TOO_LARGE,
    BadFile,
    Movement,
    PaymentFile,
    fordring_ids,
    max_file_bytes,
    parse,
    preflight,
)
from fbs_debitor.payments.inbox import BAD_NAME, KIND_TEXT, PARTIAL, SYMLINK, Entry, Inbox, NotTaken, TooLarge, shown
from fbs_debitor.transfer.units import Unit, units

log = logging.getLogger(__name__)

APPLIED, HELD, DISMISSED = "applied", "held", "dismissed"
UNKNOWN_CLAIM, UNCONFIRMED, REPLACED, CANCELLED = (
    "P_UNKNOWN_CLAIM", "P_CLAIM_UNCONFIRMED", "P_CLAIM_REPLACED", "P_CLAIM_CANCELLED")
OVERPAYMENT, REPAY_TOO_MUCH = "P_OVERPAYMENT", "P_REPAYMENT_EXCEEDS_PAID"
REVERSAL_NO_REFERENCE, REVERSAL_UNKNOWN, REVERSAL_MISMATCH = (
    "P_REVERSAL_NO_REFERENCE", "P_REVERSAL_UNKNOWN", "P_REVERSAL_MISMATCH")
LIABILITY_MISSING = "P_LIABILITY_MISSING"
CONFLICT = "P_CONFLICTING_REDELIVERY"
FAILED, UNREADABLE = "P_FAILED", "P_UNREADABLE"       # a file: handling it failed; it could not be read
# decided again every run: the claim may be confirmed or point back at this FordringID (a rejected
# increase), the reversed movement may arrive, a reversal may make room for a payment
LOOKED_AT_AGAIN = (UNKNOWN_CLAIM, UNCONFIRMED, REPLACED, REVERSAL_UNKNOWN, OVERPAYMENT, REPAY_TOO_MUCH)
TASK_KIND_MOVEMENT, TASK_KIND_FILE = "payment_held", "payment_file_quarantined"
CHUNK = 2000
WRITE_BATCH = 25_000         # applied movements written to FBS per transaction

KIND_DA = {"payment": "indbetaling", "write_off": "afskrivning", "repayment": "tilbagebetaling",
           "reversal": "tilbageførsel"}
REASONS = {  # code -> (Danish, English): why a movement is held for review
    UNKNOWN_CLAIM: ("fordringen kendes ikke af integrationen", "the claim is not known to the integration"),
    UNCONFIRMED: ("fordringens oprettelse er endnu ikke bekræftet af debitorsystemet",
                  "the claim's creation is not yet confirmed by the debtor system"),
    REPLACED: ("fordringen er annulleret og erstattet af en ny ved en forhøjelse (U1)",
               "the claim was cancelled and replaced by a new one at an increase (U1)"),
    CANCELLED: ("fordringen er annulleret", "the claim is cancelled"),
    OVERPAYMENT: ("beløbet er større end fordringens restbeløb (overbetaling)",
                  "the amount is more than the claim's balance (overpayment)"),
    REPAY_TOO_MUCH: ("tilbagebetalingen er større end det indbetalte", "the repayment is more than was paid"),
    REVERSAL_NO_REFERENCE: ("tilbageførslen angiver ikke hvilken bevægelse den tilbagefører",
                            "the reversal does not say which movement it reverses"),
    REVERSAL_UNKNOWN: ("den tilbageførte bevægelse er ikke modtaget eller ikke bogført",
                       "the movement it reverses was not received or not applied"),
    REVERSAL_MISMATCH: ("tilbageførslen passer ikke til den bevægelse den tilbagefører (fordring, beløb, art, "
                        "allerede tilbageført, eller allerede tilbagebetalt)", "the reversal does not match the "
                        "movement it reverses (claim, amount, kind, already reversed, or already repaid)"),
    LIABILITY_MISSING: ("mellemværendet findes ikke længere i FBS", "the liability is no longer in FBS"),
}


class Conflict(Exception):
    """A BevaegelseID delivered before with other content."""


@dataclass
class _Claim:
    liability_id: int
    agency_id: str
    fordring_id: str
    state: str
    debtor_amount: Decimal
    debtor_status: str
    paid: Decimal
    written_off: Decimal
    repaid: Decimal
    fbs_status: str | None = None
    last_booked: dt.date | None = None
    touched: bool = False

    @property
    def balance(self) -> Decimal:
        return self.debtor_amount - self.paid - self.written_off


@dataclass
class _Known:
    """A movement the ledger has (or that this file just decided)."""
    movement: Movement
    state: str
    liability_id: int | None
    reversed_by: str | None = None



# --- the keys one file (or one look again) names, staged once per transaction ----------------------
#
# A file's FordringIDs, movement ids (its own and those its reversals name) and the claims it
# touched go into a temporary table of the ledger connection in ONE executemany, and every lookup
# joins it: a file costs the same few statements whether it holds ten movements or a hundred
# thousand, and no statement carries a list of ids that grows with it.

_STAGE = "payment_stage"
_STAGE_CREATE = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (kind CHAR(1) NOT NULL, k VARCHAR(100), "
                 "n BIGINT)")
FORDRING, MOVEMENT, LIABILITY = "f", "m", "l"


def _stage(conn: Connection, fordring_ids: Iterable[str] = (), movement_ids: Iterable[str] = (),
           liability_ids: Iterable[int] = ()) -> None:
    """The keys in ``payment_stage`` (what was staged before in this connection goes)."""
    conn.exec_driver_sql(_STAGE_CREATE)
    conn.exec_driver_sql(f"DELETE FROM {_STAGE}")  # noqa: S608 - a fixed name
    rows = ([(FORDRING, f, None) for f in set(fordring_ids)] + [(MOVEMENT, m, None) for m in set(movement_ids)]
            + [(LIABILITY, None, lid) for lid in set(liability_ids)])
    insert_rows(conn, _STAGE, ("kind", "k", "n"), rows)


def _restage(conn: Connection, kind: str, keys: Iterable[str]) -> None:
    """The staged keys of one kind replaced by ``keys`` (the others stay)."""
    conn.exec_driver_sql(f"DELETE FROM {_STAGE} WHERE kind = '{kind}'")  # noqa: S608 - fixed
    insert_rows(conn, _STAGE, ("kind", "k", "n"), [(kind, k, None) for k in set(keys)])


def _staged(kind: str) -> str:
    """SQL: the staged keys of one kind, for ``... IN (<this>)``."""
    return f"SELECT {'n' if kind == LIABILITY else 'k'} FROM {_STAGE} WHERE kind = '{kind}'"  # noqa: S608


class _Book:
    """What deciding a set of movements needs, loaded inside the ledger transaction and kept in
    memory while they are decided in order (a reversal may undo a payment of the same file):
    the keys staged once (``_stage``), then three queries whatever the number of movements."""

    def __init__(self, conn: Connection, movements: list[Movement]):
        self.conn = conn
        self.claims: dict[str, _Claim] = {}
        self.replaced: dict[str, tuple[int, str]] = {}
        self.known: dict[str, _Known] = {}
        self.reversed: dict[str, str] = {}        # movement id -> the reversal now undoing it
        _stage(conn, (m.fordring_id for m in movements),
               [m.movement_id for m in movements] + [m.reference_id for m in movements if m.reference_id])
        # (statements without parameters, sent as they are: no compiling, rows as tuples)
        for lid, agency, fid, state, amount, status, paid, off, repaid, fbs_status, settled in conn.exec_driver_sql(
                "SELECT liability_id, agency_id, fordring_id, state, debtor_amount, debtor_status, paid_amount, "  # noqa: S608
                "written_off_amount, repaid_amount, fbs_status, settled_on FROM claim WHERE fordring_id IN "
                f"({_staged(FORDRING)})"):
            self.claims[fid] = _Claim(lid, agency, fid, state, as_amount(amount) or Decimal(0), status or "live",
                                      as_amount(paid), as_amount(off), as_amount(repaid), fbs_status,
                                      as_date(settled))
        for r in conn.execute(text(
                "SELECT movement_id, fordring_id, kind, amount, booked_on, reference_id, state, liability_id, "  # noqa: S608
                f"reversed_by FROM movement WHERE movement_id IN ({_staged(MOVEMENT)})")):
            self.known[r.movement_id] = _Known(_movement(r), r.state, r.liability_id, r.reversed_by)
        # an earlier FordringID of a claim (replaced at an increase, U1) is asked for only where the
        # FordringID is no claim's current one (a claim found above is that FordringID's claim): of
        # a file on known claims, none (the outbox's rows are not read for every movement)
        missing = {m.fordring_id for m in movements} - self.claims.keys()
        if missing:
            _restage(conn, FORDRING, missing)
            for fid, lid, agency in conn.exec_driver_sql(
                    "SELECT o.fordring_id, o.liability_id, c.agency_id FROM outbox o JOIN claim c "  # noqa: S608
                    f"ON c.liability_id = o.liability_id WHERE o.fordring_id IN ({_staged(FORDRING)}) "
                    "AND o.fordring_id <> c.fordring_id"):
                self.replaced[fid] = (lid, agency)

    def decide(self, m: Movement) -> tuple[str, str | None, int | None, str | None]:
        """(state, hold reason, liability, agency) for ``m``, and its effect on the claim in memory."""
        c = self.claims.get(m.fordring_id)
        if c is None:
            if m.fordring_id in self.replaced:
                lid, agency = self.replaced[m.fordring_id]
                return HELD, REPLACED, lid, agency
            return HELD, UNKNOWN_CLAIM, None, None

        def held(reason: str):
            return HELD, reason, c.liability_id, c.agency_id

        if c.state in ("pending", "sent"):
            return held(UNCONFIRMED)
        if c.state != "accepted":
            return held(UNKNOWN_CLAIM)
        if c.fbs_status == "missing":
            return held(LIABILITY_MISSING)
        if m.kind == "reversal":
            if not m.reference_id:
                return held(REVERSAL_NO_REFERENCE)
            ref = self.known.get(m.reference_id)
            if ref is None or ref.state != APPLIED:
                return held(REVERSAL_UNKNOWN)
            r = ref.movement
            if (ref.reversed_by or r.fordring_id != m.fordring_id or r.kind not in ("payment", "write_off")
                    or r.amount != m.amount or (r.kind == "payment" and c.paid - m.amount < c.repaid)):
                return held(REVERSAL_MISMATCH)      # (the last: the citizen was repaid money that bounced)
            if r.kind == "payment":
                c.paid -= m.amount
            else:
                c.written_off -= m.amount
            ref.reversed_by = m.movement_id
            self.reversed[m.reference_id] = m.movement_id
        elif m.kind == "repayment":
            if m.amount > c.paid - c.repaid:
                return held(REPAY_TOO_MUCH)
            c.repaid += m.amount
        else:
            if c.debtor_status == "cancelled":
                return held(CANCELLED)
            if m.amount > c.balance:
                return held(OVERPAYMENT)
            if m.kind == "payment":
                c.paid += m.amount
            else:
                c.written_off += m.amount
        c.touched = True
        if m.booked_on and (c.last_booked is None or m.booked_on > c.last_booked):
            c.last_booked = m.booked_on
        return APPLIED, None, c.liability_id, c.agency_id

    def save_claims(self) -> list[int]:
        """Write the touched claims' sums, balance and settlement in ONE update of each claim's row
        (however many of the movements touched it): the new sums staged in one bulk insert
        (``_CLAIM_STAGE``), then one ``UPDATE ... FROM`` that sets them and the balance and
        settlement ``claim_settlement.sql`` defines, read from the staged sums (``_SUMS_AND_SETTLEMENT``);
        then the reversed movements' mark: a few statements in all."""
        touched = sorted((c for c in self.claims.values() if c.touched), key=lambda c: c.liability_id)
        if not touched:                     # (in key order: neighbouring claims share pages)
            return []
        value = ledger.sql_value(self.conn)
        days: dict = {}
        rows = []
        for c in touched:
            day = days.get(c.last_booked, days)
            if day is days:
                day = days[c.last_booked] = value(c.last_booked)
            rows.append((c.liability_id, value(c.paid), value(c.written_off), value(c.repaid), day))
        self.conn.exec_driver_sql(_CLAIM_STAGE_CREATE)
        self.conn.exec_driver_sql(f"DELETE FROM {_CLAIM_STAGE}")  # noqa: S608 - a fixed name
        insert_rows(self.conn, _CLAIM_STAGE, ("l", "p", "w", "r", "d"), rows)
        self.conn.exec_driver_sql(_SUMS_AND_SETTLEMENT)
        if self.reversed:
            execute_many(self.conn, "UPDATE movement SET reversed_by = :by WHERE movement_id = :m",
                         [{"m": m, "by": by} for m, by in self.reversed.items()])
        return [c.liability_id for c in touched]


_SETTLEMENT = sql_file("queries/claim_settlement.sql")
if _SETTLEMENT.count("IN :ids") != 1:       # the one definition must keep its one place for the claims
    raise RuntimeError("queries/claim_settlement.sql must end with one 'IN :ids'")

# The touched claims' new sums (issue 19): one row per claim, staged in one bulk insert per file.
# NUMERIC columns, so that SQLite compares and subtracts the staged amounts (bound as exact text)
# as the claim's own NUMERIC columns hold them.
_CLAIM_STAGE = "payment_claim_stage"
_CLAIM_STAGE_CREATE = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {_CLAIM_STAGE} (l BIGINT NOT NULL PRIMARY KEY, "
                       "p NUMERIC(12,2) NOT NULL, w NUMERIC(12,2) NOT NULL, r NUMERIC(12,2) NOT NULL, d DATE)")


def _sums_and_settlement(definition: str) -> str:
    """``claim_settlement.sql``'s SET list with the claim's sums read from the staged new ones,
    as one ``UPDATE claim ... FROM`` that writes the sums too: each claim's row is changed once, to
    what the sums update followed by the definition made of it. (An UPDATE's SET reads the row as
    it was, so the definition's ``paid_amount`` etc. must be the staged values here.) The claims are
    also named by ``IN (SELECT l ...)``: without it SQLite's planner scans every claim of the ledger
    for each file and looks each up in the staged ones (a third of a million rows a file at a
    million movements); with it, each staged claim is found by its key."""
    body = re.sub(r"--[^\n]*", "", definition)
    m = re.fullmatch(r"\s*UPDATE\s+claim\s+SET\s+(.*)\s+WHERE\s+liability_id\s+IN\s+:ids\s*;?\s*", body, re.S)
    if m is None:
        raise RuntimeError("queries/claim_settlement.sql must be one 'UPDATE claim SET ... WHERE liability_id IN :ids'")
    sets = m.group(1)
    staged = {"paid_amount": "s.p", "written_off_amount": "s.w", "repaid_amount": "s.r"}
    for column, new in staged.items():
        if not re.search(rf"\b{column}\b", sets):
            raise RuntimeError(f"queries/claim_settlement.sql no longer reads {column}")
        sets = re.sub(rf"\b{column}\b", new, sets)
    if re.search(r"\b(?:settled_on|balance\s*=.*balance\b)", sets):
        raise RuntimeError("queries/claim_settlement.sql reads what this update sets")
    return (f"UPDATE claim SET paid_amount = s.p, written_off_amount = s.w, repaid_amount = s.r, settled_on = s.d, "  # noqa: S608
            f"{sets.strip()} FROM {_CLAIM_STAGE} s WHERE claim.liability_id IN (SELECT l FROM {_CLAIM_STAGE}) "
            "AND claim.liability_id = s.l")


_SUMS_AND_SETTLEMENT = _sums_and_settlement(_SETTLEMENT)


def _movement(r) -> Movement:
    return Movement(r.movement_id, r.fordring_id, r.kind, as_amount(r.amount), as_date(r.booked_on),
                    r.reference_id)


def _agency_of(fordring_id: str) -> str | None:
    """The agency a FordringID of FBS's form names (an agency id is at most 20 characters)."""
    m = re.fullmatch(r"FBS-([A-Za-z0-9]{1,20})-\d+(?:-\d+)?", fordring_id)
    return m.group(1) if m else None


# --- one file ------------------------------------------------------------------------------------

class NotThisUnit(Exception):
    """The file names a claim of another municipality than the one applying it: left for its own."""


def apply_file(ledger_engine: Engine, name: str, sha: str, parsed: PaymentFile, run_id: str,
               at: dt.datetime, agencies: Iterable[str] | None = None, sorting: Sorting | None = None,
               raw_name: str | None = None, conn: Connection | None = None) -> Counter:
    """Every movement of a valid file decided and recorded in ONE ledger transaction, or none.
    With ``agencies`` (one municipality's task), a file naming a claim of any other agency is not
    applied here (``NotThisUnit``): each claim is only ever changed under its own unit's lock.
    With ``sorting`` (a step of the run), a file that is not that step's (``Sorting.mine``, from
    the claims just read) raises ``Elsewhere`` before anything is written.

    Set-based: the file's keys are staged once, its claims and known movements read in three
    queries, every movement decided in order in memory (the rules of ``_Book.decide``), and then
    the file, all its movements, each touched claim's sums (one row per claim, however many
    movements touched it), their balance and settlement and the reversals' marks are written with
    one statement each: a file costs the same dozen statements whatever it holds. Each movement's
    row is its entry in the audit trail (M2, ``core.trail``): no event is written beside it.

    With ``conn`` (a connection in a transaction: ``_FileBatch``, several files in one ledger
    transaction, this one in a savepoint of its own), the file is written there and committed with
    the others; the caller rolls back to the savepoint if this raises."""
    if conn is None:
        with file_transaction(ledger_engine) as own:
            return _apply_file(own, name, sha, parsed, run_id, at, agencies, sorting, raw_name)
    return _apply_file(conn, name, sha, parsed, run_id, at, agencies, sorting, raw_name)


def _apply_file(conn: Connection, name: str, sha: str, parsed: PaymentFile, run_id: str, at: dt.datetime,
                agencies: Iterable[str] | None, sorting: Sorting | None, raw_name: str | None) -> Counter:
    counts: Counter = Counter()
    book = _Book(conn, parsed.movements)
    if sorting is not None:
        fids = [m.fordring_id for m in parsed.movements]
        known = {f: a for f, (_lid, a) in book.replaced.items()}
        known.update({f: c.agency_id for f, c in book.claims.items()})
        if not sorting.mine_known(raw_name or name, fids, known):
            raise Elsewhere(name)
    if agencies is not None:
        others = sorted({c.agency_id for c in book.claims.values()} - set(agencies))
        if others:
            raise NotThisUnit(f"it names claims of agencies {', '.join(others[:5])}")
    rows = []
    value = ledger.sql_value(conn)          # the values of many rows converted once (dates, the time)
    t = value(at)
    days: dict[dt.date, object] = {}
    seq = time.time_ns()                    # each movement's place in the audit trail (``core.trail``)
    for m in parsed.movements:
        prior = book.known.get(m.movement_id)
        if prior is not None:
            if prior.movement.same_as(m):
                counts["movements_again"] += 1
                continue
            raise Conflict(f"movement {m.movement_id} was delivered before with other content (FordringID, "
                           "kind, amount, date or reference)")
        state, reason, lid, agency = book.decide(m)
        book.known[m.movement_id] = _Known(m, state, lid)
        day = days.get(m.booked_on)
        if day is None:
            day = days[m.booked_on] = value(m.booked_on)
        rows.append((m.movement_id, sha, m.fordring_id, lid, agency or _agency_of(m.fordring_id), m.kind,
                     value(m.amount), day, m.reference_id, state, reason, run_id, t, t, seq + len(rows)))
        counts[state] += 1
    conn.execute(text("INSERT INTO payment_file (sha256, name, state, transaction_id, movements, applied, held, "
                      "duplicates, run_id, received_at) VALUES (:s, :n, 'applied', :x, :m, :a, :h, :d, :r, :t)"),
                 {"s": sha, "n": name, "x": parsed.transaction_id, "m": len(parsed.movements),
                  "a": counts[APPLIED], "h": counts[HELD], "d": counts["movements_again"], "r": run_id, "t": at})
    _insert_movements(conn, rows)           # (each row its own entry in the audit trail: ``core.trail``)
    _save_claims(book)
    return counts


# SQLite (the embedded ledger): one file's transaction touches about as many pages as it holds
# movements (its claims' rows, the movement, event and outbox indexes), scattered over a ledger of a
# gigabyte at a million movements, and SQLite's default page cache is 2 MB. The connection that
# applies a file gets a page cache of ``FILE_CACHE_KIB`` and keeps it (the pool hands the same
# connection to the next file, whose claims share those pages; at most that much memory per pooled
# ledger connection), and, for the file's transaction, a checkpoint every 64 MB of WAL instead of
# every 4 MB (a page changed by several files in a row is copied into the database once). Measured
# (issue 19): a modest gain, most of a file's cost is the pages it must write. Neither changes what
# a commit guarantees: ``synchronous`` is left as ``core.db`` sets it (FULL, SQLite's default: each
# file's commit is on disk before the file is archived, so exactly-once holds across a power loss
# too; NORMAL measured no faster here, the fsync is not what a commit waits for).
FILE_CACHE_KIB = 131072
FILE_WAL_PAGES = 16384
# The WAL a checkpoint has emptied is cut back to this size when it is next begun again (SQLite keeps
# the file at its largest size otherwise: a batch's checkpoint interval, ``BATCH_WAL_PAGES``, is a
# gigabyte). Disk space only: what is in the WAL and when it is copied do not change.
WAL_SIZE_LIMIT = 64 * 1024 * 1024


WRITE_CACHE_KIB = 32768     # FBS's connection while the write-back writes a chunk (its payment index, liabilities)


@contextmanager
def file_transaction(ledger_engine: Engine, cache_kib: int = FILE_CACHE_KIB, wal_pages: int = FILE_WAL_PAGES):
    """``ledger_engine.begin()`` for one payment file's transaction, on SQLite with the settings
    above (the commit, and the checkpoint it may start, included); ``cache_kib`` the page cache
    (the write-back's chunks use it too, on either database: ``WRITE_CACHE_KIB`` for FBS),
    ``wal_pages`` the checkpoint interval (a batch of files: ``BATCH_WAL_PAGES``)."""
    with ledger_engine.connect() as conn:
        if not db.embedded(conn):
            with conn.begin():
                yield conn
            return
        conn.exec_driver_sql(f"PRAGMA cache_size = -{int(cache_kib)}")   # (the same size again: pages kept)
        conn.exec_driver_sql(f"PRAGMA journal_size_limit = {int(WAL_SIZE_LIMIT)}")
        wal = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {int(wal_pages)}")
        conn.rollback()                     # (the transaction SQLAlchemy began for the pragmas: nothing in it)
        try:
            with conn.begin():
                yield conn
        finally:
            try:
                conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {int(wal)}")
                conn.rollback()
            except SQLAlchemyError:         # a connection that cannot be set back is not pooled again
                conn.invalidate()


_MOVEMENT_COLUMNS = ("movement_id", "file_sha256", "fordring_id", "liability_id", "agency_id", "kind", "amount",
                     "booked_on", "reference_id", "state", "hold_reason", "run_id", "received_at", "decided_at",
                     "arrival_seq")


def _insert_movements(conn: Connection, rows: list[tuple]) -> None:
    """A file's movements (tuples in ``_MOVEMENT_COLUMNS`` order) in one bulk insert
    (``ledger.insert_rows``: SQLite's executemany, PostgreSQL's COPY), in the file's transaction."""
    insert_rows(conn, "movement", _MOVEMENT_COLUMNS, rows)


def _save_claims(book: _Book) -> list[int]:
    return book.save_claims()


def record_quarantine(ledger_engine: Engine, name: str, sha: str, code: str, reason: str, run_id: str,
                      at: dt.datetime) -> None:
    with ledger_engine.begin() as conn:
        conn.execute(text("INSERT INTO payment_file (sha256, name, state, reason, run_id, received_at) "
                          "VALUES (:s, :n, 'quarantined', :why, :r, :t) ON CONFLICT (sha256) DO NOTHING"),
                     {"s": sha, "n": name, "why": mask_cprs_in(f"{code}: {reason}"), "r": run_id,
                      "t": at})


ADVICE = {  # code -> (Danish, English): what staff do about a quarantined file
    None: ("Bed debitorsystemet om at sende den igen, rettet.",
           "Ask the debtor system to deliver it again, corrected."),
    FAILED: ("Kontakt driften (IT): når årsagen er rettet, kan filen lægges tilbage i indbakken og bliver læst igen.",
             "Contact IT operations: once the cause is fixed, the file can be put back in the inbox and is read "
             "again."),
    UNREADABLE: ("Kontakt driften (IT): når filen kan læses, kan den lægges tilbage i indbakken og bliver læst igen.",
                 "Contact IT operations: once the file can be read, it can be put back in the inbox and is read "
                 "again."),
}


def file_tasks(fbs: Engine, name: str, sha: str, why: str, data: bytes) -> list[StaffTask]:
    """A quarantined file's staff task, for each agency whose claims it seems to name (a plain
    text search, nothing parsed), else for every agency: no payment may go missing unseen (M1).
    ``name`` is shown (escaped), ``why`` is ``CODE: reason``."""
    with fbs.connect() as conn:
        agencies = [r[0] for r in conn.execute(text("SELECT agency_id FROM agency ORDER BY agency_id"))]
    named = {a.decode() for a in re.findall(rb"FBS-([A-Za-z0-9]{1,20})-\d", data[:5_000_000])}
    to = [a for a in agencies if a in named] or agencies
    da, en = ADVICE.get(why.split(":")[0], ADVICE[None])
    message = mask_cprs_in(f"Betalingsfilen {name} fra debitorsystemet er ikke indlæst og er lagt i karantæne: {why}. "
                           f"Ingen betalinger fra filen er bogført i FBS. {da} / The payment file {name} from the "
                           f"debtor system was not read and is in quarantine: {why}. No payment in it is booked in "
                           f"FBS. {en}")
    return [StaffTask(_task_id("PAYFILE", sha[:24], a if len(to) > 1 else None), a, None, None, None,
                      TASK_KIND_FILE, message) for a in to]


def _task_id(prefix: str, key: str, agency: str | None = None) -> str:
    tid = f"{prefix}-{key}" + (f"-{agency}" if agency else "")
    if len(tid) <= 64:
        return tid
    return f"{prefix}-{hashlib.sha256(tid.encode()).hexdigest()[:64 - len(prefix) - 1]}"


def payment_id(movement_id: str) -> str:
    """``fbs.payment.payment_id`` (64 characters) for a BevaegelseID (up to 100)."""
    return movement_id if len(movement_id) <= 64 else "DA-" + hashlib.sha256(movement_id.encode()).hexdigest()[:61]


SOURCE = "SF1590_B_01A"     # the first word of ``fbs.payment.source_ref`` of a payment from the debtor system


def source_ref(fordring_id: str, movement_id: str) -> str:
    """``fbs.payment.source_ref`` of an applied movement's payment (200 characters): the service,
    the FordringID (up to 64) and the BevaegelseID (up to 100), so it always ends in the whole id."""
    return f"{SOURCE} {fordring_id} {movement_id}"[:200]


def source_movement(ref: str) -> str:
    """The BevaegelseID a payment's ``source_ref`` (``source_ref``) names: its last word."""
    return ref.split(" ")[-1]


# --- which municipality a file belongs to ---------------------------------------------------------

NAMED_CVR = re.compile(r"b01a-[0-9]{8}T[0-9]{12}Z-([1-9][0-9]{7})-[0-9a-f]{32}\.xml")
FAILED_CATEGORY = "payments_failed"        # run_count: a municipality's (or the rest's) ingest failed
UNFINISHED = "unfinished"                  # ... its rule while it runs: a killed task leaves it


def named_cvr(name: str) -> str | None:
    """The municipality's CVR an inbound-service file's name carries (``payments.inbound``)."""
    m = NAMED_CVR.fullmatch(name)
    return m.group(1) if m else None


@dataclass
class Municipalities:
    """FBS's units (``transfer.units``) as the payments run places files: by agency and by CVR."""
    units: list[Unit]
    by_agency: dict[str, Unit] = field(default_factory=dict)
    by_cvr: dict[str, list[Unit]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for u in self.units:
            self.by_cvr.setdefault(u.cvr, []).append(u)
            for a in u.agencies:
                self.by_agency[a] = u

    @classmethod
    def load(cls, fbs: Engine) -> Municipalities:
        return cls(units(fbs))


def claim_agencies(conn: Connection, fordring_ids: Iterable[str]) -> dict[str, str]:
    """The agency of each FordringID's claim in the ledger (an earlier FordringID of a claim
    replaced at an increase, U1, counts as that claim's); set-based: the ids staged, two queries."""
    fordring_ids = set(fordring_ids)
    _stage(conn, fordring_ids)
    current: dict[str, str] = dict(conn.exec_driver_sql(     # (no parameters: sent as they are, read as tuples)
        f"SELECT fordring_id, agency_id FROM claim WHERE fordring_id IN ({_staged(FORDRING)})").all())  # noqa: S608
    missing = fordring_ids - current.keys()     # (a claim's current FordringID is its own: no outbox row read)
    out: dict[str, str] = {}
    if missing:
        _restage(conn, FORDRING, missing)
        out.update(conn.exec_driver_sql(
            "SELECT o.fordring_id, c.agency_id FROM outbox o JOIN claim c ON c.liability_id = o.liability_id "  # noqa: S608
            f"WHERE o.fordring_id IN ({_staged(FORDRING)})").all())
    out.update(current)
    return out


def owner(ledger_engine: Engine, munis: Municipalities, name: str,
          parsed: PaymentFile | list[str] | None) -> Unit | None:
    """The one municipality (unit) a payment file belongs to, or None: then it is the run-level
    step's (the module doc of ``payment_tasks`` and the rule below). ``parsed``: the file parsed,
    or only the FordringIDs it names (``files.fordring_ids``, when sorting the inbox)."""
    cvr = named_cvr(name)
    named = munis.by_cvr.get(cvr, []) if cvr else []
    if parsed is None:                       # not read or not valid: only its name can tell
        return named[0] if len(named) == 1 else None
    fids = sorted(set(parsed if isinstance(parsed, list) else (m.fordring_id for m in parsed.movements)))
    with ledger_engine.connect() as conn:
        known = claim_agencies(conn, fids)
        conn.rollback()
    return _owner_of(munis, name, fids, known)


def _owner_of(munis: Municipalities, name: str, fids: Iterable[str], known: dict[str, str]) -> Unit | None:
    """``owner``'s rule, given the agency of each FordringID's claim the ledger has (``known``)."""
    cvr = named_cvr(name)
    named = munis.by_cvr.get(cvr, []) if cvr else []
    placed: set[Unit] = set()
    agencies: set[str] = set()
    for fid in fids:
        agency = known.get(fid)
        if agency is not None:               # a claim the ledger has: its agency's unit (below)
            agencies.add(agency)
        else:                                # not known (held): the agency its FBS form names, if any
            u = munis.by_agency.get(_agency_of(fid) or "")
            if u is not None:
                placed.add(u)
    for agency in agencies:                  # (each agency once, not each claim)
        u = munis.by_agency.get(agency)
        if u is None:                        # a claim of an agency that is no unit's: none at all
            return None
        placed.add(u)
    if cvr:
        if placed - set(named):
            return None
        if len(placed) == 1:
            return next(iter(placed))
        return named[0] if not placed and len(named) == 1 else None
    return next(iter(placed)) if len(placed) == 1 else None


@dataclass
class Sorting:
    """Which files one step takes: ``unit``'s own, or (``unit`` None, the run-level rest) those of
    no single municipality."""
    ledger: Engine
    munis: Municipalities
    unit: Unit | None

    def mine(self, name: str, parsed: PaymentFile | None) -> bool:
        return self._is_mine(owner(self.ledger, self.munis, name, parsed))

    def mine_known(self, name: str, fids: Iterable[str], known: dict[str, str]) -> bool:
        """``mine`` with the claims' agencies already read (``apply_file``'s book)."""
        return self._is_mine(_owner_of(self.munis, name, sorted(set(fids)), known))

    def _is_mine(self, found: Unit | None) -> bool:
        return (found is None) if self.unit is None else (found is not None and found.lock == self.unit.lock)


class Elsewhere(Exception):
    """The file is not this step's (``Sorting.mine``), found inside ``apply_file``: nothing written."""


def sort_inbox(stores: Stores, inbox: Inbox, run_id: str, at: dt.datetime | None = None,
               munis: Municipalities | None = None) -> list[tuple[Unit, list[str]]]:
    """The run's first step: settings and the inbox's layout checked (a problem there is the
    run's error before anything is read or moved), the entries that are not payment files
    reported (``report_ignored``), and the units with files waiting, each with its files' names
    (oldest name first), for the run to map over. Files of no single municipality are not listed
    (the run-level rest takes them). Nothing is moved or applied here; a file's owner is decided
    again, from the bytes read, by the step that applies it."""
    at = at or ledger.now()
    munis = munis or Municipalities.load(stores.fbs)
    preflight()
    inbox.check()
    found = inbox.survey()
    try:
        with exclusive(stores.ledger, "payments"):
            report_ignored(stores, found.ignored, run_id, at)
    except Exception as exc:      # reporting what is not taken never stops what is
        log.error("the entries of the payment inbox that are not payment files could not be recorded: %s",
                  _error_text(exc))
    limit = max_file_bytes()
    plan: dict[str, list[str]] = {}
    with collector_paused():
        sorted_ = _sort_files(stores, inbox, munis, found.waiting, limit)
    for name, whose in sorted_:
        if whose is not None:
            plan.setdefault(whose.lock, []).append(name)
    return [(u, plan[u.lock]) for u in munis.units if u.lock in plan]


def _sort_files(stores: Stores, inbox: Inbox, munis: Municipalities, names: list[str],
                limit: int) -> list[tuple[str, Unit | None]]:
    """Each waiting file and the municipality it belongs to (``owner``), None: no single one."""
    out = []
    for name in names:
        cvr = named_cvr(name)
        if cvr and len(munis.by_cvr.get(cvr, [])) == 1:
            whose = munis.by_cvr[cvr][0]          # an inbound call's file: its name says whose it is
        else:
            try:
                # only the FordringIDs (read and validated, no movements made): the step that
                # applies the file parses it in full and decides its owner again
                whose = owner(stores.ledger, munis, name, fordring_ids(inbox.read(name, limit)))
            except (BadFile, OSError, TooLarge):
                whose = None
        out.append((name, whose))
    return out


@contextmanager
def all_units_locked(ledger_engine: Engine, munis: Municipalities):
    """The run-level ``payments`` lock and every unit's (those of ``db.exclusive``), taken in one
    order (run-level first): while held, no municipality's step applies anything
    (``db.exclusive_many``: on PostgreSQL all in ONE session, so a hundred municipalities do not
    take a hundred pooled connections)."""
    with db.exclusive_many(ledger_engine, "payments", [None, *sorted({u.lock for u in munis.units})]):
        yield


# --- the run ------------------------------------------------------------------------------------

def ingest(stores: Stores, inbox: Inbox, run_id: str, at: dt.datetime | None = None) -> Counter:
    """The whole run as the CLI does it: each municipality with files waiting on its own
    (``ingest_unit``, under its lock: whatever fails there fails that municipality only), then the
    run-level rest (``ingest_rest``: what is not a payment file, files of no single municipality,
    held movements and the write-back of all). Returns what was done (the run's recorded counts
    come from the ledger, ``payment_counts``).

    Then, having done everything else: ``MunicipalitiesFailed`` naming each municipality whose
    step failed, or ``FilesLeft`` naming the files a cause outside them (the ledger unreachable or
    locked, a folder not writable) left in the inbox for the next run."""
    at = at or ledger.now()
    munis = Municipalities.load(stores.fbs)
    done: Counter = Counter()
    left: list[str] = []
    failed: list[str] = []
    for unit, names in sort_inbox(stores, inbox, run_id, at, munis):
        try:
            done += ingest_unit(stores, inbox, run_id, unit, names, at, munis)
        except FilesLeft as exc:
            left += exc.left
        except Exception as exc:
            log.exception("payments of municipality %s failed; every other municipality goes on", unit.label)
            failed.append(f"{unit.label}: {_error_text(exc)}")
    try:
        done += ingest_rest(stores, inbox, run_id, at, munis)
    except FilesLeft as exc:
        left += exc.left
    if failed:
        record_run_counts(stores.ledger, run_id)
        raise MunicipalitiesFailed(failed, left)
    if left:
        record_run_counts(stores.ledger, run_id)
        raise FilesLeft(left)
    return done


def ingest_unit(stores: Stores, inbox: Inbox, run_id: str, unit: Unit, names: Iterable[str] | None = None,
                at: dt.datetime | None = None, munis: Municipalities | None = None) -> Counter:
    """One municipality's files (``names``, as ``sort_inbox`` listed them; None: every waiting
    file that is its own), then its held movements looked at again and its write-back to FBS,
    under its own ``payments`` lock. Each file is its own again (see ``ingest_file``); a file that
    turns out not to be this municipality's is left where it is."""
    at = at or ledger.now()
    munis = munis or Municipalities.load(stores.fbs)
    sorting = Sorting(stores.ledger, munis, unit)
    with exclusive(stores.ledger, "payments", part=unit.lock):
        preflight()
        inbox.check()
        waiting = inbox.survey().waiting
        if names is not None:
            wanted = set(names)
            waiting = [n for n in waiting if n in wanted]
        done, left = _files(stores, inbox, waiting, run_id, at, sorting)
        done["released"] += look_again(stores, run_id, at, agencies=unit.agencies)
        done += write_back(stores, run_id, at, agencies=unit.agencies)
    if left:
        raise FilesLeft(left)
    return done


def ingest_rest(stores: Stores, inbox: Inbox, run_id: str, at: dt.datetime | None = None,
                munis: Municipalities | None = None) -> Counter:
    """The run-level rest, with every unit's lock held (so it may touch any claim): the files of
    no single municipality (several, or none known: each applied whole, never split), every held
    movement looked at again and everything not yet written back written to FBS (what a failed
    municipality's step left too). (What is not a payment file was reported by ``sort_inbox``.)"""
    at = at or ledger.now()
    munis = munis or Municipalities.load(stores.fbs)
    with all_units_locked(stores.ledger, munis):
        preflight()
        inbox.check()
        done, left = _files(stores, inbox, inbox.survey().waiting, run_id, at, Sorting(stores.ledger, munis, None))
        done["released"] += look_again(stores, run_id, at)
        done += write_back(stores, run_id, at)
    if left:
        raise FilesLeft(left)
    return done


# --- several files in one ledger transaction -------------------------------------------------------
#
# Each file in its own ledger transaction wrote, at its commit, every page it changed: the claims'
# rows and the movement and event indexes by claim are scattered over the ledger, so a file of
# 1,000 movements wrote about 1,000 pages of each to the WAL (16 MB at a million movements), and the
# next file wrote most of the same pages again. ``_files`` therefore applies a step's files in
# batches: ONE ledger transaction for up to ``BATCH_MOVEMENTS`` movements (or ``BATCH_SECONDS``),
# each file in a savepoint of its own, so a page several files change is written once per batch.
# What a file is promised does not change:
#
# * all or nothing, file by file: a file whose handling fails in the batch is rolled back to its
#   savepoint (the files before it stay), the batch is committed, and the file is then handled on
#   its own exactly as before (``ingest_file``: quarantined, left in the inbox, or applied);
# * exactly once: a file is moved to the archive only after the commit that holds it. A crash
#   before the commit leaves every file of the batch in the inbox and none of them applied; one
#   after it leaves applied files that the next run recognises by their SHA-256 and only moves out;
# * anything but the plain case (the file cannot be read, was delivered before, is not valid, is
#   not this step's, fails) goes the single-file way after the batch is committed, so no other
#   connection writes the ledger while the batch holds its transaction;
# * a commit that fails (the ledger unreachable, locked, full) leaves the batch's files in the
#   inbox, named, for the next run, as a file whose own commit failed was left before.
BATCH_MOVEMENTS = 50_000
BATCH_SECONDS = 15.0       # (an SQLite ledger has one writer: others wait at most about this long)
# SQLite: a batch rewrites most of the claims' pages and the indexes by claim (a million movements'
# ledger holds them in some 40,000 pages); a checkpoint after every batch copied them all into the
# database again each time. With a checkpoint every 1 GB of WAL, a page several batches changed is
# copied once. (What a commit guarantees is the same: ``synchronous`` stays FULL.)
BATCH_WAL_PAGES = 262_144
BATCH_CACHE_KIB = FILE_CACHE_KIB


def _files(stores: Stores, inbox: Inbox, names: list[str], run_id: str, at: dt.datetime,
           sorting: Sorting | None) -> tuple[Counter, list[str]]:
    done: Counter = Counter()
    left: list[str] = []
    names = list(names)
    start = 0
    with collector_paused():
        while start < len(names):
            start = _file_batch(stores, inbox, names, start, run_id, at, sorting, done, left)
    return done, left


@contextmanager
def collector_paused():
    """Python's cyclic garbage collector paused while files are applied or written back (as it was
    before, afterwards). What that makes, a few objects per movement, is freed by reference
    counting as it goes; the collector walked those objects again and again as they were made
    (about 5% of a payments run), and finds the few cycles at its next pass after this."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _file_batch(stores: Stores, inbox: Inbox, names: list[str], start: int, run_id: str, at: dt.datetime,
                sorting: Sorting | None, done: Counter, left: list[str]) -> int:
    """The files from ``names[start]`` on in one ledger transaction (above), until the batch is full
    or a file must be handled on its own (after the commit); returns where the next batch starts."""
    limit = max_file_bytes()
    applied: list[tuple[str, Counter]] = []
    alone: str | None = None
    trying: str | None = None
    i = start
    try:
        with file_transaction(stores.ledger, cache_kib=BATCH_CACHE_KIB, wal_pages=BATCH_WAL_PAGES) as conn:
            _begin(conn)
            began, n = time.monotonic(), 0
            while i < len(names) and n < BATCH_MOVEMENTS and time.monotonic() - began < BATCH_SECONDS:
                trying = names[i]
                i += 1
                counts = _in_batch(conn, stores, inbox, trying, run_id, at, sorting, limit)
                if counts is None:
                    alone, trying = names[i - 1], None
                    break
                if counts.get("files_elsewhere"):
                    done += counts
                else:
                    applied.append((trying, counts))
                    n += counts[APPLIED] + counts[HELD] + counts["movements_again"]
                trying = None
    except Exception as exc:               # the transaction or its commit: none of the batch is applied
        why = _error_text(exc)
        for name, _counts in applied:
            log.error("payment file %s left in the inbox for the next run: %s", shown(name), why)
            left.append(f"{shown(name)} ({why})")
            done["files_left"] += 1
        applied = []
        if trying is not None:             # (the one being tried: on its own, as any other)
            alone = trying
        elif alone is None and i == start:  # nothing taken (the transaction never began): on its own
            alone, i = names[start], start + 1
    for name, counts in applied:
        try:
            inbox.archive(name)
        except Exception as exc:
            why = _error_text(exc)
            log.error("payment file %s left in the inbox for the next run: %s", shown(name), why)
            left.append(f"{shown(name)} ({why})")
            done["files_left"] += 1
            continue
        log.info("payment file %s: %d movement(s) applied, %d held for review, %d delivered before", shown(name),
                 counts[APPLIED], counts[HELD], counts["movements_again"])
        done += Counter({"files_applied": 1, **counts})
    if alone is not None:
        try:
            done += ingest_file(stores, inbox, alone, run_id, at, sorting)
        except Exception as exc:
            why = _error_text(exc)
            log.error("payment file %s left in the inbox for the next run: %s", shown(alone), why)
            left.append(f"{shown(alone)} ({why})")
            done["files_left"] += 1
    return i


def _begin(conn: Connection) -> None:
    """The batch's transaction begun by a write before its first savepoint: SQLite's Python driver
    begins one only at a write, and a savepoint outside a transaction would be a transaction of its
    own (its release a commit)."""
    conn.exec_driver_sql(_STAGE_CREATE)
    conn.exec_driver_sql(f"DELETE FROM {_STAGE}")  # noqa: S608 - a fixed name


def _in_batch(conn: Connection, stores: Stores, inbox: Inbox, name: str, run_id: str, at: dt.datetime,
              sorting: Sorting | None, limit: int) -> Counter | None:
    """One file applied in the batch's transaction, in a savepoint of its own: its counts; or
    ``files_elsewhere`` (not this step's: nothing written); or None: anything but the plain case,
    for ``ingest_file`` to handle on its own once the batch is committed (nothing of it written)."""
    try:
        data = inbox.read(name, limit)
        sha = hashlib.sha256(data).hexdigest()
        parsed = parse(data)
    except Exception:                      # (not taken, gone, too large, unreadable, not valid)
        return None
    try:
        with conn.begin_nested():
            if conn.execute(text("SELECT 1 FROM payment_file WHERE sha256 = :s"), {"s": sha}).first() is not None:
                return None                # delivered before (perhaps earlier in this batch)
            return apply_file(stores.ledger, shown(name), sha, parsed, run_id, at,
                              agencies=sorting.unit.agencies if sorting is not None and sorting.unit else None,
                              sorting=sorting, raw_name=name, conn=conn)
    except Elsewhere:
        return Counter({"files_elsewhere": 1})
    except NotThisUnit as exc:             # a claim of another municipality appeared since it was sorted
        log.warning("payment file %s is not only this municipality's (%s): left for the run-level step",
                    shown(name), exc)
        return Counter({"files_elsewhere": 1})
    except Exception as exc:
        log.info("payment file %s is handled on its own after the batch: %s", shown(name), _error_text(exc))
        return None


class FilesLeft(RuntimeError):
    """Payment files left in the inbox by a cause outside them: the run's error, after the rest."""

    def __init__(self, left: list[str] | str):
        self.left = [left] if isinstance(left, str) else list(left)
        super().__init__(_left_text(self.left))


def _left_text(left: list[str]) -> str:
    return (f"{len(left)} payment file(s) left in the inbox for the next run (every other file was done): "
            + "; ".join(left[:10]) + (f"; and {len(left) - 10} more" if len(left) > 10 else ""))


class MunicipalitiesFailed(FilesLeft):
    """The payments of one or more municipalities failed (the others were done): their files wait
    in the inbox for the next run."""

    def __init__(self, failed: list[str], left: list[str] | None = None):
        self.failed = list(failed)
        self.left = list(left or [])
        RuntimeError.__init__(self, f"payments failed for {len(failed)} municipalit"
                              f"{'y' if len(failed) == 1 else 'ies'} (every other municipality was done): "
                              + "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")
                              + (f"; {_left_text(self.left)}" if self.left else ""))


def _error_text(exc: BaseException) -> str:
    """An exception in one line, CPR masked, bounded: never a file's content at length."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return shown(f"{type(exc).__name__}: {first}"[:300])


def ingest_file(stores: Stores, inbox: Inbox, name: str, run_id: str, at: dt.datetime,
                sorting: Sorting | None = None) -> Counter:
    """One waiting file: applied (archived), recognised as delivered before (archived or
    quarantined again), or quarantined; an exception only for a cause outside the file. With
    ``sorting``, a file that is not that step's (another municipality's, or, for a municipality,
    one of no single municipality) is left in the inbox untouched (``files_elsewhere``)."""
    limit = max_file_bytes()
    elsewhere = Counter({"files_elsewhere": 1})
    try:
        data = inbox.read(name, limit)
    except NotTaken as exc:
        log.warning("payment file %s is not taken: %s; the next run looks at it again", shown(name), exc)
        return Counter({"files_changed": 1})
    except FileNotFoundError:
        log.warning("payment file %s went from the inbox after it was listed: nothing to do", shown(name))
        return Counter({"files_gone": 1})
    except TooLarge as exc:             # not even read: recorded under its name and size
        if sorting is not None and not sorting.mine(name, None):
            return elsewhere
        sha = hashlib.sha256(f"too large: {name} {exc.size}".encode()).hexdigest()
        return _quarantine(stores, inbox, name, sha, b"", TOO_LARGE,
                           f"the file has {exc.size} bytes, more than the {limit} accepted "
                           "(FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES); not read", run_id, at)
    except OSError as exc:              # no permission, an I/O error: not read, recorded under what it is
        if sorting is not None and not sorting.mine(name, None):
            return elsewhere
        sha = hashlib.sha256(f"unreadable: {inbox.identity(name)}".encode()).hexdigest()
        return _quarantine(stores, inbox, name, sha, b"", UNREADABLE,
                           f"the file could not be read ({errno.errorcode.get(exc.errno, 'error')}: "
                           f"{exc.strerror or type(exc).__name__}); nothing in it was read", run_id, at)
    sha = hashlib.sha256(data).hexdigest()
    with stores.ledger.connect() as conn:
        seen = conn.execute(text("SELECT state, reason, name FROM payment_file WHERE sha256 = :s"), {"s": sha}).first()
    if seen is not None:
        # only moved out again: the step whose file it would be does it (a delivery again of a
        # municipality's file is that municipality's), so a repeat after a crash is found too
        if sorting is not None and not sorting.mine(name, _parsed_or_none(data)):
            return elsewhere
        log.info("payment file %s was delivered before (as %s, %s): not applied again", shown(name), seen.name,
                 seen.state)
        if seen.state == "quarantined":
            raise_tasks_fbs(stores.fbs, file_tasks(stores.fbs, seen.name, sha, seen.reason, data), at)
            inbox.quarantine(name, f"delivered again; {seen.reason}")
        else:
            inbox.archive(name)
        return Counter({"files_again": 1})
    try:
        parsed = parse(data)
        # whose file it is, decided from the claims the file's own transaction reads (apply_file)
        counts = apply_file(stores.ledger, shown(name), sha, parsed, run_id, at,
                            agencies=sorting.unit.agencies if sorting is not None and sorting.unit else None,
                            sorting=sorting, raw_name=name)
    except Elsewhere:
        return elsewhere
    except NotThisUnit as exc:          # a claim of another municipality appeared since it was sorted
        log.warning("payment file %s is not only this municipality's (%s): left for the run-level step",
                    shown(name), exc)
        return elsewhere
    except (BadFile, Conflict) as exc:
        if isinstance(exc, BadFile) and sorting is not None and not sorting.mine(name, None):
            return elsewhere
        code, why = (exc.code, exc.reason) if isinstance(exc, BadFile) else (CONFLICT, str(exc))
        return _quarantine(stores, inbox, name, sha, data, code, why, run_id, at)
    except IntegrityError as exc:
        if _recorded(stores.ledger, sha):
            # another run applied the same file at the same moment: its transaction won
            log.warning("payment file %s was applied concurrently by another run; left for the next run",
                        shown(name))
            return Counter({"files_concurrent": 1})
        return _failed(stores, inbox, name, sha, data, exc, run_id, at)
    except DataError as exc:            # a value of this file the ledger cannot hold
        return _failed(stores, inbox, name, sha, data, exc, run_id, at)
    except SQLAlchemyError:             # the ledger itself (unreachable, locked, not migrated): left
        raise
    except Exception as exc:            # anything else that went wrong with this file
        return _failed(stores, inbox, name, sha, data, exc, run_id, at)
    inbox.archive(name)
    log.info("payment file %s: %d movement(s) applied, %d held for review, %d delivered before", shown(name),
             counts[APPLIED], counts[HELD], counts["movements_again"])
    return Counter({"files_applied": 1, **counts})


def _parsed_or_none(data: bytes) -> PaymentFile | None:
    try:
        return parse(data)
    except BadFile:
        return None


def _recorded(ledger_engine: Engine, sha: str) -> bool:
    with ledger_engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM payment_file WHERE sha256 = :s"), {"s": sha}).first() is not None


def _failed(stores: Stores, inbox: Inbox, name: str, sha: str, data: bytes, exc: Exception, run_id: str,
            at: dt.datetime) -> Counter:
    """Quarantined because handling it failed. Recorded under a key derived from its bytes, not
    the bytes' own: the same bytes put back once the cause is fixed are read again, and a
    repeat of this failure (after a crash, or delivered again) is recorded and tasked once."""
    log.error("payment file %s could not be applied: %s", shown(name), _error_text(exc))
    key = hashlib.sha256(f"{FAILED}:{sha}".encode()).hexdigest()
    return _quarantine(stores, inbox, name, key, data, FAILED,
                       f"fbs-debitor could not apply the file ({type(exc).__name__}, see the log of run {run_id}); "
                       "nothing in it was applied", run_id, at)


def _quarantine(stores: Stores, inbox: Inbox, name: str, sha: str, data: bytes, code: str, why: str, run_id: str,
                at: dt.datetime) -> Counter:
    """Recorded in the ledger first, then the staff task, then the file moved (each step repeatable)."""
    why = mask_cprs_in(why)
    log.error("payment file %s quarantined: %s: %s", shown(name), code, why)
    record_quarantine(stores.ledger, shown(name), sha, code, why, run_id, at)
    raise_tasks_fbs(stores.fbs, file_tasks(stores.fbs, shown(name), sha, f"{code}: {why}", data), at)
    inbox.quarantine(name, f"{code}: {why}")
    return Counter({"files_quarantined": 1})


def raise_tasks_fbs(fbs: Engine, tasks: list[StaffTask], at: dt.datetime) -> int:
    with fbs.begin() as conn:
        return raise_tasks(conn, tasks, at)


def look_again(stores: Stores, run_id: str, at: dt.datetime, agencies: Iterable[str] | None = None) -> int:
    """Held movements whose reason may have gone (claim confirmed or arrived, reversed movement
    arrived) decided again, oldest first, in one transaction; returns how many are now applied.
    With ``agencies`` (one municipality's step) only its movements on its own claims."""
    sql = ("SELECT movement_id, fordring_id, kind, amount, booked_on, reference_id, hold_reason FROM movement "  # noqa: S608 - fixed fragments
           "WHERE state = 'held' AND hold_reason IN :why" + (" AND agency_id IN :ag" if agencies is not None else "")
           + " ORDER BY received_at, movement_id")
    params = {"why": list(LOOKED_AT_AGAIN), **({"ag": sorted(agencies)} if agencies is not None else {})}
    with stores.ledger.begin() as conn:
        if agencies is not None and not params["ag"]:
            return 0
        rows = conn.execute(in_query(sql, *(("why", "ag") if agencies is not None else ("why",))), params).all()
        if not rows:
            return 0
        movements = [_movement(r) for r in rows]
        book = _Book(conn, movements)
        released, rehold, events = [], [], []
        for m, r in zip(movements, rows, strict=True):
            c = book.claims.get(m.fordring_id)
            if agencies is not None and c is not None and c.agency_id not in params["ag"]:
                continue                            # another municipality's claim: its own step decides
            book.known.pop(m.movement_id, None)     # decided again, as if new
            state, reason, lid, agency = book.decide(m)
            book.known[m.movement_id] = _Known(m, state, lid)
            if state == APPLIED:
                released.append({"m": m.movement_id, "l": lid, "a": agency, "r": run_id, "t": at})
                events.append((lid, "payment_released", None, movement_text(m, "held earlier", None)
                               + f": applied now, was held as {r.hold_reason}"))
            elif reason != r.hold_reason or lid is not None:
                rehold.append({"h": reason, "l": lid, "a": agency, "m": m.movement_id})
                if reason != r.hold_reason and lid is not None:    # (M2: the row keeps its first reason, below)
                    events.append((lid, "payment_reheld", None, movement_text(m, "held earlier", None)
                                   + f": held again for review, now {reason}, was {r.hold_reason}"))
        if rehold:      # (the reason it arrived with is kept the first time it is replaced: ``core.trail``)
            conn.execute(text("UPDATE movement SET arrival_reason = COALESCE(arrival_reason, hold_reason), "
                              "hold_reason = :h, liability_id = COALESCE(liability_id, :l), "
                              "agency_id = COALESCE(:a, agency_id) WHERE movement_id = :m"), rehold)
        if released:
            conn.execute(text("UPDATE movement SET state = 'applied', liability_id = :l, agency_id = :a, run_id = :r, "
                              "decided_at = :t, written_back_at = NULL WHERE movement_id = :m"), released)
        book.save_claims()
        add_events(conn, events, run_id, at)
    return len(released)


# --- write-back to FBS ---------------------------------------------------------------------------

def write_back(stores: Stores, run_id: str, at: dt.datetime, batch: int = WRITE_BATCH,
               agencies: Iterable[str] | None = None) -> Counter:
    """Applied movements to ``fbs.payment`` chunk by chunk, held ones as staff tasks (one per file,
    reason and liability, or agency where the claim is unknown), then the FBS status of settled
    claims; every write keyed, so a repeat changes nothing. With ``agencies`` (one municipality's
    step) only those agencies' movements and claims."""
    ag = sorted(agencies) if agencies is not None else None
    if ag is not None and not ag:
        return Counter()
    done: Counter = Counter()
    query = in_query("SELECT movement_id, fordring_id, liability_id, agency_id, kind, amount, booked_on, reference_id, "  # noqa: S608 - fixed fragments
                     "state, hold_reason, hold_task FROM movement WHERE written_back_at IS NULL AND state = 'applied' "
                     + ("AND agency_id IN :ag " if ag is not None else "")
                     + "AND movement_id > :a ORDER BY movement_id LIMIT :n", *(("ag",) if ag is not None else ()))
    with collector_paused():
        for rows in keyset_pages(stores.ledger, query, "movement_id", "",
                                 {"n": batch, **({"ag": ag} if ag is not None else {})}, after="a"):
            done += _write_chunk(stores, rows, at)
    done["hold_tasks"] += hold_tasks(stores, at, batch, agencies=ag)
    return done + settle_fbs_status(stores, run_id, at, agencies=ag)


def _write_chunk(stores: Stores, rows: list, at: dt.datetime) -> Counter:
    counts: Counter = Counter()
    with file_transaction(stores.fbs, WRITE_CACHE_KIB) as conn:
        lids = sorted({r.liability_id for r in rows})
        present = {r[0] for part in chunked(lids, CHUNK)
                   for r in select_in(conn, "SELECT liability_id FROM liability WHERE liability_id IN :l", "l", part)}
        gone = [r for r in rows if r.liability_id not in present]
        if gone:    # deleted from FBS since it was applied: left unwritten, reconciliation shows it
            log.error("%d applied movement(s) on liabilities no longer in FBS are not written back: %s", len(gone),
                      ", ".join(sorted({str(r.liability_id) for r in gone})[:20]))
        applied = [r for r in rows if r.liability_id in present]
        if applied:
            value = ledger.sql_value(conn)
            days: dict = {}
            params = []
            for r in sorted(applied, key=lambda r: r.liability_id):     # (liability order: pages shared)
                day = days.get(r.booked_on)
                if day is None:
                    day = days[r.booked_on] = value(as_date(r.booked_on))
                params.append({"p": payment_id(r.movement_id), "l": r.liability_id, "k": r.kind,
                               "a": value(as_amount(r.amount)), "b": day,
                               "s": source_ref(r.fordring_id, r.movement_id)})
            execute_many(conn, "INSERT INTO payment (payment_id, liability_id, kind, amount, booked_on, source_ref) "
                         "VALUES (:p, :l, :k, :a, :b, :s) ON CONFLICT (payment_id) DO NOTHING", params, bound=True)
            # movements released after review: their hold task is done once none of its movements is held
            released = _done_hold_task_ids(stores.ledger, conn, [r for r in applied if r.hold_reason])
            if released:
                conn.execute(text("UPDATE task SET resolved_at = :t WHERE task_id = :i AND resolved_at IS NULL"),
                             [{"t": at, "i": i} for i in released])
        counts["written_back"] = len(applied)
    with file_transaction(stores.ledger) as conn:
        _mark_written_back(conn, [r.movement_id for r in applied], at)
    return counts


def _mark_written_back(conn: Connection, movement_ids: list[str], t) -> None:
    """One UPDATE by key per movement, sent in one go (``execute_many``)."""
    t = ledger.sql_value(conn)(t)
    execute_many(conn, "UPDATE movement SET written_back_at = :t WHERE movement_id = :m",
                 [{"t": t, "m": m} for m in movement_ids], bound=True)


def settle_fbs_status(stores: Stores, run_id: str, at: dt.datetime, agencies: list[str] | None = None) -> Counter:
    """FBS shows the result (P2): a live claim paid or written off in full (by movements, or by a
    write-down to what was paid) closes its liability where FBS has it open; one fbs-debitor closed
    that has a balance again (a reversal) is opened again. Worked out from the ledger's claims each
    time, so a crash between the FBS and the ledger commit is finished by the next run."""
    only = " AND agency_id IN :ag" if agencies is not None else ""
    names = ("ag",) if agencies is not None else ()
    params = {"ag": agencies} if agencies is not None else {}
    with stores.ledger.connect() as conn:
        close = [r[0] for r in conn.execute(in_query(
            "SELECT liability_id FROM claim WHERE settlement IN ('paid', 'written_off') AND debtor_status <> 'cancelled' "  # noqa: S608 - fixed fragments
            "AND fbs_closed_by_payment = FALSE" + only, *names), params)]
        reopen = [r[0] for r in conn.execute(in_query(
            "SELECT liability_id FROM claim WHERE fbs_closed_by_payment = TRUE AND balance > 0"  # noqa: S608
            + only, *names), params)]
    done: Counter = Counter()
    # chunk by chunk, FBS then the ledger (memory flat however many claims a run settled); each
    # chunk is worked out again by the next run if a crash comes between the two commits
    for part in chunked([(lid, True) for lid in close] + [(lid, False) for lid in reopen], WRITE_BATCH):
        done += _settle_chunk(stores, run_id, at, [lid for lid, c in part if c], [lid for lid, c in part if not c])
    return done


def _settle_chunk(stores: Stores, run_id: str, at: dt.datetime, close: list[int], reopen: list[int]) -> Counter:
    with file_transaction(stores.fbs, WRITE_CACHE_KIB) as conn:
        closed, now_closed = _set_status(conn, close, "open", "closed", at)
        reopened, _ = _set_status(conn, reopen, "closed", "open", at)
    with file_transaction(stores.ledger) as conn:
        value = ledger.sql_value(conn)
        flags = [{"l": lid, "f": value(True)} for lid in now_closed]
        flags += [{"l": lid, "f": value(False)} for lid in reopen]   # no longer ours to reopen
        if flags:
            execute_many(conn, "UPDATE claim SET fbs_closed_by_payment = :f WHERE liability_id = :l", flags,
                         bound=True)
        add_events(conn, [(lid, "fbs_closed_settled", None, "paid or written off in full: closed in FBS (P2)")
                          for lid in closed]
                   + [(lid, "fbs_reopened", None, "a reversal left a balance: opened again in FBS (P2)")
                      for lid in reopened], run_id, at)
    return Counter({"fbs_closed": len(closed), "fbs_reopened": len(reopened)})


def _set_status(conn: Connection, liability_ids: list[int], old: str, new: str, t) -> tuple[list[int], list[int]]:
    """Liabilities moved from ``old`` to ``new`` status in FBS (others are left as staff set them),
    and all of the given ones that have ``new`` now (moved now, or by an earlier, interrupted run)."""
    changed: list[int] = []
    target: list[int] = []
    for part in chunked(liability_ids, CHUNK):
        status = dict(select_in(conn, "SELECT liability_id, status FROM liability WHERE liability_id IN :l", "l", part))
        now_old = [lid for lid, s in status.items() if s == old]
        if now_old:
            conn.execute(in_query("UPDATE liability SET status = :n, updated_at = :t WHERE liability_id IN :l", "l"),
                         {"n": new, "t": t, "l": now_old})
        changed += now_old
        target += [lid for lid, s in status.items() if s in (old, new)]
    return changed, target


# --- staff tasks for held movements ---------------------------------------------------------------

HOLD_TASK = "PAYHELD"
SAMPLE = 20          # movements named in the text of one hold task; all of them are in the ledger


# A held movement's task key: its file, its reason, and its liability or else the agency its
# FordringID names (``movement.hold_task`` keeps it once the task is raised); fixed SQL.
_KEY = ("SUBSTR(file_sha256, 1, 16) || '-' || hold_reason || '-' || "
        "COALESCE('L' || CAST(liability_id AS VARCHAR(20)), 'A' || agency_id, '-')")
_UNWRITTEN = "FROM movement WHERE state = 'held' AND written_back_at IS NULL"
_OF_AGENCIES = " AND agency_id IN :ag"     # one municipality's step: its agencies' held movements
_GROUPS = f"SELECT {_KEY} AS group_key, MIN(hold_reason) AS reason, MIN(liability_id) AS liability_id, MIN(agency_id) AS agency_id, MIN(file_sha256) AS sha, COUNT(*) AS n, SUM(amount) AS total {_UNWRITTEN}{{only}} GROUP BY {_KEY} ORDER BY 1"  # noqa: S608,E501
_SAMPLES = f"SELECT group_key, movement_id, fordring_id, kind, amount FROM (SELECT {_KEY} AS group_key, movement_id, fordring_id, kind, amount, ROW_NUMBER() OVER (PARTITION BY {_KEY} ORDER BY movement_id) AS nr {_UNWRITTEN}{{only}}) s WHERE nr <= :k ORDER BY group_key, movement_id"  # noqa: S608,E501
_MARK = f"UPDATE movement SET hold_task = {_KEY}, written_back_at = :t WHERE state = 'held' AND written_back_at IS NULL AND {_KEY} IN :k"  # noqa: S608,E501


def hold_tasks(stores: Stores, at: dt.datetime, batch: int = CHUNK, agencies: list[str] | None = None) -> int:
    """Held movements not yet written back, as staff tasks: ONE per file, reason and liability (to
    the liability's patron and branch), or, where the claim is not known, per file, reason and the
    agency its FordringID names (else every agency); the text names the first movements and the
    count, ``movement.hold_task`` lists them all. Raised in FBS, then marked in the ledger; the
    keys are the same on a repeat, so a crash in between raises nothing twice."""
    only, names = (_OF_AGENCIES, ("ag",)) if agencies is not None else ("", ())
    params = {"ag": agencies} if agencies is not None else {}
    with stores.ledger.connect() as conn:
        groups = conn.execute(in_query(_GROUPS.format(only=only), *names), params).all()
        if not groups:
            return 0
        samples: dict[str, list] = {}
        for r in conn.execute(in_query(_SAMPLES.format(only=only), *names), {"k": SAMPLE, **params}):
            samples.setdefault(r.group_key, []).append(r)
        names = {}
        for part in chunked(sorted({g.sha for g in groups}), CHUNK):
            names.update(dict(conn.execute(in_query("SELECT sha256, name FROM payment_file WHERE sha256 IN :s", "s"),
                                           {"s": part}).all()))
    raised = 0
    for part in chunked(groups, batch):
        with stores.fbs.begin() as conn:
            raised += raise_tasks(conn, _group_tasks(conn, part, samples, names), at)
        with stores.ledger.begin() as conn:
            _mark_held(conn, [g.group_key for g in part], at)
    return raised


def _mark_held(conn: Connection, keys: list[str], t) -> None:
    conn.execute(in_query(_MARK, "k"), {"t": t, "k": keys})


def _group_tasks(conn: Connection, groups: list, samples: dict[str, list], names: dict[str, str]) -> list[StaffTask]:
    lids = sorted({g.liability_id for g in groups if g.liability_id is not None})
    who = {r.liability_id: r for part in chunked(lids, CHUNK) for r in conn.execute(in_query(
        "SELECT l.liability_id, l.agency_id, l.number, l.patron_id, p.branch_id FROM liability l "
        "JOIN patron p ON p.patron_id = l.patron_id WHERE l.liability_id IN :l", "l"), {"l": part})}
    agencies = [r[0] for r in conn.execute(text("SELECT agency_id FROM agency ORDER BY agency_id"))]
    tasks = []
    for g in groups:
        message = _hold_message(g, samples.get(g.group_key, []), names.get(g.sha, "-"))
        w = who.get(g.liability_id)
        if w is not None:
            tasks.append(StaffTask(_task_id(HOLD_TASK, g.group_key), w.agency_id, w.branch_id, w.patron_id,
                                   w.liability_id, TASK_KIND_MOVEMENT, message))
            continue
        to = [g.agency_id] if g.agency_id in agencies else agencies
        tasks += [StaffTask(_task_id(HOLD_TASK, g.group_key, a if len(to) > 1 else None), a, None, None, None,
                            TASK_KIND_MOVEMENT, message) for a in to]
    return tasks


def _hold_message(g, listed: list, file_name: str) -> str:
    da, en = REASONS.get(g.reason, (g.reason, g.reason))
    if g.n == 1 and listed:
        r = listed[0]
        amount = as_amount(r.amount)
        return mask_cprs_in(
            f"Debitorsystemet har meldt en {KIND_DA[r.kind]} på {amount} kr. (bevægelse {r.movement_id}, fordring "
            f"{r.fordring_id}, betalingsfil {file_name}), som ikke er bogført i FBS, fordi {da} ({g.reason}). Afklar "
            f"den med debitorsystemet. / The debtor system reported a {r.kind.replace('_', '-')} of {amount} DKK "
            f"(movement {r.movement_id}, claim {r.fordring_id}, payment file {file_name}) that is not booked in FBS "
            f"because {en} ({g.reason}). Settle it with the debtor system.")
    total = as_amount(g.total)
    items = "; ".join(f"{r.movement_id} ({KIND_DA[r.kind]} {as_amount(r.amount)} kr., fordring {r.fordring_id})"
                      for r in listed)
    more = g.n - len(listed)
    return mask_cprs_in(
        f"Debitorsystemet har i betalingsfilen {file_name} meldt {g.n} bevægelser på i alt {total} kr., som ikke er "
        f"bogført i FBS, fordi {da} ({g.reason}): {items}" + (f"; og {more} flere" if more else "") + ". Hele listen "
        f"står i integrationens ledger (movement.hold_task = {g.group_key}). Afklar dem med debitorsystemet. / The "
        f"debtor system reported {g.n} movements totalling {total} DKK in payment file {file_name} that are not "
        f"booked in FBS because {en} ({g.reason}); the first {len(listed)} are listed above, all of them in the "
        f"integration's ledger (movement.hold_task = {g.group_key}). Settle them with the debtor system.")


def _done_hold_task_ids(ledger_engine: Engine, fbs_conn: Connection, rows: list) -> list[str]:
    """The ids of the hold tasks of these movements (no longer held) that list no held movement
    any more; a movement held before tasks were grouped has its own (``PAY-<movement>``)."""
    if not rows:
        return []
    keys = sorted({r.hold_task for r in rows if r.hold_task})
    still: set[str] = set()
    with ledger_engine.connect() as conn:
        for part in chunked(keys, CHUNK):
            still |= {r[0] for r in conn.execute(in_query(
                "SELECT DISTINCT hold_task FROM movement WHERE state = 'held' AND hold_task IN :k", "k"), {"k": part})}
    agencies = [r[0] for r in fbs_conn.execute(text("SELECT agency_id FROM agency"))]
    ids = [i for r in rows if not r.hold_task
           for i in (_task_id("PAY", r.movement_id), *(_task_id("PAY", r.movement_id, a) for a in agencies))]
    ids += [i for k in keys if k not in still
            for i in (_task_id(HOLD_TASK, k), *(_task_id(HOLD_TASK, k, a) for a in agencies))]
    return ids


# --- what is in the inbox and is not a payment file ---------------------------------------------

TASK_KIND_INBOX = "payment_inbox_entry"
TASKED_KINDS = (BAD_NAME, SYMLINK)        # may hold payments: staff are told (M1); the rest is IT's
LOGGED = 50                              # entries logged one by one per run; the rest counted


def report_ignored(stores: Stores, entries: list[Entry], run_id: str, at: dt.datetime) -> Counter:
    """Entries of the inbox that are not taken (never moved, never opened): logged once per run,
    name shown escaped; recorded in ``payment_inbox_entry`` (first and last seen, gone), counted
    in the run (``files_ignored`` by kind); and for a file with another name or a link, which may
    hold payments, one staff task per run that first saw such entries, never repeated."""
    for e in entries[:LOGGED]:
        log.log(logging.INFO if e.kind == PARTIAL else logging.WARNING,
                "payment inbox: %s is %s: not taken, left as it is", e.name, KIND_TEXT[e.kind][1])
    if len(entries) > LOGGED:
        log.warning("payment inbox: %d more entries that are not payment files, not taken", len(entries) - LOGGED)
    with stores.ledger.begin() as conn:
        for part in chunked(entries, CHUNK):
            conn.execute(text(
                "INSERT INTO payment_inbox_entry (entry_key, name, kind, first_seen_at, first_run_id, last_seen_at, "
                "last_run_id) VALUES (:k, :n, :kind, :t, :r, :t, :r) ON CONFLICT (entry_key) DO UPDATE SET "
                "last_seen_at = excluded.last_seen_at, last_run_id = excluded.last_run_id, "
                "first_seen_at = CASE WHEN payment_inbox_entry.gone_at IS NULL THEN payment_inbox_entry.first_seen_at "
                "ELSE excluded.first_seen_at END, "
                "first_run_id = CASE WHEN payment_inbox_entry.gone_at IS NULL THEN payment_inbox_entry.first_run_id "
                "ELSE excluded.first_run_id END, "
                "tasked_at = CASE WHEN payment_inbox_entry.gone_at IS NULL THEN payment_inbox_entry.tasked_at END, "
                "gone_at = NULL"),
                [{"k": e.key, "n": e.name, "kind": e.kind, "t": at, "r": run_id} for e in part])
        conn.execute(text("UPDATE payment_inbox_entry SET gone_at = :t WHERE gone_at IS NULL AND last_run_id <> :r"),
                     {"t": at, "r": run_id})
        pending = conn.execute(in_query(
            "SELECT entry_key, name, kind, first_run_id FROM payment_inbox_entry WHERE gone_at IS NULL AND "
            "tasked_at IS NULL AND kind IN :kinds ORDER BY first_run_id, name", "kinds"),
            {"kinds": list(TASKED_KINDS)}).all()
    if pending:
        by_run: dict[str, list] = {}
        for r in pending:
            by_run.setdefault(r.first_run_id, []).append(r)
        with stores.fbs.begin() as conn:
            agencies = [r[0] for r in conn.execute(text("SELECT agency_id FROM agency ORDER BY agency_id"))]
            raise_tasks(conn, [t for first, rows in by_run.items() for t in _inbox_tasks(first, rows, agencies)], at)
        with stores.ledger.begin() as conn:
            _mark_tasked(conn, [r.entry_key for r in pending], at)
    return Counter({"ignored": len(entries)})


def _mark_tasked(conn: Connection, keys: list[str], t) -> None:
    for part in chunked(keys, CHUNK):
        conn.execute(in_query("UPDATE payment_inbox_entry SET tasked_at = :t WHERE entry_key IN :k", "k"),
                     {"t": t, "k": part})


def _inbox_tasks(first_run: str, rows: list, agencies: list[str]) -> list[StaffTask]:
    key = f"{first_run}-" + hashlib.sha256("".join(sorted(r.entry_key for r in rows)).encode()).hexdigest()[:12]
    listed = rows[:SAMPLE]
    items = "; ".join(f"{r.name} ({KIND_TEXT[r.kind][0]})" for r in listed)
    more = len(rows) - len(listed)
    message = mask_cprs_in(
        f"I indbakken til betalingsfiler fra debitorsystemet ligger {len(rows)} element(er), som ikke er "
        f"betalingsfiler og derfor ikke er læst: {items}" + (f"; og {more} flere" if more else "") + ". Eventuelle "
        "betalinger i dem er ikke bogført i FBS. Bed driften (IT) se på dem: en betalingsfil er en almindelig fil med "
        "et navn af bogstaver, tal, '.', '_' og '-', der ender på .xml (fx DA-KMD_OPUS-20261120T0200.xml). / The "
        f"inbox for payment files from the debtor system holds {len(rows)} entr{'y' if len(rows) == 1 else 'ies'} "
        "that are not payment files and were not read (listed above, all of them in the integration's ledger, "
        "payment_inbox_entry). Any payments in them are not booked in FBS. Ask IT operations to look at them: a "
        "payment file is a regular file named with letters, digits, '.', '_' and '-', ending in .xml.")
    return [StaffTask(_task_id("PAYINBOX", key, a if len(agencies) > 1 else None), a, None, None, None,
                      TASK_KIND_INBOX, message) for a in agencies]


# --- review and counts ---------------------------------------------------------------------------

def dismiss(ledger_engine: Engine, fbs: Engine, movement_id: str, note: str, at: dt.datetime | None = None) -> bool:
    """Staff reviewed a held movement and it is not to be applied: recorded; its task resolved
    once no movement it lists is held."""
    at = at or ledger.now()
    with ledger_engine.begin() as conn:
        row = conn.execute(text("SELECT movement_id, liability_id, hold_reason, hold_task FROM movement WHERE "
                                "movement_id = :m AND state = 'held'"), {"m": movement_id}).first()
        if row is None:
            return False
        conn.execute(text("UPDATE movement SET state = 'dismissed', decided_at = :t WHERE movement_id = :m"),
                     {"t": at, "m": movement_id})
        if row.liability_id is not None:
            add_events(conn, [(row.liability_id, "payment_dismissed", None,
                               f"movement {movement_id} (held as {row.hold_reason}) dismissed after review: {note}")],
                       "manual", at)
    with fbs.begin() as conn:
        ids = _done_hold_task_ids(ledger_engine, conn, [row])
        if ids:
            conn.execute(text("UPDATE task SET resolved_at = :t WHERE task_id = :i AND resolved_at IS NULL"),
                         [{"t": at, "i": i} for i in ids])
    return True


RUN_CATEGORIES = ("files_applied", "files_quarantined", "files_ignored", "movements_applied", "movements_held",
                  "movements_again", "movements_released")


def payment_counts(ledger_engine: Engine, run_id: str) -> Counter:
    """The run's counts, from the ledger (so a retried task counts the same): per agency and
    kind / reason. Files have agency '-'; entries of the inbox that are not payment files are
    ``files_ignored`` by kind."""
    counts: Counter = Counter()
    with ledger_engine.connect() as conn:
        for kind, n in conn.execute(text("SELECT kind, COUNT(*) FROM payment_inbox_entry WHERE last_run_id = :r "
                                         "GROUP BY kind"), {"r": run_id}):
            counts[("-", "files_ignored", kind)] += n
        for r in conn.execute(text("SELECT state, reason, duplicates FROM payment_file WHERE run_id = :r"),
                              {"r": run_id}):
            if r.state == "applied":
                counts[("-", "files_applied", "-")] += 1
                counts[("-", "movements_again", "-")] += r.duplicates or 0
            else:
                counts[("-", "files_quarantined", (r.reason or "-").split(":")[0])] += 1
        for r in conn.execute(text(
                "SELECT COALESCE(m.agency_id, '-') AS agency_id, m.state, m.kind, m.hold_reason, "
                "CASE WHEN f.run_id = :r THEN 0 ELSE 1 END AS later, COUNT(*) AS n FROM movement m "
                "JOIN payment_file f ON f.sha256 = m.file_sha256 WHERE m.run_id = :r "
                "GROUP BY COALESCE(m.agency_id, '-'), m.state, m.kind, m.hold_reason, "
                "CASE WHEN f.run_id = :r THEN 0 ELSE 1 END"), {"r": run_id}):
            if r.state == APPLIED:
                counts[(r.agency_id, "movements_applied", r.kind)] += r.n
                if r.later:
                    counts[(r.agency_id, "movements_released", r.hold_reason or "-")] += r.n
            elif r.state == HELD:
                counts[(r.agency_id, "movements_held", r.hold_reason)] += r.n
    return counts


def record_run_counts(ledger_engine: Engine, run_id: str) -> Counter:
    """All of the run's counts, from the ledger (the run-level step, after every municipality's)."""
    counts = payment_counts(ledger_engine, run_id)
    ledger.record_counts(ledger_engine, run_id, counts, RUN_CATEGORIES)
    return counts


def record_unit_counts(ledger_engine: Engine, run_id: str, unit: Unit, done: bool = True) -> Counter:
    """One municipality's counts of the run (its agencies' movements; files are counted under
    '-' by the run-level step), replacing only its own; ``done``: its failure mark cleared too."""
    counts = Counter({k: n for k, n in payment_counts(ledger_engine, run_id).items() if k[0] in unit.agencies})
    ledger.record_counts(ledger_engine, run_id, counts, (*RUN_CATEGORIES, FAILED_CATEGORY) if done else RUN_CATEGORIES,
                         agencies=unit.agencies)
    return counts


REST, SORTING = "-", "*"      # the run-level steps' keys where a municipality's agencies would be


def _step_agencies(step: Unit | str | None) -> list[str]:
    return list(step.agencies) if isinstance(step, Unit) else [step or REST]


def mark_failed(ledger_engine: Engine, run_id: str, step: Unit | str | None, why: str = UNFINISHED) -> None:
    """Record that a step of the run did not finish: a municipality's (``step`` its unit), the
    run-level rest (None, agency '-') or the sorting (``SORTING``, '*'): ``UNFINISHED`` when it
    starts (a killed task leaves it), the exception's type when it fails; ``record_unit_counts``
    and ``clear_failed`` take it away. Read by ``failed_units``."""
    agencies = _step_agencies(step)
    ledger.record_counts(ledger_engine, run_id, Counter({(a, FAILED_CATEGORY, why): 1 for a in agencies}),
                         (FAILED_CATEGORY,), agencies=agencies)


def clear_failed(ledger_engine: Engine, run_id: str, step: Unit | str | None) -> None:
    ledger.record_counts(ledger_engine, run_id, Counter(), (FAILED_CATEGORY,), agencies=_step_agencies(step))


def failed_units(ledger_engine: Engine, fbs: Engine, run_id: str) -> list[str]:
    """The steps of the run that failed or did not finish, each named: ``<cvr> <name> (<vendor>):
    <why>`` for a municipality, ``run-level step: <why>`` for the rest."""
    failed: dict[str, set[str]] = {}
    for (agency, category, why), _n in ledger.run_counts(ledger_engine, run_id).items():
        if category == FAILED_CATEGORY:
            failed.setdefault(agency, set()).add(why)
    if not failed:
        return []
    munis = Municipalities.load(fbs)
    out: dict[str, set[str]] = {}
    for agency, whys in failed.items():
        u = munis.by_agency.get(agency)
        who = {REST: "the run-level step (files of no single municipality, write-back)",
               SORTING: "sorting the inbox (no municipality's files were taken)"}.get(
            agency, f"municipality {u.label}" if u else f"agency {agency}")
        out.setdefault(who, set()).update(whys)
    return [f"{who}: {', '.join(sorted(whys))}" for who, whys in sorted(out.items())]


def totals(counts: Counter) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_a, category, _r), n in counts.items():
        out[category] = out.get(category, 0) + n
    return out
