"""Staff tasks in FBS for what delivery could not do (M1): never a silent drop.

* ``delivery_rejected``: the debtor system rejected a claim or a change, in its receipt or by
  refusing the whole call (HTTP 4xx, a SOAP Client fault). The task says why in plain Danish and
  English and what to do. A rejected claim is not sent again under its FordringID; once its data
  changes (or an operator requeues it) it goes again under the next generation
  (``delivery.rejections``), and then its task is resolved here (``resolve_superseded_tasks``).
* ``delivery_blocked``: an unconfirmed claim cannot be sent again as it was (the liability moved
  agency, vanished from FBS, or no longer builds): it is never sent under another key; staff fix
  the data, and it goes with the next run.
* ``delivery_delayed``: a claim has had no answer after many attempts (an outage or a technical
  fault that retries did not cure); the integration team is alerted by the failing run, staff by
  the task, since the citizen's claim is not at the debtor system yet.

Tasks are raised from the ledger's outbox, set-based, after sending: FBS first (idempotent by
``task_id``), then the outbox remembers the task, so a crash in between raises nothing twice.
Tasks are resolved the other way round: the ledger first says the rejection was superseded
(``outbox.superseded_by``), then FBS's task gets ``resolved_at``, then the outbox remembers that
(``task_resolved_at``); a crash in between is finished by the next ``raise_delivery_tasks``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

from sqlalchemy import text

from fbs_debitor.claims.model import StaffTask
from fbs_debitor.claims.writeback import raise_tasks
from fbs_debitor.core import ledger
from fbs_debitor.core.db import in_query, keyset_pages
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.ledger import add_events
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery.outbox import NOT_REBUILDABLE, agency_list, agency_params, for_agencies, rule_of

log = logging.getLogger(__name__)

REJECTED_KIND = "delivery_rejected"
BLOCKED_KIND = "delivery_blocked"
DELAYED_KIND = "delivery_delayed"
VENDOR_NAMES = {"KMD_OPUS": "KMD OPUS Debitor", "PRISME": "Fujitsu Prisme", "EG": "EG"}

# What a rejection code means and what staff do about it, Danish / English, per rule.
REASONS = {
    "I3": ("Debitorsystemet modtager ikke fordringer på erstatningspersonnummer. Afklar med kommunens "
           "debitorafdeling, om kravet skal oprettes manuelt, eller registrér borgerens rigtige CPR-nummer.",
           "The debtor system does not accept claims on a replacement CPR number (I3). Agree with the "
           "municipality's debtor office whether to create the claim by hand, or register the citizen's real CPR."),
    "M3": ("Kravtypen er ikke mappet i debitorsystemet, så alle krav af denne type afvises. Kommunens "
           "debitorsystem-ansvarlige skal mappe kravtypen.",
           "The claim type is not mapped in the debtor system, so every claim of this type fails (M3). The "
           "municipality's debtor-system administrator must map it."),
}
# A whole call refused (HTTP 4xx other than 408/429, a SOAP Client fault): nothing about the claim's data.
CALL_REFUSED = ("Serviceplatformen eller debitorsystemet afviste hele kaldet, så fordringen er ikke oprettet. "
                "Kontakt kommunens integrationsansvarlige; når årsagen er rettet, sendes den igen.",
                "Serviceplatformen or the debtor system refused the whole call, so the claim was not created. "
                "Contact the municipality's integration team; once the cause is fixed it is sent again.")
CHANGE_KINDS_DA = {"cancel": "annullering", "increase_cancel": "annullering (forhøjelse)", "write_down": "nedskrivning",
                   "identity": "ændring af CPR/CVR", "repayment": "tilbagebetaling",
                   "increase_create": "ny fordring (forhøjelse)"}
CREATION_KINDS = (None, "create", "recreate")     # a claim's creation, the first or after a rejection
CHANGE_GENERIC = ("Debitorsystemet afviste ændringen, så kravet dér svarer ikke længere til FBS. Afklar med kommunens "
                  "debitorafdeling, hvordan kravet skal rettes i debitorsystemet.",
                  "The debtor system rejected the change, so its claim no longer matches FBS. Agree with the "
                  "municipality's debtor office how to correct the claim in the debtor system.")
GENERIC = ("Debitorsystemet afviste fordringen. Se begrundelsen og ret data, eller kontakt kommunens "
           "debitorafdeling.",
           "The debtor system rejected the claim. See the reason, correct the data or contact the "
           "municipality's debtor office.")


def delayed_after_attempts() -> int:
    """Attempts without an answer after which staff get a task (default 24: a day of hourly runs)."""
    return int(os.environ.get("FBS_DEBITOR_DELAYED_TASK_ATTEMPTS", "24"))


def _reason(code: str | None, default: tuple[str, str]) -> tuple[str, str]:
    if code and (code.startswith("HTTP_") or code in ("SOAP_CLIENT", "CALL_REFUSED")):
        return CALL_REFUSED
    return REASONS.get(rule_of(code), default)


def rejection_message(number: str, fordring_id: str, vendor: str | None, code: str | None, reason: str | None,
                      change_kind: str | None = None) -> str:
    system = VENDOR_NAMES.get(vendor or "", vendor or "debitorsystemet")
    said = f" ({mask_cprs_in(reason)[:300]})" if reason else ""
    if change_kind not in CREATION_KINDS:
        da, en = _reason(code, CHANGE_GENERIC)
        return (f"Ændringen af mellemværende {number} ({CHANGE_KINDS_DA.get(change_kind, change_kind)}, fordring "
                f"{fordring_id}) blev afvist af {system}: {code}{said}. {da} / The change of liability {number} "
                f"({change_kind}, claim {fordring_id}) was rejected by {system}: {code}. {en}")
    da, en = _reason(code, GENERIC)
    return (f"Mellemværende {number} (fordring {fordring_id}) blev afvist af {system}: {code}{said}. {da} / "
            f"Liability {number} (claim {fordring_id}) was rejected by {system}: {code}. {en}")


def delayed_message(number: str, fordring_id: str, attempts: int, error: str | None) -> str:
    why = f" ({mask_cprs_in(error)[:300]})" if error else ""
    return (f"Mellemværende {number} (fordring {fordring_id}) er endnu ikke bekræftet modtaget af "
            f"debitorsystemet efter {attempts} forsøg{why}. Integrationen prøver igen hver time; kontakt "
            f"kommunens integrationsansvarlige. / Liability {number} (claim {fordring_id}) has not been "
            f"confirmed by the debtor system after {attempts} attempts; the integration keeps trying every hour. "
            "Contact the municipality's integration team.")


def blocked_message(number: str, fordring_id: str, error: str | None) -> str:
    why = f" ({mask_cprs_in(error)[:300]})" if error else ""
    return (f"Mellemværende {number} (fordring {fordring_id}) er sendt til debitorsystemet uden bekræftelse og kan "
            f"ikke sendes igen, som det var{why}. Ret data i FBS (eller kontakt kommunens integrationsansvarlige); "
            f"så sendes det ved næste kørsel. / Liability {number} (claim {fordring_id}) was sent without a "
            "confirmation and cannot be sent again as it was; correct the data in FBS (or contact the "
            "integration team) and it goes with the next run.")


def raise_delivery_tasks(stores: Stores, run_id: str, chunk: int = 1000) -> int:
    """Tasks for every rejected message and every long-unconfirmed one without a task yet (a
    rejection already sent again needs none); first, the tasks of rejections sent again since are
    resolved (``resolve_superseded_tasks``: finishes what a crash left). Returns how many tasks
    are new in FBS."""
    resolve_superseded_tasks(stores, run_id, chunk)
    threshold = delayed_after_attempts()
    query = text("SELECT message_key, liability_id, fordring_id, state, error_code, last_error, attempts, change_kind "
                 "FROM outbox "
                 "WHERE ((state = 'rejected' AND superseded_by IS NULL AND (task_id IS NULL OR task_id NOT LIKE 'REJ-%')) "
                 "OR (state IN ('pending', 'sent') AND error_code = :nr AND (task_id IS NULL OR task_id LIKE 'DLY-%')) "
                 "OR (state IN ('pending', 'sent') AND attempts >= :n AND task_id IS NULL)) "
                 "AND message_key > :last ORDER BY message_key LIMIT :c")
    facts = in_query("SELECT l.liability_id, l.number, l.agency_id, l.patron_id, p.branch_id, a.debtor_vendor "
                     "FROM liability l JOIN patron p ON p.patron_id = l.patron_id "
                     "JOIN agency a ON a.agency_id = l.agency_id WHERE l.liability_id IN :ids", "ids")
    new = 0
    for rows in keyset_pages(stores.ledger, query, "message_key", "", {"n": threshold, "nr": NOT_REBUILDABLE, "c": chunk},
                             after="last"):
        with stores.fbs.connect() as conn:
            known = {r.liability_id: r for r in conn.execute(facts, {"ids": [r.liability_id for r in rows]})}
        tasks, raised = [], []
        for r in rows:
            f = known.get(r.liability_id)
            if f is None:
                log.error("message %s: liability %s is no longer in FBS; no task can be raised there",
                          r.message_key, r.liability_id)
                continue
            if r.state == "rejected":
                kind, task_id = REJECTED_KIND, f"REJ-{r.message_key}"
                message = rejection_message(f.number, r.fordring_id, f.debtor_vendor, r.error_code, r.last_error,
                                            r.change_kind)
            elif r.error_code == NOT_REBUILDABLE:
                kind, task_id = BLOCKED_KIND, f"BLK-{r.message_key}"
                message = blocked_message(f.number, r.fordring_id, r.last_error)
            else:
                kind, task_id = DELAYED_KIND, f"DLY-{r.message_key}"
                message = delayed_message(f.number, r.fordring_id, r.attempts, r.last_error)
            tasks.append(StaffTask(task_id, f.agency_id, f.branch_id, f.patron_id, r.liability_id, kind, message))
            raised.append((r.message_key, r.liability_id, task_id, kind))
        if tasks:
            with stores.fbs.begin() as conn:
                new += raise_tasks(conn, tasks)
            _remember(stores, run_id, raised)
    return new


def _remember(stores: Stores, run_id: str, raised: list[tuple[str, int, str, str]]) -> None:
    at = ledger.now()
    with stores.ledger.begin() as conn:
        conn.execute(text("UPDATE outbox SET task_id = :t WHERE message_key = :k"),
                     [{"t": task_id, "k": key} for key, _, task_id, _ in raised])
        add_events(conn, [(lid, "task_raised", key, f"{kind} task {task_id} in FBS") for key, lid, task_id, kind in raised],
                run_id, at)


def resolve_superseded_tasks(stores: Stores, run_id: str | None, chunk: int = 1000, *,
                             agencies: Collection[str] | None = None) -> int:
    """The staff tasks of rejected claims that went again under a new FordringID
    (``outbox.superseded_by``) resolved in FBS, then remembered in the outbox
    (``task_resolved_at``) with an event (M2). Idempotent: a crash in between is finished by the
    next call. Returns how many tasks were resolved now. ``agencies`` (issue 18: one unit's): only
    those of claims recorded for those agencies (``claim.agency_id``), None every agency."""
    only = agency_list(agencies)
    query = for_agencies("SELECT message_key, liability_id, task_id, superseded_by FROM outbox WHERE state = 'rejected' "
                         "AND superseded_by IS NOT NULL AND task_resolved_at IS NULL{agencies} AND message_key > :last "
                         "ORDER BY message_key LIMIT :c", only,
                         "liability_id IN (SELECT c.liability_id FROM claim c WHERE c.agency_id IN :agencies)")
    resolve = text("UPDATE task SET resolved_at = :t WHERE task_id = :i AND resolved_at IS NULL")
    resolved = 0
    for rows in keyset_pages(stores.ledger, query, "message_key", "", {"c": chunk, **agency_params(only)},
                             after="last"):
        at = ledger.now()
        done: list[tuple[str, int, str, str]] = []
        with stores.fbs.begin() as conn:
            for r in rows:
                # by the id it was raised under, also when a crash kept the outbox from remembering it
                for task_id in dict.fromkeys([f"REJ-{r.message_key}", *([r.task_id] if r.task_id else [])]):
                    if conn.execute(resolve, {"t": at, "i": task_id}).rowcount:
                        done.append((r.message_key, r.liability_id, task_id, r.superseded_by))
        with stores.ledger.begin() as conn:
            conn.execute(text("UPDATE outbox SET task_resolved_at = :t WHERE message_key = :k"),
                         [{"t": at, "k": r.message_key} for r in rows])
            add_events(conn, [(lid, "task_resolved", key, f"{REJECTED_KIND} task {task_id} resolved in FBS: the "
                               f"claim was sent again as message {new_key}") for key, lid, task_id, new_key in done],
                       run_id or "manual", at)
        resolved += len(done)
    if resolved:
        log.info("%d staff task(s) about rejected claims resolved: the claims were sent again", resolved)
    return resolved
