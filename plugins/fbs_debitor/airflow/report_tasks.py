"""debitor_dq_report's task bodies (see ``tasks`` for the conventions: plain arguments, keys
and counts back, the stores opened per task).

The staff reports are built and mailed once per municipality (``transfer.units``: a mapped task
each, named after the municipality in the grid): one municipality's failing build or refusing mail
server fails only its own task. Every file goes to the shared store (``core.storage``), so a
task's retry on another worker finds what the first attempt wrote. The digest stays one task."""

from __future__ import annotations

import datetime as dt
import logging

from fbs_debitor.airflow import connections
from fbs_debitor.airflow.tasks import migrate_ledger, task_stores
from fbs_debitor.core import settings
from fbs_debitor.quality import digest, mailer
from fbs_debitor.quality import report as dq_report
from fbs_debitor.transfer import units
from fbs_debitor.transfer.units import Unit

log = logging.getLogger(__name__)


# --- debitor_dq_report ---------------------------------------------------------------------------

def report_day(data_interval_end: dt.datetime | None) -> str:
    """The report's day: the run's data-interval end in Copenhagen time (YYYY-MM-DD)."""
    return dq_report.report_date_for(data_interval_end).isoformat()


def _label(unit: dict) -> None:
    """Names this mapped task's instance in the grid after its municipality (``map_index_template``)."""
    from airflow.sdk import get_current_context

    try:
        get_current_context()["unit_label"] = unit["label"]
    except RuntimeError:          # called outside a running task (tests, the CLI): nothing to name
        pass


def unit_key(unit: Unit) -> str:
    """One municipality at its debtor system as a folder name (its manifest's): ``<cvr>_<vendor>``."""
    return f"{unit.cvr}_{unit.vendor}"


def report_units(report_date: str) -> list[dict]:
    """Every municipality (``transfer.units``) as the mapped report tasks take it: the unit's dict
    with the report's day added (keys only). None: the mapped tasks are skipped, the digest runs."""
    with task_stores() as stores:
        migrate_ledger(stores)
        found = units.units(stores.fbs)
    log.info("reports for %s: %d municipality unit(s): %s", report_date, len(found),
             ", ".join(u.label for u in found) or "none")
    return [{**u.as_dict(), "report_date": report_date} for u in found]


def build_reports(report_date: str, unit: dict) -> dict:
    """One municipality's branch reports under ``reports/<date>/<agency>/<branch>/`` in the shared
    store, its manifest under ``reports/<date>/manifests/<cvr>_<vendor>/``; back: the manifest's
    location, the unit and totals (keys and counts only)."""
    _label(unit)
    u = Unit.of(unit)
    today = dt.date.fromisoformat(report_date)
    out = dq_report.report_dir(today)
    with task_stores() as stores:
        reports = dq_report.build_reports(stores, out, today, agencies=u.agencies)
    manifest = dq_report.write_manifest(out, reports, today, unit=unit_key(u))
    log.info("reports of %s\n%s", u.label, dq_report.format_reports(reports))
    return {"manifest": str(manifest), "report_date": today.isoformat(), "unit": u.as_dict(),
            "branches": len(reports),
            "open": sum(r.open_count for r in reports), "new": sum(r.new_count for r in reports),
            "resolved": sum(r.resolved_count for r in reports),                  # fixed in FBS, by staff
            "resolved_by_integration": sum(r.integration_count for r in reports),
            "no_longer_in_scope": sum(r.out_of_scope_count for r in reports),
            "agencies_blocked": sorted({r.agency_id for r in reports if r.agency_blocked})}


def email_reports(manifest: str, report_date: str, unit: dict,
                  conn_id: str = mailer.DEFAULT_CONN_ID) -> dict[str, int]:
    """One municipality's reports by email: reads the manifest its build task wrote in the shared
    store (building them again should it be missing), sends, and records who got theirs next to the
    manifest, so a retry (on any worker) sends only what failed. Fails after trying every branch if
    any send failed; a branch without address is a warning, not a failure."""
    _label(unit)
    u = Unit.of(unit)
    location = dq_report.location(manifest)
    if not location.exists():
        log.warning("manifest %s not found: building the reports of %s again", location, u.label)
        location = dq_report.location(build_reports(report_date, unit)["manifest"])
    reports = dq_report.load_manifest(location)
    results = mailer.send_reports(reports, connections.smtp_settings(conn_id),
                                  state_file=location.parent / mailer.STATE_NAME)
    log.info("email results of %s\n%s", u.label, mailer.format_results(results))
    failed = [f"{r.agency_id}/{r.branch_id}" for r in results if r.status == mailer.FAILED]
    if failed:
        raise RuntimeError(f"{u.label}: {len(failed)} report(s) could not be emailed: {', '.join(failed)} "
                           f"(the others were sent; a retry sends only these)")
    return mailer.totals(results)


def email_digest(conn_id: str = mailer.DEFAULT_CONN_ID) -> dict:
    """The integration team's daily digest (``quality.digest``) to FBS_DEBITOR_ALERT_EMAIL through
    ``conn_id`` (else FBS_DEBITOR_SMTP_*). Without an SMTP server or recipients: a warning, nothing
    marked, the task succeeds. A send that fails fails the task (its retry sends it again)."""
    try:
        smtp = connections.smtp_settings(conn_id)
    except mailer.SmtpNotConfigured as exc:
        log.warning("no SMTP server for the digest: %s", exc)
        smtp = None
    with task_stores() as stores:
        migrate_ledger(stores)
        return digest.send_digest(stores.ledger, smtp, settings.alert_email()).as_dict()
