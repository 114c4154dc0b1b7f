"""The DAG tasks' bodies, as plain functions of plain arguments (keys and counts, never data).

The DAG files call these and nothing else of the package; each DAG's ``doc_md`` says what its
steps do. Every task opens the stores from the Airflow Connections (``connections``, falling back
to the settings) through ``task_stores``, so a task retried on another worker behaves the same,
and a task that fails marks its ledger run failed with the reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from fbs_debitor.airflow import alerts, connections, notifications
from fbs_debitor.backfill import months as backfill
from fbs_debitor.core import alarms, ledger, migrations
from fbs_debitor.core.stores import Stores, open_stores
from fbs_debitor.delivery import send_rate
from fbs_debitor.eligibility import cut_off, delta
from fbs_debitor.quality import checks as dq_checks
from fbs_debitor.transfer import run as transfer
from fbs_debitor.transfer import units
from fbs_debitor.transfer.summary import format_run

log = logging.getLogger(__name__)


def _stores() -> Stores:
    return open_stores(connections.database_urls_for_task())


@contextmanager
def task_stores(run_id: str | None = None, step: str | None = None) -> Iterator[Stores]:
    """The stores for one task: opened, and disposed of however the task ends. With ``run_id``,
    anything that ends the task early (an error, or Airflow's task timeout, a BaseException) also
    marks that ledger run failed, the reason prefixed by ``step``, before it goes on up."""
    stores = _stores()
    try:
        yield stores
    except BaseException as exc:
        if run_id is not None:
            reason = f"{type(exc).__name__}: {exc}"
            ledger.finish_run(stores.ledger, run_id, "failed", f"{step}: {reason}" if step else reason)
        raise
    finally:
        stores.dispose()


def _clients(stores: Stores):
    """One Serviceplatformen client per municipality for this task (``delivery.access``), closed
    when the ``with`` ends: each agency's batches go under its own municipality's agreement; a
    municipality without working access is held, the others are sent."""
    return connections.serviceplatformen_clients(stores.fbs)


def ledger_run_id(dag_id: str, airflow_run_id: str) -> str:
    """The ledger's id for an Airflow run: the same on every retry of every task of that run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fbs-debitor/{dag_id}/{airflow_run_id}"))


def migrate_ledger(stores: Stores) -> None:
    applied = migrations.migrate(stores.ledger)
    if applied:
        log.info("ledger migrated to version %s", max(applied))


def open_run(kind: str, dag_id: str, airflow_run_id: str,
             interval_start: dt.datetime | None, interval_end: dt.datetime | None) -> str:
    with task_stores() as stores:
        migrate_ledger(stores)
        run_id = ledger.start_run(stores.ledger, kind, airflow_dag_id=dag_id, airflow_run_id=airflow_run_id,
                                  interval=(interval_start, interval_end),
                                  run_id=ledger_run_id(dag_id, airflow_run_id))
    log.info("ledger run %s opened for %s / %s (window %s - %s)", run_id, dag_id, airflow_run_id,
             interval_start, interval_end)
    return run_id


# --- debitor_transfer ----------------------------------------------------------------------------

def detect_cut_off(run_id: str) -> list[dict]:
    """Cut-off moves recorded; one trigger of debitor_backfill per detected backfill not yet taken
    up (a deterministic run id: triggering it again next hour is skipped, not doubled)."""
    with task_stores(run_id, "cut-off detection") as stores:
        for change in cut_off.detect(stores, run_id):
            log.info("cut-off change recorded: %s", change.as_dict())
        waiting = cut_off.waiting_backfills(stores.ledger)
    for b in waiting:
        log.info("agency %s: the range from %s waits for debitor_backfill (backfill %s)", b["agency"],
                 b["cut_off_date"], b["backfill_id"])
    return [{"trigger_run_id": f"detected__{b['backfill_id']}",
             "conf": {"agency": b["agency"], "cut_off_date": b["cut_off_date"], "dry_run": False,
                      "batch_size": b["batch_size"]}} for b in waiting]


def regular_run(run_id: str, run_type: str) -> bool:
    """False (skip the rest) for a run made by ``airflow backfill create``: eligibility is by state,
    not by window, so a run per past interval would only repeat the newest run's work N times."""
    if getattr(run_type, "value", run_type) != "backfill":   # the SDK's DagRunType enum, or its value
        return True
    with task_stores() as stores:
        log.warning("this is an Airflow backfill run of debitor_transfer: nothing is sent for its interval. "
                    "Transfer is by state, not by window: every regular run sends whatever is due, whenever it "
                    "was created. To hand over older liabilities, move the agency's cut-off date back in FBS "
                    "(the next run starts debitor_backfill) or trigger debitor_backfill; see docs/operations.md")
        ledger.finish_run(stores.ledger, run_id, "success")
    return False


def changes_since(run_id: str, sweep: bool = False) -> dict:
    """The run's window (``eligibility.delta``): per agency, what FBS marked changed since its last
    finished run (an incremental run), or everything (``sweep``, debitor_sweep's nightly run; an
    agency's first run; an agency whose own settings changed). Fixed once: a retry gets the same."""
    with task_stores(run_id, "change window") as stores:
        return delta.open_window(stores, run_id, sweep=sweep)


def data_quality(run_id: str) -> dict:
    """The GX checks over what the run looked at (the delta of an incremental run, everything in a
    sweep), after the sending: the batch each municipality's build_and_send found (eligibility is
    read once per run, ``quality.checks.stage_batch``), not a second reading of eligibility."""
    with task_stores(run_id, "data quality") as stores:
        return dq_checks.run_checks(stores, run_id, data_docs_dir=dq_checks.data_docs_dir(),
                                    scope=transfer.run_scope(stores, run_id), staged=True).as_dict()


def municipalities(run_id: str, vendor: str) -> list[dict]:
    """The run's units (``transfer.units``: each municipality at its debtor system) at one debtor
    system: its sending steps are mapped over them, in that debtor system's pool."""
    with task_stores(run_id, "municipalities") as stores:
        found = units.by_vendor(units.units(stores.fbs)).get(vendor, [])
    log.info("%d municipality(ies) at %s: %s", len(found), vendor,
             "; ".join(f"{u['label']}: agencies {', '.join(u['agencies'])}" for u in found) or "none")
    return found


def _unit(unit: dict) -> units.Unit:
    """The mapped task's unit, its label given to the grid (``map_index_template="{{ unit_label }}"``)."""
    this = units.Unit.of(unit)
    try:
        from airflow.sdk import get_current_context

        get_current_context()["unit_label"] = this.label
    except Exception:   # noqa: BLE001 - outside a running task (a test, the CLI): no grid to label
        pass
    return this


def resend_unconfirmed(run_id: str, unit: dict) -> int:
    this = _unit(unit)
    with task_stores() as stores, _clients(stores) as client:
        return transfer.resend_unconfirmed(stores, client, run_id, unit=this)


def build_and_send(run_id: str, unit: dict, try_number: int = 1) -> dict[str, int]:
    """One municipality's new claims. A retry of this task first sends what its killed try left
    recorded but unconfirmed (those are in the ledger, so the eligibility step would not pick them
    up again)."""
    this = _unit(unit)
    with task_stores() as stores, _clients(stores) as client:
        if try_number > 1:
            transfer.resend_unconfirmed(stores, client, run_id, unit=this)
        return transfer.totals(transfer.deliver(stores, client, run_id, unit=this))


def send_changes(run_id: str, unit: dict) -> dict[str, int]:
    this = _unit(unit)
    with task_stores() as stores, _clients(stores) as client:
        return transfer.totals(transfer.keep_claims_true(stores, client, run_id, unit=this))


def municipality_done(run_id: str, unit: dict) -> str:
    """The last of a municipality's mapped tasks: red at once (AirflowFailException: no retry) when
    its part of the run is not done (``transfer.unit_problems``: its sending did not finish, an agency failed part-way, it
    is held for want of access, or claims are unconfirmed after every retry), naming it; the other
    municipalities' tasks stay green. The run-level tasks at the end say it again for the run."""
    this = _unit(unit)
    with task_stores() as stores:
        problem = transfer.finish_unit(stores, run_id, this)   # done: its change marks move on
    if problem:
        raise AirflowFailException(problem)
    log.info("municipality %s: done", this.label)
    return this.label


def raise_staff_tasks(run_id: str) -> dict[str, int]:
    """Staff tasks for rejections (M1), the run's delivery counts, and a ``rejections`` staff alarm
    per agency with rejections in this run (resolved by the next run without)."""
    with task_stores() as stores:
        counts = transfer.close_delivery(stores, run_id)
        notifications.rejections(stores.ledger, run_id, transfer.rejections_per_agency(counts))
        return transfer.totals(counts)


def close_run(run_id: str) -> str:
    """Findings resolved (of the agencies this run assessed), the run closed: failed when a
    municipality's sending did not finish, an agency's work failed part-way (delivery's ``failed``
    counts, recorded with the run) or a municipality was held, naming them, else successful. Runs
    whatever happened to the municipalities' tasks (trigger rule all_done). The DAG's last task
    ``failed_agencies`` then fails the Airflow run with the same message."""
    with task_stores() as stores:
        resolved = transfer.resolve_findings(stores, run_id)
        log.info("%d finding(s) resolved: fixed in FBS, resolved by the integration, or no longer in scope", resolved)
        counts = ledger.run_counts(stores.ledger, run_id)
        failure = transfer.failure_message(transfer.agency_failures(counts), transfer.access_held(counts),
                                           transfer.unfinished_units(stores, run_id))
        if failure:
            ledger.finish_run(stores.ledger, run_id, "failed", failure)
        else:
            ledger.finish_run(stores.ledger, run_id, "success")
        text = format_run(ledger.get_run(stores.ledger, run_id), counts, stores.fbs)
    log.info("run summary\n%s", text)
    return run_id


def markers_missed(run_id: str) -> dict[str, int]:
    """debitor_sweep's last word: what it found that FBS's change markers had missed, per agency (an
    operator alarm each, resolved by the next sweep that finds nothing there)."""
    with task_stores() as stores:
        return notifications.markers_missed(stores.ledger, run_id, transfer.sweep_findings(stores, run_id))


def held_agencies(run_id: str, dq: dict) -> list[str]:
    with task_stores() as stores:
        return notifications.held_agencies(stores.ledger, run_id, dq)


def failed_agencies(run_id: str) -> list[str]:
    with task_stores() as stores:
        counts = ledger.run_counts(stores.ledger, run_id)
        held = notifications.access_held(stores.ledger, run_id, transfer.access_held(counts))
        return notifications.failed_agencies(stores.ledger, run_id, transfer.agency_failures(counts), held,
                                             transfer.unfinished_units(stores, run_id))


def undelivered(run_id: str, delivered: dict[str, int]) -> int:
    with task_stores() as stores:
        return notifications.undelivered(stores.ledger, run_id, delivered)


# --- debitor_backfill ----------------------------------------------------------------------------

def plan_backfill(params: dict, airflow_run_id: str) -> dict:
    """Validate the params, record the backfill and its months. A request that cannot be carried
    out (an unknown agency, a date in the future or before 2000-01-01, ...: ``BackfillError``)
    fails the task at once, without retries (they would only say the same thing minutes later),
    with the reason as its error; nothing is recorded then."""
    try:
        with task_stores() as stores:
            migrate_ledger(stores)
            if airflow_run_id.startswith("detected__"):
                # Triggered by detection: the backfill it names, as it stands now (a cut-off moved
                # forward since may have narrowed or stopped it), not the conf copied at trigger time.
                plan = backfill.plan_detected(stores, airflow_run_id.removeprefix("detected__"), airflow_run_id)
            else:
                request = backfill.parse_request(params.get("agency"), params.get("cut_off_date"),
                                                 params.get("dry_run", False), params.get("batch_size"))
                plan = backfill.plan(stores, request, requested_by="manual", airflow_run_id=airflow_run_id)
            # the agency's debtor system: its months run in that one's pool
            unit = units.agency_unit(stores.fbs, str(plan.agency_id or params.get("agency") or ""))
    except backfill.BackfillError as exc:
        raise AirflowFailException(f"backfill not started: {exc}") from None
    return {**plan.as_dict(), "chunk_list": plan.chunks, "vendor": unit.vendor if unit else None}


def backfill_chunk(chunk: dict, airflow_run_id: str) -> dict:
    """One month, sent at most at FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND."""
    with task_stores() as stores:
        if backfill.is_dry_run(stores.ledger, chunk["backfill_id"]):
            return backfill.run_chunk(stores, chunk["backfill_id"], chunk["chunk_from"], airflow_run_id=airflow_run_id)
        with _clients(stores) as client:
            return backfill.run_chunk(stores, chunk["backfill_id"], chunk["chunk_from"], client=client,
                                      pacer=send_rate.pacer_for_backfill(), airflow_run_id=airflow_run_id)


def finish_backfill(plan: dict | None) -> dict:
    """The backfill closed (``backfill.finish``). Runs whatever happened before it (trigger rule
    all_done); when ``plan`` failed or was skipped there is no plan: the backfill did not start,
    and this task says so and fails too (it is the DAG's last task, so it decides the run's state:
    a run whose backfill never started is not a success)."""
    if not isinstance(plan, dict):
        message = ("the backfill did not start: task plan failed or was skipped, so no backfill was recorded and "
                   "nothing was sent. plan's log says why (e.g. an unknown agency or a date out of range); "
                   "correct the parameters and trigger debitor_backfill again")
        raise AirflowFailException(message)
    if not plan.get("backfill_id"):
        log.info("%s", plan.get("note"))
        return {"status": "nothing to do"}
    with task_stores() as stores:
        try:
            done = backfill.finish(stores, plan["backfill_id"])
        except backfill.ChunkIncomplete as exc:   # months left: a verdict, which a retry would only repeat
            raise AirflowFailException(str(exc)) from None
        # finish decides the run's state (it is the last task): a good one resolves the failed-run alarm
        alarms.resolve_unseen(stores.ledger, [alerts.failed_kind("debitor_backfill")], [])
        return done
