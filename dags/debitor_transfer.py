"""debitor_transfer: the hourly hand-over of FBS liabilities to the debtor system (SF1590), of
what changed since the last run; debitor_sweep: the same run over everything, nightly."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum

# TriggerDagRunOperator is the one import from outside airflow.sdk: the SDK does not export it.
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import (
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    SyncCallback,
    dag,
    task,
    task_group,
)

DOC_MD = """
### debitor_transfer — FBS liabilities to the municipal debtor system (SF1590_B_01)

Runs every hour (Europe/Copenhagen); one run at a time. Each run:

1. **open_run** — records the run in the ledger (id derived from the Airflow run, so retries reuse it)
   and brings the ledger schema to its newest version.
2. **detect_cut_off** — compares each agency's cut-off date in FBS with the one the ledger last saw
   (T3). Moved **back**: the change is recorded and the older range (new date up to where the
   hourly run transfers from) is handed to **debitor_backfill**, which **trigger_backfill** starts
   (one run per backfill, run id `detected__<backfill>`); this DAG leaves that range alone until
   the backfill completes, so an hour is never spent on years of backlog. Moved **forward**: the
   change is recorded with a warning; liabilities now before the cut-off are no longer sent (T1),
   an unfinished backfill of that range is stopped, nothing already sent is recalled.
   **regular_run** — a run made by `airflow backfill create` stops here (the rest is skipped):
   transfer is by state, not by window, so a regular run already sends everything due.
   **changes_since** — **the run costs what changed, not what is owed**: per agency, the run looks
   only at the liabilities FBS marked changed (`updated_at` on the liability, its patrons, their
   guardianships) since the agency's last run that finished its work; an agency whose own row
   changed (a cut-off date, an age limit), a new agency, or one with more than
   `FBS_DEBITOR_CHANGE_DELTA_MAX` changes is looked at whole. Steps 3-6 work on that delta.
   **debitor_sweep** (nightly, at `FBS_DEBITOR_SWEEP_HOUR`) is this same run over everything: the
   safety net for a change FBS did not mark; its task **markers_missed** names what the markers
   missed (an operator alarm per agency).
3. **municipalities_kmd_opus**, **municipalities_prisme**, **municipalities_eg** — list the municipalities (FBS's `agency.municipality_cvr`)
   at each debtor system (KMD OPUS, Prisme, EG). **The municipality is the unit of isolation**:
   steps 4-5 run once per municipality, as mapped task groups **send_kmd_opus**, **send_prisme**,
   **send_eg** (one per debtor system) labelled by
   municipality in the grid (`60104190 Søvang (PRISME)`), in the debtor system's own pool
   (`debitor_kmd_opus`, `debitor_prisme`, `debitor_eg`), so a slow vendor does not starve the
   others; each municipality sends under its own lock (a PostgreSQL advisory lock every worker
   sees), its own Serviceplatformen access and its own view of an outage. One municipality's hold,
   outage or crash fails only its own tasks; the others finish.
4. **resend_unconfirmed** — claims an earlier run recorded or sent but never got an answer for (a
   crash, a timeout, an outage) are rebuilt from FBS and sent again **under their own keys**; the
   debtor system answers a repeated key with its first answer, so nothing is billed twice.
5. **build_and_send** — selects every open liability of the municipality created on or after the
   agency's cut-off date (T1, T3) that is not yet in the ledger; fees at once, compensations on
   creation or once verified (T2). Liabilities that cannot go (T4, T5, T6, and what the builder
   finds) are kept as findings with their rule, never dropped. What it looked at and did not
   send before is the batch step 6 checks (eligibility is read once per run). The rest are built into claims; new
   replacement CPRs (I1) and C5 tasks are written to FBS first; each batch is recorded in the
   ledger's outbox (`pending`), marked `sent` before every transmission and `accepted`/`rejected`
   from the debtor system's receipts. Transient faults are retried with backoff inside the call;
   when a batch still gets no answer, the rest of that municipality's run sends nothing new (it
   waits for the next run); the other municipalities go on.
   **send_changes** — keeps claims already sent true (U1-U4): every accepted claim is compared
   with FBS now (amount, status, repayment mark, and keyed fingerprints of the CPR/CVR fields of
   its parties); each difference is recorded as its own versioned message (cancellation,
   write-down, increase = cancellation + new claim with a new FordringID, identifier change,
   repayment) and sent in order per liability: a change never overtakes the creation or the
   change before it. Closed or sent-to-collection after sending is told to staff, not to the
   debtor system. `python -m fbs_debitor history <liability>` shows a liability's whole trail.
   **municipality_done** — red at once (no retry would say otherwise) when that municipality's part
   is not done (its sending did not finish, an agency failed part-way, it is held for want of
   access, or claims are unconfirmed after every retry), naming it; green otherwise.
6. **data_quality** — after every municipality, whatever happened to any: Great Expectations checks
   on the batch the sending steps looked at (the run's open liabilities not yet sent before it, and
   the agencies): company without valid CVR, minor without guardian, person without CPR or birth
   date, malformed CPR, replacement CPR at Prisme, group without responsible patron, amounts, dates,
   and the agency's age limit (C3). Findings go to the ledger for the daily staff report; the GX
   Data Docs site under `var/data_docs/` gains this run (the newest 48 runs are kept). The checks
   feed the staff reports only: no claim waits for them. A page whose checks could not be prepared
   makes this task fail naming it (the run is red; its claims went), and findings the checks did
   not get to see again are left open, not resolved.
7. **raise_staff_tasks** — every rejection becomes a task in FBS (`fbs.task`, M1) with the reason in
   Danish and English; rejections are never sent again. Claims unanswered after many attempts,
   and unconfirmed claims that cannot be sent again as they were, get a task too. Records the
   run's accepted / rejected / unconfirmed counts, of new claims and of changes. Runs even when
   sending failed part-way.
8. **close_run** — runs whatever happened to the municipalities; resolves findings this run no longer saw (fixed in FBS, resolved by the
   integration itself, or no longer in scope) of the agencies it assessed, closes the run in the
   ledger and logs the counts per agency and rule. The run is closed as failed, naming them, when a
   municipality's sending did not finish or an agency's work failed part-way.
9. **held_agencies** — an agency held because its age limit is outside 15-21 (C3) is a **staff
   alarm** and a warning naming the agency and the setting; the task succeeds (staff fix it in
   FBS; the daily digest and the status page say it; the first run that no longer sees it
   resolves the alarm). Rejections of the run are a staff alarm per agency likewise
   (raise_staff_tasks). **failed_agencies** and **undelivered** — fail, loudly and last, with an
   **operator alarm**, when an unexpected error stopped part of an agency's work (the error names
   the agencies, e.g. `agency 715100: RuntimeError`, and the task log of build_and_send has the
   traceback; every other agency's work was done); or when claims or changes are still
   unconfirmed after every retry, what an outage gives (they go again next run).

**When is the run red**: only when the integration could not do its work (the two tasks above,
or any task that fails). Then ONE alert goes out (`fbs_debitor.airflow.alerts`: email through
`smtp_default` to `FBS_DEBITOR_ALERT_EMAIL`, and any notifier in `FBS_DEBITOR_ALERT_NOTIFIERS`),
and the next good run resolves it. A run not finished 50 minutes after it was queued alerts too
(a deadline). What staff must fix never makes it red; see docs/operations.md, "When is a run red".

Eligibility is state-based, not window-based: a liability created in an earlier window but seen
only now (late arrival) is still picked up. The data interval is recorded with the run.
The sending tasks share their debtor system's pool with debitor_backfill's months of the same
debtor system, at a higher priority: a backfill never holds up the hourly run of another vendor.
A task's retry waits Airflow's `[core] default_task_retry_delay` (120 s in ./run and docker-compose).
Every task has retries, the verdicts too (municipality_done, held_agencies, failed_agencies,
undelivered): a verdict fails at once without them (AirflowFailException), so they only serve a try
lost with its worker (killed, out of memory), which would otherwise leave a false red.
Connections: `fbs_db` and `debitor_ledger` (else `FBS_DEBITOR_*_URL`), and `serviceplatformen`
(endpoint, service agreement / user system / user UUIDs, client certificate; see docs/deployment.md#connections).
"""


def _run_failed(context):
    from fbs_debitor.airflow import alerts

    alerts.run_failed(context)


def _run_succeeded(context):
    from fbs_debitor.airflow import alerts

    alerts.run_succeeded(context)


# An hourly run must be done before the next is due: alert when one is not, 50 minutes after queued.
# Not under `airflow dags test`: Airflow 3.3.2's dag.test() crashes at the end of a successful run
# of a DAG with a deadline (fbs_debitor.airflow.alerts says why), and never queues a run to time.
DAGS_TEST = Path(sys.argv[0]).name.startswith("airflow") and sys.argv[1:3] == ["dags", "test"]
DEADLINE = None if DAGS_TEST else DeadlineAlert(
    reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(minutes=50),
    callback=SyncCallback("fbs_debitor.airflow.alerts.deadline_missed", kwargs={"dag_id": "debitor_transfer", "minutes": 50}))


SWEEP_DOC_MD = """
### debitor_sweep — the nightly full sweep of debitor_transfer

The same run as **debitor_transfer** (see its documentation), once a night at `FBS_DEBITOR_SWEEP_HOUR`
(Europe/Copenhagen, default 02:30), over **every** liability instead of what FBS marked changed:
the safety net for a change FBS made without setting `updated_at`, a deleted row, or a setting of
the integration changed. **markers_missed** says what it found that the change markers had missed:
the liabilities it sent a claim or a change for that no marker showed, per agency, as a warning and
an **operator alarm** (FBS must set `updated_at` on every change: the README's extract contract);
the run stays green, since the sweep did the work. The next sweep that finds nothing there resolves
the alarm. It shares the municipalities' locks with the hourly runs, so the two never send for the
same municipality at once.

**When is a run red**: as for debitor_transfer, only when the integration could not do its work;
what the markers missed is an operator alarm on a green run (docs/operations.md, "When is a run red").
"""


def _sweep_hour() -> int:
    raw = (os.environ.get("FBS_DEBITOR_SWEEP_HOUR") or "2").strip()
    if not raw.isdigit() or not 0 <= int(raw) <= 23:
        raise ValueError(f"FBS_DEBITOR_SWEEP_HOUR={raw!r}: allowed is a whole number from 0 to 23 (Europe/Copenhagen)")
    return int(raw)


# The debtor systems (fbs_debitor.transfer.units.VENDORS): each municipality's sending steps run as
# mapped tasks in its debtor system's pool, so a slow vendor does not starve the others; debitor_backfill's
# months share the same pools at a lower priority.
VENDORS = ("KMD_OPUS", "PRISME", "EG")
SENDING = {"priority_weight": 10, "weight_rule": "absolute"}


def transfer_dag(dag_id: str, schedule, sweep: bool, description: str, doc_md: str, deadline):
    """debitor_transfer (hourly, what changed) and debitor_sweep (nightly, everything): one shape."""

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Copenhagen"),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "fbs-debitor", "retries": 2,
                      "retry_exponential_backoff": True, "execution_timeout": timedelta(minutes=50),
                      "on_failure_callback": _run_failed},
        on_failure_callback=_run_failed,
        on_success_callback=_run_succeeded,
        deadline=deadline,
        description=description,
        tags=["fbs-debitor", "sf1590", "transfer"],
        doc_md=doc_md,
    )
    def pipeline():
        _tasks(sweep)

    return pipeline()


def _tasks(sweep: bool):
    @task(task_id="open_run")
    def open_run(dag=None, run_id=None, data_interval_start=None, data_interval_end=None) -> str:
        from fbs_debitor.airflow import tasks

        return tasks.open_run("transfer", dag.dag_id, run_id, data_interval_start, data_interval_end)

    @task(task_id="detect_cut_off")
    def detect_cut_off(ledger_run_id: str) -> list[dict]:
        from fbs_debitor.airflow import tasks

        return tasks.detect_cut_off(ledger_run_id)

    @task.short_circuit(task_id="regular_run")
    def regular_run(ledger_run_id: str, dag_run=None) -> bool:
        from fbs_debitor.airflow import tasks

        return tasks.regular_run(ledger_run_id, dag_run.run_type)

    @task(task_id="changes_since")
    def changes_since(ledger_run_id: str) -> dict:
        from fbs_debitor.airflow import tasks

        return tasks.changes_since(ledger_run_id, sweep=sweep)

    @task(task_id="markers_missed", trigger_rule="all_done")
    def markers_missed(ledger_run_id: str) -> dict[str, int]:
        from fbs_debitor.airflow import tasks

        return tasks.markers_missed(ledger_run_id)

    @task(task_id="data_quality", trigger_rule="all_done")
    def data_quality(ledger_run_id: str) -> dict:
        from fbs_debitor.airflow import tasks

        return tasks.data_quality(ledger_run_id)

    @task(task_id="municipalities")
    def municipalities(ledger_run_id: str, vendor: str) -> list[dict]:
        from fbs_debitor.airflow import tasks

        return tasks.municipalities(ledger_run_id, vendor)

    @task(task_id="resend_unconfirmed", map_index_template="{{ unit_label }}", **SENDING)
    def resend_unconfirmed(ledger_run_id: str, unit: dict) -> int:
        from fbs_debitor.airflow import tasks

        return tasks.resend_unconfirmed(ledger_run_id, unit)

    @task(task_id="build_and_send", map_index_template="{{ unit_label }}", **SENDING)
    def build_and_send(ledger_run_id: str, unit: dict, ti=None) -> dict[str, int]:
        from fbs_debitor.airflow import tasks

        return tasks.build_and_send(ledger_run_id, unit, try_number=ti.try_number if ti else 1)

    @task(task_id="send_changes", map_index_template="{{ unit_label }}", **SENDING)
    def send_changes(ledger_run_id: str, unit: dict) -> dict[str, int]:
        from fbs_debitor.airflow import tasks

        return tasks.send_changes(ledger_run_id, unit)

    @task(task_id="municipality_done", map_index_template="{{ unit_label }}")
    def municipality_done(ledger_run_id: str, unit: dict) -> str:
        from fbs_debitor.airflow import tasks

        return tasks.municipality_done(ledger_run_id, unit)

    def sending(vendor: str):
        """One debtor system's municipalities, each its own mapped group: unconfirmed first, the new
        claims, the changes, then whether it is done (red for that municipality alone when not)."""
        pool = f"debitor_{vendor.lower()}"

        @task_group(group_id=f"send_{vendor.lower()}")
        def send(ledger_run_id: str, unit: dict):
            resent = resend_unconfirmed.override(pool=pool)(ledger_run_id, unit)
            built = build_and_send.override(pool=pool)(ledger_run_id, unit)
            changed = send_changes.override(pool=pool)(ledger_run_id, unit)
            resent >> built >> changed >> municipality_done(ledger_run_id, unit)

        return send

    @task(task_id="raise_staff_tasks", trigger_rule="all_done")
    def raise_staff_tasks(ledger_run_id: str) -> dict[str, int]:
        from fbs_debitor.airflow import tasks

        return tasks.raise_staff_tasks(ledger_run_id)

    @task(task_id="close_run", trigger_rule="all_done")
    def close_run(ledger_run_id: str) -> str:
        from fbs_debitor.airflow import tasks

        return tasks.close_run(ledger_run_id)

    @task(task_id="held_agencies")
    def held_agencies(ledger_run_id: str, dq: dict) -> list[str]:
        from fbs_debitor.airflow import tasks

        return tasks.held_agencies(ledger_run_id, dq)

    @task(task_id="failed_agencies")
    def failed_agencies(ledger_run_id: str) -> list[str]:
        from fbs_debitor.airflow import tasks

        return tasks.failed_agencies(ledger_run_id)

    @task(task_id="undelivered")
    def undelivered(ledger_run_id: str, delivered: dict[str, int]) -> int:
        from fbs_debitor.airflow import tasks

        return tasks.undelivered(ledger_run_id, delivered)

    run_id = open_run()
    detected = detect_cut_off(run_id)
    TriggerDagRunOperator.partial(task_id="trigger_backfill", trigger_dag_id="debitor_backfill",
                                  skip_when_already_exists=True, wait_for_completion=False,
                                  retries=1).expand_kwargs(detected)
    window = changes_since(run_id)
    dq = data_quality(run_id)
    units = [municipalities.override(task_id=f"municipalities_{vendor.lower()}")(run_id, vendor) for vendor in VENDORS]
    groups = [sending(vendor).partial(ledger_run_id=run_id).expand(unit=found) for vendor, found in zip(VENDORS, units, strict=True)]
    delivered = raise_staff_tasks(run_id)   # all_done: after every municipality, whatever happened to any
    closed = close_run(run_id)              # all_done likewise: the run is closed naming who needs attention
    detected >> regular_run(run_id) >> window >> units
    # the checks read the batch the sending steps found (eligibility is read once per run), after
    # every municipality whatever happened to any (all_done); the sending never waits for them
    groups >> dq >> delivered
    if sweep:   # the sweep's word on the markers, before the run is closed (its counts are the run's)
        groups >> delivered >> markers_missed(run_id) >> closed
    else:
        groups >> delivered >> closed
    closed >> [held_agencies(closed, dq), failed_agencies(closed), undelivered(closed, delivered)]


debitor_transfer = transfer_dag(
    "debitor_transfer", CronDataIntervalTimetable("0 * * * *", timezone="Europe/Copenhagen"), False,
    "Hourly: what changed in FBS to the municipal debtor system (SF1590); red only when the integration could not "
    "do its work", DOC_MD, DEADLINE)
debitor_sweep = transfer_dag(
    "debitor_sweep", CronDataIntervalTimetable(f"30 {_sweep_hour()} * * *", timezone="Europe/Copenhagen"), True,
    "Nightly: the same run over every liability, the safety net for a change FBS did not mark; says what the "
    "markers missed", SWEEP_DOC_MD, None)
