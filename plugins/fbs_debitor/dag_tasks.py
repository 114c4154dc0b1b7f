"""What the DAG tasks do, as plain functions of plain arguments (keys and counts, never data).

The DAG files only wire these together; each opens the stores from the Airflow Connections
(falling back to the settings), so a task retried on another worker behaves the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from fbs_debitor import ledger, migrations
from fbs_debitor.stores import Stores, open_stores

log = logging.getLogger(__name__)


def _stores() -> Stores:
    from fbs_debitor.airflow_connections import urls_for_task

    return open_stores(urls_for_task())


def ledger_run_id(dag_id: str, airflow_run_id: str) -> str:
    """The ledger's id for an Airflow run: the same on every retry of every task of that run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fbs-debitor/{dag_id}/{airflow_run_id}"))


def open_run(kind: str, dag_id: str, airflow_run_id: str,
             interval_start: dt.datetime | None, interval_end: dt.datetime | None) -> str:
    stores = _stores()
    try:
        applied = migrations.migrate(stores.ledger)
        if applied:
            log.info("ledger migrated to version %s", max(applied))
        run_id = ledger.start_run(stores.ledger, kind, airflow_dag_id=dag_id, airflow_run_id=airflow_run_id,
                                  interval=(interval_start, interval_end),
                                  run_id=ledger_run_id(dag_id, airflow_run_id))
        log.info("ledger run %s opened for %s / %s (window %s - %s)", run_id, dag_id, airflow_run_id,
                 interval_start, interval_end)
        return run_id
    finally:
        stores.dispose()


def data_quality(run_id: str) -> dict:
    """GX checks on the batch; findings to the ledger; returns counts and the held agencies."""
    from fbs_debitor import dq_checks, settings

    stores = _stores()
    try:
        result = dq_checks.run_checks(stores, run_id, data_docs_dir=settings.var_dir() / "data_docs")
        return result.as_dict()
    except BaseException as exc:  # also Airflow's task timeout, a BaseException
        ledger.finish_run(stores.ledger, run_id, "failed", f"data quality: {type(exc).__name__}: {exc}")
        raise
    finally:
        stores.dispose()


def held_agencies(dq: dict) -> list[str]:
    """Fail loudly (after every other agency has run) when an agency's run is held (C3)."""
    held = dq.get("blocked_agencies") or {}
    if held:
        from airflow.sdk.exceptions import AirflowFailException

        reasons = "; ".join(f"agency {a}: {r}" for a, r in sorted(held.items()))
        raise AirflowFailException(f"{len(held)} agency run(s) held until the setting is fixed: {reasons}")
    return []


def _client():
    from fbs_debitor import serviceplatformen

    return serviceplatformen.Client(serviceplatformen.config_for_task())


def resend_unconfirmed(run_id: str) -> int:
    """Messages earlier runs left pending or sent without an answer, sent again under their keys."""
    from fbs_debitor import transfer

    stores = _stores()
    try:
        with _client() as client:
            return transfer.resend_unconfirmed(stores, client, run_id)
    except BaseException as exc:  # also Airflow's task timeout, a BaseException
        ledger.finish_run(stores.ledger, run_id, "failed", f"resend: {type(exc).__name__}: {exc}")
        raise
    finally:
        stores.dispose()


def build_and_send(run_id: str, try_number: int = 1) -> dict[str, int]:
    """Eligible liabilities built into claims, recorded in the outbox and sent in batches. A retry
    of this task first sends what its killed try left recorded but unconfirmed (those are in the
    ledger, so the eligibility step would not pick them up again)."""
    from fbs_debitor import transfer

    stores = _stores()
    try:
        with _client() as client:
            if try_number > 1:
                transfer.resend_unconfirmed(stores, client, run_id)
            counts = transfer.deliver(stores, client, run_id)
        return transfer.totals(counts)
    except BaseException as exc:  # also Airflow's task timeout, a BaseException
        ledger.finish_run(stores.ledger, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stores.dispose()


def send_changes(run_id: str) -> dict[str, int]:
    """Changes in FBS to claims already sent (U1-U4), recorded and sent in order per liability,
    after the new claims of the same run."""
    from fbs_debitor import transfer

    stores = _stores()
    try:
        with _client() as client:
            return transfer.totals(transfer.keep_claims_true(stores, client, run_id))
    except BaseException as exc:  # also Airflow's task timeout, a BaseException
        ledger.finish_run(stores.ledger, run_id, "failed", f"changes: {type(exc).__name__}: {exc}")
        raise
    finally:
        stores.dispose()


def raise_staff_tasks(run_id: str) -> dict[str, int]:
    """Rejections (and long-unconfirmed claims) as staff tasks in FBS; the run's delivery counts."""
    from fbs_debitor import transfer

    stores = _stores()
    try:
        return transfer.totals(transfer.close_delivery(stores, run_id))
    finally:
        stores.dispose()


def undelivered(delivered: dict[str, int]) -> int:
    """Fail loudly (last) when claims of this run are still unconfirmed: the next run sends them
    again under the same keys, but the integration team should know the debtor side is failing."""
    n, changes = delivered.get("unconfirmed", 0), delivered.get("changes_unconfirmed", 0)
    if n or changes:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{n} claim(s) and {changes} change(s) got no answer from the debtor system after "
                                   "every retry; they are kept in the outbox and sent again under the same keys next run")
    return 0


def close_run(run_id: str) -> str:
    from fbs_debitor.summary import format_run

    stores = _stores()
    try:
        from fbs_debitor.transfer import resolve_findings

        resolved = resolve_findings(stores, run_id)
        log.info("%d finding(s) resolved: the data was fixed or the liability left the batch", resolved)
        ledger.finish_run(stores.ledger, run_id, "success")
        text = format_run(ledger.get_run(stores.ledger, run_id), ledger.run_counts(stores.ledger, run_id), stores.fbs)
        log.info("run summary\n%s", text)
        return run_id
    finally:
        stores.dispose()


# --- debitor_payments ----------------------------------------------------------------------------

def ingest_payments(run_id: str) -> dict[str, int]:
    """The debtor system's waiting files applied (each in one transaction, bad ones quarantined),
    held movements looked at again, everything written back to FBS; the run's counts."""
    from fbs_debitor import inbox, payments

    stores = _stores()
    try:
        box = inbox.open_inbox()
        done = payments.ingest(stores, box, run_id)
        log.info("payments from %s: %s", box.describe(), dict(sorted(done.items())))
        return payments.totals(payments.record_run_counts(stores.ledger, run_id))
    except BaseException as exc:  # also Airflow's task timeout, a BaseException
        ledger.finish_run(stores.ledger, run_id, "failed", f"payments: {type(exc).__name__}: {exc}")
        raise
    finally:
        stores.dispose()


def reconcile_payments(run_id: str) -> dict[str, int]:
    """The run's reconciliation report (CSV under var/reports/payments/), and the run closed."""
    from fbs_debitor import payment_reconciliation, settings
    from fbs_debitor.summary import format_payments_run

    stores = _stores()
    try:
        try:
            report = payment_reconciliation.reconcile_payments(stores)
        except BaseException as exc:  # also Airflow's task timeout, a BaseException
            ledger.finish_run(stores.ledger, run_id, "failed", f"reconcile: {type(exc).__name__}: {exc}")
            raise
        path = report.write_csv(settings.var_dir() / "reports" / "payments" / f"reconciliation-{run_id}.csv")
        log.info("%s\nreport: %s", report.summary(), path)
        ledger.finish_run(stores.ledger, run_id, "success")
        log.info("run summary\n%s", format_payments_run(ledger.get_run(stores.ledger, run_id),
                                                        ledger.run_counts(stores.ledger, run_id), stores.fbs))
        return {"differences": len(report.differences), "held": report.movements["held"]}
    finally:
        stores.dispose()


def payment_differences(result: dict[str, int]) -> int:
    """Fail loudly (last) when reconciliation found differences; the report names each one."""
    if result.get("differences"):
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"payments reconciliation: {result['differences']} difference(s); see "
                                   "var/reports/payments/reconciliation-<run>.csv")
    return 0
