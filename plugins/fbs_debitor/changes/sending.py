"""Sending the recorded changes (``changes.detection``) exactly once, in order per liability.

A change message (version > 1 of a liability) is sent only when every earlier version of the same
liability is answered: a write-down never overtakes the creation it applies to, and two changes
recorded in different runs arrive in the order they were made. The one exception: an identity
change whose parties no longer build (NOT_REBUILDABLE, a staff task) does not hold back a later
cancellation or write-down of the same claim; it goes when the data is fixed. So each round sends at most the
oldest unanswered message of every liability, in batches per agency; the next round the ones
that became next; until nothing more can go. The same outbox steps as creations apply (marked
``sent`` with the attempt before each transmission, then ``accepted``/``rejected`` per receipt;
no answer leaves them for the next run, sent again under the same AendringID; a call refused as a
whole, HTTP 4xx or a SOAP Client fault, rejects its messages like a receipt would, with a staff
task, and the other batches go on).

* Cancellations, write-downs and repayments are sent as recorded (the ledger holds their content).
* An identity change carries CPR numbers, which the ledger never holds: its parties are rebuilt
  from FBS when it is sent.
* An increase's new claim (or a cancelled claim opened again) is an OpretDebitorkonto under its
  own FordringID, built from FBS with the recorded amount; it goes only after the cancellation it
  depends on was ACCEPTED. If that cancellation was rejected the new claim is not sent (the old
  one is still live there: two live claims would bill twice); it is rejected locally with
  ``U1_ANNULLERING_AFVIST`` and staff get a task like for any rejection; the ledger's claim goes
  back to the one still live there, so later changes reach it. A cancelled claim opened again in
  FBS waits for its cancellation the same way.
* A rejected claim created again (``delivery.rejections``: its data changed, or an operator
  requeued it) is such a new claim too (``recreate``), with nothing to wait for.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.changes.detection import CREATE_OPERATION, RECORDED
from fbs_debitor.claims import messages
from fbs_debitor.claims import sf1590 as mapping
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.builder import build
from fbs_debitor.claims.fields import generation_of
from fbs_debitor.claims.model import IDENTITY, Change
from fbs_debitor.core import ledger
from fbs_debitor.core.db import as_amount, in_query, keyset_pages
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.core.ledger import add_events
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery.outbox import (
    ACCEPTED,
    HELD_ACCESS_CHANGES,
    NOT_REBUILDABLE,
    REJECTED,
    Link,
    agency_list,
    agency_params,
    answered,
    call_rejected,
    for_agencies,
    held_rule,
    mark_attempt,
    record_failure,
    record_failures,
    rule_of,
    send_batch,
)
from fbs_debitor.delivery.serviceplatformen import AccessHeld, Client, DeliveryError

log = logging.getLogger(__name__)

CHANGE_NAMESPACE = uuid.UUID("5b0e3f43-7e0c-4d1b-8f1e-1590c4a9e002")
DEPENDENCY_REJECTED = "U1_ANNULLERING_AFVIST"
CHANGES_ACCEPTED, CHANGES_REJECTED, CHANGES_UNCONFIRMED = "changes_accepted", "changes_rejected", "changes_unconfirmed"
CHANGE_CATEGORIES = (RECORDED, CHANGES_ACCEPTED, CHANGES_REJECTED, CHANGES_UNCONFIRMED)
REASONS = {"cancel": "cancelled in FBS", "increase_cancel": "amount increased in FBS: replaced by a new claim"}

# {agencies}: a unit's agencies (issue 18), by the claim's recorded agency; a liability's messages all
# belong to its one claim row, so the filter never splits a liability and the order below holds.
_NEXT = (
    "SELECT o.message_key, o.liability_id, o.version, o.operation, o.change_kind, o.fordring_id, o.amount, "
    "o.depends_on, o.attempts, c.agency_id, d.state AS depends_state, d.fordring_id AS depends_fordring_id "
    "FROM outbox o "
    "JOIN claim c ON c.liability_id = o.liability_id "
    "LEFT JOIN outbox d ON d.message_key = o.depends_on "
    "WHERE o.state IN ('pending', 'sent') AND o.version > 1{agencies} AND o.liability_id > :last "
    "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.liability_id = o.liability_id AND p.version < o.version "
    "AND p.state IN ('pending', 'sent') "
    "AND NOT (p.change_kind = 'identity' AND p.error_code = 'NOT_REBUILDABLE')) ORDER BY o.liability_id LIMIT :n")


def send_changes(stores: Stores, client: Client, run_id: str, batch_size: int, page_size: int = 5000,
                 today: dt.date | None = None, link: Link | None = None, held: Counter | None = None, *,
                 agencies: Collection[str] | None = None) -> int:
    """Every recorded change whose turn it is, in rounds until none is left that can go now.
    Returns how many messages were sent. An agency whose municipality has no working access this
    run keeps its changes for the next run, counted in ``held`` as ``(agency, HELD_ACCESS_CHANGES,
    "<cvr>:<reason>")``. ``agencies`` (issue 18: one unit's): only the changes of claims recorded
    for those agencies (``claim.agency_id``), None every agency."""
    only = agency_list(agencies)
    query = for_agencies(_NEXT, only)
    params = {"n": page_size, **agency_params(only)}
    today = today or dt.date.today()
    link = link or Link()
    tried: set[str] = set()
    total = 0
    registry: list[ReplacementCprRegistry] = []       # loaded once, when a message needs rebuilding
    while not link.down:
        sent_this_round = 0
        for rows in keyset_pages(stores.ledger, query, "liability_id", -1, params, after="last"):
            if link.down:
                break
            rows = [r for r in rows if r.message_key not in tried]
            tried.update(r.message_key for r in rows)
            sent_this_round += _send_page(stores, client, run_id, rows, batch_size, today, link, registry, held)
        total += sent_this_round
        if not sent_this_round:
            break
    if link.down:
        log.error("the debtor system stopped answering (%s); unsent changes wait for the next run", link.down)
    return total


def _client_for(client: Client, agency_id: str, n: int, held: Counter | None) -> Client | None:
    """The agency's municipality's client, or None when that municipality is held this run."""
    try:
        return client.for_agency(agency_id)
    except AccessHeld as exc:
        log.warning("agency %s: %d change message(s) held, they go with the next run: %s", agency_id, n, exc)
        if held is not None:
            held[(agency_id, HELD_ACCESS_CHANGES, held_rule(exc))] += n
        return None


def _send_page(stores: Stores, client: Client, run_id: str, rows, batch_size: int, today: dt.date,
               link: Link, registry: list[ReplacementCprRegistry], held: Counter | None = None) -> int:
    blocked = [r for r in rows if r.depends_on and r.depends_state == "rejected"]
    if blocked:
        _reject_dependants(stores.ledger, run_id, blocked)
    rows = [r for r in rows if not (r.depends_on and r.depends_state != "accepted")]
    if not rows:
        return 0
    agencies = _agencies(stores.fbs, {r.agency_id for r in rows})
    needs_fbs = [r for r in rows if r.operation == CREATE_OPERATION or r.change_kind == IDENTITY]
    built = _rebuild(stores, run_id, needs_fbs, today, registry)
    changes: dict[str, list[tuple[Change, object]]] = defaultdict(list)
    creations: dict[str, list] = defaultdict(list)
    for r in rows:
        if r.operation == CREATE_OPERATION:
            if r.message_key in built:
                creations[r.agency_id].append((built[r.message_key], r))
            continue
        if r.change_kind == IDENTITY:
            if r.message_key not in built:
                continue
            account = built[r.message_key]
            change = Change(r.message_key, r.liability_id, r.fordring_id, IDENTITY,
                            identification=account.identification, responsible=account.responsible)
        else:
            kind = "cancel" if r.change_kind in ("cancel", "increase_cancel") else r.change_kind
            change = Change(r.message_key, r.liability_id, r.fordring_id, kind, amount=as_amount(r.amount),
                            reason=REASONS.get(r.change_kind))
        changes[r.agency_id].append((change, r))
    sent = 0
    for agency_id, items in changes.items():
        agency_client = _client_for(client, agency_id, len(items), held)
        for start in range(0, len(items) if agency_client else 0, batch_size):
            if link.down:
                return sent
            sent += _send_changes(stores.ledger, agency_client, run_id, agencies[agency_id],
                                  items[start:start + batch_size], link)
    for agency_id, items in creations.items():
        agency_client = _client_for(client, agency_id, len(items), held)
        if agency_client is None:
            continue
        versions = {account.claims[0].fordring_id: r.version for account, r in items}
        errors: list[messages.InvalidMessage] = []
        for batch in messages.build_batches([a for a, _ in items], agencies[agency_id], batch_size, rejected=errors):
            if link.down:
                return sent
            send_batch(stores.ledger, agency_client, run_id, batch, link, versions)
            sent += len(batch.liability_ids)
        for error in errors:
            keys = [r.message_key for a, r in items if r.liability_id in error.liability_ids]
            record_failure(stores.ledger, run_id, keys, f"invalid message (a bug in fbs-debitor): {error.element}",
                           NOT_REBUILDABLE)
    return sent


def _send_changes(ledger_engine: Engine, client: Client, run_id: str, agency: dict, items, link: Link) -> int:
    keys = {change.key: (change.key, change.liability_id) for change, _ in items}
    ids = sorted(keys)
    transaction_id = uuid.uuid5(CHANGE_NAMESPACE, "|".join(ids))
    root = mapping.change_request([c for c, _ in items], transaction_id, dt.datetime.now().astimezone(),
                                  agency["sender_system_uuid"], agency["org_unit_uuid"])
    try:
        messages.validate(root)
    except messages.InvalidMessage as error:   # a bug: never sent, never silent
        log.error("invalid change message, not sent (a bug): %s", error)
        record_failure(ledger_engine, run_id, ids, f"invalid message (a bug in fbs-debitor): {error.element}",
                       NOT_REBUILDABLE)
        return 0
    try:
        answer = client.call(root, on_attempt=lambda n: mark_attempt(ledger_engine, run_id, keys, n))
    except DeliveryError as exc:
        if getattr(exc, "rejected", False):    # refused as a whole (HTTP 4xx, SOAP Client fault): rejected, not resent
            call_rejected(ledger_engine, run_id, keys, exc, f"change batch {transaction_id} (agency "
                                                            f"{agency['agency_id']})")
            return len(keys)
        log.warning("change batch %s (%d changes, agency %s) not confirmed: %s; sent again next run",
                    transaction_id, len(keys), agency["agency_id"], exc)
        record_failure(ledger_engine, run_id, ids, str(exc))
        link.down = str(exc)
        return len(keys)
    answered(ledger_engine, run_id, keys, answer, f"change batch {transaction_id} (agency {agency['agency_id']})")
    return len(keys)


def _rebuild(stores: Stores, run_id: str, rows, today: dt.date,
             registry: list[ReplacementCprRegistry]) -> dict[str, object]:
    """Accounts built from FBS for messages that carry parties (identity changes, new claims);
    those that cannot be built as recorded stay unconfirmed with NOT_REBUILDABLE (staff task)."""
    if not rows:
        return {}
    fbs_rows = {r.liability_id: r for r in claim_stream.claim_rows(stores.fbs, sorted({r.liability_id for r in rows}),
                                                                   today)}
    if not registry:
        registry.append(ReplacementCprRegistry(claim_stream.taken_replacement_cprs(stores.fbs)))
    with stores.ledger.connect() as conn:
        told = dict(conn.execute(in_query("SELECT liability_id, debtor_amount FROM claim WHERE liability_id IN :ids",
                                          "ids"),
                                 {"ids": sorted({r.liability_id for r in rows})}).all())
    accounts: dict[str, object] = {}
    failures: dict[str, str] = {}
    for r in rows:
        row = fbs_rows.get(r.liability_id)
        generation = generation_of(r.fordring_id, r.agency_id, r.liability_id)
        why = None
        if row is None:
            why = "the liability is no longer in FBS"
        elif row.agency_id != r.agency_id or generation is None:
            why = f"the liability moved from agency {r.agency_id} to {row.agency_id}"
        else:
            amount = as_amount(r.amount) if r.amount is not None else as_amount(told.get(r.liability_id))
            b = build(claim_stream.RowWith(row, amount=amount if amount and amount > 0 else as_amount("0.01")),
                      registry[0], today, generation)
            if b.problem or b.new_replacement_cprs:
                why = (f"it no longer builds ({b.problem.rule}: {b.problem.message})" if b.problem
                       else "it no longer builds (I1: the debtor has neither CPR nor replacement CPR)")
            else:
                accounts[r.message_key] = b.account
        if why:
            failures[r.message_key] = f"cannot be sent as recorded: {why}"
    record_failures(stores.ledger, run_id, failures, NOT_REBUILDABLE)   # one transaction for all of them
    return accounts


def _agencies(fbs: Engine, agency_ids: set[str]) -> dict[str, dict]:
    query = in_query("SELECT agency_id, sender_system_uuid, org_unit_uuid FROM agency WHERE agency_id IN :ids", "ids")
    with fbs.connect() as conn:
        return {r.agency_id: {"agency_id": r.agency_id, "sender_system_uuid": r.sender_system_uuid,
                              "org_unit_uuid": r.org_unit_uuid} for r in conn.execute(query, {"ids": sorted(agency_ids)})}


def _reject_dependants(ledger_engine: Engine, run_id: str, rows) -> None:
    """An increase's new claim whose cancellation was rejected is never sent (two live claims)."""
    at = ledger.now()
    why = ("not sent: the cancellation of the claim it replaces was rejected by the debtor system, and two live claims "
           "would bill the citizen twice (U1)")
    with ledger_engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET state = 'rejected', error_code = :c, last_error = :e, answered_at = :t, "
                          "last_run_id = :r WHERE message_key = :k AND state IN ('pending', 'sent')"),
                     [{"c": DEPENDENCY_REJECTED, "e": why, "t": at, "r": run_id, "k": r.message_key} for r in rows])
        add_events(conn, [(r.liability_id, "rejected", r.message_key, f"{DEPENDENCY_REJECTED}: {why}") for r in rows],
                   run_id, at)
        # The claim whose cancellation was rejected is still live at the debtor system: the ledger
        # points at it again, so later changes reach it (unless a newer claim was recorded since).
        back = [{"l": r.liability_id, "new": r.fordring_id, "old": r.depends_fordring_id, "t": at,
                 "g": generation_of(r.depends_fordring_id, r.agency_id, r.liability_id) or 0} for r in rows]
        conn.execute(text("UPDATE claim SET fordring_id = :old, generation = :g, debtor_status = 'live', "
                          "updated_at = :t WHERE liability_id = :l AND fordring_id = :new"), back)
        add_events(conn, [(b["l"], "claim_still_live", None, f"{b['old']} is still live at the debtor system; "
                           f"{b['new']} was not created") for b in back], run_id, at)
    log.error("%d new claim(s) of increases not sent: the cancellation before them was rejected", len(rows))


def change_counts(ledger_engine: Engine, run_id: str) -> Counter:
    """The changes this run recorded (per kind), and what it sent of changes and how it ended, per
    agency, kind (accepted, unconfirmed) or rejection rule. From the outbox: a retried task counts
    right."""
    counts: Counter = Counter()
    with ledger_engine.connect() as conn:
        for r in conn.execute(text(
                "SELECT c.agency_id, o.change_kind, COUNT(*) AS n FROM outbox o JOIN claim c "
                "ON c.liability_id = o.liability_id WHERE o.run_id = :r AND o.version > 1 "
                "GROUP BY c.agency_id, o.change_kind"), {"r": run_id}):
            counts[(r.agency_id, RECORDED, r.change_kind or "-")] += r.n
        rows = conn.execute(text(
            "SELECT c.agency_id, o.state, o.change_kind, o.error_code, COUNT(*) AS n FROM outbox o "
            "JOIN claim c ON c.liability_id = o.liability_id WHERE o.last_run_id = :r AND o.version > 1 "
            "GROUP BY c.agency_id, o.state, o.change_kind, o.error_code"), {"r": run_id}).all()
    for r in rows:
        if r.state == ACCEPTED:
            counts[(r.agency_id, CHANGES_ACCEPTED, r.change_kind or "-")] += r.n
        elif r.state == REJECTED:
            counts[(r.agency_id, CHANGES_REJECTED, rule_of(r.error_code))] += r.n
        else:
            counts[(r.agency_id, CHANGES_UNCONFIRMED, r.change_kind or "-")] += r.n
    return counts

