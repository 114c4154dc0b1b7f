"""debitor_backfill: an agency's older liabilities sent month by month after its cut-off moved back (T3)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

DOC_MD = """
### debitor_backfill — older liabilities after the cut-off date moved back (T3)

Started by **debitor_transfer** when it notices that an agency's cut-off date moved back in FBS
(run id `detected__<backfill>`), or by hand (*Trigger DAG w/ config*) with:

* **agency** — the FBS agency: six digits, the ISIL number without DK- (e.g. 715100);
* **cut_off_date** — the new cut-off date (YYYY-MM-DD), from 2000-01-01 up to today. A real run
  needs FBS's cut-off date to be on or before it (move it in FBS first); a **dry run** may look at
  any date in that range, to see what moving the cut-off there would send;
* **dry_run** — write what would be sent (schema-valid batch files under `var/backfill/<id>/`,
  counts per rule, account type and claim type in `summary.json`) and send nothing;
* **batch_size** — claims per SF1590 call.

Tasks:

1. **plan** — validates the request: a malformed agency or date is refused by the trigger form
   itself; an agency FBS does not know, a date in the future or before 2000-01-01, a real run
   from before FBS's cut-off date or an agency held under C3 fails this task at once, without
   retries, with the reason as its error, and nothing is recorded. Then records the backfill in
   the ledger (`backfill`) and cuts its range (new date up to where the hourly run transfers
   from) into calendar months. Triggering again with the same agency and date resumes an
   unfinished backfill: months already done are not done again.
   **chunks_kmd_opus**, **chunks_prisme**, **chunks_eg** hand the months to the next step of the
   agency's debtor system (the others get none and are skipped), one mapped task each.
2. **run_chunk_kmd_opus**, **run_chunk_prisme**, **run_chunk_eg** (mapped, one per month,
   labelled `YYYY-MM`; only the agency's debtor system's has months) — the hourly run's own steps on that
   month only: data-quality checks (findings reported like any other), eligibility T1-T6 (closed
   and sent-to-collection liabilities are never sent, T3; ones already in the ledger never again),
   claims built with responsibility as at each liability's creation (C5), sent through the
   outbox exactly once, rejections as staff tasks. At most
   `FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND` claims per second (default 200). One month at a
   time, in the pool of the agency's debtor system (`debitor_kmd_opus`, `debitor_prisme`,
   `debitor_eg`) at a lower priority than debitor_transfer's sending tasks there: each of those
   waits for at most the month in progress, and other debtor systems not at all. A month that fails (the debtor
   system not answering, a crash) fails its task; clear it (or trigger again) to resume: what it
   recorded goes again under its own keys, nothing twice.
3. **finish** — runs whatever happened before it. When **plan** failed (or was skipped) it says
   the backfill did not start and fails too, so the run is red. When every month is done the
   backfill is complete and the hourly run takes the range over (and with it what could not go
   yet: verified later, data fixed later). Otherwise fails at once (no retry), naming the months left. A cut-off
   moved forward meanwhile stops the months now before it (T1), says so in the log and the
   ledger, and recalls nothing already sent.

A red run (a task that failed for good) sends ONE alert (`fbs_debitor.airflow.alerts`: email through
`smtp_default` to `FBS_DEBITOR_ALERT_EMAIL`, and any notifier in `FBS_DEBITOR_ALERT_NOTIFIERS`);
the next backfill whose finish succeeds resolves it. See docs/operations.md, "When is a run red".

`python -m fbs_debitor backfill --agency A --cut-off-date D [--dry-run]` does the same outside
Airflow; `python -m fbs_debitor backfill --status` shows the backfills and their months.
"""


def _run_failed(context):
    from fbs_debitor.airflow import alerts

    alerts.run_failed(context)


# The debtor systems (fbs_debitor.transfer.units.VENDORS), each with its pool, shared with
# debitor_transfer's sending steps, which go first (priority 10 against the months' 1).
VENDORS = ("KMD_OPUS", "PRISME", "EG")


@dag(
    dag_id="debitor_backfill",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Copenhagen"),
    catchup=False,
    max_active_runs=1,
    params={
        # Refused at trigger time when malformed; whether the agency exists and the date is in range
        # (2000-01-01 to today) is the plan task's to check, at once and without retries.
        "agency": Param(type="string", pattern="^[0-9]{6}$",
                        description="FBS agency: six digits, the ISIL number without DK- (e.g. 715100)"),
        "cut_off_date": Param(type="string", format="date", pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                              description="the new cut-off date, YYYY-MM-DD, from 2000-01-01 up to today"),
        "dry_run": Param(False, type="boolean", description="write what would be sent; send nothing"),
        "batch_size": Param(500, type="integer", minimum=1, maximum=5000, description="claims per SF1590 call"),
    },
    default_args={"owner": "fbs-debitor", "retries": 2,
                  "retry_exponential_backoff": True, "execution_timeout": timedelta(hours=3),
                  "on_failure_callback": _run_failed},
    # No DAG-level callbacks: with params that have no default, Airflow 3.3.2's `dags test` crashes
    # building their context. A red run always has a task failed for good (finish is the last task
    # and fails whenever the backfill is not complete): its callback alerts; a finish that succeeds
    # resolves the alarm.
    description="By hand or from debitor_transfer: an agency's older liabilities, month by month, after its "
                "cut-off date moved back (T3)",
    tags=["fbs-debitor", "sf1590", "backfill"],
    doc_md=DOC_MD,
)
def debitor_backfill():
    @task(task_id="plan")
    def plan(params=None, dag_run=None) -> dict:
        from fbs_debitor.airflow import tasks

        return tasks.plan_backfill(dict(params), dag_run.run_id)

    @task(task_id="chunks")
    def chunks(planned: dict, vendor: str) -> list[dict]:
        # The agency's months go through its debtor system's pool: an empty list elsewhere (skipped).
        return planned["chunk_list"] if planned.get("vendor") == vendor else []

    @task(task_id="run_chunk", priority_weight=1, weight_rule="absolute", max_active_tis_per_dagrun=1,
          map_index_template="{{ chunk_label }}")
    def run_chunk(chunk: dict, dag_run=None) -> dict:
        from fbs_debitor.airflow import tasks

        get_current_context()["chunk_label"] = chunk["chunk_from"][:7]
        return tasks.backfill_chunk(chunk, dag_run.run_id)

    @task(task_id="finish", trigger_rule="all_done")
    def finish(planned: dict) -> dict:
        from fbs_debitor.airflow import tasks

        return tasks.finish_backfill(planned)

    planned = plan()
    done = [run_chunk.override(task_id=f"run_chunk_{vendor.lower()}", pool=f"debitor_{vendor.lower()}").expand(
                chunk=chunks.override(task_id=f"chunks_{vendor.lower()}")(planned, vendor))
            for vendor in VENDORS]
    done >> finish(planned)


debitor_backfill()
