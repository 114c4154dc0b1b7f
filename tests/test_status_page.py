"""Issue 20 item 3: the status page inside the Airflow UI, per municipality, what went today.

Two municipalities, built the way the integration builds them (FBS rows, transfers to the debtor
emulator over HTTP, a change, a payments file, alarms raised through ``core.alarms``):

* A (CVR 29189404): agency 715100 (KMD OPUS: 7 claims accepted, a patron group held back, T4,
  then one fee written down and the change accepted) and agency 715101 (1 claim accepted);
  payments: one fee paid in full and one movement for a claim nobody knows (held).
* B (CVR 29189722): agency 726300 (Prisme: 2 accepted, 1 replacement-CPR claim rejected, I3; one
  claim partly paid) and agency 740100 (age limit 0: the whole agency held, C3, its 2 fees blocked).

Fast tests read the overview on SQLite and PostgreSQL; the ``airflow`` ones run a real
``airflow api-server`` (once for the module) with the project's plugins folder and check that the
page, its JSON and the staff reports are refused without a login, match the ledger with one, hold
no full CPR number, serve only files under var/reports, and render in headless Chromium.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import fbs_rows as fr
import pytest
from airflow_env import airflow_env, api_server, api_token, migrate
from browser import artifact, logged_in_page, rendered_dom
from leaks import full_cpr_numbers
from lxml import html as lxml_html
from municipality import municipality
from sqlalchemy import event, text
from transfers import transfer

from fbs_debitor.core import alarms, ledger
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments.files import Movement, to_xml, write_atomically
from fbs_debitor.payments.inbox import FolderInbox
from fbs_debitor.sandbox import emulator
from fbs_debitor.status import files as status_files
from fbs_debitor.status.overview import build_overview, format_overview
from fbs_debitor.status.page import render_status

A, B = "29189404", "29189722"
UNKNOWN_AGENCY = ("999999", 1, 1)   # the movement names an agency FBS does not know
PRISME_UNIT = "6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33"


@pytest.fixture(autouse=True, scope="module")
def copenhagen_clock():
    """The ledger's naive timestamps are local time (``ledger.now()``), and the deployment runs in
    Copenhagen (TZ in docker-compose): the test process too, so "today" is the same day."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Copenhagen"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


# --- the two municipalities ------------------------------------------------------------------------

def build_world(stores, emu_db: str, work: Path) -> dict:
    """The setup described in the module's docstring; returns ids the tests look for."""
    ids = municipality(stores, adults=4)                                   # 715100, municipality A
    with stores.fbs.connect() as conn:
        fr.agency(conn, agency_id="715101", name="Testby Filialbibliotek")  # municipality A too
        second = fr.liability(conn, fr.patron(conn, agency_id="715101")["patron_id"], agency_id="715101")
        fr.agency(conn, agency_id="726300", municipality_cvr=B, debtor_vendor="PRISME", org_unit_uuid=PRISME_UNIT)
        prisme = [fr.liability(conn, fr.patron(conn, agency_id="726300", cpr=c)["patron_id"], agency_id="726300",
                               amount=Decimal("80.00"))["liability_id"] for c in (fr.ADULT_CPR, fr.ADULT2_CPR)]
        nocpr = fr.patron(conn, agency_id="726300", cpr=None, birth_date=dt.date(1988, 1, 2))
        rejected = fr.liability(conn, nocpr["patron_id"], agency_id="726300")["liability_id"]
        fr.agency(conn, agency_id="740100", municipality_cvr=B, age_limit=0)      # C3: held
        held = [fr.liability(conn, fr.patron(conn, agency_id="740100")["patron_id"], agency_id="740100")
                ["liability_id"] for _ in range(2)]
        conn.commit()
    by_org_unit = emulator.vendors_from_fbs(stores.fbs.url.render_as_string(hide_password=False))
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=by_org_unit) as emu:
        transfer(stores, emu.url)
        with stores.fbs.begin() as conn:                                    # a write-down (U1)
            conn.execute(text("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l"),
                         {"a": Decimal("20.00"), "t": dt.datetime.now().replace(microsecond=0),
                          "l": ids["adult"][0]})
        transfer(stores, emu.url)

    inbox = FolderInbox(work / "payments" / "inbox", own=True)
    now = dt.datetime.now().astimezone()
    paid_in_full = ids["adult"][1]                                           # 31.50
    movements = [Movement("MV-1", f"FBS-715100-{paid_in_full}", "payment", Decimal("31.50"), now.date()),
                 Movement("MV-2", f"FBS-726300-{prisme[0]}", "payment", Decimal("30.00"), now.date()),
                 Movement("MV-3", "FBS-999999-12345", "payment", Decimal("10.00"), now.date())]
    write_atomically(inbox.inbox, f"DA-KMD_OPUS-{now:%Y%m%dT%H%M}.xml", to_xml(movements, now))
    run_id = ledger.start_run(stores.ledger, "payments", airflow_dag_id="debitor_payments",
                              airflow_run_id="manual__status-test")
    payments.ingest(stores, inbox, run_id)
    payments.record_run_counts(stores.ledger, run_id)
    ledger.finish_run(stores.ledger, run_id, "success")

    alarms.raise_alarms(stores.ledger, run_id, [
        alarms.Alarm("held_agency", alarms.STAFF, "agency 740100 held: age limit 0 (C3), 2 liabilities wait",
                     "740100"),
        alarms.Alarm("rejections", alarms.STAFF, f"1 claim rejected (I3), patron {fr.ADULT_CPR} among them",
                     "726300"),
        alarms.Alarm("payment_differences", alarms.OPERATOR, "1 difference in the reconciliation", "726300"),
        alarms.Alarm("unconfirmed", alarms.OPERATOR, "the debtor system did not answer 0 claims (test)", None),
    ])
    return {"ids": ids, "second": second["liability_id"], "prisme": prisme, "rejected": rejected, "held": held,
            "paid_in_full": paid_in_full, "payments_run": run_id}


def reports_for(var: Path, day: dt.date, agencies=("715100", "726300")) -> Path:
    """Staff reports as the dq report writes them: var/reports/<day>/<agency>/index.html."""
    root = var / "reports"
    for agency in agencies:
        folder = root / day.isoformat() / agency
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(f"<html><body><h1>Datakvalitet {agency}</h1></body></html>")
    (root / "2020-01-01" / "715100").mkdir(parents=True, exist_ok=True)      # an older day: not linked
    (root / "2020-01-01" / "715100" / "index.html").write_text("old")
    return root


# What the world leaves in the ledger, per municipality (claims, changes and payments of today).
EXPECTED = {
    A: {"claims": {"recorded": 8, "sent": 8, "accepted": 8, "rejected": 0, "unconfirmed": 0, "held": 1,
                   "blocked": 1, "awaiting": 0},
        "changes": {"recorded": 1, "sent": 1, "accepted": 1, "rejected": 0, "unconfirmed": 0},
        "payments": {"received": 1, "applied": 1, "paid": "31.50", "written_off": "0.00", "held": 0,
                     "unwritten": 0},
        "agencies": ["715100", "715101"], "transfer_state": "success", "reconciliation": "ok"},
    B: {"claims": {"recorded": 3, "sent": 3, "accepted": 2, "rejected": 1, "unconfirmed": 0, "held": 2,
                   "blocked": 2, "awaiting": 0},
        "changes": {"recorded": 0, "sent": 0, "accepted": 0, "rejected": 0, "unconfirmed": 0},
        "payments": {"received": 1, "applied": 1, "paid": "30.00", "written_off": "0.00", "held": 0,
                     "unwritten": 0},
        "agencies": ["726300", "740100"], "transfer_state": "held", "reconciliation": "differences"},
}


def check_municipality(m: dict, cvr: str) -> None:
    want = EXPECTED[cvr]
    assert [a["agency_id"] for a in m["agencies"]] == want["agencies"]
    assert m["claims"] == want["claims"], cvr
    assert m["changes"] == want["changes"], cvr
    assert m["payments"] == want["payments"], cvr
    assert (m["transfer_state"], m["reconciliation"]) == (want["transfer_state"], want["reconciliation"])


# --- the overview on both databases -----------------------------------------------------------------

@pytest.fixture
def world(stores, emu_db, tmp_path):
    return build_world(stores, emu_db, tmp_path)


def test_issue20_overview_per_municipality_sums_its_agencies_from_fbs_and_the_ledger(stores, world, tmp_path):
    day = dt.date.today()
    o = build_overview(stores, reports_root=reports_for(tmp_path / "var", day))
    assert o.day == day
    got = o.as_dict()
    assert [m["municipality_cvr"] for m in got["municipalities"]] == [A, B, "-"]
    for m in got["municipalities"][:2]:
        check_municipality(m, m["municipality_cvr"])
    a, b = o.municipality(A), o.municipality(B)
    assert (a.state, b.state) == ("ok", "attention")
    by_id = {ag.agency_id: ag for m in o.municipalities for ag in m.agencies}
    assert by_id["740100"].held_agency and not by_id["726300"].held_agency
    assert by_id["715100"].claims.held == 1 and by_id["715101"].claims.held == 0      # the T4 group
    assert sorted(al.kind for al in b.alarms) == ["held_agency", "payment_differences", "rejections"]
    assert [al.kind for al in o.deployment_alarms] == ["unconfirmed"] and a.alarms == []
    # the newest staff reports of each agency that has one; the newest runs with their Airflow page
    assert {ag: by_id[ag].report for ag in by_id} == {"715100": f"{day}/715100/index.html", "715101": None,
                                                      "726300": f"{day}/726300/index.html", "740100": None,
                                                      "999999": None}
    assert o.report_day == day.isoformat()
    assert o.runs["payments"].airflow_path == "dags/debitor_payments/runs/manual__status-test"
    assert o.runs["transfer"].status == "success" and o.runs_today["transfer"] == {"success": 2}
    assert o.payment_files == {"applied": 1}
    # the movement for a claim of an agency FBS does not know is held, listed apart: not in FBS
    unknown = o.municipality("-")
    assert [(ag.agency_id, ag.payments.received, ag.payments.held) for ag in unknown.agencies] == [UNKNOWN_AGENCY]
    assert (unknown.state, unknown.transfer_state) == ("attention", "none")


def test_issue20_today_is_a_copenhagen_day_what_was_done_yesterday_is_not_counted(stores, world):
    tomorrow = build_overview(stores, day=dt.date.today() + dt.timedelta(days=1)).as_dict()
    for m in tomorrow["municipalities"]:
        assert m["claims"]["sent"] == m["claims"]["accepted"] == m["claims"]["held"] == 0
        assert m["changes"]["recorded"] == 0 and m["payments"]["received"] == m["payments"]["applied"] == 0
    assert tomorrow["runs_today"] == {} and tomorrow["payment_files_today"] == {}
    # what is open now is open whatever the day: the alarms
    assert sum(m["open_alarms"] for m in tomorrow["municipalities"]) == 3


def test_issue20_overview_is_set_based_the_same_queries_for_more_municipalities(stores, world):
    def queries() -> int:
        seen = []

        def count(*_a, **_k):
            seen.append(1)

        for engine in (stores.fbs, stores.ledger):
            event.listen(engine, "before_cursor_execute", count)
        try:
            build_overview(stores)
        finally:
            for engine in (stores.fbs, stores.ledger):
                event.remove(engine, "before_cursor_execute", count)
        return len(seen)

    before = queries()
    with stores.fbs.connect() as conn:
        for i in range(12):
            fr.agency(conn, agency_id=f"8{i:05d}", municipality_cvr=f"3{i:07d}")
        conn.commit()
    alarms.raise_alarms(stores.ledger, None, [alarms.Alarm("held_agency", alarms.STAFF, "held", f"8{i:05d}")
                                              for i in range(12)])
    o = build_overview(stores)
    assert len(o.municipalities) == 15
    assert queries() == before <= 10


def test_issue20_plain_text_overview_has_a_line_per_municipality_and_every_open_alarm(stores, world):
    out = format_overview(build_overview(stores))
    lines = out.splitlines()
    row = {cvr: next(line for line in lines if line.startswith(cvr)) for cvr in (A, B)}
    assert row[A].split()[:8] == [A, "ok", "success", "8", "8", "0", "0", "1"]
    assert row[B].split()[:8] == [B, "attention", "held", "3", "2", "1", "0", "2"]
    assert "open alarms: 4" in out and "payment_differences 726300" in out
    assert full_cpr_numbers(out) == [] and "070781-****" in out          # the alarm's CPR, masked


def test_issue20_rendered_page_escapes_the_data_and_needs_nothing_from_outside(stores, world, tmp_path):
    alarms.raise_alarms(stores.ledger, None, [alarms.Alarm("hostile", alarms.STAFF,
                                                           '<script>alert(1)</script><img src=x>', "715100")])
    body = render_status(build_overview(stores, reports_root=reports_for(tmp_path / "var", dt.date.today())))
    assert "<script" not in body and "&lt;script&gt;" in body and "<img" not in body
    assert "http://" not in body and "https://" not in body and "<link" not in body
    doc = lxml_html.fromstring(body)
    assert doc.xpath(f'//tr[@data-cvr="{B}"]//*[@data-field="claims.rejected"]/text()') == ["1"]
    assert doc.xpath('//a[@class="run-link"]/@href')[0].startswith("../dags/")
    assert full_cpr_numbers(body) == []


# --- which report files are served --------------------------------------------------------------------

def test_issue20_a_database_that_cannot_be_read_gives_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    from fbs_debitor.airflow import status_page
    from fbs_debitor.core.stores import create_fbs_schema
    from fbs_debitor.status.page import render_error

    fbs_url, ledger_url = f"sqlite:///{tmp_path / 'fbs.sqlite'}", f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    monkeypatch.setenv("FBS_DEBITOR_FBS_URL", fbs_url)
    monkeypatch.setenv("FBS_DEBITOR_LEDGER_URL", ledger_url)
    monkeypatch.setattr(status_page, "_STORES", status_page._Stores())
    with pytest.raises(status_page.Unavailable, match=r"not configured: .*fbs.sqlite does not exist"):
        status_page._overview()
    half = open_stores(DatabaseUrls(fbs=fbs_url, ledger=ledger_url))      # FBS there, the ledger never migrated
    create_fbs_schema(half.fbs)
    with half.ledger.begin() as conn:
        conn.execute(text("CREATE TABLE placeholder (x INTEGER)"))
    half.dispose()
    with pytest.raises(status_page.Unavailable, match=r"could not be read \(OperationalError: no such table: run\)") \
            as refused:
        status_page._overview()
    body = render_error("the overview cannot be shown", str(refused.value))
    assert "no such table: run" in body and "Traceback" not in body and "python -m fbs_debitor init" in body


def test_issue20_reports_are_served_only_from_under_the_folder_without_links_and_of_three_kinds(tmp_path):
    root = reports_for(tmp_path / "var", dt.date(2026, 11, 20))
    (root / "2026-11-20" / "715100" / "data.csv").write_text("a;b\n")
    (root / "2026-11-20" / "715100" / "notes.txt").write_text("no")
    (root / "2026-11-20" / "715100" / ".hidden.html").write_text("no")
    secret = tmp_path / "var" / "secret.html"
    secret.write_text("outside")
    (root / "2026-11-20" / "715100" / "link.html").symlink_to(secret)
    (root / "inside-link.html").symlink_to(root / "2026-11-20" / "715100" / "index.html")
    (root / "2026-11-20" / "out").symlink_to(tmp_path / "var", target_is_directory=True)

    path, media = status_files.report_file(root, "2026-11-20/715100/index.html")
    assert path.read_text().startswith("<html>") and media.startswith("text/html")
    assert status_files.report_file(root, "2026-11-20/715100/data.csv")[1].startswith("text/csv")
    for bad in ("../secret.html", "2026-11-20/../../secret.html", "2026-11-20/715100/notes.txt",
                "2026-11-20/715100/.hidden.html", "2026-11-20/715100/link.html", "inside-link.html",
                "2026-11-20/out/secret.html", "2026-11-20/715100/missing.html", "2026-11-20/715100",
                "", "/etc/passwd.html", "2026-11-20//715100/index.html", "2026-11-20\\715100\\index.html"):
        with pytest.raises(status_files.NotServed):
            status_files.report_file(root, bad)


# --- the page in a real api-server -------------------------------------------------------------------

class Server:
    def __init__(self, base: str, var: Path, day: dt.date, password_file: Path):
        self.base, self.var, self.day, self.password_file = base, var, day, password_file

    def get(self, path: str, token: str | None = None, cookie: str | None = None, raw: bool = False):
        """(status, content type, body) of a GET; ``raw`` sends the path as it is (no normalising)."""
        request = urllib.request.Request(self.base + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if cookie:
            request.add_header("Cookie", f"_token={cookie}")
        try:
            with urllib.request.urlopen(request, timeout=60) as r:   # noqa: S310 - loopback only
                return r.status, r.headers.get("content-type", ""), r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("content-type", ""), e.read().decode("utf-8", "replace")

    def token(self, user: str = "operator") -> str:
        """A JWT for one of the api-server's users, as the UI's login gets it (POST /auth/token)."""
        return api_token(self.base, self.password_file, user)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pgcluster import free_port

    work = tmp_path_factory.mktemp("status-server")
    urls = DatabaseUrls(fbs=f"sqlite:///{work / 'fbs.sqlite'}", ledger=f"sqlite:///{work / 'ledger.sqlite'}")
    stores = open_stores(urls)
    init_stores(stores)
    world = build_world(stores, f"sqlite:///{work / 'emulator.sqlite'}", work)
    stores.dispose()
    day = dt.date.today()
    var = work / "var"
    reports_for(var, day)
    env = airflow_env(work, urls)
    port = free_port()
    env.update(TZ="Europe/Copenhagen", FBS_DEBITOR_VAR=str(var),
               AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
               AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="operator:admin,reader:viewer",
               AIRFLOW__API_AUTH__JWT_SECRET="status-page-test-secret-" + os.urandom(8).hex(),
               AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}")
    migrate(env)
    with api_server(env, work, port) as base:
        s = Server(base, var, day, work / "airflow" / "simple_auth_manager_passwords.json.generated")
        s.world = world
        yield s


PROTECTED = ("/fbs-debitor/status", "/fbs-debitor/status.json", "/fbs-debitor/", "/fbs-debitor/reports/{day}/715100/index.html")


@pytest.mark.airflow
def test_issue20_page_api_and_reports_refuse_a_request_without_a_valid_login(server):
    for path in PROTECTED:
        path = path.format(day=server.day)
        for how in ({}, {"token": "not-a-jwt"}, {"cookie": "not-a-jwt"}, {"token": server.token() + "x"}):
            status, _, body = server.get(path, **how)
            assert status in (401, 403), (path, how, status)
            assert A not in body and "Datakvalitet" not in body, (path, how)
    # FastAPI's own documentation routes are not there to bypass the login
    for path in ("/fbs-debitor/docs", "/fbs-debitor/openapi.json"):
        assert server.get(path)[0] in (401, 403, 404)
        assert server.get(path, token=server.token())[0] == 404


@pytest.mark.airflow
def test_issue20_with_a_login_the_json_per_municipality_matches_the_ledger(server):
    token = server.token()
    status, kind, body = server.get("/fbs-debitor/status.json", token=token)
    assert status == 200 and kind.startswith("application/json")
    got = json.loads(body)
    assert got["day"] == server.day.isoformat()
    by_cvr = {m["municipality_cvr"]: m for m in got["municipalities"]}
    for cvr in (A, B):
        check_municipality(by_cvr[cvr], cvr)
    assert by_cvr[B]["open_alarms"] == 3 and by_cvr[A]["open_alarms"] == 0
    assert got["runs"]["payments"]["airflow_path"] == "dags/debitor_payments/runs/manual__status-test"
    # the UI session (the cookie the login sets) is as good as the token
    assert server.get("/fbs-debitor/status.json", cookie=token)[0] == 200
    # the plugin is known to Airflow: the app and the view in the UI's navigation
    status, _, body = server.get("/api/v2/plugins", token=token)
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "fbs_debitor_status")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/fbs-debitor"
    assert plugin["external_views"][0]["href"] == "/fbs-debitor/status"


@pytest.mark.airflow
def test_issue20_reports_are_served_behind_the_login_and_nothing_outside_var_reports(server):
    token = server.token()
    (server.var / "secret.html").write_text("outside the reports")
    status, kind, body = server.get(f"/fbs-debitor/reports/{server.day}/715100/index.html", token=token)
    assert status == 200 and kind.startswith("text/html") and "Datakvalitet 715100" in body
    for path in ("/fbs-debitor/reports/..%2fsecret.html", "/fbs-debitor/reports/%2e%2e/secret.html",
                 f"/fbs-debitor/reports/{server.day}/..%2f..%2fsecret.html", "/fbs-debitor/reports/../secret.html"):
        status, _, body = server.get(path, token=token)
        assert status == 404 and "outside the reports" not in body, path


@pytest.mark.airflow
def test_issue20_no_full_cpr_in_any_response_of_the_status_page(server):
    token = server.token()
    for path in PROTECTED:
        status, _, body = server.get(path.format(day=server.day), token=token)
        assert status == 200, path
        assert full_cpr_numbers(body) == [], path
    status, _, body = server.get("/fbs-debitor/status.json", token=token)
    assert "070781-****" in body          # the alarm naming a patron's CPR is shown masked


@pytest.mark.airflow
@pytest.mark.browser
def test_issue20_status_page_renders_logged_in_in_headless_chromium(server):
    page = f"{server.base}/fbs-debitor/status"
    shot = artifact("status-page.png")
    shot.unlink(missing_ok=True)
    dom = logged_in_page(page, server.token("reader"), shot)
    doc = lxml_html.fromstring(dom)
    assert doc.xpath('//h1/text()') == ["fbs-debitor: today per municipality"]
    assert doc.xpath('//*[@id="day"]/text()') == [server.day.isoformat()]
    rows = {r.get("data-cvr"): r for r in doc.xpath('//tr[@class="municipality"]')}
    assert list(rows) == [A, B, "-"]

    def cell(cvr, field):
        return rows[cvr].xpath(f'.//*[@data-field="{field}"]/text()')[0].strip()

    assert [cell(A, f) for f in ("claims.sent", "claims.accepted", "claims.rejected", "claims.held",
                                 "changes.accepted", "payments.applied", "state")] == [
        "8", "8", "0", "1", "1", "1", "OK"]
    assert [cell(B, f) for f in ("claims.sent", "claims.accepted", "claims.rejected", "claims.held",
                                 "transfer_state", "reconciliation", "open_alarms")] == [
        "3", "2", "1", "2", "Held", "Differences", "3"]
    assert rows[A].xpath('.//a[@class="report"]/@href') == [f"reports/{server.day}/715100/index.html"]
    assert full_cpr_numbers(dom) == []
    assert shot.stat().st_size > 10_000
    # without the cookie the same browser gets no page
    refused = rendered_dom(page)
    assert "today per municipality" not in refused and "Not authenticated" in refused


@pytest.mark.airflow
@pytest.mark.browser
def test_issue20_status_page_is_in_the_airflow_uis_navigation_framed_with_the_same_login(server):
    shot = artifact("status-page-in-airflow-ui.png")
    shot.unlink(missing_ok=True)
    framed = ('document.querySelector("iframe").contentDocument.querySelector("#municipalities") '
              '&& document.querySelector("iframe").contentDocument.documentElement.outerHTML')
    dom = logged_in_page(f"{server.base}/plugin/fbs-debitor-status", server.token("reader"), shot, dom=framed)
    doc = lxml_html.fromstring(dom)
    assert [r.get("data-cvr") for r in doc.xpath('//tr[@class="municipality"]')] == [A, B, "-"]
    assert full_cpr_numbers(dom) == [] and shot.stat().st_size > 10_000
