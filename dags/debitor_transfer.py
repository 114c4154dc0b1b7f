"""debitor_transfer: the hourly hand-over of FBS liabilities to the debtor system (SF1590)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

DOC_MD = """
### debitor_transfer — FBS liabilities to the municipal debtor system (SF1590_B_01)

Runs every hour (Europe/Copenhagen). Each run:

1. **open_run** — records the run in the ledger (id derived from the Airflow run, so retries reuse it)
   and brings the ledger schema to its newest version.
2. **assess_eligibility** — selects every open liability created on or after the agency's cut-off
   date (T1, T3) that is not yet in the ledger; fees at once, compensations on creation or once
   verified (T2). Liabilities that cannot go — a patron group without responsible patron (T4), a
   company without valid CVR (T5), a person without usable CPR where replacement CPR is off (T6) —
   are kept as findings in the ledger with the rule that stops them, never dropped.
3. **close_run** — marks the run successful and logs the counts per agency and rule.

Eligibility is state-based, not window-based: a liability created in an earlier window but seen
only now (late arrival) is still picked up. The data interval is recorded with the run.
Databases: Airflow Connections `fbs_db` and `debitor_ledger` (else `FBS_DEBITOR_*_URL`).
"""


@dag(
    dag_id="debitor_transfer",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="Europe/Copenhagen"),
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Copenhagen"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True,
                  "execution_timeout": timedelta(minutes=50)},
    tags=["fbs-debitor", "sf1590", "transfer"],
    doc_md=DOC_MD,
)
def debitor_transfer():
    @task(task_id="open_run")
    def open_run(dag=None, run_id=None, data_interval_start=None, data_interval_end=None) -> str:
        from fbs_debitor import dag_tasks

        return dag_tasks.open_run("transfer", dag.dag_id, run_id, data_interval_start, data_interval_end)

    @task(task_id="assess_eligibility")
    def assess_eligibility(ledger_run_id: str) -> dict[str, int]:
        from fbs_debitor import dag_tasks

        return dag_tasks.assess_eligibility(ledger_run_id)

    @task(task_id="close_run")
    def close_run(ledger_run_id: str, counts: dict[str, int]) -> str:
        from fbs_debitor import dag_tasks

        return dag_tasks.close_run(ledger_run_id)

    ledger_run_id = open_run()
    close_run(ledger_run_id, assess_eligibility(ledger_run_id))


debitor_transfer()
