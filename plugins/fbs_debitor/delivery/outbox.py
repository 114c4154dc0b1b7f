"""Delivery: built claims to the debtor system exactly once, through the ledger's outbox.

The order of writes is what makes it exactly-once:

1. FBS first: new replacement CPR numbers (I1: kept from the first transfer on) and C5 tasks are
   written to FBS before a claim can reach the debtor system, so a claim rebuilt after a crash
   carries the same number.
2. Recorded: one ledger transaction per batch inserts the claim (its stable FordringID) and its
   outbox message, key ``<liability>:<version>``, state ``pending``. Nothing has left the process.
3. Sent: before every transmission the messages are marked ``sent`` and their attempts counted
   (committed), then the batch goes out. The receiver keys every claim by its FordringID and
   answers a repeat with its first answer, so a repeat never bills twice.
4. Answered: each receipt moves its message to ``accepted`` (with the debtor system's reference)
   or ``rejected`` (with its code and text, and the fingerprint of the content that was rejected).
   A rejection is final for its FordringID (the receiver answers a repeat with its first answer):
   it becomes a staff task (``delivery.staff_tasks``, M1), and the claim goes again only under the
   next generation of its FordringID, once its data changed or an operator requeued it
   (``delivery.rejections``). A call the debtor side refused as a whole (HTTP 4xx other than
   408/429, a SOAP Client fault: ``DeliveryError.rejected``) is a rejection of every claim in it
   (``HTTP_4xx`` / ``SOAP_CLIENT``), not an unconfirmed batch sent again every hour; the line
   stays up for the other batches.

A crash or timeout anywhere leaves messages ``pending`` or ``sent``; the next run's
``resend_unconfirmed`` rebuilds exactly those from FBS and sends them again under the same keys
before anything new goes. Whatever the receiver did with the lost attempt, the claim ends up
there once. Every step is in the audit trail (``event``, M2); no event holds a full CPR number.

Rebuilt content: messages are not stored (they hold CPR numbers); a resend is rebuilt from FBS
under its RECORDED FordringID and its fingerprint compared with the recorded one. If FBS changed in
between, the content as it is now goes under the same key (a receiver that already had the first
keeps the first); the recorded fingerprint then stays the first one unless the message never left
(0 attempts), and the change is recorded as an event so that keeping sent claims true (U1/U2) can
reconcile it. A message that never left and whose liability is no longer open is withdrawn
(as if never recorded). One that cannot be sent again as it was (the liability moved agency,
vanished from FBS, or no longer builds) is never sent under another key: it stays unconfirmed
with ``error_code`` NOT_REBUILDABLE, staff get a task at once, and it goes when the data is fixed.

An outage is rarely one batch's: once a batch got no answer despite every retry, the rest of the
run records and sends nothing new (``Link``); those liabilities simply wait for the next run.

One bad record or agency never stops the rest. A message that does not validate against the schema
(a bug in fbs-debitor) is never sent: it is logged and becomes a finding on its liability
(``M1_liability_not_processable``, naming the element and the schema error). An unexpected error
while writing back, recording or sending one agency's claims fails that agency's part of the page
only: it is logged (CPR-masked), its messages stay as they are (unrecorded, or ``pending``/``sent``:
they go next run), the counts say ``(agency, "failed", <error type>)``, and the other agencies go
on; the run then ends failed naming the agencies (``transfer.run.agency_failures``), after
everything else was done.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import logging
import re
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cache

from lxml import etree
from sqlalchemy import String, bindparam, text
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import TextClause

from fbs_debitor.claims import fingerprints, messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.builder import build
from fbs_debitor.claims.model import Account
from fbs_debitor.claims.writeback import persist_replacement_cprs, raise_tasks
from fbs_debitor.core import ledger
from fbs_debitor.core.db import bound_value, chunked, execute_in, execute_rows, insert_bound_rows, keyset_pages
from fbs_debitor.core.identity import ReplacementCprRegistry, mask_cprs_in
from fbs_debitor.core.ledger import add_events
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery.send_rate import Pacer
from fbs_debitor.delivery.serviceplatformen import AccessHeld, Client, DeliveryError, redact_urls
from fbs_debitor.eligibility.rules import paused_gc

log = logging.getLogger(__name__)

CREATE = "OpretDebitorkonto"
NOT_REBUILDABLE = "NOT_REBUILDABLE"
CREATE_VERSION = 1
UNCONFIRMED_STATES = ("pending", "sent")
ACCEPTED, REJECTED, UNCONFIRMED = "accepted", "rejected", "unconfirmed"
DELIVERY_CATEGORIES = (ACCEPTED, REJECTED, UNCONFIRMED)
FAILED = "failed"                       # (agency, FAILED, error type): that agency's part of a page failed
RESEND_FAILED = "failed_resend"         # the same for its unconfirmed claims sent again (its own run_count category)
# (agency, HELD_ACCESS, "<cvr>:<reason>"): its municipality has no working Serviceplatformen access
# this run (``AccessHeld``); nothing of it was sent or recorded, it goes with the next run
HELD_ACCESS = "held_access"
HELD_ACCESS_RESEND = "held_access_resend"
HELD_ACCESS_CHANGES = "held_access_changes"
HELD_ACCESS_CATEGORIES = (HELD_ACCESS, HELD_ACCESS_RESEND, HELD_ACCESS_CHANGES)
INVALID_MESSAGE_CHECK = "M1_liability_not_processable"


@dataclass
class Link:
    """The line to the debtor system within one run: ``down`` says why it was given up; ``pacer``
    (a backfill's) holds each batch back to the configured maximum send rate."""

    down: str | None = None
    pacer: Pacer | None = None


def message_key(liability_id: int, version: int = CREATE_VERSION) -> str:
    return f"{liability_id}:{version}"


def fingerprint(account: Account) -> str:
    """SHA-256 of the canonical XML of one claim's debtor account: what the message says."""
    return printed(account)[0]


def printed(account: Account) -> tuple[str, etree._Element]:
    """``fingerprint`` and the Debitorkonto element it was taken from (``messages.build_batches``
    can put the batch together from those instead of writing every account twice)."""
    holder = etree.Element("x")
    mapping.account_element(holder, account)
    element = holder[0]
    return hashlib.sha256(etree.tostring(element, method="c14n")).hexdigest(), element


def agency_list(agencies: Collection[str] | None) -> list[str] | None:
    """A unit's agencies (issue 18: one municipality at its debtor system) as the sorted list an
    expanding ``IN :agencies`` takes; None (every agency) stays None. A bare string is refused: it
    would be read as its characters."""
    if agencies is None:
        return None
    if isinstance(agencies, str | bytes):
        raise TypeError(f"agencies must be a collection of agency ids, not the string {agencies!r}")
    return sorted({str(a) for a in agencies})


def for_agencies(sql: str, agencies: list[str] | None, condition: str = "c.agency_id IN :agencies") -> TextClause:
    """``sql`` with its ``{agencies}`` marker made `` AND <condition>`` (``:agencies`` an expanding
    parameter: the unit's few agency ids, bound as a list) or nothing at all when ``agencies`` is
    None (every agency: the query is the one used before units existed)."""
    if agencies is None:
        return text(sql.replace("{agencies}", ""))
    # typed: an empty unit's IN () is rendered as a typed empty set (PostgreSQL compares no text with integers)
    return text(sql.replace("{agencies}", f" AND {condition}")).bindparams(
        bindparam("agencies", expanding=True, type_=String()))


def agency_params(agencies: list[str] | None) -> dict:
    """The parameters ``for_agencies`` needs (none when every agency)."""
    return {} if agencies is None else {"agencies": agencies}


def rule_of(error_code: str | None) -> str:
    """The rule behind a rejection code (``I3_ERSTATNINGS_CPR`` -> ``I3``), else the code itself."""
    if not error_code:
        return "-"
    m = re.match(r"^([A-Z]\d+)_", error_code)
    return m.group(1) if m else error_code[:30]


# --- the outbox's state changes -------------------------------------------------------------------

@dataclass(frozen=True)
class Tracked:
    """What a creation tells the debtor system, kept on the claim for the change detection: the
    message's fingerprint, and the keyed prints of its parties and of the FBS fields they came from."""

    fingerprint: str
    identity_print: str
    source_print: str


def tracked(account: Account, row, secret: bytes, written: dict | None = None) -> Tracked:
    """``written`` (liability id -> element): where to keep the element the fingerprint was taken
    from (``printed``)."""
    ident, resp = account.identification, account.responsible
    print_, element = printed(account)
    if written is not None:
        written[account.claims[0].liability_id] = element
    return Tracked(print_,
                   fingerprints.identity_print(ident.id_kind, ident.number, resp.id_kind, resp.number, secret),
                   fingerprints.source_print(row, secret))


# The outbox's writes on the sending path: per batch one bulk insert, one executemany or one
# set-based statement each (IN lists of at most IN_CHUNK), never a statement per claim. Rows with
# values of their own go to the driver as they are, their values made as the database binds them
# once (``bound_value``; ``db.insert_bound_rows`` / ``db.execute_rows``: no SQLAlchemy work per row).
IN_CHUNK = 2000        # ids per IN list
_CLAIM_COLUMNS = ("liability_id", "agency_id", "fordring_id", "state", "current_version", "first_run_id", "created_at",
                  "updated_at", "generation", "debtor_amount", "debtor_status", "identity_print", "source_print",
                  "fbs_status", "checked_at")
_MESSAGE_COLUMNS = ("message_key", "liability_id", "version", "operation", "fordring_id", "fingerprint", "state",
                    "attempts", "run_id", "last_run_id", "created_at", "change_kind", "amount")
# (a state change is one statement per IN list, not an executemany of one row each: on SQLite each
# statement opens a cursor on the table and on every index it writes, a per-row cost the IN list
# pays once)
# (``db.execute_in``: on SQLite the IN list's placeholders are written once per length, not rendered
# by SQLAlchemy on every execution)
_MARK_MESSAGES_SENT = ("UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = :t, "
                       "last_run_id = :r WHERE message_key IN :keys AND state IN ('pending', 'sent')")
_MARK_CLAIMS_SENT = "UPDATE claim SET state = 'sent', updated_at = :t WHERE liability_id IN :ids AND state = 'pending'"


def record_batch(ledger_engine: Engine, run_id: str, batch: messages.Batch, prints: dict[int, Tracked]) -> None:
    """Step 2: the batch's claims and messages, ``pending``, in one transaction. The claim keeps
    what the debtor system is being told (amount, live, parties' prints) for the change detection."""
    at = ledger.now()
    with ledger_engine.begin() as conn:
        t = bound_value(conn, at)      # once for every row
        claims = [c for a in batch.accounts for c in a.claims]
        amounts = {c.liability_id: bound_value(conn, c.amount) for c in claims}
        insert_bound_rows(conn, "claim", _CLAIM_COLUMNS, [
            (c.liability_id, c.agency_id, c.fordring_id, "pending", CREATE_VERSION, run_id, t, t, 0,
             amounts[c.liability_id], "live", prints[c.liability_id].identity_print,
             prints[c.liability_id].source_print, "open", t)
            for c in claims])
        insert_bound_rows(conn, "outbox", _MESSAGE_COLUMNS, [
            (message_key(c.liability_id), c.liability_id, CREATE_VERSION, CREATE, c.fordring_id,
             prints[c.liability_id].fingerprint, "pending", 0, run_id, run_id, t, "create", amounts[c.liability_id])
            for c in claims])
        add_events(conn, [(c.liability_id, "recorded", message_key(c.liability_id),
                        f"{CREATE} {c.fordring_id}, transaction {batch.transaction_id}") for c in claims], run_id, at)


def mark_attempt(ledger_engine: Engine, run_id: str, keys: dict[str, tuple[str, int]], attempt: int) -> None:
    """Step 3, before each transmission: ``sent``, one more attempt (committed before the call)."""
    at = ledger.now()
    with ledger_engine.begin() as conn:
        message_keys = [k for k, _ in keys.values()]
        for part in chunked(message_keys, IN_CHUNK):
            execute_in(conn, _MARK_MESSAGES_SENT, {"t": at, "r": run_id}, "keys", part)
        for part in chunked([lid for _, lid in keys.values()], IN_CHUNK):
            execute_in(conn, _MARK_CLAIMS_SENT, {"t": at}, "ids", part)
        add_events(conn, [(lid, "sent", k, f"attempt {attempt} of this run") for k, lid in keys.values()], run_id, at)


# Step 4's statements (executemany where each message has its own values).
_ACCEPT_MESSAGES = ("UPDATE outbox SET state = 'accepted', debtor_ref = :ref, answered_at = :t, "
                    "last_error = NULL, error_code = NULL, last_run_id = :r "
                    "WHERE message_key = :k AND state IN ('pending', 'sent')")
_ACCEPT_CLAIMS = ("UPDATE claim SET state = 'accepted', updated_at = :t "
                  "WHERE liability_id IN :ids AND state IN ('pending', 'sent')")
_REJECT_MESSAGES = text("UPDATE outbox SET state = 'rejected', debtor_ref = :ref, answered_at = :t, "
                        "error_code = :c, last_error = :e, last_run_id = :r, fingerprint = COALESCE(:p, fingerprint) "
                        "WHERE message_key = :k AND state IN ('pending', 'sent')")
_REJECT_CLAIMS = text("UPDATE claim SET state = 'rejected', updated_at = :t "
                      "WHERE liability_id = :l AND (state IN ('pending', 'sent') OR EXISTS "
                      "(SELECT 1 FROM outbox o WHERE o.message_key = :k AND o.operation = :op "
                      "AND o.fordring_id = claim.fordring_id))")
_NO_RECEIPT = ("UPDATE outbox SET last_error = 'the answer held no receipt for this claim', "
               "last_run_id = :r WHERE message_key IN :keys")


def record_answers(ledger_engine: Engine, run_id: str, keys: dict[str, tuple[str, int]],
                   receipts: list[mapping.Receipt], rejected_prints: dict[str, str] | None = None) -> Counter:
    """Step 4: each receipt to its message. Returns accepted/rejected/unconfirmed counts.
    ``rejected_prints`` (receipt key -> fingerprint): what a rejected creation said, kept on its
    message so that ``delivery.rejections`` can tell when its data changed. A rejected creation
    of the liability's current claim (also an increase's new claim, U1) makes the claim rejected:
    the debtor system holds nothing under it, so no change is sent to it and no payment applies."""
    at = ledger.now()
    prints = rejected_prints or {}
    by_key = {r.key: r for r in receipts if r.key in keys}
    unknown = len({r.key for r in receipts} - set(keys))
    if unknown:
        log.warning("%d receipt(s) for claims not in the batch were ignored", unknown)
    counts: Counter = Counter()
    with ledger_engine.begin() as conn:
        accepted = [{"k": keys[r.key][0], "l": keys[r.key][1], "ref": r.debtor_ref, "t": at, "r": run_id}
                    for r in by_key.values() if r.accepted]
        rejected = [{"k": keys[r.key][0], "l": keys[r.key][1], "ref": r.debtor_ref, "t": at, "r": run_id,
                     "c": mask_cprs_in(r.error_code or "UKENDT")[:60], "e": mask_cprs_in(r.error_text)[:1000] or None,
                     "p": prints.get(r.key), "op": CREATE}
                    for r in by_key.values() if not r.accepted]
        missing = [{"k": k, "r": run_id} for f, (k, _) in keys.items() if f not in by_key]
        if accepted:     # the reference differs per message (executemany, rows straight to the driver);
            # the claims' state is one set
            t = bound_value(conn, at)
            execute_rows(conn, _ACCEPT_MESSAGES, [{**p, "t": t} for p in accepted])
            for part in chunked(sorted({p["l"] for p in accepted}), IN_CHUNK):
                execute_in(conn, _ACCEPT_CLAIMS, {"t": t}, "ids", part)
        if rejected:
            conn.execute(_REJECT_MESSAGES, rejected)
            conn.execute(_REJECT_CLAIMS, rejected)
        for part in chunked([p["k"] for p in missing], IN_CHUNK):
            execute_in(conn, _NO_RECEIPT, {"r": run_id}, "keys", part)
        add_events(conn, [(p["l"], "accepted", p["k"], f"debtor reference {mask_cprs_in(p['ref'])}") for p in accepted]
                + [(p["l"], "rejected", p["k"], f"{p['c']}: {p['e'] or ''}"[:1000]) for p in rejected], run_id, at)
    counts[ACCEPTED], counts[REJECTED], counts[UNCONFIRMED] = len(accepted), len(rejected), len(missing)
    return counts


_RECORD_FAILURE = ("UPDATE outbox SET last_error = :e, error_code = :c, last_run_id = :r "
                   "WHERE message_key IN :keys AND state IN ('pending', 'sent')")


def record_failure(ledger_engine: Engine, run_id: str, keys: Iterable[str], error: str,
                   code: str | None = None) -> None:
    """No answer: the messages stay where they are (``pending``/``sent``) with the error (and
    NOT_REBUILDABLE as ``code`` when they cannot be sent again as they were); the next run tries
    them again under the same keys."""
    keys = list(keys)
    if not keys:
        return
    with ledger_engine.begin() as conn:
        for part in chunked(keys, IN_CHUNK):
            execute_in(conn, _RECORD_FAILURE, {"e": mask_cprs_in(error)[:1000], "c": code, "r": run_id}, "keys", part)


def record_failures(ledger_engine: Engine, run_id: str, errors: dict[str, str], code: str | None = None) -> None:
    """``record_failure`` for many messages, each with its own error (message key -> error), in one
    transaction: one statement per distinct error, not one per message."""
    by_error: dict[str, list[str]] = defaultdict(list)
    for key, error in errors.items():
        by_error[mask_cprs_in(error)[:1000]].append(key)
    if not by_error:
        return
    with ledger_engine.begin() as conn:
        for error, keys in by_error.items():
            for part in chunked(keys, IN_CHUNK):
                execute_in(conn, _RECORD_FAILURE, {"e": error, "c": code, "r": run_id}, "keys", part)


# --- sending --------------------------------------------------------------------------------------

def send_batch(ledger_engine: Engine, client: Client, run_id: str, batch: messages.Batch,
               link: Link | None = None, versions: dict[str, int] | None = None,
               while_waiting: Callable[[], None] | None = None) -> Counter:
    """Steps 3 and 4 for one recorded batch. When no answer came despite every retry, ``link`` is
    marked down: the caller sends nothing more this run. A call the debtor side refused as a
    whole (``DeliveryError.rejected``) rejects every claim in it; the line stays up. ``versions``
    (FordringID -> message version) for the later claims of a liability (an increase, U1);
    creations are version 1. ``while_waiting``: the caller's pure work to do while the batch is on
    its way (``Client.call``), where the client can; otherwise it is simply not done here."""
    versions = versions or {}
    keys = {c.fordring_id: (message_key(c.liability_id, versions.get(c.fordring_id, CREATE_VERSION)), c.liability_id)
            for a in batch.accounts for c in a.claims}
    what = f"batch {batch.transaction_id} (agency {batch.agency_id})"
    try:
        on_attempt = lambda n: mark_attempt(ledger_engine, run_id, keys, n)   # noqa: E731
        if while_waiting is not None and _overlaps(type(client)):
            answer = client.call(batch.root, on_attempt=on_attempt, while_waiting=while_waiting)
        else:
            answer = client.call(batch.root, on_attempt=on_attempt)
    except DeliveryError as exc:
        if getattr(exc, "rejected", False):
            return call_rejected(ledger_engine, run_id, keys, exc, what, claim_prints(batch, set(keys)))
        log.warning("batch %s (%d claims, agency %s) not confirmed: %s; it is sent again next run, and nothing "
                    "more is sent in this one", batch.transaction_id, len(keys), batch.agency_id, exc)
        record_failure(ledger_engine, run_id, [k for k, _ in keys.values()], str(exc))
        if link is not None:
            link.down = str(exc)
        return Counter({UNCONFIRMED: len(keys)})
    refused = {r.key for r in answer.receipts if not r.accepted}
    return answered(ledger_engine, run_id, keys, answer, what, claim_prints(batch, refused) if refused else None)


def claim_prints(batch: messages.Batch, fordring_ids: set[str]) -> dict[str, str]:
    """The fingerprint of each of these claims as the batch carried it (its own account: the same
    print its message was recorded with)."""
    return {c.fordring_id: fingerprint(replace(a, claims=(c,))) for a in batch.accounts for c in a.claims
            if c.fordring_id in fordring_ids}


def answered(ledger_engine: Engine, run_id: str, keys: dict[str, tuple[str, int]], answer, what: str,
             rejected_prints: dict[str, str] | None = None) -> Counter:
    """Step 4 for one answered call (creations and changes alike), logged."""
    counts = record_answers(ledger_engine, run_id, keys, answer.receipts, rejected_prints)
    log.info("%s: %d accepted, %d rejected, %d unconfirmed after %d attempt(s)", what, counts[ACCEPTED],
             counts[REJECTED], counts[UNCONFIRMED], answer.attempts)
    return counts


def rejection_code(exc: BaseException) -> str:
    """The error code of a call the debtor side refused as a whole: ``HTTP_<status>`` for an HTTP
    4xx, ``SOAP_CLIENT`` for a SOAP Client fault (``CALL_REFUSED`` when neither can be told)."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return f"HTTP_{status}"
    said = str(exc)
    m = re.search(r"\bHTTP (4\d\d)\b", said)
    if m:
        return f"HTTP_{m.group(1)}"
    if re.search(r"SOAP fault Client", said):
        return "SOAP_CLIENT"
    return "CALL_REFUSED"


def _credential_free(said: str) -> str:
    """A reason for the ledger and staff: no user:password@ in an address, no CPR number."""
    return mask_cprs_in(redact_urls(said))


def call_rejected(ledger_engine: Engine, run_id: str, keys: dict[str, tuple[str, int]], exc: BaseException,
                  what: str, rejected_prints: dict[str, str] | None = None) -> Counter:
    """A call the debtor side refused as a whole (HTTP 4xx other than 408/429, a SOAP Client fault):
    every message in it is rejected with the code and the reason, like a rejection in a receipt
    (a staff task follows, M1); it is not sent again every hour, and other calls go on."""
    code, reason = rejection_code(exc), _credential_free(str(exc))
    log.warning("%s (%d message(s)) refused by the debtor side: %s; recorded as rejected (%s), staff get a task; "
                "the other batches go on", what, len(keys), reason, code)
    receipts = [mapping.Receipt(key, False, None, code, reason) for key in keys]
    return record_answers(ledger_engine, run_id, keys, receipts, rejected_prints)


# --- one bad record or agency never stops the rest -------------------------------------------------

def held_rule(exc: AccessHeld) -> str:
    """The count's rule for a held municipality: ``<cvr>:<reason code>`` (fits the 30 characters)."""
    return f"{exc.cvr or '-'}:{exc.code}"


def _agency_held(agency_id: str, what: str, exc: AccessHeld, category: str = HELD_ACCESS) -> tuple[str, str, str]:
    log.warning("agency %s: %s held: %s", agency_id, what, exc)
    return agency_id, category, held_rule(exc)


def _agency_failed(agency_id: str, what: str, exc: Exception, category: str = FAILED) -> tuple[str, str, str]:
    """Log one agency's unexpected error, CPR-masked with its traceback; the count key to add."""
    trace = mask_cprs_in("".join(traceback.format_exception(exc)).rstrip())
    log.error("agency %s: %s failed with an unexpected error; its messages stay as they are (they go with the "
              "next run) and the other agencies go on:\n%s", agency_id, what, trace)
    return agency_id, category, type(exc).__name__[:30]


def invalid_message_text(number: str, error: messages.InvalidMessage | None) -> str:
    """The finding about a liability whose message does not validate (M1): the element and the
    schema's reason (values already dropped by ``messages.validate``), CPR-masked."""
    where = (mask_cprs_in(f"element {error.element}: {error.reason}")[:400] if error is not None
             else "the schema error could not be tied to an element")
    return (f"Beskeden til debitorsystemet for mellemværende {number} overholder ikke skemaet ({where}), så den "
            "sendes ikke. Det er en fejl i integrationen, ikke i data; driften er underrettet. / The message for "
            f"liability {number} does not validate against the schema ({where}) and is not sent. It is a bug in "
            "fbs-debitor, not in the data; operations are told.")


def _unbatched(errors: list[messages.InvalidMessage], given: Iterable[int], batched: set[int],
               rows: dict, run_id: str, stores: Stores, when: str) -> set[int]:
    """The liabilities ``build_batches`` took out as invalid (a bug, never sent): logged, and a
    finding on each (``M1_liability_not_processable``) so staff and operators see the record."""
    dropped = set(given) - batched
    for error in errors:
        log.error("invalid SF1590 message%s, not sent (a bug): %s", when, mask_cprs_in(str(error)))
    if not dropped:
        return dropped
    named = {lid: e for e in errors for lid in e.liability_ids}
    unnamed = next((e for e in reversed(errors) if not e.liability_ids), None)
    findings = []
    for lid in sorted(dropped):
        row = rows.get(lid)
        if row is None:
            continue
        findings.append(ledger.Finding(
            check_code=INVALID_MESSAGE_CHECK, rule="M1", severity="blocks_liability", agency_id=row.agency_id,
            message=invalid_message_text(row.number, named.get(lid, unnamed)), subject=f"L{lid}",
            branch_id=row.b_branch_id, patron_id=row.d_patron_id or row.b_patron_id, liability_id=lid))
    if findings:
        ledger.upsert_findings(stores.ledger, run_id, findings, ledger.now())
    return dropped


# --- new claims -----------------------------------------------------------------------------------

def deliver_page(stores: Stores, client: Client, run_id: str, page: claim_stream.Page, batch_size: int,
                 link: Link | None = None) -> Counter:
    """Write back, record and send one eligibility page's built claims, agency by agency. Returns
    counts keyed (agency, category, rule) for what did not get as far as the debtor system (XSD
    bugs, a replacement CPR taken meanwhile, an outage) and for an agency whose part failed
    (``(agency, "failed", <error type>)``: the others went on); the delivery outcome itself is read
    from the outbox."""
    usable = [(row, built) for row, built in page.built if built.account is not None]
    if not usable:
        return Counter()
    link = link or Link()
    if link.down:     # the debtor system is not answering: these wait for the next run, unrecorded
        return Counter((row.agency_id, "deferred", "outage") for row, _ in usable)
    secret = fingerprints.verify_key(stores.ledger)
    by_agency: dict[str, list] = defaultdict(list)
    for row, built in usable:
        by_agency[row.agency_id].append((row, built))
    counts: Counter = Counter()
    # (the collector paused while the page goes, as while it was built: some objects per claim while
    # every claim of the page is held, walked again and again for cycles the sending does not make)
    with paused_gc():
        for agency_id, items in by_agency.items():
            try:
                counts.update(_deliver_agency(stores, client, run_id, agency_id, items, batch_size, link, secret))
            except AccessHeld as exc:   # its municipality has no working access: held, unsent, the rest go on
                counts[_agency_held(agency_id, "delivering new claims", exc)] += len(items)
            except Exception as exc:   # noqa: BLE001 - one agency's unexpected error: logged, counted, the rest go on
                counts[_agency_failed(agency_id, "delivering new claims", exc)] += len(items)
    deferred = sum(n for (_, category, _), n in counts.items() if category == "deferred")
    if deferred:
        log.warning("%d claim(s) deferred to the next run (I1: their replacement CPR was assigned elsewhere "
                    "meanwhile; outage: the debtor system stopped answering)", deferred)
    return counts


def _deliver_agency(stores: Stores, client: Client, run_id: str, agency_id: str, items: list, batch_size: int,
                    link: Link, secret: bytes) -> Counter:
    """Steps 1 to 4 for one agency's built claims of a page."""
    counts: Counter = Counter()
    if link.down:
        counts[(agency_id, "deferred", "outage")] += len(items)
        return counts
    client = client.for_agency(agency_id)     # AccessHeld before anything of the agency is written
    numbers = {p: n for _, b in items for p, n in b.new_replacement_cprs.items()}
    with stores.fbs.begin() as conn:   # step 1: FBS before the debtor system
        stored = persist_replacement_cprs(conn, numbers)
        new_tasks = raise_tasks(conn, [t for _, b in items for t in b.tasks])
    if new_tasks:
        log.info("%d staff task(s) raised for minors' claims sent without a guardian (C5)", new_tasks)
    lost = {p for p, n in numbers.items() if stored.get(p) != n}
    accounts: list[Account] = []
    prints: dict[int, Tracked] = {}
    rows: dict[int, object] = {}
    own: dict[int, Account] = {}
    written: dict[int, etree._Element] = {}     # each claim's account element, written once (fingerprint, batch)
    for row, built in items:
        if lost & set(built.new_replacement_cprs):
            counts[(agency_id, "deferred", "I1")] += 1     # another number won the race: rebuilt next run
            continue
        accounts.append(built.account)
        own[row.liability_id] = built.account
        rows[row.liability_id] = row

    def prepare(liability_ids: list[int]) -> None:     # a batch's fingerprints, just before it is put together
        for lid in liability_ids:
            if lid not in prints:
                prints[lid] = tracked(own[lid], rows[lid], secret, written)

    errors: list[messages.InvalidMessage] = []
    batched: set[int] = set()
    ahead = _Ahead(messages.build_batches(accounts, messages.agency_of(items[0][0]), batch_size, rejected=errors,
                                          written=written, prepare=prepare))
    for batch in ahead:
        batched.update(batch.liability_ids)
        if link.down:
            counts[(agency_id, "deferred", "outage")] += len(batch.liability_ids)
            continue
        if link.pacer is not None:
            link.pacer.wait(len(batch.liability_ids))
        record_batch(stores.ledger, run_id, batch, prints)
        # the next batch is fingerprinted and put together while this one is on its way
        send_batch(stores.ledger, client, run_id, batch, link, while_waiting=ahead.fetch)
    invalid = _unbatched(errors, rows, batched, rows, run_id, stores, "")
    if invalid:
        counts[(agency_id, "blocked", "XSD")] += len(invalid)
    return counts


class _Ahead:
    """The batches of ``build_batches``, the next one taken early when asked (``fetch``: while the
    batch before it is on its way, ``Client.call(while_waiting=...)``). Taking a batch writes
    nothing and sends nothing (fingerprints, assembly, validation), so taking it early changes no
    write and no order; an error it raises is kept and raised where the loop takes that batch, as
    without taking it early (after the batch on its way was answered and recorded)."""

    _NOTHING = object()

    def __init__(self, batches: Iterator[messages.Batch]):
        self._batches = batches
        self._next = self._NOTHING
        self._error: BaseException | None = None
        self._done = False

    def fetch(self) -> None:
        if self._next is not self._NOTHING or self._error is not None or self._done:
            return
        try:
            self._next = next(self._batches)
        except StopIteration:
            self._done = True
        except BaseException as exc:   # noqa: BLE001 - kept, raised where the batch is taken (``__next__``)
            self._error = exc

    def __iter__(self) -> _Ahead:
        return self

    def __next__(self) -> messages.Batch:
        self.fetch()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._next is self._NOTHING:
            raise StopIteration
        batch, self._next = self._next, self._NOTHING
        return batch


@cache
def _overlaps(client_type: type) -> bool:
    """Whether this client's ``call`` takes ``while_waiting`` (``serviceplatformen.Client``'s does; a
    stand-in's or a subclass's own ``call`` may not)."""
    try:
        return "while_waiting" in inspect.signature(client_type.call).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def resend_unconfirmed(stores: Stores, client: Client, run_id: str, batch_size: int, page_size: int = 5000,
                       today: dt.date | None = None, link: Link | None = None, failed: Counter | None = None, *,
                       agencies: Collection[str] | None = None) -> int:
    """Every message still ``pending`` or ``sent`` (a crash, a timeout, an outage in an earlier
    run), rebuilt from FBS and sent again under its recorded key. Returns how many were resent.
    An unexpected error while sending one agency's messages leaves them as they are (for the next
    run) and the other agencies go on; it is counted in ``failed`` as ``(agency, "failed_resend", type)``.

    ``agencies`` (issue 18: one unit's, a municipality at its debtor system): only the messages of
    claims recorded for those agencies (``claim.agency_id``), None every agency. A claim recorded
    for an agency whose liability moved to another since is still its recorded agency's to resolve
    (withdrawn or NOT_REBUILDABLE as below), never the new agency's."""
    today = today or dt.date.today()
    link = link or Link()
    registry: ReplacementCprRegistry | None = None
    total = 0
    only = agency_list(agencies)
    query = for_agencies("SELECT o.message_key, o.liability_id, o.fordring_id, o.fingerprint, o.attempts, o.amount, "
                         "c.agency_id FROM outbox o JOIN claim c ON c.liability_id = o.liability_id "
                         "WHERE o.state IN ('pending', 'sent') AND o.operation = :o AND o.version = 1{agencies} "
                         "AND o.liability_id > :last ORDER BY o.liability_id LIMIT :n", only)
    for rows in keyset_pages(stores.ledger, query, "liability_id", -1,
                             {"o": CREATE, "n": page_size, **agency_params(only)}, after="last"):
        if link.down:
            break
        registry = registry or ReplacementCprRegistry(claim_stream.taken_replacement_cprs(stores.fbs))
        recorded = {r.liability_id: r for r in rows}
        fbs_rows = {r.liability_id: r for r in claim_stream.claim_rows(stores.fbs, list(recorded), today)}
        blocked: dict[str, str] = {}
        withdraw: list[tuple[int, str, str]] = []
        changed: list[tuple[int, str, str, bool]] = []
        by_agency: dict[str, list[Account]] = defaultdict(list)
        agencies: dict[str, dict] = {}
        for lid, rec in recorded.items():
            row = fbs_rows.get(lid)
            if row is None:
                blocked[rec.message_key] = "the liability is no longer in FBS"
                continue
            if rec.attempts == 0 and (row.status != "open" or row.agency_id != rec.agency_id):
                why = f"status {row.status}" if row.status != "open" else f"moved to agency {row.agency_id}"
                withdraw.append((lid, rec.message_key, why))    # it never left: as if never recorded
                continue
            if row.agency_id != rec.agency_id:
                blocked[rec.message_key] = (f"the liability moved from agency {rec.agency_id} to {row.agency_id} "
                                            "after it was sent; it is not sent again under another FordringID")
                continue
            if rec.amount is not None:    # the amount recorded goes; a change since goes as a change (U1)
                row = claim_stream.RowWith(row, amount=rec.amount)
            built = build(row, registry, today)
            if built.problem or built.new_replacement_cprs:
                why = (f"{built.problem.rule}: {built.problem.message}" if built.problem
                       else "I1: its replacement CPR is gone from FBS")
                blocked[rec.message_key] = f"it no longer builds ({why})"
                continue
            claim = built.account.claims[0]
            if claim.fordring_id != rec.fordring_id:
                blocked[rec.message_key] = "its FordringID would differ from the one recorded"
                continue
            now_print = fingerprint(built.account)
            if now_print != rec.fingerprint:
                changed.append((lid, rec.message_key, now_print, rec.attempts == 0))
            by_agency[row.agency_id].append(built.account)
            agencies[row.agency_id] = messages.agency_of(row)
        if withdraw:
            _withdraw(stores.ledger, run_id, withdraw)
        record_failures(stores.ledger, run_id, {key: f"cannot be sent again as it was: {why}"
                                                for key, why in blocked.items()}, NOT_REBUILDABLE)
        if blocked:
            log.error("%d unconfirmed message(s) cannot be sent again as they were; staff get a task for each "
                      "(outbox.error_code %s)", len(blocked), NOT_REBUILDABLE)
        if changed:
            _record_changed(stores.ledger, run_id, changed)
        for agency_id, accounts in by_agency.items():
            try:
                total += _resend_agency(stores, client.for_agency(agency_id), run_id, accounts,
                                        agencies[agency_id], batch_size, link, fbs_rows)
            except AccessHeld as exc:
                key = _agency_held(agency_id, "sending its unconfirmed claims again", exc, HELD_ACCESS_RESEND)
                if failed is not None:
                    failed[key] += len(accounts)
            except Exception as exc:   # noqa: BLE001 - one agency's unexpected error: logged, counted, the rest go on
                key = _agency_failed(agency_id, "sending its unconfirmed claims again", exc, RESEND_FAILED)
                if failed is not None:
                    failed[key] += len(accounts)
    return total


def _resend_agency(stores: Stores, client: Client, run_id: str, accounts: list[Account], agency: dict,
                   batch_size: int, link: Link, rows: dict) -> int:
    """One agency's rebuilt unconfirmed claims of a page, sent again; an invalid message (a bug) is
    never sent: it stays unconfirmed as NOT_REBUILDABLE (a staff task) with a finding."""
    sent = 0
    errors: list[messages.InvalidMessage] = []
    batched: set[int] = set()
    exhausted = True
    for batch in messages.build_batches(accounts, agency, batch_size, rejected=errors):
        batched.update(batch.liability_ids)
        if link.down:
            exhausted = False     # the rest waits for the next run; only what an error named is invalid
            break
        send_batch(stores.ledger, client, run_id, batch, link)
        sent += len(batch.liability_ids)
    invalid = {lid for e in errors for lid in e.liability_ids}
    if exhausted:
        invalid |= {c.liability_id for a in accounts for c in a.claims} - batched
    invalid = _unbatched(errors, invalid, set(), rows, run_id, stores, " on resend")
    failures = {}
    for lid in sorted(invalid):
        error = next((e for e in errors if lid in e.liability_ids), errors[-1] if errors else None)
        failures[message_key(lid)] = f"invalid message (a bug in fbs-debitor): {error.element if error else '?'}"
    record_failures(stores.ledger, run_id, failures, NOT_REBUILDABLE)
    return sent


def _withdraw(ledger_engine: Engine, run_id: str, rows: list[tuple[int, str, str]]) -> None:
    """Messages that never left the process (0 attempts) for liabilities no longer to be sent."""
    at = ledger.now()
    with ledger_engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox WHERE message_key = :k AND attempts = 0 AND state = 'pending'"),
                     [{"k": k} for _, k, _ in rows])
        conn.execute(text("DELETE FROM claim WHERE liability_id = :l AND NOT EXISTS "
                          "(SELECT 1 FROM outbox o WHERE o.liability_id = claim.liability_id)"),
                     [{"l": lid} for lid, _, _ in rows])
        add_events(conn, [(lid, "withdrawn_before_sending", k, f"never sent; {why}") for lid, k, why in rows],
                   run_id, at)
    log.info("%d recorded message(s) withdrawn before they were ever sent: the liability is no longer to go "
             "(or goes from its new agency)", len(rows))


def _record_changed(ledger_engine: Engine, run_id: str, changed: list[tuple[int, str, str, bool]]) -> None:
    """FBS changed since the message was built. If it never left (0 attempts), what goes now is
    what the receiver will hold; otherwise the receiver may hold the first, so the recorded
    fingerprint stays and the event tells the change flow to reconcile."""
    at = ledger.now()
    with ledger_engine.begin() as conn:
        never_left = [{"p": p, "k": k} for _, k, p, fresh in changed if fresh]
        if never_left:
            conn.execute(text("UPDATE outbox SET fingerprint = :p WHERE message_key = :k AND attempts = 0"),
                         never_left)
        # The receiver may hold either version: the change detection rebuilds the parties and
        # compares them with the first ones (the claim's identity_print), so it converges either way.
        conn.execute(text("UPDATE claim SET source_print = NULL WHERE liability_id = :l"),
                     [{"l": lid} for lid, _, _, _ in changed])
        add_events(conn, [(lid, "content_changed_before_answer", k,
                           "FBS changed before the debtor system confirmed the claim; sent again as it is now"
                           + ("" if fresh else "; the receiver may hold the first version: reconcile"))
                          for lid, k, _, fresh in changed], run_id, at)
    log.warning("%d unconfirmed claim(s) changed in FBS since they were built; sent again as they are now",
                len(changed))


# --- counts ---------------------------------------------------------------------------------------

def delivery_counts(ledger_engine: Engine, run_id: str) -> Counter:
    """What this run sent of new claims and how it ended, per agency: accepted, rejected (per rule
    of the debtor system's code) and unconfirmed (no answer yet: sent again next run). From the
    outbox, so a retried or crashed task counts right. Changes are counted by ``changes.sending``."""
    with ledger_engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.agency_id, o.state, o.error_code, COUNT(*) AS n FROM outbox o "
            "JOIN claim c ON c.liability_id = o.liability_id WHERE o.last_run_id = :r AND o.version = 1 "
            "GROUP BY c.agency_id, o.state, o.error_code"), {"r": run_id}).all()
    counts: Counter = Counter()
    for r in rows:
        if r.state == "accepted":
            counts[(r.agency_id, ACCEPTED, "-")] += r.n
        elif r.state == "rejected":
            counts[(r.agency_id, REJECTED, rule_of(r.error_code))] += r.n
        else:
            counts[(r.agency_id, UNCONFIRMED, "-")] += r.n
    return counts


def unconfirmed_total(ledger_engine: Engine) -> int:
    with ledger_engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'sent')")).scalar_one()
