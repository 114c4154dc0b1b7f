"""debitor_payments' task bodies (see ``tasks`` for the conventions: plain arguments, keys and
counts back, the stores opened per task).

The municipality is the unit of isolation (``transfer.units``): ``payment_units`` sorts the
waiting files by municipality (``payments.apply.owner``: an inbound-service file by the CVR in its
name, a delivered file by its movements' claims in the ledger), ``ingest_payments`` runs once per
municipality with files (a mapped task, labelled by the municipality), under that municipality's
``payments`` lock, and fails alone; ``ingest_rest`` then takes, with every lock held, the files of
no single municipality (several, or none known: applied whole, never split, never lost) and
writes back what is left; ``reconcile_payments`` closes the run (failed, naming the municipalities,
when one's step failed), and ``failed_municipalities``, the last task, makes the run red then.

A step marks itself in the run's counts (category ``payments_failed``, rule ``unfinished``) when it
starts and clears that when it ends well; a failure replaces it with the exception's type. So a
task killed outright (no handler ran) is still named at the end.
"""

from __future__ import annotations

import logging

from airflow.sdk.exceptions import AirflowFailException

from fbs_debitor.airflow import notifications
from fbs_debitor.airflow.tasks import task_stores
from fbs_debitor.core import ledger
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import inbox
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.transfer.summary import format_payments_run
from fbs_debitor.transfer.units import Unit

log = logging.getLogger(__name__)


# --- debitor_payments ----------------------------------------------------------------------------

def payment_units(run_id: str) -> list[dict]:
    """The municipalities with payment files waiting, as ``Unit.as_dict()`` plus ``files`` (their
    names, oldest first): what ``ingest_payments`` is mapped over. Empty when no file is any single
    municipality's (the mapped task is then skipped; ``ingest_rest`` and ``reconcile`` still run).
    Settings and the inbox's layout are checked first: a problem there fails this task, the run's
    error. What is in the inbox and is not a payment file is reported here."""
    with task_stores(run_id, "payments: sorting the inbox") as stores:
        payments.mark_failed(stores.ledger, run_id, payments.SORTING)
        try:
            box = inbox.open_inbox()
            plan = payments.sort_inbox(stores, box, run_id)
        except BaseException as exc:
            try:
                payments.mark_failed(stores.ledger, run_id, payments.SORTING, type(exc).__name__)
            except Exception as also:
                log.error("the failure of sorting the inbox could not be recorded: %s", type(also).__name__)
            raise
        payments.clear_failed(stores.ledger, run_id, payments.SORTING)
    for unit, names in plan:
        log.info("municipality %s: %d payment file(s) waiting", unit.label, len(names))
    return [{**unit.as_dict(), "files": names} for unit, names in plan]


def ingest_payments(run_id: str, unit: dict) -> dict[str, int]:
    """One municipality's files, held movements and write-back, under its own ``payments`` lock,
    with its run counts (only its agencies'). Anything unexpected fails this mapped task only,
    recorded first (``payments_failed``), the other municipalities go on."""
    u = Unit.of(unit)
    with task_stores(run_id, f"payments of municipality {u.label}") as stores:
        payments.mark_failed(stores.ledger, run_id, u)
        try:
            box = inbox.open_inbox()
            done = payments.ingest_unit(stores, box, run_id, u, unit.get("files"))
        except BaseException as exc:
            try:
                payments.mark_failed(stores.ledger, run_id, u, type(exc).__name__)
                payments.record_unit_counts(stores.ledger, run_id, u, done=False)
            except Exception as also:     # the ledger itself is gone: the mark 'unfinished' stays
                log.error("the failure of municipality %s could not be recorded: %s", u.label, type(also).__name__)
            raise
        counts = payments.record_unit_counts(stores.ledger, run_id, u)
    log.info("payments of municipality %s from %s: %s", u.label, box.describe(), dict(sorted(done.items())))
    files = {k: n for k, n in done.items() if k.startswith("files_")}
    return {**files, **payments.totals(counts)}


def ingest_rest(run_id: str) -> dict[str, int]:
    """The run-level rest (after every municipality, whatever became of them): files of no single
    municipality, every held movement again, everything not yet written back; then all of the
    run's counts from the ledger."""
    with task_stores(run_id, "payments: run-level rest") as stores:
        payments.mark_failed(stores.ledger, run_id, None)
        try:
            box = inbox.open_inbox()
            done = payments.ingest_rest(stores, box, run_id)
        except BaseException as exc:
            try:
                payments.mark_failed(stores.ledger, run_id, None, type(exc).__name__)
                payments.record_run_counts(stores.ledger, run_id)
            except Exception as also:
                log.error("the failure of the run-level step could not be recorded: %s", type(also).__name__)
            raise
        payments.clear_failed(stores.ledger, run_id, None)
        counts = payments.record_run_counts(stores.ledger, run_id)
    log.info("payments, run-level rest, from %s: %s", box.describe(), dict(sorted(done.items())))
    return payments.totals(counts)


def reconcile_payments(run_id: str) -> dict[str, int]:
    """The run's reconciliation report (CSV under var/reports/payments/), and the run closed:
    failed, naming them, when a municipality's step (or the run-level one) failed."""
    with task_stores(run_id, "reconcile") as stores:
        report = payment_reconciliation.reconcile_payments(stores)
        path = report.write_csv(payment_reconciliation.report_path(run_id))
        per_agency = payment_reconciliation.differences_per_agency(stores, report)
        log.info("%s\nreport: %s", report.summary(), path)
        failed = payments.failed_units(stores.ledger, stores.fbs, run_id)
        if failed:
            ledger.finish_run(stores.ledger, run_id, "failed", failure_message(failed))
        else:
            ledger.finish_run(stores.ledger, run_id, "success")
        log.info("run summary\n%s", format_payments_run(ledger.get_run(stores.ledger, run_id),
                                                        ledger.run_counts(stores.ledger, run_id), stores.fbs))
    return {"differences": len(report.differences), "held": report.movements["held"],
            # agency -> count ("" for differences no agency's claim explains): keys and counts only
            "differences_per_agency": {a or "": n for a, n in sorted(per_agency.items(), key=lambda i: i[0] or "")}}


def failure_message(failed: list[str]) -> str:
    return (f"payments failed for {'; '.join(failed)} (each task's log has the error; every other municipality's "
            "payments were done, and their files wait in the inbox for the next run)")


def payment_differences(run_id: str, result: dict[str, int]) -> int:
    with task_stores() as stores:
        return notifications.payment_differences(stores.ledger, run_id, result)


def failed_municipalities(run_id: str) -> list[str]:
    """Last: fail (the run red, its one alert) when a municipality's step, or the run-level one,
    failed or never finished, naming them: ``municipality 29189404 Testby (KMD_OPUS): FilesLeft``."""
    with task_stores() as stores:
        failed = payments.failed_units(stores.ledger, stores.fbs, run_id)
    if failed:
        raise AirflowFailException(failure_message(failed))
    return []
