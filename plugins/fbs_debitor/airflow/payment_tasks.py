"""debitor_payments' task bodies (see ``tasks`` for the conventions: plain arguments, keys and
counts back, the stores opened per task)."""

from __future__ import annotations

import logging

from fbs_debitor.airflow import notifications
from fbs_debitor.airflow.tasks import task_stores
from fbs_debitor.core import ledger
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import inbox
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.transfer.summary import format_payments_run

log = logging.getLogger(__name__)


# --- debitor_payments ----------------------------------------------------------------------------

def ingest_payments(run_id: str) -> dict[str, int]:
    with task_stores(run_id, "payments") as stores:
        box = inbox.open_inbox()
        done = payments.ingest(stores, box, run_id)
        log.info("payments from %s: %s", box.describe(), dict(sorted(done.items())))
        return payments.totals(payments.record_run_counts(stores.ledger, run_id))


def reconcile_payments(run_id: str) -> dict[str, int]:
    """The run's reconciliation report (CSV under var/reports/payments/), and the run closed."""
    with task_stores(run_id, "reconcile") as stores:
        report = payment_reconciliation.reconcile_payments(stores)
        path = report.write_csv(payment_reconciliation.report_path(run_id))
        per_agency = payment_reconciliation.differences_per_agency(stores, report)
        log.info("%s\nreport: %s", report.summary(), path)
        ledger.finish_run(stores.ledger, run_id, "success")
        log.info("run summary\n%s", format_payments_run(ledger.get_run(stores.ledger, run_id),
                                                        ledger.run_counts(stores.ledger, run_id), stores.fbs))
    return {"differences": len(report.differences), "held": report.movements["held"],
            # agency -> count ("" for differences no agency's claim explains): keys and counts only
            "differences_per_agency": {a or "": n for a, n in sorted(per_agency.items(), key=lambda i: i[0] or "")}}


def payment_differences(run_id: str, result: dict[str, int]) -> int:
    with task_stores() as stores:
        return notifications.payment_differences(stores.ledger, run_id, result)
