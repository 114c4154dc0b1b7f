"""debitor_dq_report's task bodies (see ``tasks`` for the conventions: plain arguments, keys
and counts back, the stores opened per task)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from fbs_debitor.airflow import connections
from fbs_debitor.airflow.tasks import migrate_ledger, task_stores
from fbs_debitor.core import settings
from fbs_debitor.quality import digest, mailer
from fbs_debitor.quality import report as dq_report

log = logging.getLogger(__name__)


# --- debitor_dq_report ---------------------------------------------------------------------------

def report_day(data_interval_end: dt.datetime | None) -> str:
    """The report's day: the run's data-interval end in Copenhagen time (YYYY-MM-DD)."""
    return dq_report.report_date_for(data_interval_end).isoformat()


def build_reports(report_date: str) -> dict:
    """Reports under ``var/reports/<date>``, a manifest next to them; the manifest path and totals."""
    today = dt.date.fromisoformat(report_date)
    out = dq_report.report_dir(today)
    with task_stores() as stores:
        migrate_ledger(stores)
        reports = dq_report.build_reports(stores, out, today)
    manifest = dq_report.write_manifest(out, reports, today)
    log.info("reports\n%s", dq_report.format_reports(reports))
    return {"manifest": str(manifest), "report_date": today.isoformat(), "branches": len(reports),
            "open": sum(r.open_count for r in reports), "new": sum(r.new_count for r in reports),
            "resolved": sum(r.resolved_count for r in reports),                  # fixed in FBS, by staff
            "resolved_by_integration": sum(r.integration_count for r in reports),
            "no_longer_in_scope": sum(r.out_of_scope_count for r in reports),
            "agencies_blocked": sorted({r.agency_id for r in reports if r.agency_blocked})}


def email_reports(manifest_path: str, report_date: str, conn_id: str = mailer.DEFAULT_CONN_ID) -> dict[str, int]:
    """Reads the manifest the build task wrote (rebuilding the reports when this worker cannot see
    them), sends, and records who got theirs next to the manifest, so a retry sends only what
    failed. Fails after trying every branch if any send failed; a branch without address is a
    warning, not a failure."""
    manifest = Path(manifest_path)
    if not manifest.exists():
        log.warning("manifest %s not on this worker: building the reports again", manifest)
        manifest = Path(build_reports(report_date)["manifest"])
    reports = dq_report.load_manifest(manifest)
    results = mailer.send_reports(reports, connections.smtp_settings(conn_id),
                                  state_file=manifest.with_name(mailer.STATE_NAME))
    log.info("email results\n%s", mailer.format_results(results))
    failed = [f"{r.agency_id}/{r.branch_id}" for r in results if r.status == mailer.FAILED]
    if failed:
        raise RuntimeError(f"{len(failed)} report(s) could not be emailed: {', '.join(failed)} "
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
