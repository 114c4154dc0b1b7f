"""debitor_dq_report: the daily data-quality report for library staff, per branch, by email."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

DOC_MD = """
### debitor_dq_report — what library staff must fix in FBS, per branch (M4)

Runs every morning at 06:00 (Europe/Copenhagen). It reads the findings the hourly transfer has
recorded in the ledger — what stops a fee or compensation from going to the debtor system, and
what is worth fixing — and tells each branch, in Danish, what to fix for which patron.

Steps 2 and 3 run once per municipality (a mapped task each, named after the municipality in the
grid): one municipality's failing build or refusing mail server fails only its own task, and its
retry redoes only that municipality.

1. **report_units** — lists the municipalities of FBS (`agency.municipality_cvr`, each at its debtor
   system) and the report's day.
2. **build_reports** — writes, for every branch of its municipality, `datakvalitet.html` (a self-contained page:
   counts per check, a 30-day trend (new / open / fixed per day, chart and table), the findings
   that hold the whole library (C3) on top, then one entry per patron (number and name) with its
   open findings beneath it, oldest first — patrons with a blocking finding first — each with the
   liability's number and amount, what is wrong and why it matters, in Danish only, and what was
   resolved in the last 7 days) and `datakvalitet.csv` (every open finding, for Excel), under
   `reports/<date>/<agency>/<branch>/` in the shared store (`FBS_DEBITOR_STORAGE_URL`, default
   `var/`), plus an `index.html` per agency and the municipality's manifest in
   `reports/<date>/manifests/<cvr>_<vendor>/manifest.json`. Agency-level findings (C3: a broken age
   limit) appear in every branch of the agency.
3. **email_reports** — mails each branch of its municipality its report (HTML body, CSV attached) at the branch's
   `staff_email` through the Airflow connection `smtp_default`. A branch without an address is
   skipped with a warning. If a send fails, the others still go, the task then fails naming the
   branches, and its retry sends only those (who got theirs is recorded next to the manifest, in
   the shared store, so a retry on another worker knows too).
4. **email_digest** — runs whatever the report tasks did (trigger rule all_done): mails the
   integration team (`FBS_DEBITOR_ALERT_EMAIL`, through `smtp_default`) the open alarms (the
   integration's own first), held agencies (C3), the other staff alarms, blocked liabilities per
   agency, and the alarms resolved since the last digest. An alarm no digest said before is marked
   NEW; after sending, all are marked notified, so an unchanged condition is said again only as
   "still open since ...". Hourly runs never mail these conditions; only this digest does.
   Without an SMTP server or recipients it logs a warning and marks nothing.

A failed run sends one alert (`fbs_debitor.airflow.alerts`); see docs/operations.md, "When is a run red".

CPR numbers never appear in full (`DDMMYY-****`). Databases: Airflow Connections `fbs_db` and
`debitor_ledger` (else `FBS_DEBITOR_*_URL`). Only paths and counts pass between the tasks.
"""


def _run_failed(context):
    from fbs_debitor.airflow import alerts

    alerts.run_failed(context)


def _run_succeeded(context):
    from fbs_debitor.airflow import alerts

    alerts.run_succeeded(context)


@dag(
    dag_id="debitor_dq_report",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone="Europe/Copenhagen"),
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Copenhagen"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "fbs-debitor", "retries": 2,
                  "retry_exponential_backoff": True, "execution_timeout": timedelta(hours=1),
                  "on_failure_callback": _run_failed},
    on_failure_callback=_run_failed,
    on_success_callback=_run_succeeded,
    description="Daily: each branch's data-quality report (M4) by email, and the integration team's digest of "
                "open alarms",
    tags=["fbs-debitor", "data-quality"],
    doc_md=DOC_MD,
)
def debitor_dq_report():
    @task(task_id="report_units")
    def report_units(data_interval_end=None) -> list[dict]:
        from fbs_debitor.airflow import report_tasks

        return report_tasks.report_units(report_tasks.report_day(data_interval_end))

    @task(task_id="build_reports", map_index_template="{{ unit_label }}")
    def build_reports(unit: dict) -> dict:
        from fbs_debitor.airflow import report_tasks

        return report_tasks.build_reports(unit["report_date"], unit)

    @task(task_id="email_reports", map_index_template="{{ unit_label }}")
    def email_reports(built: dict) -> dict[str, int]:
        from fbs_debitor.airflow import report_tasks

        return report_tasks.email_reports(built["manifest"], built["report_date"], built["unit"])

    @task(task_id="email_digest", trigger_rule="all_done")
    def email_digest() -> dict:
        from fbs_debitor.airflow import report_tasks

        return report_tasks.email_digest()

    email_reports.expand(built=build_reports.expand(unit=report_units())) >> email_digest()


debitor_dq_report()
