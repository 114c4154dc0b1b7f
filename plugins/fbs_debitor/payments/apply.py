"""Payments back (P1, P2): the debtor system's files applied to the ledger and written to FBS,
each movement exactly once.

A run, step by step:

1. **files**, oldest name first. A file whose bytes (SHA-256) were seen before is recognised and
   only moved out of the inbox again. A new file is parsed safely and validated
   (``payments.files.parse``); a bad one is recorded as quarantined with its reason, staff get a
   task, and the file moves to ``quarantine/``: the other files of the run still go on. A good
   file is applied in ONE ledger transaction: the file, every movement (applied or held, with its
   reason), the claims' sums, balance and settlement, and the audit trail; a crash anywhere in it
   leaves nothing. Then the file moves to ``archive/``.
2. **held movements looked at again**: one held because its claim was not yet confirmed or not
   known, or because the movement a reversal undoes had not arrived, is applied once that changed.
3. **write-back to FBS**: every applied movement becomes an ``fbs.payment`` row (keyed by the
   movement, so a crash between the ledger and FBS is finished by the next run, never doubled), a
   held movement a staff task; a claim paid or written off in full closes the liability in FBS
   (status ``closed``), and a reversal that leaves a balance again opens it again, only where
   fbs-debitor closed it. Then the ledger marks them written back.

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
import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from fbs_debitor.claims.model import StaffTask
from fbs_debitor.claims.writeback import raise_tasks
from fbs_debitor.core import ledger
from fbs_debitor.core.db import as_amount, as_date, chunked, exclusive, in_query, keyset_pages
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.ledger import add_events, update_settlement
from fbs_debitor.core.stores import Stores
from fbs_debitor.payments.files import TOO_LARGE, BadFile, Movement, PaymentFile, max_file_bytes, parse
from fbs_debitor.payments.inbox import Inbox

log = logging.getLogger(__name__)

APPLIED, HELD, DISMISSED = "applied", "held", "dismissed"
UNKNOWN_CLAIM, UNCONFIRMED, REPLACED, CANCELLED = (
    "P_UNKNOWN_CLAIM", "P_CLAIM_UNCONFIRMED", "P_CLAIM_REPLACED", "P_CLAIM_CANCELLED")
OVERPAYMENT, REPAY_TOO_MUCH = "P_OVERPAYMENT", "P_REPAYMENT_EXCEEDS_PAID"
REVERSAL_NO_REFERENCE, REVERSAL_UNKNOWN, REVERSAL_MISMATCH = (
    "P_REVERSAL_NO_REFERENCE", "P_REVERSAL_UNKNOWN", "P_REVERSAL_MISMATCH")
LIABILITY_MISSING = "P_LIABILITY_MISSING"
CONFLICT = "P_CONFLICTING_REDELIVERY"
# decided again every run: the claim may be confirmed or point back at this FordringID (a rejected
# increase), the reversed movement may arrive, a reversal may make room for a payment
LOOKED_AT_AGAIN = (UNKNOWN_CLAIM, UNCONFIRMED, REPLACED, REVERSAL_UNKNOWN, OVERPAYMENT, REPAY_TOO_MUCH)
TASK_KIND_MOVEMENT, TASK_KIND_FILE = "payment_held", "payment_file_quarantined"
CHUNK = 2000

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



class _Book:
    """What deciding a set of movements needs, loaded inside the ledger transaction and kept in
    memory while they are decided in order (a reversal may undo a payment of the same file)."""

    def __init__(self, conn: Connection, movements: list[Movement]):
        self.conn = conn
        self.claims: dict[str, _Claim] = {}
        self.replaced: dict[str, tuple[int, str]] = {}
        self.known: dict[str, _Known] = {}
        self.reversed: dict[str, str] = {}        # movement id -> the reversal now undoing it
        fids = sorted({m.fordring_id for m in movements})
        for part in chunked(fids, CHUNK):
            for r in conn.execute(in_query(
                    "SELECT liability_id, agency_id, fordring_id, state, debtor_amount, debtor_status, paid_amount, "
                    "written_off_amount, repaid_amount, fbs_status, settled_on FROM claim WHERE fordring_id IN :f", "f"),
                    {"f": part}):
                self.claims[r.fordring_id] = _Claim(
                    r.liability_id, r.agency_id, r.fordring_id, r.state, as_amount(r.debtor_amount) or Decimal(0),
                    r.debtor_status or "live", as_amount(r.paid_amount), as_amount(r.written_off_amount),
                    as_amount(r.repaid_amount), r.fbs_status, as_date(r.settled_on))
            for r in conn.execute(in_query(
                    "SELECT o.fordring_id, o.liability_id, c.agency_id FROM outbox o JOIN claim c "
                    "ON c.liability_id = o.liability_id WHERE o.fordring_id IN :f AND o.fordring_id <> c.fordring_id",
                    "f"), {"f": part}):
                self.replaced[r.fordring_id] = (r.liability_id, r.agency_id)
        ids = sorted({m.movement_id for m in movements} | {m.reference_id for m in movements if m.reference_id})
        for part in chunked(ids, CHUNK):
            for r in conn.execute(in_query(
                    "SELECT movement_id, fordring_id, kind, amount, booked_on, reference_id, state, liability_id, "
                    "reversed_by FROM movement WHERE movement_id IN :i", "i"), {"i": part}):
                self.known[r.movement_id] = _Known(_movement(r), r.state, r.liability_id, r.reversed_by)

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
        c.last_booked = max(filter(None, (c.last_booked, m.booked_on)))
        return APPLIED, None, c.liability_id, c.agency_id

    def save_claims(self) -> list[int]:
        """Write the touched claims' sums, then their balance and settlement (one SQL definition)."""
        touched = [c for c in self.claims.values() if c.touched]
        if not touched:
            return []
        self.conn.execute(text("UPDATE claim SET paid_amount = :p, written_off_amount = :w, repaid_amount = :r, "
                               "settled_on = :d WHERE liability_id = :l"),
                          [{"p": c.paid, "w": c.written_off,
                            "r": c.repaid, "d": c.last_booked,
                            "l": c.liability_id} for c in touched])
        ids = [c.liability_id for c in touched]
        update_settlement(self.conn, ids)
        if self.reversed:
            self.conn.execute(text("UPDATE movement SET reversed_by = :by WHERE movement_id = :m"),
                              [{"m": m, "by": by} for m, by in self.reversed.items()])
        return ids


def _movement(r) -> Movement:
    return Movement(r.movement_id, r.fordring_id, r.kind, as_amount(r.amount), as_date(r.booked_on),
                    r.reference_id)


def _agency_of(fordring_id: str) -> str | None:
    m = re.fullmatch(r"FBS-([A-Za-z0-9]+)-\d+(?:-\d+)?", fordring_id)
    return m.group(1) if m else None


# --- one file ------------------------------------------------------------------------------------

def apply_file(ledger_engine: Engine, name: str, sha: str, parsed: PaymentFile, run_id: str,
               at: dt.datetime) -> Counter:
    """Every movement of a valid file decided and recorded in ONE ledger transaction, or none."""
    counts: Counter = Counter()
    with ledger_engine.begin() as conn:
        book = _Book(conn, parsed.movements)
        rows, events = [], []
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
            rows.append({"id": m.movement_id, "sha": sha, "f": m.fordring_id, "l": lid,
                         "a": agency or _agency_of(m.fordring_id), "k": m.kind, "m": m.amount,
                         "b": m.booked_on, "ref": m.reference_id, "s": state, "h": reason,
                         "r": run_id, "t": at})
            counts[state] += 1
            if lid is not None:
                events.append((lid, f"payment_{state}", None, _event_detail(m, name, reason)))
        conn.execute(text("INSERT INTO payment_file (sha256, name, state, transaction_id, movements, applied, held, "
                          "duplicates, run_id, received_at) VALUES (:s, :n, 'applied', :x, :m, :a, :h, :d, :r, :t)"),
                     {"s": sha, "n": name, "x": parsed.transaction_id, "m": len(parsed.movements),
                      "a": counts[APPLIED], "h": counts[HELD], "d": counts["movements_again"], "r": run_id, "t": at})
        _insert_movements(conn, rows)
        _save_claims(book)
        add_events(conn, events, run_id, at)
    return counts


def _insert_movements(conn: Connection, rows: list[dict]) -> None:
    if rows:
        conn.execute(text("INSERT INTO movement (movement_id, file_sha256, fordring_id, liability_id, agency_id, kind, "
                          "amount, booked_on, reference_id, state, hold_reason, run_id, received_at, decided_at) "
                          "VALUES (:id, :sha, :f, :l, :a, :k, :m, :b, :ref, :s, :h, :r, :t, :t)"), rows)


def _save_claims(book: _Book) -> list[int]:
    return book.save_claims()


def _event_detail(m: Movement, file_name: str, reason: str | None) -> str:
    what = f"{m.kind} {m.amount:.2f} booked {m.booked_on:%Y-%m-%d} (movement {m.movement_id}, {m.fordring_id}"
    what += f", reverses {m.reference_id}" if m.reference_id else ""
    return mask_cprs_in(what + f", file {file_name})" + (f": held for review, {reason}" if reason else ""))


def record_quarantine(ledger_engine: Engine, name: str, sha: str, code: str, reason: str, run_id: str,
                      at: dt.datetime) -> None:
    with ledger_engine.begin() as conn:
        conn.execute(text("INSERT INTO payment_file (sha256, name, state, reason, run_id, received_at) "
                          "VALUES (:s, :n, 'quarantined', :why, :r, :t) ON CONFLICT (sha256) DO NOTHING"),
                     {"s": sha, "n": name, "why": mask_cprs_in(f"{code}: {reason}"), "r": run_id,
                      "t": at})


def file_tasks(fbs: Engine, name: str, sha: str, why: str, data: bytes) -> list[StaffTask]:
    """A quarantined file's staff task, for each agency whose claims it seems to name (a plain
    text search, nothing parsed), else for every agency: no payment may go missing unseen (M1)."""
    with fbs.connect() as conn:
        agencies = [r[0] for r in conn.execute(text("SELECT agency_id FROM agency ORDER BY agency_id"))]
    named = {a.decode() for a in re.findall(rb"FBS-([A-Za-z0-9]{1,20})-\d", data[:5_000_000])}
    to = [a for a in agencies if a in named] or agencies
    message = mask_cprs_in(f"Betalingsfilen {name} fra debitorsystemet er ikke indlæst og er lagt i karantæne: {why}. Ingen "
               "betalinger fra filen er bogført i FBS. Bed debitorsystemet om at sende den igen, rettet. / "
               f"The payment file {name} from the debtor system was not read and is in quarantine: {why}. No payment "
               "in it is booked in FBS. Ask the debtor system to deliver it again, corrected.")
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


# --- the run ------------------------------------------------------------------------------------

def ingest(stores: Stores, inbox: Inbox, run_id: str, at: dt.datetime | None = None) -> Counter:
    """Every waiting file, then the held movements again, then the write-back. Returns what was
    done (the run's recorded counts come from the ledger, ``payment_counts``). One run at a time:
    the DAG and the CLI wait for each other (``db.exclusive``)."""
    at = at or ledger.now()
    done: Counter = Counter()
    with exclusive(stores.ledger, "payments"):
        for name in inbox.waiting():
            done += ingest_file(stores, inbox, name, run_id, at)
        done["released"] += look_again(stores, run_id, at)
        done += write_back(stores, run_id, at)
    return done


def ingest_file(stores: Stores, inbox: Inbox, name: str, run_id: str, at: dt.datetime) -> Counter:
    size = inbox.size(name)
    if size > max_file_bytes():         # not even read: recorded under its name and size
        sha = hashlib.sha256(f"too large: {name} {size}".encode()).hexdigest()
        return _quarantine(stores, inbox, name, sha, b"", TOO_LARGE,
                           f"the file has {size} bytes, more than the {max_file_bytes()} accepted "
                           "(FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES); not read", run_id, at)
    data = inbox.read(name)
    sha = hashlib.sha256(data).hexdigest()
    with stores.ledger.connect() as conn:
        seen = conn.execute(text("SELECT state, reason, name FROM payment_file WHERE sha256 = :s"), {"s": sha}).first()
    if seen is not None:
        log.info("payment file %s was delivered before (as %s, %s): not applied again", name, seen.name, seen.state)
        if seen.state == "quarantined":
            raise_tasks_fbs(stores.fbs, file_tasks(stores.fbs, seen.name, sha, seen.reason, data), at)
            inbox.quarantine(name, f"delivered again; {seen.reason}")
        else:
            inbox.archive(name)
        return Counter({"files_again": 1})
    try:
        parsed = parse(data)
        counts = apply_file(stores.ledger, name, sha, parsed, run_id, at)
    except (BadFile, Conflict) as exc:
        code, why = (exc.code, exc.reason) if isinstance(exc, BadFile) else (CONFLICT, str(exc))
        return _quarantine(stores, inbox, name, sha, data, code, why, run_id, at)
    except IntegrityError:
        # another run applied the same file or movement at the same moment: its transaction won
        log.warning("payment file %s was applied concurrently by another run; left for the next run", name)
        return Counter({"files_concurrent": 1})
    inbox.archive(name)
    log.info("payment file %s: %d movement(s) applied, %d held for review, %d delivered before", name,
             counts[APPLIED], counts[HELD], counts["movements_again"])
    return Counter({"files_applied": 1, **counts})


def _quarantine(stores: Stores, inbox: Inbox, name: str, sha: str, data: bytes, code: str, why: str, run_id: str,
                at: dt.datetime) -> Counter:
    """Recorded in the ledger first, then the staff task, then the file moved (each step repeatable)."""
    why = mask_cprs_in(why)
    log.error("payment file %s quarantined: %s: %s", name, code, why)
    record_quarantine(stores.ledger, name, sha, code, why, run_id, at)
    raise_tasks_fbs(stores.fbs, file_tasks(stores.fbs, name, sha, f"{code}: {why}", data), at)
    inbox.quarantine(name, f"{code}: {why}")
    return Counter({"files_quarantined": 1})


def raise_tasks_fbs(fbs: Engine, tasks: list[StaffTask], at: dt.datetime) -> int:
    with fbs.begin() as conn:
        return raise_tasks(conn, tasks, at)


def look_again(stores: Stores, run_id: str, at: dt.datetime) -> int:
    """Held movements whose reason may have gone (claim confirmed or arrived, reversed movement
    arrived) decided again, oldest first, in one transaction; returns how many are now applied."""
    with stores.ledger.begin() as conn:
        rows = conn.execute(in_query("SELECT movement_id, fordring_id, kind, amount, booked_on, reference_id, hold_reason "
                                "FROM movement WHERE state = 'held' AND hold_reason IN :why "
                                "ORDER BY received_at, movement_id", "why"), {"why": list(LOOKED_AT_AGAIN)}).all()
        if not rows:
            return 0
        movements = [_movement(r) for r in rows]
        book = _Book(conn, movements)
        released, events = [], []
        for m, r in zip(movements, rows, strict=True):
            book.known.pop(m.movement_id, None)     # decided again, as if new
            state, reason, lid, agency = book.decide(m)
            book.known[m.movement_id] = _Known(m, state, lid)
            if state == APPLIED:
                released.append({"m": m.movement_id, "l": lid, "a": agency, "r": run_id, "t": at})
                events.append((lid, "payment_released", None, _event_detail(m, "held earlier", None)
                               + f": applied now, was held as {r.hold_reason}"))
            elif reason != r.hold_reason or lid is not None:
                conn.execute(text("UPDATE movement SET hold_reason = :h, liability_id = COALESCE(liability_id, :l), "
                                  "agency_id = COALESCE(:a, agency_id) WHERE movement_id = :m"),
                             {"h": reason, "l": lid, "a": agency, "m": m.movement_id})
        if released:
            conn.execute(text("UPDATE movement SET state = 'applied', liability_id = :l, agency_id = :a, run_id = :r, "
                              "decided_at = :t, written_back_at = NULL WHERE movement_id = :m"), released)
        book.save_claims()
        add_events(conn, events, run_id, at)
    return len(released)


# --- write-back to FBS ---------------------------------------------------------------------------

def write_back(stores: Stores, run_id: str, at: dt.datetime, batch: int = CHUNK) -> Counter:
    """Applied movements to ``fbs.payment``, held ones as staff tasks, chunk by chunk, then the FBS
    status of settled claims; every write keyed, so a repeat changes nothing."""
    done: Counter = Counter()
    query = text("SELECT movement_id, fordring_id, liability_id, agency_id, kind, amount, booked_on, reference_id, "
                 "state, hold_reason FROM movement WHERE written_back_at IS NULL AND state IN ('applied', 'held') "
                 "AND movement_id > :a ORDER BY movement_id LIMIT :n")
    for rows in keyset_pages(stores.ledger, query, "movement_id", "", {"n": batch}, after="a"):
        done += _write_chunk(stores, rows, at)
    return done + settle_fbs_status(stores, run_id, at)


def _write_chunk(stores: Stores, rows: list, at: dt.datetime) -> Counter:
    applied = [r for r in rows if r.state == APPLIED]
    held = [r for r in rows if r.state == HELD]
    counts: Counter = Counter()
    with stores.fbs.begin() as conn:
        lids = sorted({r.liability_id for r in applied})
        present = {r[0] for part in chunked(lids, CHUNK) for r in conn.execute(in_query(
            "SELECT liability_id FROM liability WHERE liability_id IN :l", "l"), {"l": part})}
        gone = [r for r in applied if r.liability_id not in present]
        if gone:    # deleted from FBS since it was applied: left unwritten, reconciliation shows it
            log.error("%d applied movement(s) on liabilities no longer in FBS are not written back: %s", len(gone),
                      ", ".join(sorted({str(r.liability_id) for r in gone})[:20]))
        applied = [r for r in applied if r.liability_id in present]
        if applied:
            conn.execute(text("INSERT INTO payment (payment_id, liability_id, kind, amount, booked_on, source_ref) "
                              "VALUES (:p, :l, :k, :a, :b, :s) ON CONFLICT (payment_id) DO NOTHING"),
                         [{"p": payment_id(r.movement_id), "l": r.liability_id, "k": r.kind,
                           "a": as_amount(r.amount), "b": as_date(r.booked_on),
                           "s": f"SF1590_B_01A {r.fordring_id} {r.movement_id}"[:200]} for r in applied])
            # a movement released after review: its hold task is done
            released = [{"t": at, "i": _task_id("PAY", r.movement_id)} for r in applied if r.hold_reason]
            if released:
                conn.execute(text("UPDATE task SET resolved_at = :t WHERE task_id = :i AND resolved_at IS NULL"),
                             released)
        counts["written_back"] = len(applied)
        counts["hold_tasks"] = raise_tasks(conn, _hold_tasks(conn, held), at)
    with stores.ledger.begin() as conn:
        _mark_written_back(conn, [r.movement_id for r in [*applied, *held]], at)
    return counts


def _mark_written_back(conn: Connection, movement_ids: list[str], t) -> None:
    for part in chunked(movement_ids, CHUNK):
        conn.execute(in_query("UPDATE movement SET written_back_at = :t WHERE movement_id IN :m", "m"), {"t": t, "m": part})


def settle_fbs_status(stores: Stores, run_id: str, at: dt.datetime) -> Counter:
    """FBS shows the result (P2): a live claim paid or written off in full (by movements, or by a
    write-down to what was paid) closes its liability where FBS has it open; one fbs-debitor closed
    that has a balance again (a reversal) is opened again. Worked out from the ledger's claims each
    time, so a crash between the FBS and the ledger commit is finished by the next run."""
    with stores.ledger.connect() as conn:
        close = [r[0] for r in conn.execute(text(
            "SELECT liability_id FROM claim WHERE settlement IN ('paid', 'written_off') AND debtor_status <> 'cancelled' "
            "AND fbs_closed_by_payment = FALSE"))]
        reopen = [r[0] for r in conn.execute(text(
            "SELECT liability_id FROM claim WHERE fbs_closed_by_payment = TRUE AND balance > 0"))]
    if not close and not reopen:
        return Counter()
    with stores.fbs.begin() as conn:
        closed, now_closed = _set_status(conn, close, "open", "closed", at)
        reopened, _ = _set_status(conn, reopen, "closed", "open", at)
    with stores.ledger.begin() as conn:
        flags = [{"l": lid, "f": True} for lid in now_closed]
        flags += [{"l": lid, "f": False} for lid in reopen]   # no longer ours to reopen
        if flags:
            conn.execute(text("UPDATE claim SET fbs_closed_by_payment = :f WHERE liability_id = :l"), flags)
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
        status = dict(conn.execute(in_query("SELECT liability_id, status FROM liability WHERE liability_id IN :l", "l"),
                                   {"l": part}).all())
        now_old = [lid for lid, s in status.items() if s == old]
        if now_old:
            conn.execute(in_query("UPDATE liability SET status = :n, updated_at = :t WHERE liability_id IN :l", "l"),
                         {"n": new, "t": t, "l": now_old})
        changed += now_old
        target += [lid for lid, s in status.items() if s in (old, new)]
    return changed, target


def _hold_tasks(conn: Connection, held: list) -> list[StaffTask]:
    """One task per held movement, to the liability's patron and branch where the claim is known,
    else to the agency its FordringID names, else to every agency."""
    if not held:
        return []
    lids = sorted({r.liability_id for r in held if r.liability_id is not None})
    who = {r.liability_id: r for part in chunked(lids, CHUNK) for r in conn.execute(in_query(
        "SELECT l.liability_id, l.agency_id, l.number, l.patron_id, p.branch_id FROM liability l "
        "JOIN patron p ON p.patron_id = l.patron_id WHERE l.liability_id IN :l", "l"), {"l": part})}
    agencies = [r[0] for r in conn.execute(text("SELECT agency_id FROM agency ORDER BY agency_id"))]
    tasks = []
    for r in held:
        da, en = REASONS.get(r.hold_reason, (r.hold_reason, r.hold_reason))
        amount = as_amount(r.amount)
        message = mask_cprs_in(f"Debitorsystemet har meldt en {KIND_DA[r.kind]} på {amount} kr. (bevægelse {r.movement_id}, "
                   f"fordring {r.fordring_id}), som ikke er bogført i FBS, fordi {da} ({r.hold_reason}). Afklar den med "
                   f"debitorsystemet. / The debtor system reported a {r.kind.replace('_', '-')} of {amount} DKK "
                   f"(movement {r.movement_id}, claim {r.fordring_id}) that is not booked in FBS because {en} "
                   f"({r.hold_reason}). Settle it with the debtor system.")
        w = who.get(r.liability_id)
        if w is not None:
            tasks.append(StaffTask(_task_id("PAY", r.movement_id), w.agency_id, w.branch_id, w.patron_id,
                                   w.liability_id, TASK_KIND_MOVEMENT, message))
            continue
        to = [r.agency_id] if r.agency_id in agencies else agencies
        tasks += [StaffTask(_task_id("PAY", r.movement_id, a if len(to) > 1 else None), a, None, None, None,
                            TASK_KIND_MOVEMENT, message) for a in to]
    return tasks


# --- review and counts ---------------------------------------------------------------------------

def dismiss(ledger_engine: Engine, fbs: Engine, movement_id: str, note: str, at: dt.datetime | None = None) -> bool:
    """Staff reviewed a held movement and it is not to be applied: recorded, its task resolved."""
    at = at or ledger.now()
    with ledger_engine.begin() as conn:
        row = conn.execute(text("SELECT liability_id, hold_reason FROM movement WHERE movement_id = :m AND "
                                "state = 'held'"), {"m": movement_id}).first()
        if row is None:
            return False
        conn.execute(text("UPDATE movement SET state = 'dismissed', decided_at = :t WHERE movement_id = :m"),
                     {"t": at, "m": movement_id})
        if row.liability_id is not None:
            add_events(conn, [(row.liability_id, "payment_dismissed", None,
                               f"movement {movement_id} (held as {row.hold_reason}) dismissed after review: {note}")],
                       "manual", at)
    with fbs.begin() as conn:
        agencies = [r[0] for r in conn.execute(text("SELECT agency_id FROM agency"))]
        ids = [_task_id("PAY", movement_id), *(_task_id("PAY", movement_id, a) for a in agencies)]
        conn.execute(text("UPDATE task SET resolved_at = :t WHERE task_id = :i AND resolved_at IS NULL"),
                     [{"t": at, "i": i} for i in ids])
    return True


RUN_CATEGORIES = ("files_applied", "files_quarantined", "movements_applied", "movements_held", "movements_again",
                  "movements_released")


def payment_counts(ledger_engine: Engine, run_id: str) -> Counter:
    """The run's counts, from the ledger (so a retried task counts the same): per agency and
    kind / reason. Files have agency '-'."""
    counts: Counter = Counter()
    with ledger_engine.connect() as conn:
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
    counts = payment_counts(ledger_engine, run_id)
    ledger.record_counts(ledger_engine, run_id, counts, RUN_CATEGORIES)
    return counts


def totals(counts: Counter) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_a, category, _r), n in counts.items():
        out[category] = out.get(category, 0) + n
    return out
