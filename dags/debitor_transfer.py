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
2. **data_quality** — Great Expectations checks on the batch (every open liability not yet sent,
   and the agencies): company without valid CVR, minor without guardian, person without CPR or
   birth date, malformed CPR, replacement CPR at Prisme, group without responsible patron, amounts,
   dates, and the agency's age limit (C3). Findings go to the ledger for the daily staff report;
   the GX Data Docs site is rebuilt under `var/data_docs/`.
3. **assess_eligibility** — selects every open liability created on or after the agency's cut-off
   date (T1, T3) that is not yet in the ledger; fees at once, compensations on creation or once
   verified (T2). Liabilities that cannot go — a patron group without responsible patron (T4), a
   company without valid CVR (T5), a person without usable CPR where replacement CPR is off (T6) —
   are kept as findings in the ledger with the rule that stops them, never dropped.
   Each eligible claim is built (not sent yet) so that problems only the builder can see count as
   blocked too.
4. **close_run** — resolves findings this run no longer saw (the data was fixed), marks the run
   successful and logs the counts per agency and rule.
5. **held_agencies** — fails, loudly and last, when an agency is held because its age limit is
   outside 15-21 (C3): every classification there would be wrong. The other agencies have run.

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

    @task(task_id="data_quality")
    def data_quality(ledger_run_id: str) -> dict:
        from fbs_debitor import dag_tasks

        return dag_tasks.data_quality(ledger_run_id)

    @task(task_id="assess_eligibility")
    def assess_eligibility(ledger_run_id: str) -> dict[str, int]:
        from fbs_debitor import dag_tasks

        return dag_tasks.assess_eligibility(ledger_run_id)

    @task(task_id="close_run")
    def close_run(ledger_run_id: str, counts: dict[str, int]) -> str:
        from fbs_debitor import dag_tasks

        return dag_tasks.close_run(ledger_run_id)

    @task(task_id="held_agencies", retries=0)
    def held_agencies(dq: dict, closed: str) -> list[str]:
        from fbs_debitor import dag_tasks

        return dag_tasks.held_agencies(dq)

    ledger_run_id = open_run()
    dq = data_quality(ledger_run_id)
    counts = assess_eligibility(ledger_run_id)
    dq >> counts
    held_agencies(dq, close_run(ledger_run_id, counts))


debitor_transfer()
