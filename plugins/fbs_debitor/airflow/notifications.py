"""The run's last word on what it saw: every condition a person must act on becomes an alarm
(``core.alarms``: raised by the run that sees it, resolved by the first run that no longer does),
and only what means the integration could not do its work fails the run.

* staff must fix it in FBS (a held agency, C3; rejections): a STAFF alarm and a warning in the log;
  the task succeeds, the run stays green. The daily digest and the status page say it.
* the integration could not do its work (an agency's work crashed part-way; claims or changes
  unconfirmed after every retry, which is what an outage gives; a payments reconciliation
  difference): an OPERATOR alarm, and the task fails, last and loudly, so the run is red and the
  run's failure alert goes out (``alerts``).

docs/operations.md, "When is a run red", states the rule.
"""

from __future__ import annotations

import logging

from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from fbs_debitor.core.alarms import (
    ACCESS,
    FAILED_AGENCY,
    HELD,
    MARKERS_MISSED,
    OPERATOR,
    PAYMENT_DIFFERENCES,
    REJECTIONS,
    STAFF,
    UNCONFIRMED,
    observe,
)
from fbs_debitor.transfer.run import failure_message

log = logging.getLogger(__name__)

__all__ = ["ACCESS", "FAILED_AGENCY", "HELD", "MARKERS_MISSED", "PAYMENT_DIFFERENCES", "REJECTIONS", "UNCONFIRMED"]


def held_agencies(ledger: Engine, run_id: str, dq: dict) -> list[str]:
    """A STAFF alarm per agency held because its age limit is out of range (C3); a warning naming
    the agency and the setting; the run goes on green (every other agency's work was done)."""
    held = dq.get("blocked_agencies") or {}
    found = {a: f"agency {a} held until the setting is fixed in FBS (C3): {r}" for a, r in sorted(held.items())}
    resolved = observe(ledger, run_id, HELD, STAFF, found)
    for message in found.values():
        log.warning("%s; nothing of this agency is sent meanwhile (staff alarm, daily digest)", message)
    if resolved:
        log.info("no longer held: %s", ", ".join(resolved))
    return sorted(held)


def markers_missed(ledger: Engine, run_id: str, per_agency: dict[str, int]) -> dict[str, int]:
    """The nightly sweep's word on FBS's change markers (issue 19): an OPERATOR alarm per agency
    where it found liabilities FBS had changed without marking them (``updated_at``), which the
    hourly runs therefore did not look at. The sweep sent them, so the run stays green; the alarm
    asks the integration team to have FBS set its markers, and the next sweep that finds nothing
    missed for the agency resolves it."""
    found = {a: f"the nightly sweep found {n} liability(ies) FBS changed without setting updated_at; the hourly "
                f"runs did not see them, the sweep sent them. FBS must mark every change (README: the FBS extract "
                f"contract)" for a, n in per_agency.items()}
    observe(ledger, run_id, MARKERS_MISSED, OPERATOR, found)
    return per_agency


def rejections(ledger: Engine, run_id: str, per_agency: dict[str, int]) -> dict[str, int]:
    """A STAFF alarm per agency with claims or changes rejected in this run (each one is a task in
    FBS); an agency's alarm is resolved by the next run without rejections for it."""
    found = {a: f"{n} claim(s)/change(s) rejected by the debtor system in the last run with rejections; "
                f"each is a task in FBS (M1) for staff to fix" for a, n in per_agency.items()}
    observe(ledger, run_id, REJECTIONS, STAFF, found)
    for agency, n in per_agency.items():
        log.warning("agency %s: %d rejection(s) in this run, each a task in FBS", agency, n)
    return per_agency


REASONS = {"config": "its connection settings are missing or wrong",
           "sts_refused": "the STS refused its token (is the service agreement approved in STS Administration?)",
           "sts_unavailable": "the STS did not answer after every retry"}


def access_held(ledger: Engine, run_id: str, held: dict[str, dict]) -> dict[str, dict]:
    """An OPERATOR alarm per agency of a municipality held for want of working Serviceplatformen
    access (its settings, its agreement, the STS): named with the municipality and the reason; the
    next run that delivers it resolves the alarm."""
    found = {}
    for cvr, entry in held.items():
        why = "; ".join(REASONS.get(r, r) for r in entry["reasons"])
        for agency in entry["agencies"]:
            found[agency] = (f"municipality {cvr} held: no working Serviceplatformen access ({why}); its claims and "
                             f"changes wait for the next run. Check the connection serviceplatformen_{cvr} (or the "
                             "default serviceplatformen) and the run's log")
    observe(ledger, run_id, ACCESS, OPERATOR, found)
    for cvr, entry in held.items():
        log.error("municipality %s held (%s): agencies %s", cvr, ", ".join(entry["reasons"]),
                  ", ".join(entry["agencies"]))
    return held


def failed_agencies(ledger: Engine, run_id: str, failures: dict[str, list[str]],
                    held: dict[str, dict] | None = None, unfinished: list | None = None) -> list[str]:
    """Fail when an agency's work failed part-way (an unexpected error in its batches), its
    municipality's sending did not finish (its mapped task failed for good), or its municipality
    was held for want of access, while every other agency's went on: an OPERATOR alarm per agency,
    and the message names them."""
    found = {a: f"agency {a}: its work failed part-way ({', '.join(types)}); the run's log has the error"
             for a, types in failures.items()}
    for unit in unfinished or []:
        for a in unit.agencies:
            found.setdefault(a, f"agency {a}: the sending of municipality {unit.label} did not finish in this run; "
                                "its task's log has the error (what it did not send goes next run)")
    observe(ledger, run_id, FAILED_AGENCY, OPERATOR, found)
    if failures or held or unfinished:
        raise AirflowFailException(failure_message(failures, held, unfinished))
    return []


def undelivered(ledger: Engine, run_id: str, delivered: dict[str, int]) -> int:
    """Fail when claims of this run are still unconfirmed (an outage of the debtor side): the next
    run sends them again under the same keys, but the integration team must know."""
    n, changes = delivered.get("unconfirmed", 0), delivered.get("changes_unconfirmed", 0)
    message = (f"{n} claim(s) and {changes} change(s) got no answer from the debtor system after every retry; they "
               "are kept in the outbox and sent again under the same keys next run")
    observe(ledger, run_id, UNCONFIRMED, OPERATOR, {None: message} if (n or changes) else {})
    if n or changes:
        raise AirflowFailException(message)
    return 0


def payment_differences(ledger: Engine, run_id: str, result: dict) -> int:
    """Fail when the payments reconciliation found differences; an OPERATOR alarm per agency whose
    claims they concern (the whole deployment for those no claim explains); the report names each."""
    n = result.get("differences") or 0
    per_agency = result.get("differences_per_agency") or ({"": n} if n else {})
    report = f"reports/payments/reconciliation-{run_id}.csv under the shared storage root (FBS_DEBITOR_STORAGE_URL)"
    found = {(a or None): f"payments reconciliation: {k} difference(s) in this agency's claims; see {report}"
             if a else f"payments reconciliation: {k} difference(s) no agency's claim explains; see {report}"
             for a, k in per_agency.items() if k}
    observe(ledger, run_id, PAYMENT_DIFFERENCES, OPERATOR, found)
    if n:
        raise AirflowFailException(f"payments reconciliation: {n} difference(s); see {report}")
    return 0
