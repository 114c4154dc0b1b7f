"""Shared files where every worker sees them (issue 18): with FBS_DEBITOR_STORAGE_URL an object
store (here fsspec's ``memory://``, which no other machine could see: what lands there did not go
to this machine's disk), the staff reports, their per-municipality manifests and the mailer's
sent-state, the dry-run output (transfer and backfill), the claim reconciliation report and the
GX Data Docs all go to the store, and the mailer and the status page read them back from it.
The report steps run per municipality: one municipality's failing mail fails only its own task."""

from __future__ import annotations

import datetime as dt
import email
import itertools
import json
import re
import uuid
from pathlib import Path

import fbs_rows as fr
import pytest
from leaks import full_cpr_numbers

from fbs_debitor.core import ledger, storage
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import mailer
from fbs_debitor.quality import report as dq_report

TODAY = dt.date(2026, 11, 20)
SOEVANG, KLINTE = "715100", "726500"          # two agencies, two municipalities
_runs = itertools.count(1)


@pytest.fixture
def shared(monkeypatch, tmp_path, db_urls):
    """A ``memory://`` store of its own as the shared root; var/ (this machine) in the test's folder;
    the databases and the SMTP settings from the environment, as a task outside Airflow reads them."""
    url = f"memory://fbs-debitor-{uuid.uuid4().hex[:12]}/shared"
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", url)
    monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))
    monkeypatch.setenv("FBS_DEBITOR_FBS_URL", db_urls.fbs)
    monkeypatch.setenv("FBS_DEBITOR_LEDGER_URL", db_urls.ledger)
    (tmp_path / "var").mkdir()
    root = storage.root()
    assert not storage.is_local(root)
    return root


def stored(root) -> set[str]:
    """Every file in the store, relative to its root."""
    base = str(root).rstrip("/") + "/"
    return {str(p)[len(base):] for p in root.rglob("*") if p.is_file()}


def local_files(tmp_path: Path) -> set[str]:
    return {p.relative_to(tmp_path / "var").as_posix() for p in (tmp_path / "var").rglob("*") if p.is_file()}


def two_municipalities(stores) -> dict[str, dict]:
    """Søvang (one blocking finding, T5) and Klinte (one warning, I4), in different municipalities."""
    patrons = {}
    with stores.fbs.connect() as conn:
        fr.agency(conn, SOEVANG, name="Søvang Bibliotek", municipality_cvr="29189404")
        fr.agency(conn, KLINTE, name="Klinte Bibliotek", municipality_cvr="60104190", debtor_vendor="PRISME")
        patrons[SOEVANG] = fr.patron(conn, SOEVANG, kind="company", cvr=None)
        patrons[KLINTE] = fr.patron(conn, KLINTE, cpr=fr.MOD11_FAIL_CPR)
        conn.commit()
    for agency_id, code in ((SOEVANG, "T5_company_without_valid_cvr"), (KLINTE, "I4_cpr_fails_modulus_11")):
        c = dq_catalog.check(code)
        pid = patrons[agency_id]["patron_id"]
        ledger.upsert_findings(stores.ledger, f"run-{next(_runs)}", [ledger.Finding(
            check_code=code, rule=c.rule, severity=c.severity, agency_id=agency_id, subject=f"patron:{pid}",
            message=c.title, patron_id=pid, branch_id=f"{agency_id}-01")], dt.datetime(2026, 11, 19, 9, 0))
    return patrons


def smtp_env(monkeypatch, smtp) -> None:
    monkeypatch.setenv("FBS_DEBITOR_SMTP_HOST", smtp.host)
    monkeypatch.setenv("FBS_DEBITOR_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("FBS_DEBITOR_SMTP_FROM", smtp.from_email)


# --- the staff reports, per municipality ------------------------------------------------------------

def test_issue18_M4_reports_per_municipality_land_in_the_store_and_the_mailer_reads_them_back(
        stores, shared, tmp_path, monkeypatch, smtp_server):
    from fbs_debitor.airflow import report_tasks

    patrons = two_municipalities(stores)
    collector, smtp = smtp_server
    smtp_env(monkeypatch, smtp)
    units = report_tasks.report_units(TODAY.isoformat())
    assert [(u["cvr"], u["agencies"], u["report_date"]) for u in units] == [
        ("29189404", [SOEVANG], "2026-11-20"), ("60104190", [KLINTE], "2026-11-20")]
    assert units[0]["label"] == "29189404 Søvang (KMD_OPUS)"
    built = [report_tasks.build_reports(u["report_date"], u) for u in units]
    json.dumps(built)                                                  # XCom: keys and counts only
    assert [(b["unit"]["cvr"], b["branches"], b["open"]) for b in built] == [("29189404", 1, 1), ("60104190", 1, 1)]
    assert built[0]["manifest"] == f"{shared}/reports/2026-11-20/manifests/29189404_KMD_OPUS/manifest.json"
    files = stored(shared)
    for agency_id in (SOEVANG, KLINTE):
        assert {f"reports/2026-11-20/{agency_id}/index.html", f"reports/2026-11-20/{agency_id}/{agency_id}-01/"
                f"datakvalitet.html", f"reports/2026-11-20/{agency_id}/{agency_id}-01/datakvalitet.csv"} <= files
    # each municipality's manifest names only its own branches
    soevang = dq_report.load_manifest(built[0]["manifest"])
    assert [(r.agency_id, r.branch_id) for r in soevang] == [(SOEVANG, f"{SOEVANG}-01")]
    assert not storage.is_local(soevang[0].html_path)
    assert not any(f.startswith("reports") for f in local_files(tmp_path))      # nothing on this disk

    sent = [report_tasks.email_reports(b["manifest"], b["report_date"], b["unit"]) for b in built]
    assert [s[mailer.SENT] for s in sent] == [1, 1]
    assert sorted(r for _, rcpts, _ in collector.received for r in rcpts) == [
        f"hoved@{SOEVANG}.kommune.example", f"hoved@{KLINTE}.kommune.example"]
    mail = email.message_from_bytes(next(raw for _, rcpts, raw in collector.received
                                         if rcpts == [f"hoved@{SOEVANG}.kommune.example"]))
    html = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert str(patrons[SOEVANG]["patron_id"]) in html and str(patrons[KLINTE]["patron_id"]) not in html
    assert "reports/2026-11-20/manifests/29189404_KMD_OPUS/email-status.json" in stored(shared)
    assert full_cpr_numbers(html) == []


def test_issue18_M4_a_refused_mail_fails_only_its_municipality_and_the_retry_sends_only_that(
        stores, shared, monkeypatch, smtp_server):
    from fbs_debitor.airflow import report_tasks

    two_municipalities(stores)
    collector, smtp = smtp_server
    smtp_env(monkeypatch, smtp)
    collector.refuse.add(f"hoved@{SOEVANG}.kommune.example")
    built = [report_tasks.build_reports(u["report_date"], u) for u in report_tasks.report_units(TODAY.isoformat())]
    with pytest.raises(RuntimeError, match=f"29189404 Søvang .*{SOEVANG}/{SOEVANG}-01"):
        report_tasks.email_reports(built[0]["manifest"], built[0]["report_date"], built[0]["unit"])
    assert report_tasks.email_reports(built[1]["manifest"], built[1]["report_date"], built[1]["unit"])[
        mailer.SENT] == 1
    assert [rcpts for _, rcpts, _ in collector.received] == [[f"hoved@{KLINTE}.kommune.example"]]
    # Klinte's retry (another worker: the sent-state is in the store) sends nothing again
    again = report_tasks.email_reports(built[1]["manifest"], built[1]["report_date"], built[1]["unit"])
    assert again[mailer.ALREADY_SENT] == 1 and again[mailer.SENT] == 0
    collector.refuse.clear()
    retry = report_tasks.email_reports(built[0]["manifest"], built[0]["report_date"], built[0]["unit"])
    assert retry[mailer.SENT] == 1
    assert [rcpts for _, rcpts, _ in collector.received] == [[f"hoved@{KLINTE}.kommune.example"],
                                                             [f"hoved@{SOEVANG}.kommune.example"]]


def test_issue18_M4_a_missing_manifest_is_built_again_from_the_store(stores, shared, monkeypatch, smtp_server):
    from fbs_debitor.airflow import report_tasks

    two_municipalities(stores)
    collector, smtp = smtp_server
    smtp_env(monkeypatch, smtp)
    unit = report_tasks.report_units(TODAY.isoformat())[1]
    built = report_tasks.build_reports(unit["report_date"], unit)
    dq_report.location(built["manifest"]).unlink()
    assert report_tasks.email_reports(built["manifest"], built["report_date"], unit)[mailer.SENT] == 1
    assert dq_report.location(built["manifest"]).exists()


def test_issue18_M4_the_cli_report_still_covers_every_municipality_in_the_store(stores, shared, capsys):
    from fbs_debitor import cli

    two_municipalities(stores)
    assert cli.main(["report", "--date", TODAY.isoformat()]) == 0
    files = stored(shared)
    assert "reports/2026-11-20/manifest.json" in files
    reports = dq_report.load_manifest(dq_report.manifest_path(dq_report.report_dir(TODAY)))
    assert sorted(r.agency_id for r in reports) == sorted([KLINTE, SOEVANG])
    assert f"{shared}/reports/2026-11-20/{SOEVANG}/index.html" in capsys.readouterr().out


def test_issue18_M4_build_reports_for_some_agencies_only(stores, shared):
    two_municipalities(stores)
    out = dq_report.report_dir(TODAY)
    reports = dq_report.build_reports(stores, out, TODAY, agencies=[KLINTE])
    assert [(r.agency_id, r.open_count) for r in reports] == [(KLINTE, 1)]
    assert not any(f"/{SOEVANG}/" in f"/{f}" for f in stored(shared))
    assert dq_report.build_reports(stores, out, TODAY, agencies=[]) == []


# --- the status page reads them from the store --------------------------------------------------------

def test_issue18_status_page_links_and_serves_reports_from_the_store(stores, shared):
    from fbs_debitor.airflow import report_tasks, status_page
    from fbs_debitor.status import files
    from fbs_debitor.status.overview import build_overview

    two_municipalities(stores)
    for u in report_tasks.report_units(TODAY.isoformat()):
        report_tasks.build_reports(u["report_date"], u)
    overview = build_overview(stores, day=TODAY, reports_root=dq_report.reports_root())
    assert overview.report_day == "2026-11-20"
    links = {a.agency_id: a.report for m in overview.municipalities for a in m.agencies}
    assert links == {SOEVANG: f"2026-11-20/{SOEVANG}/index.html", KLINTE: f"2026-11-20/{KLINTE}/index.html"}

    app = status_page.create_app()
    serve = next(r for r in app.routes if getattr(r, "path", "") == "/reports/{relpath:path}").endpoint
    page = serve(f"2026-11-20/{SOEVANG}/{SOEVANG}-01/datakvalitet.html")
    assert page.status_code == 200 and page.media_type.startswith("text/html")
    assert "Content-Security-Policy" in page.headers and b"<html" in page.body
    assert serve(f"2026-11-20/{KLINTE}/{KLINTE}-01/datakvalitet.csv").media_type.startswith("text/csv")
    for bad in ("2026-11-20/manifests/29189404_KMD_OPUS/manifest.json", "../reports/2026-11-20/x.html",
                f"2026-11-20/{SOEVANG}/missing.html", f"2026-11-20/{SOEVANG}/.hidden.html", ""):
        assert serve(bad).status_code == 404, bad
        with pytest.raises(files.NotServed):
            status_page.store_file(dq_report.reports_root(), bad)


# --- dry runs, the claim reconciliation report --------------------------------------------------------

def test_issue18_transfer_dry_run_output_lands_in_the_store(stores, shared, tmp_path):
    from fbs_debitor.transfer import dry_run

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        for _ in range(3):
            fr.liability(conn, fr.patron(conn)["patron_id"])
        conn.commit()
    out = dry_run.default_dir("dry-run")
    summary = dry_run.run(stores, out, batch_size=2)
    assert summary["totals"]["claims"] == 3 and summary["out_dir"] == f"{shared}/dry-run"
    files = stored(shared)
    assert {"dry-run/summary.json", "dry-run/problems.csv", "dry-run/715100/batch-00001.xml",
            "dry-run/715100/batch-00002.xml"} <= files
    assert json.loads((out / "summary.json").read_text())["totals"]["claims"] == 3
    assert not any(f.startswith("dry-run") for f in local_files(tmp_path))
    assert not list(Path(tmp_path).glob("fbs-debitor-dry-run-*"))


def test_issue18_backfill_dry_run_is_kept_and_added_up_in_the_store(stores, shared, tmp_path):
    from fbs_debitor.backfill import months as backfill
    from fbs_debitor.transfer import dry_run

    with stores.fbs.connect() as conn:
        fr.agency(conn, cut_off_date=dt.date(2026, 3, 1))
        for day in (dt.date(2025, 11, 10), dt.date(2025, 12, 10)):
            fr.liability(conn, fr.patron(conn)["patron_id"], created_at=dt.datetime.combine(day, dt.time(9)))
        conn.commit()
    request = backfill.parse_request("715100", "2025-11-01", dry_run=True)
    plan = backfill.plan(stores, request, requested_by="manual")
    for chunk in plan.chunks:
        backfill.run_chunk(stores, plan.backfill_id, chunk["chunk_from"])
    result = backfill.finish(stores, plan.backfill_id)
    assert result["summary"] == f"{shared}/backfill/{plan.backfill_id}/summary.json"
    summary = json.loads(dry_run.location(result["summary"]).read_text())
    assert summary["totals"].get("claims") == 2
    assert any(re.fullmatch(rf"backfill/{plan.backfill_id}/2025-1[12]-01/715100/batch-\d+\.xml", f)
               for f in stored(shared))
    assert not any(f.startswith("backfill") for f in local_files(tmp_path))


def test_issue18_claim_reconciliation_report_path_is_in_the_store(shared, tmp_path, monkeypatch):
    from fbs_debitor import cli

    path = cli.claims_report_path("20261120T101010-000001")
    assert str(path) == f"{shared}/reports/claims/reconciliation-20261120T101010-000001.csv"
    # a file:// store elsewhere than var/ (a share every worker mounts): a plain path there
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", (tmp_path / "share").as_uri())
    assert cli.claims_report_path("x") == tmp_path / "share" / "reports" / "claims" / "reconciliation-x.csv"


# --- the GX Data Docs ------------------------------------------------------------------------------

def test_issue18_M4_data_docs_are_built_locally_and_copied_to_the_store_pruned_and_self_contained(
        stores, shared, tmp_path, monkeypatch):
    from fbs_debitor.quality import checks as dq_checks

    monkeypatch.setattr(dq_checks, "DATA_DOCS_RUNS", 1)
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.liability(conn, fr.patron(conn, kind="company", cvr=None)["patron_id"])      # T5 fails
        conn.commit()
    docs = dq_checks.data_docs_dir()
    assert str(docs) == f"{shared}/data_docs"
    first = dq_checks.run_checks(stores, ledger.start_run(stores.ledger, "manual"), data_docs_dir=docs)
    assert first.data_docs == f"{shared}/data_docs/index.html"
    files = stored(shared)
    pages = sorted(f for f in files if f.startswith("data_docs/validations/"))
    results = sorted(f for f in files if f.startswith("gx/validations/"))
    assert "data_docs/index.html" in files and pages and results
    assert any(f.startswith("data_docs/static/") and f.endswith(".css") for f in files)
    index = (docs / "index.html").read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", index)          # no CDN: self-contained
    second = dq_checks.run_checks(stores, ledger.start_run(stores.ledger, "manual"), data_docs_dir=docs)
    assert second.data_docs == first.data_docs
    files = stored(shared)
    assert not set(pages) & files and not set(results) & files             # the older run pruned, there too
    assert [f for f in files if f.startswith("data_docs/validations/")]
    assert not any(f.startswith("data_docs") for f in local_files(tmp_path))   # the site is not here


@pytest.mark.parametrize("url", ["file:///srv/fbs debitor", "file:///srv/x%20y/", "file:///var/lib/fbs-debitor"])
def test_issue19_a_local_root_is_read_from_the_url_without_airflow_and_is_the_same_folder(monkeypatch, url):
    """The hourly run's Data Docs need the root's folder; a file:// root is that folder without
    importing Airflow's ObjectStoragePath (seconds per run), and it is the folder Airflow gives."""
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", url)
    monkeypatch.delenv("FBS_DEBITOR_STORAGE_CONN_ID", raising=False)
    assert storage.local_root() == storage.local_path(storage.root())
    from fbs_debitor.quality import checks

    assert checks.data_docs_dir() == storage.local_path(storage.path("data_docs"))


def test_issue19_an_object_store_root_or_a_connection_is_never_taken_for_a_local_folder(monkeypatch):
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", "memory://fbs-debitor/root")
    assert storage.local_root() is None
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_URL", "file:///srv/fbs")
    monkeypatch.setenv("FBS_DEBITOR_STORAGE_CONN_ID", "shared_disk")
    assert storage.local_root() is None
