"""Keeping sent claims true (U1-U4): what changed in FBS since the debtor system was last told.

Every run compares, for every liability whose claim the debtor system accepted, FBS's current
state with what the ledger's claim row says the debtor system was last told (by the newest
RECORDED message, answered or not). Set-based and streamed: one narrow query
(``claim_state.sql``) per page of ledger claims; the parties are compared by keyed fingerprints
(``fingerprints``) of the FBS fields they are built from, so claims are only rebuilt where those
fields changed. Each difference is recorded as its own outbox message, versioned per liability
(``<liability>:<version>``, the AendringID) in one ledger transaction per page, and sent in
version order by ``changes.sending``:

=================================  =========================================================
FBS now (against what was told)     message(s)
=================================  =========================================================
CPR/CVR of identification or        ``identity``: Identifikationsaendring with both parties as
responsible party (U2), also a      FBS has them now
replacement CPR replaced by a
real one
marked for repayment (U3), a        ``repayment``: Tilbagebetaling of the amount told (the debtor
compensation                        system pays out what was actually paid)
lower amount (U1)                   ``write_down``: Nedskrivning to the new amount
amount 0                            ``cancel`` (a claim cannot be written down to nothing)
higher amount (U1)                  ``increase_cancel`` of the claim + ``increase_create``: a
                                    new claim, new FordringID (generation + 1), sent only once
                                    the cancellation is accepted
status cancelled (U1, U4)           ``cancel``: Annullering (for a compensation the debtor system
                                    books it as a negative posting, and passes it on if the claim
                                    is at collection)
open again after a cancellation     ``increase_create`` alone: a new claim, new FordringID
=================================  =========================================================

Decided, where the rules are silent (documented in docs/design.md):

* **closed** in FBS after sending: nothing goes to the debtor system. Transferred liabilities are
  paid only there (P2), so FBS closing one is normally the result of the payments the debtor
  system reported; if FBS's payments do not cover the amount, staff get a task: cancel it in FBS
  if it is not owed, or register the payment in the debtor system.
* **sent to collection** in FBS after sending: nothing goes (the debtor system collects through
  PSRM, C6); staff get a task not to collect it twice. Write-downs and cancellations still go (U4).
* A negative amount, a fee marked for repayment, or parties that no longer build (a CPR removed,
  ...) send nothing and become staff tasks (M1) with the rule; they are tried again every run.
* A sent liability whose patron is gone from FBS (the liability is still there) sends nothing and
  becomes one staff task; it is not mistaken for a liability that is gone.
* A value of a sent liability that cannot be read as FBS holds it (an amount as text or with a third
  decimal, a repayment mark or birth date that is not a date, identifiers that are not text) sends
  nothing about that claim (never a rounded write-down) and becomes one staff task (M1); the other
  claims of the page are compared as usual.

A claim recorded before this existed (ledger before 0004) has no record of what was told: its
first comparison takes FBS's state as the baseline (an event says so) and sends nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.claims import fingerprints
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.fields import fordring_id
from fbs_debitor.claims.model import CANCEL, IDENTITY, REPAYMENT, WRITE_DOWN, StaffTask
from fbs_debitor.claims.writeback import raise_tasks
from fbs_debitor.core import ledger
from fbs_debitor.core.db import (
    Unreadable,
    as_amount,
    as_date,
    as_datetime,
    chunked,
    exact_amount,
    in_query,
    keyset_pages,
    shown,
    sql_file,
)
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.core.ledger import add_events, update_settlement
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery.outbox import agency_list, agency_params, for_agencies, message_key
from fbs_debitor.eligibility.delta import Delta, id_list

log = logging.getLogger(__name__)

CHANGE_OPERATION = "RetFordringTilstand"
CREATE_OPERATION = "OpretDebitorkonto"
INCREASE_CANCEL, INCREASE_CREATE = "increase_cancel", "increase_create"
OPERATION_OF = {CANCEL: CHANGE_OPERATION, WRITE_DOWN: CHANGE_OPERATION, IDENTITY: CHANGE_OPERATION,
                REPAYMENT: CHANGE_OPERATION, INCREASE_CANCEL: CHANGE_OPERATION, INCREASE_CREATE: CREATE_OPERATION}
RECORDED = "change_recorded"
TASK_KIND = "claim_change"


# A new claim (new FordringID) starts with nothing paid: payments on the earlier claim stay with it in
# the movements (and are settled by the debtor system when it cancels it); the claim row's sums are
# those of its current FordringID (P2).
NEW_CLAIM_SUMS = {"paid_amount": 0, "written_off_amount": 0, "repaid_amount": 0, "settled_on": None}


@dataclass
class Planned:
    kind: str
    fordring_id: str
    amount: Decimal | None = None
    detail: str = ""
    fingerprint: str | None = None
    depends_on_previous: bool = False
    depends_on: str | None = None


@dataclass
class Update:
    """A claim row's new values and the messages to record for it."""

    claim: object
    messages: list[Planned] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    notice: str | None = None


def closed_message(number: str) -> str:
    return (f"Mellemværende {number} er lukket i FBS, efter det er overført til debitorsystemet, uden at "
            "debitorsystemet har meldt det betalt. Integrationen sender ikke en lukning videre: betaling sker kun i "
            "debitorsystemet (P2). Skal borgeren ikke betale, så annullér mellemværendet i FBS (så sendes en "
            "annullering); er det betalt andetsteds, så registrér betalingen i debitorsystemet. / "
            f"Liability {number} was closed in FBS after it was transferred, and the debtor system has not reported "
            "it paid. A closure is not sent on: transferred liabilities are paid only in the debtor system (P2). If "
            "the citizen does not owe it, cancel it in FBS (a cancellation is then sent); if it was paid elsewhere, "
            "register the payment in the debtor system.")


def collection_message(number: str) -> str:
    return (f"Mellemværende {number} er sat til 'Sendt til inddrivelse' i FBS, efter det er overført til "
            "debitorsystemet. Kravet opkræves og inddrives nu af debitorsystemet (PSRM); send det ikke også til "
            "inddrivelse fra biblioteket. Integrationen sender intet. / "
            f"Liability {number} was set to 'sent to collection' in FBS after it was transferred. The debtor system "
            "now bills and collects it (PSRM); do not also send it to collection from the library. Nothing is sent.")


def negative_message(number: str, amount) -> str:
    return (f"Mellemværende {number} har et negativt beløb i FBS ({amount} kr.), efter det er overført. Der sendes "
            "intet til debitorsystemet (U1); ret beløbet, eller annullér mellemværendet. / "
            f"Liability {number} has a negative amount in FBS ({amount} DKK) after it was transferred. Nothing is "
            "sent (U1); correct the amount or cancel the liability.")


def fee_refund_message(number: str) -> str:
    return (f"Gebyr {number} er markeret til tilbagebetaling i FBS. Kun erstatninger kan tilbagebetales gennem "
            "debitorsystemet (U3); der sendes intet. Nedskriv eller annullér gebyret i stedet. / "
            f"Fee {number} is marked for repayment in FBS. Only compensations are repaid through the debtor system "
            "(U3); nothing is sent. Write the fee down or cancel it instead.")


def refund_cancelled_message(number: str) -> str:
    return (f"Erstatning {number} er markeret til tilbagebetaling i FBS, efter den er annulleret i debitorsystemet. "
            "Annulleringen er bogført som en minuspåligning, der dækker det betalte; der sendes intet. Afklar med "
            "debitorafdelingen, om borgeren har fået pengene. / "
            f"Compensation {number} was marked for repayment in FBS after it was cancelled at the debtor system. The "
            "cancellation was booked as a negative posting covering what was paid; nothing is sent. Check with the "
            "debtor office that the citizen was paid back.")


def increase_not_open_message(number: str, status: str) -> str:
    return (f"Beløbet på mellemværende {number} er sat op i FBS, men mellemværendet har status {status}. En forhøjelse "
            "sendes som annullering plus ny fordring (U1), og en ny fordring sendes kun for åbne mellemværender; der "
            "sendes intet. Opret et nyt mellemværende for forskellen, hvis borgeren skal betale den. / "
            f"The amount of liability {number} was raised in FBS while its status is {status}. An increase goes as a "
            "cancellation plus a new claim (U1), and new claims go only for open liabilities; nothing is sent. "
            "Create a new liability for the difference if the citizen is to pay it.")


def refund_again_message(number: str) -> str:
    return (f"Erstatning {number} er markeret til tilbagebetaling igen i FBS. Tilbagebetalingen er allerede sendt til "
            "debitorsystemet én gang (U3); der sendes ikke en ny. Afklar med debitorafdelingen, om mere skal betales "
            "tilbage. / "
            f"Compensation {number} was marked for repayment again in FBS. The repayment was already sent to the "
            "debtor system once (U3); no second one is sent. Check with the debtor office whether more is to be "
            "paid back.")


def unreadable_message(number: str, what: str) -> str:
    return (f"Mellemværende {number} er overført til debitorsystemet, men dets data i FBS kan ikke læses ({what}). "
            "Der sendes intet om det, før det er rettet i FBS; beløb og datoer rundes eller gættes aldrig. / "
            f"Liability {number} was transferred, but its data in FBS cannot be read ({what}). Nothing is sent about "
            "it until it is corrected in FBS; amounts and dates are never rounded or guessed.")


def orphaned_message(fordring: str, patron_id) -> str:
    return (f"Mellemværendet bag fordring {fordring} er overført til debitorsystemet, men låneren ({patron_id}) findes "
            "ikke længere i FBS. Der sendes intet om det, før låneren er tilbage eller mellemværendet er rettet. / "
            f"The liability behind claim {fordring} was transferred, but its patron ({patron_id}) is no longer in "
            "FBS. Nothing is sent about it until the patron is back or the liability is corrected.")


_ORPHANED = in_query("SELECT l.liability_id, l.patron_id, (SELECT COUNT(*) FROM agency a WHERE a.agency_id = "
                     "l.agency_id) AS agencies FROM liability l WHERE l.liability_id IN :ids", "ids")


def _orphaned(fbs: Engine, liability_ids: list[int]) -> dict[int, tuple]:
    """Of the sent liabilities ``claim_state.sql`` did not return, those still in FBS (their
    patron or agency is gone): {liability_id: (patron_id, agency exists)}."""
    if not liability_ids:
        return {}
    with fbs.connect() as conn:
        return {r.liability_id: (r.patron_id, bool(r.agencies)) for r in conn.execute(_ORPHANED, {"ids": liability_ids})}


def _read_state(st, secret: bytes) -> tuple[str | None, str | None]:
    """(what cannot be read, None) or (None, the keyed print of its parties' source fields): a sent
    liability's FBS values, read one claim at a time so one bad value never stops the page."""
    for column, read in (("amount", exact_amount), ("refund_requested_at", as_datetime),
                         ("d_birth_date", as_date), ("g_birth_date", as_date)):
        value = getattr(st, column)
        try:
            read(value)
        except Unreadable as exc:
            return f"{column} {shown(value)}: {exc}", None
    try:
        return None, fingerprints.source_print(st, secret)
    except (UnicodeError, ValueError, TypeError):
        return "the debtor's identifiers hold bytes that are not text", None


def identity_blocked_message(number: str, why: str) -> str:
    return (f"Debitors CPR/CVR-oplysninger for mellemværende {number} er ændret i FBS, men ændringen kan ikke sendes "
            f"til debitorsystemet (U2): {why}. Ret data i FBS; så sendes ændringen ved næste kørsel. / "
            f"The debtor's CPR/CVR details of liability {number} changed in FBS, but the change cannot be sent to the "
            f"debtor system (U2): {why}. Correct the data in FBS and it goes with the next run.")


@dataclass
class _Context:
    """What one detection run shares between its pages."""

    stores: Stores
    run_id: str
    secret: bytes
    today: dt.date
    registry: ReplacementCprRegistry | None = None

    def replacement_registry(self) -> ReplacementCprRegistry:
        if self.registry is None:      # loaded once per run, only when a claim has to be rebuilt
            self.registry = ReplacementCprRegistry(claim_stream.taken_replacement_cprs(self.stores.fbs))
        return self.registry

    def task(self, state, key: str, message: str) -> StaffTask:
        """A staff task about this occurrence: the run is part of its id, so the same situation
        arising again later (closed, reopened, closed again) is a new task, while a retried run
        raises the same one."""
        return StaffTask(f"CHG-{key}-{state.liability_id}-{self.run_id[:8]}", state.agency_id, state.b_branch_id,
                         state.patron_id, state.liability_id, TASK_KIND, message)


_SENT_CLAIMS = ("SELECT liability_id, agency_id, fordring_id, generation, current_version, debtor_amount, debtor_status, "
                "refund_requested_at, identity_print, source_print, fbs_status, notice, {fresh} AS fresh FROM claim")

# A claim this very run recorded and had accepted, untouched since (its creation only: generation 0,
# version 1, live, no notice, its prints and amount kept). It was built from FBS as this run read
# it, seconds ago, after the run's window opened, so comparing it with FBS again is (almost always)
# wasted work: it is not read from FBS nor fingerprinted again (issue 19). Nothing is lost:
# * a change FBS makes after this run read the liability is committed after that read, so it was
#   marked (updated_at) after the read less FBS_DEBITOR_CHANGE_OVERLAP_MINUTES (the longest FBS
#   takes to commit a marked change), which is after the window's ``until`` (never later than FBS's
#   clock less the overlap when the window opened, before anything was read). The next window's
#   ``since`` is at most that ``until`` (``delta.advance`` moves an agency's mark to the run's
#   ``until``, and only once its municipality is done; otherwise the mark stays older), and the
#   delta takes ``updated_at > since``: the next run looks at the liability and compares it then.
#   A later run always compares it (its ``first_run_id`` is not that run's), so the first run whose
#   ``until`` passes the change compares it (U1-U4). A sweep (debitor_sweep) has a window with an
#   ``until`` too and advances the marks the same way; what FBS changes without marking it is the
#   next sweep's, as a change a second after the comparison always was.
# * a retried task (a killed build_and_send, send_changes) is the same run with the same window:
#   what its first try sent was read after the window opened, so the same holds. A claim sent
#   again by a retry with content changed since its first try (``outbox._record_changed``: its
#   source_print is then NULL) is not fresh and is compared; so is a claim whose increase,
#   cancellation or renewal (rejections' next generation) this run recorded (generation or version
#   moved on), and every claim another run created (a resend of an older run's claim included).
# * the one thing the creation does not keep is FBS's repayment mark (U3): a liability marked for
#   repayment before it was sent is found by one narrow look-up on FBS (``_REPAYMENT_MARKED``) and
#   compared as before.
_FRESH = ("CASE WHEN first_run_id = :this_run AND generation = 0 AND current_version = 1 AND debtor_status = 'live' "
          "AND debtor_amount IS NOT NULL AND identity_print IS NOT NULL AND source_print IS NOT NULL "
          "AND refund_requested_at IS NULL AND notice IS NULL THEN 1 ELSE 0 END")
_REPAYMENT_MARKED = in_query("SELECT liability_id FROM liability WHERE liability_id IN :ids "
                             "AND refund_requested_at IS NOT NULL", "ids")


def sent_claim_pages(stores: Stores, page_size: int = 5000, *, agencies: Collection[str] | None = None,
                     changed: Delta | None = None, this_run: str | None = None,
                     skipped: Counter | None = None) -> Iterator[tuple[list, dict]]:
    """Every claim the debtor system accepted (its ledger row), page by page in liability order,
    with FBS's state of those liabilities now (``claim_state.sql``, by liability id; a liability
    gone from FBS is absent). ``agencies`` (issue 18: one unit's): only the claims recorded for
    those agencies (``claim.agency_id``, in the query), None every agency. ``this_run``: leave out
    the claims that run created and sent (``_FRESH``: not read from FBS again), counted per agency
    in ``skipped``."""
    only = agency_list(agencies)
    state_query = in_query(sql_file("queries/claim_state.sql"), "ids")
    fresh = _FRESH if this_run is not None else "0"
    columns = _SENT_CLAIMS.replace("{fresh}", fresh)
    run_params = {"this_run": this_run} if this_run is not None else {}

    def with_states(claims: list) -> tuple[list, dict]:
        """The page without the fresh claims FBS has not marked for repayment (U3), and FBS's
        state of the rest: both read over one FBS connection."""
        with stores.fbs.connect() as conn:
            new = [c.liability_id for c in claims if c.fresh] if this_run is not None else []
            if new:
                marked = {int(r[0]) for r in conn.execute(_REPAYMENT_MARKED, {"ids": new})}
                if skipped is not None:
                    skipped.update(c.agency_id for c in claims if c.fresh and c.liability_id not in marked)
                claims = [c for c in claims if not c.fresh or c.liability_id in marked]
            if not claims:
                return claims, {}
            states = {r.liability_id: r for r in conn.execute(state_query, {"ids": [c.liability_id for c in claims]})}
        return claims, states

    whole = only
    if changed is not None:   # the incremental run: the delta's claims, and its agencies looked at whole
        whole = sorted(set(changed.whole) & set(only)) if only is not None else list(changed.whole)
        for part in chunked(changed.liability_ids, page_size):
            query = text(f"{columns} WHERE state = 'accepted' AND liability_id IN ({id_list(part)}) "  # noqa: S608 - integers
                         "ORDER BY liability_id")
            with stores.ledger.connect() as conn:
                claims = [c for c in conn.execute(query, run_params).all()
                          if (only is None or c.agency_id in only) and c.agency_id not in whole]
            if claims:
                page = with_states(claims)
                if page[0]:
                    yield page
        if not whole:
            return
    claims_query = for_agencies(columns + " WHERE state = 'accepted'{agencies} AND liability_id > :last "
                                "ORDER BY liability_id LIMIT :n", whole, "agency_id IN :agencies")
    for claims in keyset_pages(stores.ledger, claims_query, "liability_id", -1,
                               {"n": page_size, **agency_params(whole), **run_params}, after="last"):
        page = with_states(claims)
        if page[0]:
            yield page


def detect_changes(stores: Stores, run_id: str, page_size: int = 5000, today: dt.date | None = None, *,
                   agencies: Collection[str] | None = None, changed: Delta | None = None) -> Counter:
    """Compare every accepted claim with FBS and record the changes as outbox messages.
    Returns counts (agency, 'change_recorded', kind). ``agencies`` (issue 18: one unit's, a
    municipality at its debtor system): only the claims recorded for those agencies; None every
    agency. ``changed`` (issue 19, the incremental run's delta): only the claims of the liabilities
    FBS marked changed, and every claim of the agencies looked at whole; None every claim. The claims
    this run (``run_id``) created and sent are not compared again (``_FRESH``: why nothing is lost)."""
    ctx = _Context(stores, run_id, fingerprints.verify_key(stores.ledger), today or dt.date.today())
    counts: Counter = Counter()
    skipped: Counter = Counter()    # the claims this run created and sent: not compared again (``_FRESH``)
    for claims, states in sent_claim_pages(stores, page_size, agencies=agencies, changed=changed, this_run=run_id,
                                           skipped=skipped):
        updates, tasks = _compare_page(ctx, claims, states)
        if tasks:
            with stores.fbs.begin() as conn:     # FBS first: idempotent by task id
                new = raise_tasks(conn, tasks)
            if new:
                log.warning("%d staff task(s) raised about sent claims changed in FBS in a way that is not sent on", new)
        if updates:
            _record(stores.ledger, run_id, updates, ctx.secret)
            for u in updates:
                for m in u.messages:
                    counts[(u.claim.agency_id, RECORDED, m.kind)] += 1
    if skipped:
        log.info("%d claim(s) this run created and sent were not compared with FBS again: built from what this run "
                 "read, a change FBS makes since is in the next run's window", sum(skipped.values()))
    if counts:
        log.info("changes recorded: %s", dict(Counter({k: n for (_, _, k), n in counts.items()})))
    return counts


def _notice(u: Update, tasks: list[StaffTask], key: str, task: StaffTask, event: str) -> None:
    """Tell staff once about a change that is not sent on: again only when it is a different one."""
    u.notice = key[:120]
    if (u.claim.notice or "").strip() != u.notice:
        tasks.append(task)
        u.events.append(("change_not_sent", event))


def _compare_page(ctx: _Context, claims, states: dict):
    updates: list[Update] = []
    tasks: list[StaffTask] = []
    rebuild: dict[int, tuple[Update, str, bool]] = {}
    paid = _payments(ctx.stores.fbs, [c.liability_id for c in claims
                                      if (s := states.get(c.liability_id)) is not None and s.status == "closed"
                                      and c.fbs_status != "closed"])
    cancels = _last_cancellations(ctx.stores.ledger, [c.liability_id for c in claims if c.debtor_status == "cancelled"
                                                      and (s := states.get(c.liability_id)) is not None
                                                      and s.status == "open"])
    orphaned = _orphaned(ctx.stores.fbs, [c.liability_id for c in claims if c.liability_id not in states])
    for c in claims:
        st = states.get(c.liability_id)
        u = Update(c)
        updates.append(u)
        if st is None and c.liability_id in orphaned:
            patron_id, agency_known = orphaned[c.liability_id]
            log.error("liability %s (claim %s): its patron %s or its agency is no longer in FBS; nothing is sent about "
                      "it", c.liability_id, c.fordring_id, patron_id)
            if agency_known:      # a task names the agency (FBS's foreign key): without it, the log says it
                _notice(u, tasks, f"orphaned:{patron_id}", StaffTask(
                    f"CHG-orphaned-{c.liability_id}-{ctx.run_id[:8]}", c.agency_id, None, None, c.liability_id,
                    TASK_KIND, orphaned_message(c.fordring_id, patron_id)),
                    f"the patron {patron_id} is no longer in FBS; nothing sent, staff task")
            continue
        if st is None:
            if c.fbs_status != "missing":
                u.values["fbs_status"] = "missing"
                u.events.append(("fbs_liability_missing", "the liability is no longer in FBS; nothing is sent"))
                log.error("liability %s (claim %s) is no longer in FBS; nothing is sent about it", c.liability_id,
                          c.fordring_id)
            continue
        unreadable, now_source = _read_state(st, ctx.secret)
        if unreadable is not None:
            number = shown(st.number, 20)
            _notice(u, tasks, f"unreadable:{unreadable}", ctx.task(st, "unreadable", unreadable_message(number, unreadable)),
                    f"FBS values cannot be read ({unreadable}); nothing sent, staff task")
            continue
        amount = exact_amount(st.amount)
        refund = as_datetime(st.refund_requested_at)
        if c.debtor_amount is None:
            # Recorded before 0004: what the debtor system holds was not kept. FBS's amount and
            # repayment mark now are the baseline; its status is compared as usual (a cancellation
            # or an amount of 0 still goes, a negative amount is still a task).
            told, live, told_refund = amount, True, refund
            u.values.update(debtor_amount=amount, debtor_status="live", refund_requested_at=refund,
                            fbs_status=st.status)
            u.events.append(("change_baseline", "what the debtor system holds was not recorded (ledger before "
                                                "0004): FBS's amount now is the baseline"))
        else:
            told, live, told_refund = as_amount(c.debtor_amount), c.debtor_status == "live", \
                as_datetime(c.refund_requested_at)
            if st.status != c.fbs_status:
                u.values["fbs_status"] = st.status
                if live and st.status == "closed" and paid.get(c.liability_id, Decimal(0)) < told:
                    tasks.append(ctx.task(st, "closed", closed_message(st.number)))
                    u.events.append(("fbs_closed", "closed in FBS without being reported paid; nothing sent (P2), "
                                                   "staff task"))
                elif live and st.status == "sent_to_collection":
                    tasks.append(ctx.task(st, "collection", collection_message(st.number)))
                    u.events.append(("fbs_sent_to_collection", "sent to collection in FBS after the transfer; "
                                                               "nothing sent, staff task"))
        notice = None
        if refund is not None and refund != told_refund:
            u.values["refund_requested_at"] = refund
            if not live:
                tasks.append(ctx.task(st, "refund", refund_cancelled_message(st.number)))
                u.events.append(("change_not_sent", "marked for repayment after the claim was cancelled at the "
                                                    "debtor system; nothing sent, staff task"))
            elif st.kind != "compensation":
                tasks.append(ctx.task(st, "refund", fee_refund_message(st.number)))
                u.events.append(("change_not_sent", "a fee marked for repayment: only compensations (U3); "
                                                    "staff task"))
            elif told_refund is not None:     # one repayment per claim: a new mark is for staff to settle
                tasks.append(ctx.task(st, "refund", refund_again_message(st.number)))
                u.events.append(("change_not_sent", "marked for repayment again; the first repayment was sent; "
                                                    "staff task"))
            else:
                u.messages.append(Planned(REPAYMENT, c.fordring_id, told,
                                          f"repayment of {told} marked in FBS {refund:%Y-%m-%d} (U3)"))
        generation = c.generation
        if live and st.status == "cancelled":
            u.messages.append(Planned(CANCEL, c.fordring_id, None, "cancelled in FBS (U1, U4)"))
            u.values["debtor_status"] = "cancelled"
        elif live and amount is not None and amount < 0:
            notice = f"negative:{amount}"
            _notice(u, tasks, notice, ctx.task(st, "negative", negative_message(st.number, amount)),
                    f"negative amount {amount} in FBS: nothing sent (U1), staff task")
        elif live and amount == 0:
            u.messages.append(Planned(CANCEL, c.fordring_id, None, f"amount {told} -> 0.00 in FBS: cancelled (U1)"))
            u.values["debtor_status"] = "cancelled"
        elif live and amount < told:
            u.messages.append(Planned(WRITE_DOWN, c.fordring_id, amount, f"write-down {told} -> {amount} (U1)"))
            u.values["debtor_amount"] = amount
        elif live and amount > told and st.status != "open":
            notice = f"increase:{st.status}:{amount}"
            _notice(u, tasks, notice, ctx.task(st, "increase", increase_not_open_message(st.number, st.status)),
                    f"amount raised {told} -> {amount} while {st.status} in FBS: no new claim, staff task")
        elif live and amount > told:
            generation += 1
            new_id = fordring_id(c.agency_id, c.liability_id, generation)
            u.messages.append(Planned(INCREASE_CANCEL, c.fordring_id, None,
                                      f"increase {told} -> {amount}: the claim is cancelled (U1)"))
            u.messages.append(Planned(INCREASE_CREATE, new_id, amount,
                                      f"increase {told} -> {amount}: new claim {new_id} (U1)", depends_on_previous=True))
            u.values.update(debtor_amount=amount, generation=generation, fordring_id=new_id, **NEW_CLAIM_SUMS)
        elif not live and st.status == "open" and amount is not None and amount > 0:
            generation += 1
            new_id = fordring_id(c.agency_id, c.liability_id, generation)
            # Only once the cancellation is accepted: if it was rejected, the claim is still live there.
            u.messages.append(Planned(INCREASE_CREATE, new_id, amount,
                                      f"open again in FBS after the cancellation: new claim {new_id} (U1)",
                                      depends_on=cancels.get(c.liability_id)))
            u.values.update(debtor_amount=amount, generation=generation, fordring_id=new_id, debtor_status="live",
                            **NEW_CLAIM_SUMS)
        if now_source != (c.source_print or "").strip():
            if not live or any(m.kind == CANCEL for m in u.messages):
                u.values["source_print"] = now_source   # a cancelled claim has no parties to fix
            else:   # a new claim (increase) carries the parties as they are: no identity change for it
                rebuild[c.liability_id] = (u, now_source, not any(m.kind == INCREASE_CREATE for m in u.messages))
        if notice is None and c.liability_id not in rebuild and (c.notice or "").strip():
            u.notice = None                          # the situation is over
    if rebuild:
        tasks += _compare_parties(ctx, rebuild)
    return [u for u in updates if u.messages or u.values or u.events or u.notice != _stripped(u.claim.notice)], tasks


def _stripped(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _last_cancellations(ledger_engine: Engine, liability_ids: list[int]) -> dict[int, str]:
    """The newest cancellation message of each liability (a reopened claim waits for it)."""
    if not liability_ids:
        return {}
    query = in_query("SELECT liability_id, message_key, version FROM outbox WHERE change_kind IN ('cancel', "
                     "'increase_cancel') AND liability_id IN :ids", "ids")
    newest: dict[int, tuple[int, str]] = {}
    with ledger_engine.connect() as conn:
        for r in conn.execute(query, {"ids": liability_ids}):
            if r.liability_id not in newest or r.version > newest[r.liability_id][0]:
                newest[r.liability_id] = (r.version, r.message_key)
    return {lid: key for lid, (_, key) in newest.items()}


def _compare_parties(ctx: _Context, rebuild: dict[int, tuple[Update, str, bool]]) -> list[StaffTask]:
    """Rebuild the parties of claims whose source fields changed; an identity change where the
    parties differ from what was told (U2)."""
    tasks: list[StaffTask] = []
    for row in claim_stream.claim_rows(ctx.stores.fbs, sorted(rebuild), ctx.today):
        u, now_source, send = rebuild[row.liability_id]
        c = u.claim
        told = as_amount(u.values.get("debtor_amount", c.debtor_amount))
        # read like a new claim's row (a date that cannot be read is a Problem, not an error for the page)
        built = claim_stream.build_row(claim_stream.RowWith(row, amount=told if told and told > 0 else Decimal("0.01")),
                                       ctx.replacement_registry(), ctx.today)
        if built.problem or built.new_replacement_cprs:
            why = (f"{built.problem.rule}: {built.problem.message}" if built.problem
                   else "I1: the debtor has neither CPR nor replacement CPR any more")
            task = StaffTask(f"CHG-identity-{row.liability_id}-{ctx.run_id[:8]}", row.agency_id, row.b_branch_id,
                             row.b_patron_id, row.liability_id, TASK_KIND, identity_blocked_message(row.number, why))
            _notice(u, tasks, f"identity:{now_source[:32]}", task,
                    f"parties changed but do not build ({why[:300]}); staff task")
            continue
        account = built.account
        now_identity = fingerprints.identity_print(account.identification.id_kind, account.identification.number,
                                                   account.responsible.id_kind, account.responsible.number, ctx.secret)
        u.values["source_print"] = now_source
        if c.identity_print is None or not send:
            u.values["identity_print"] = now_identity       # a baseline, or a new claim carries them
        elif now_identity != c.identity_print.strip():
            u.values["identity_print"] = now_identity
            u.messages.insert(0, Planned(IDENTITY, c.fordring_id, None,
                                         f"identification {account.identification.masked}, responsible "
                                         f"{account.responsible.masked} (U2)", now_identity))
    return tasks


def _payments(fbs: Engine, liability_ids: list[int]) -> dict[int, Decimal]:
    """What FBS shows as paid or written off through the debtor system (``fbs.payment``)."""
    if not liability_ids:
        return {}
    query = in_query("SELECT liability_id, SUM(CASE WHEN kind = 'reversal' THEN -amount ELSE amount END) AS paid "
                     "FROM payment WHERE kind IN ('payment', 'write_off', 'reversal') AND liability_id IN :ids "
                     "GROUP BY liability_id", "ids")
    with fbs.connect() as conn:
        return {r.liability_id: as_amount(r.paid) or Decimal(0) for r in conn.execute(query, {"ids": liability_ids})}


def _record(ledger_engine: Engine, run_id: str, updates: list[Update], secret: bytes) -> None:
    """One transaction: the messages (pending, versions after the claim's newest), the claim's new
    'what the debtor system is told', and the audit trail."""

    at = ledger.now()
    with ledger_engine.begin() as conn:
        outbox, claims, events = [], [], []
        for u in updates:
            c = u.claim
            version = c.current_version
            previous_key = None
            for m in u.messages:
                version += 1
                key = message_key(c.liability_id, version)
                outbox.append({"k": key, "l": c.liability_id, "v": version, "o": OPERATION_OF[m.kind],
                               "f": m.fordring_id, "p": m.fingerprint or fingerprints.keyed(
                                   "change", m.kind, m.fordring_id, m.amount, secret=secret), "r": run_id, "t": at,
                               "ck": m.kind,
                               "m": m.amount,
                               "d": previous_key if m.depends_on_previous else m.depends_on})
                events.append((c.liability_id, RECORDED, key, f"{m.kind}: {m.detail}"))
                previous_key = key
            events += [(c.liability_id, kind, None, detail) for kind, detail in u.events]
            values = {**u.values, "current_version": version, "notice": u.notice}
            claims.append((c.liability_id, values))
        if outbox:
            conn.execute(text("INSERT INTO outbox (message_key, liability_id, version, operation, fordring_id, "
                              "fingerprint, state, attempts, run_id, last_run_id, created_at, change_kind, amount, "
                              "depends_on) VALUES (:k, :l, :v, :o, :f, :p, 'pending', 0, :r, :r, :t, :ck, :m, :d)"),
                         outbox)
        by_columns: dict[tuple, list[dict]] = {}
        for lid, values in claims:
            cols = tuple(sorted(values))
            params = {k: v for k, v in values.items()}
            by_columns.setdefault(cols, []).append({**params, "lid": lid, "t": at})
        for cols, params in by_columns.items():
            sets = ", ".join(f"{col} = :{col}" for col in cols)
            conn.execute(text(f"UPDATE claim SET {sets}, checked_at = :t, updated_at = :t "  # noqa: S608 - column names from code
                              "WHERE liability_id = :lid"), params)
        # what the debtor system holds changed: the claim's balance and settlement follow (P2)
        moved = [lid for lid, values in claims if {"debtor_amount", "debtor_status"} & set(values)]
        if moved:
            update_settlement(conn, moved)
        add_events(conn, events, run_id, at)
