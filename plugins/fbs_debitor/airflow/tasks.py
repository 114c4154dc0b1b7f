"""What the DAG tasks do, as plain functions of plain arguments (keys and counts, never data).

The DAG files only wire these together; each opens the stores from the Airflow Connections
(falling back to the settings), so a task retried on another worker behaves the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from fbs_debitor.core import ledger, migrations
from fbs_debitor.core.stores import Stores, open_stores

log = logging.getLogger(__name__)


def _stores() -> Stores:
    from fbs_debitor.airflow.connections import urls_for_task

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
    from fbs_debitor.core import settings
    from fbs_debitor.quality import checks as dq_checks

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
    from fbs_debitor.delivery import serviceplatformen

    return serviceplatformen.Client(serviceplatformen.config_for_task())


def resend_unconfirmed(run_id: str) -> int:
    """Messages earlier runs left pending or sent without an answer, sent again under their keys."""
    from fbs_debitor.transfer import run as transfer

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
    from fbs_debitor.transfer import run as transfer

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
    from fbs_debitor.transfer import run as transfer

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
    from fbs_debitor.transfer import run as transfer

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
    from fbs_debitor.transfer.summary import format_run

    stores = _stores()
    try:
        from fbs_debitor.transfer.run import resolve_findings

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
    from fbs_debitor.payments import apply as payments
    from fbs_debitor.payments import inbox

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
    from fbs_debitor.core import settings
    from fbs_debitor.payments import reconciliation as payment_reconciliation
    from fbs_debitor.transfer.summary import format_payments_run

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


# --- cut-off moved back: debitor_transfer's detection and debitor_backfill -----------------------

POOL = "debitor_debtor_system"   # one sender towards the debtor system at a time (see README)


def detect_cut_off(run_id: str) -> list[dict]:
    """Record every agency whose cut-off date moved since the last run (T3); returns one trigger
    of debitor_backfill per backfill detection handed over that no backfill run has taken up yet
    (a deterministic run id: triggering it again next hour is skipped, not doubled)."""
    from fbs_debitor.eligibility import cut_off

    stores = _stores()
    try:
        for change in cut_off.detect(stores, run_id):
            log.info("cut-off change recorded: %s", change.as_dict())
        waiting = cut_off.waiting_backfills(stores.ledger)
        for b in waiting:
            log.info("agency %s: the range from %s waits for debitor_backfill (backfill %s)", b["agency"],
                     b["cut_off_date"], b["backfill_id"])
        return [{"trigger_run_id": f"detected__{b['backfill_id']}",
                 "conf": {"agency": b["agency"], "cut_off_date": b["cut_off_date"], "dry_run": False,
                          "batch_size": b["batch_size"]}} for b in waiting]
    except BaseException as exc:  # also Airflow's task timeout, a BaseException
        ledger.finish_run(stores.ledger, run_id, "failed", f"cut-off detection: {type(exc).__name__}: {exc}")
        raise
    finally:
        stores.dispose()


def regular_run(run_id: str, run_type: str) -> bool:
    """False (skip the rest) for a run made by ``airflow backfill create``: eligibility is by state,
    not by window, so a run per past interval would only repeat the newest run's work N times.
    The cut-off detection before this task has run: a cut-off moved back reaches debitor_backfill."""
    if getattr(run_type, "value", run_type) != "backfill":   # the SDK's DagRunType enum, or its value
        return True
    stores = _stores()
    try:
        log.warning("this is an Airflow backfill run of debitor_transfer: nothing is sent for its interval. "
                    "Transfer is by state, not by window: every regular run sends whatever is due, whenever it "
                    "was created. To hand over older liabilities, move the agency's cut-off date back in FBS "
                    "(the next run starts debitor_backfill) or trigger debitor_backfill; see the README")
        ledger.finish_run(stores.ledger, run_id, "success")
        return False
    finally:
        stores.dispose()


def plan_backfill(params: dict, airflow_run_id: str) -> dict:
    """debitor_backfill's first task: validate the params, record the backfill and its months."""
    from fbs_debitor.backfill import months as backfill

    stores = _stores()
    try:
        applied = migrations.migrate(stores.ledger)
        if applied:
            log.info("ledger migrated to version %s", max(applied))
        if airflow_run_id.startswith("detected__"):
            # Triggered by detection: the backfill it names, as it stands now (a cut-off moved
            # forward since may have narrowed or stopped it), not the conf copied at trigger time.
            plan = backfill.plan_detected(stores, airflow_run_id.removeprefix("detected__"), airflow_run_id)
        else:
            request = backfill.parse_request(params.get("agency"), params.get("cut_off_date"),
                                             params.get("dry_run", False), params.get("batch_size"))
            plan = backfill.plan(stores, request, requested_by="manual", airflow_run_id=airflow_run_id)
        return {**plan.as_dict(), "chunk_list": plan.chunks}
    finally:
        stores.dispose()


def backfill_chunk(chunk: dict, airflow_run_id: str) -> dict:
    """One month of a backfill, sent at most at FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND."""
    from fbs_debitor.backfill import months as backfill
    from fbs_debitor.delivery import send_rate

    stores = _stores()
    try:
        bf_dry = backfill.is_dry_run(stores.ledger, chunk["backfill_id"])
        if bf_dry:
            return backfill.run_chunk(stores, chunk["backfill_id"], chunk["chunk_from"], airflow_run_id=airflow_run_id)
        with _client() as client:
            return backfill.run_chunk(stores, chunk["backfill_id"], chunk["chunk_from"], client=client,
                                      pacer=send_rate.pacer_for_backfill(), airflow_run_id=airflow_run_id)
    finally:
        stores.dispose()


def finish_backfill(plan: dict) -> dict:
    """Complete the backfill (the hourly run takes its range over), or fail naming the months left."""
    from fbs_debitor.backfill import months as backfill

    if not plan.get("backfill_id"):
        log.info("%s", plan.get("note"))
        return {"status": "nothing to do"}
    stores = _stores()
    try:
        return backfill.finish(stores, plan["backfill_id"])
    finally:
        stores.dispose()
