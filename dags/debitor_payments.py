"""debitor_payments: payments and write-offs back from the debtor system (SF1590_B_01A, P1, P2)."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import (
    DeadlineAlert,
    DeadlineReference,
    MultipleCronTriggerTimetable,
    SyncCallback,
    dag,
    get_current_context,
    task,
)

from fbs_debitor.payments.rhythm import pickup_crons

DOC_MD = """
### debitor_payments — payments and write-offs back to FBS (SF1590_B_01A DækningAfskrivning)

**Schedule, from the vendors' rhythms (P1)**: the debtor system delivers files on its own rhythm and
this DAG picks them up after each delivery: KMD OPUS nightly (picked up 05:00, visible the next
morning), Fujitsu Prisme hourly (10 past) or nightly (`FBS_DEBITOR_PRISME_PAYMENT_RHYTHM`), EG every
`FBS_DEBITOR_EG_PAYMENT_MINUTES` (default 15). `FBS_DEBITOR_PAYMENT_VENDORS` names the vendors in
use; the schedule is the union of their pick-up times (Europe/Copenhagen). One run at a time.
Each run takes every file waiting, whichever vendor delivered it.

**The municipality is the unit of isolation**: each municipality's files are applied by its own
mapped task, under its own lock; one municipality's bad file, crash or hold fails only its task.

1. **open_run** — records the run in the ledger (kind `payments`).
2. **payment_units** — checks the settings and the inbox's layout (the inbox
   `FBS_DEBITOR_PAYMENT_INBOX`, default `payments/inbox` under `FBS_DEBITOR_STORAGE_URL`, a local
   folder or any object store every worker sees), reports what in the inbox is not a payment file,
   and sorts the waiting files by municipality: a file the inbound service landed by the CVR in its
   name, a delivered file by its movements' claims in the ledger. A file of several municipalities,
   or of none known, is no single municipality's: `ingest_rest` takes it whole.
3. **ingest** — once per municipality with files waiting (mapped; the grid shows the municipality:
   `29189404 Testby (KMD_OPUS)`), under that municipality's `payments` lock: each file is read with
   a safe parser (no DTD, no entities, no network) and validated against the schema. A bad file
   (truncated, not the schema, XXE / entity expansion, a movement delivered before with other
   content) is **quarantined** with its reason and a staff task; the other files still go on. A
   good file is applied in **one ledger transaction**: each movement (payment, write-off,
   repayment, reversal) applied to its claim's sums, balance and settlement (unpaid, partly paid,
   paid, written off, repaid), or **held for review** with a staff task (unknown or cancelled claim,
   overpayment, a reversal that does not match); a file or movement delivered again is
   recognised and skipped. Then the municipality's held movements whose reason may have gone are
   looked at again, and its movements are written back to FBS: `fbs.payment` rows keyed by the
   movement (exactly once), tasks for held movements, and liabilities paid in full closed in FBS.
   No municipality with files: nothing is mapped (skipped), the run goes on.
4. **ingest_rest** — after every municipality, whatever became of them, with every lock held: the
   files of no single municipality, every held movement again, and everything not yet written back;
   then the run's counts.
5. **reconcile** — compares per claim what was sent, what the debtor system reported and what FBS
   shows; writes `reports/payments/reconciliation-<run>.csv` and closes the run (failed, naming
   them, when a municipality's step failed).
6. **differences** — fails, last and loudly, when reconciliation found any (an **operator
   alarm** `payment_differences`, resolved by the next run without).
7. **failed_municipalities** — fails, last, when a municipality's `ingest` (or `payment_units`,
   or `ingest_rest`) failed or never finished, naming each (`municipality 29189404 Testby
   (KMD_OPUS): FilesLeft`); every other municipality's payments were done, and the failed one's
   files wait in the inbox for the next run.

A file refused or a movement held for review is a staff task, not a red run. A red run sends ONE
alert (`fbs_debitor.airflow.alerts`: email through `smtp_default` to `FBS_DEBITOR_ALERT_EMAIL`, and
any notifier in `FBS_DEBITOR_ALERT_NOTIFIERS`); the next good run resolves it. A run not finished
45 minutes after it was queued alerts too (a deadline: by then it holds back at least two EG
pick-ups and comes near the tasks' 50-minute timeout). See docs/operations.md, "When is a run red".

A retry of `ingest` is safe at any point: applied files are known by their SHA-256, movements by
their BevaegelseID, write-backs by their key.
"""


def _run_failed(context):
    from fbs_debitor.airflow import alerts

    alerts.run_failed(context)


def _run_succeeded(context):
    from fbs_debitor.airflow import alerts

    alerts.run_succeeded(context)


# Alert when a run is not done 45 minutes after queued: it holds back two EG pick-ups by then.
# Not under `airflow dags test`: Airflow 3.3.2's dag.test() crashes at the end of a successful run
# of a DAG with a deadline (fbs_debitor.airflow.alerts says why), and never queues a run to time.
DAGS_TEST = Path(sys.argv[0]).name.startswith("airflow") and sys.argv[1:3] == ["dags", "test"]
DEADLINE = None if DAGS_TEST else DeadlineAlert(
    reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(minutes=45),
    callback=SyncCallback("fbs_debitor.airflow.alerts.deadline_missed", kwargs={"dag_id": "debitor_payments", "minutes": 45}))


@dag(
    dag_id="debitor_payments",
    schedule=MultipleCronTriggerTimetable(*pickup_crons(), timezone="Europe/Copenhagen"),
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Copenhagen"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "fbs-debitor", "retries": 2,
                  "retry_exponential_backoff": True, "execution_timeout": timedelta(minutes=50),
                  "on_failure_callback": _run_failed},
    on_failure_callback=_run_failed,
    on_success_callback=_run_succeeded,
    deadline=DEADLINE,
    description="Payments and write-offs from the debtor system back to FBS, on the vendors' rhythms (P1), "
                "reconciled",
    tags=["fbs-debitor", "sf1590", "payments"],
    doc_md=DOC_MD,
)
def debitor_payments():
    @task(task_id="open_run")
    def open_run(dag=None, run_id=None, data_interval_start=None, data_interval_end=None) -> str:
        from fbs_debitor.airflow import tasks

        return tasks.open_run("payments", dag.dag_id, run_id, data_interval_start, data_interval_end)

    @task(task_id="payment_units")
    def payment_units(ledger_run_id: str) -> list[dict]:
        from fbs_debitor.airflow import payment_tasks

        return payment_tasks.payment_units(ledger_run_id)

    @task(task_id="ingest", map_index_template="{{ unit_label }}")
    def ingest(ledger_run_id: str, unit: dict) -> dict[str, int]:
        from fbs_debitor.airflow import payment_tasks

        get_current_context()["unit_label"] = unit["label"]
        return payment_tasks.ingest_payments(ledger_run_id, unit)

    @task(task_id="ingest_rest", trigger_rule="all_done")
    def ingest_rest(ledger_run_id: str) -> dict[str, int]:
        from fbs_debitor.airflow import payment_tasks

        return payment_tasks.ingest_rest(ledger_run_id)

    @task(task_id="reconcile", trigger_rule="all_done")
    def reconcile(ledger_run_id: str) -> dict[str, int]:
        from fbs_debitor.airflow import payment_tasks

        return payment_tasks.reconcile_payments(ledger_run_id)

    @task(task_id="differences")
    def differences(ledger_run_id: str, result: dict[str, int]) -> int:
        from fbs_debitor.airflow import payment_tasks

        return payment_tasks.payment_differences(ledger_run_id, result)

    @task(task_id="failed_municipalities", trigger_rule="all_done")
    def failed_municipalities(ledger_run_id: str) -> list[str]:
        from fbs_debitor.airflow import payment_tasks

        return payment_tasks.failed_municipalities(ledger_run_id)

    run_id = open_run()
    ingested = ingest.partial(ledger_run_id=run_id).expand(unit=payment_units(run_id))
    rest = ingest_rest(run_id)
    reconciled = reconcile(run_id)
    ingested >> rest >> reconciled
    differences(run_id, reconciled)
    reconciled >> failed_municipalities(run_id)

debitor_payments()
