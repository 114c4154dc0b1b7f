"""The staff data-quality report (M4) and its email (M1), on SQLite and PostgreSQL.

A hand-built FBS: agency 715100 with branches -01 (Hovedbiblioteket) and -02 (Filial Nord), and
agency 751000 with one branch without staff_email. Findings are put straight into the ledger with
chosen first-seen / resolved times, so every expectation below is worked out by hand.
"""

from __future__ import annotations

import datetime as dt
import email
import itertools
import re
import shutil
from dataclasses import dataclass
from decimal import Decimal
from email import policy
from pathlib import Path
from types import SimpleNamespace

import fbs_rows as fr
import jinja2
import pytest
from leaks import full_cpr_numbers
from lxml import html as lxml_html
from pgcluster import free_port
from sqlalchemy import event, text

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import HOME
from fbs_debitor.eligibility import rules as eligibility_rules
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import danish, mailer
from fbs_debitor.quality import report as dq_report

TODAY = dt.date(2026, 11, 20)
A1, A2 = "715100", "751000"
B1, B2, B3 = "715100-01", "715100-02", "751000-01"
MAIL_B1, MAIL_B2 = "hoved@715100.kommune.example", "nord@715100.kommune.example"
RUN = "test-run"


def put(stores, finding: ledger.Finding, first_seen: dt.datetime, resolved: dt.datetime | None = None) -> str:
    """A finding in the ledger as a transfer run would leave it, first seen at ``first_seen``."""
    ledger.upsert_findings(stores.ledger, RUN, [finding], first_seen)
    if resolved is not None:
        with stores.ledger.begin() as conn:
            conn.execute(text("UPDATE finding SET resolved_at = :t WHERE finding_key = :k"),
                         {"t": resolved, "k": finding.key})
    return finding.key


def finding(code: str, agency_id: str, subject: str, message: str, **ids) -> ledger.Finding:
    c = dq_catalog.check(code)
    return ledger.Finding(check_code=code, rule=c.rule, severity=c.severity, agency_id=agency_id, subject=subject,
                          message=message, **ids)


@dataclass
class World:
    keys: dict[str, str]
    patrons: dict[str, dict]
    liabilities: dict[str, dict]


@pytest.fixture
def world(stores) -> World:
    with stores.fbs.connect() as conn:
        fr.agency(conn, A1)                                   # branch 715100-01, hoved@...
        fr.insert(conn, "branch", branch_id=B2, agency_id=A1, name="Filial Nord", staff_email=MAIL_B2)
        fr.agency(conn, A2)                                   # branch 751000-01 ...
        conn.execute(text("UPDATE branch SET staff_email = NULL WHERE branch_id = :b"), {"b": B3})  # ... no email
        p = {
            "anna": fr.patron(conn, name="Anna <Andersen> & Co", cpr=fr.ADULT_CPR),          # B1, a real CPR
            "firm": fr.patron(conn, kind="company", cvr=None, branch_id=B2),
            "kid": fr.patron(conn, branch_id=B2, name="Bo Barn"),
            "carl": fr.patron(conn, agency_id=A2, branch_id=B3, name="Carl Carlsen", cpr=fr.ADULT2_CPR),
        }
        li = {name: fr.liability(conn, p[owner]["patron_id"], agency_id=p[owner]["agency_id"])
              for name, owner in [("anna1", "anna"), ("anna2", "anna"), ("anna3", "anna"), ("anna4", "anna"),
                                  ("firm", "firm"), ("kid", "kid"), ("carl", "carl")]}
        conn.commit()

    def on(name):
        return {"patron_id": li[name]["patron_id"], "liability_id": li[name]["liability_id"]}

    k = {}
    # Agency-level (C3): no branch, no patron -> every branch of 715100.
    k["c3"] = put(stores, finding("C3_agency_age_limit_out_of_range", A1, f"A{A1}",
                                  "Bibliotekets myndighedsalder er 0 (forventet 15-21)"), dt.datetime(2026, 11, 10, 8))
    k["t6"] = put(stores, finding("T6_person_without_usable_cpr", A1, f"L{li['anna1']['liability_id']}",
                                  "CPR 070781-**** er ugyldigt (format eller dato) / malformed CPR number",
                                  branch_id=B1, **on("anna1")), dt.datetime(2026, 10, 1, 8))
    k["i4"] = put(stores, finding("I4_cpr_fails_modulus_11", A1, f"L{li['anna2']['liability_id']}",
                                  "CPR 070781-**** fejler modulus-11 (tilladt siden 2007)",
                                  branch_id=B1, **on("anna2")), dt.datetime(2026, 9, 1, 8))
    k["t4_fixed"] = put(stores, finding("T4_group_without_responsible_patron", A1, f"L{li['anna3']['liability_id']}",
                                        "Lånergruppe uden ansvarlig låner", branch_id=B1, **on("anna3")),
                        dt.datetime(2026, 11, 1, 8), resolved=dt.datetime(2026, 11, 18, 8))
    k["old_fixed"] = put(stores, finding("F2_amount_not_positive", A1, f"L{li['anna4']['liability_id']}",
                                         "Beløbet er 0,00", branch_id=B1, **on("anna4")),
                         dt.datetime(2026, 7, 1, 8), resolved=dt.datetime(2026, 8, 1, 8))
    k["future"] = put(stores, finding("I1_person_without_cpr_or_birth_date", A1, f"P{li['anna4']['patron_id']}",
                                      "Låner uden CPR-nummer og fødselsdato", branch_id=B1,
                                      patron_id=li["anna4"]["patron_id"]), dt.datetime(2026, 11, 21, 8))
    k["t5"] = put(stores, finding("T5_company_without_valid_cvr", A1, f"L{li['firm']['liability_id']}",
                                  "Virksomhed uden CVR-nummer", branch_id=B2, **on("firm")),
                  dt.datetime(2026, 11, 19, 9))
    # No branch on the finding: the patron's branch in FBS (B2) decides.
    k["c5"] = put(stores, finding("C5_minor_without_guardian", A1, f"L{li['kid']['liability_id']}",
                                  "Mindreårig uden økonomisk ansvarlig", **on("kid")), dt.datetime(2026, 11, 15, 8))
    k["carl"] = put(stores, finding("T6_person_without_usable_cpr", A2, f"L{li['carl']['liability_id']}",
                                    "CPR 120872-**** mangler / no CPR", branch_id=B3, **on("carl")),
                    dt.datetime(2026, 11, 12, 8))
    return World(k, p, li)


def by_branch(reports) -> dict[str, dq_report.BranchReport]:
    return {r.branch_id: r for r in reports}


def open_keys(path: Path) -> list[str]:
    """The open findings as the page lists them: the agency's (no patron) on top, then per patron."""
    doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
    return doc.xpath('//table[@id="biblioteket" or @id="aabne"]/tbody/tr/@data-key')


def entries(path: Path) -> list[tuple[str, list[str]]]:
    """The patron entries of "Det skal rettes": (patron header text, finding keys beneath it)."""
    doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
    return [(tb.xpath('tr[@class="laaner-hoved"]')[0].text_content(), tb.xpath("tr/@data-key"))
            for tb in doc.xpath('//table[@id="aabne"]/tbody[@class="laaner"]')]


def chart(path: Path) -> dict[str, tuple[int, int, int]]:
    """The chart's days: (open, blocking, warning) at the day's end."""
    return {day: v[:3] for day, v in trend(path).items()}


def trend(path: Path) -> dict[str, tuple[int, ...]]:
    """The chart's days: (open, blocking, warning, new, fixed in FBS, resolved otherwise)."""
    doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
    return {g.get("data-day"): tuple(int(g.get(f"data-{a}")) for a in ("open", "blocking", "warning", "new", "fixed",
                                                                        "other"))
            for g in doc.xpath('//section[@id="udvikling"]//*[local-name()="g"][@data-day]')}


def trend_table(path: Path) -> dict[str, list[str]]:
    """The trend's accessible table: ISO day -> [Dato, Nye, Åbne, Heraf blokerende, Rettet i FBS, Løst på anden måde]."""
    doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
    return {tr.get("data-day"): [c.text_content() for c in tr.xpath("th|td")]
            for tr in doc.xpath('//table[@id="udvikling-tabel"]/tbody/tr')}


# --- content -----------------------------------------------------------------------------------

def test_M4_issue20_each_branch_gets_its_own_findings_per_patron_blocking_first_then_oldest(stores, world,
                                                                                          tmp_path):
    k = world.keys
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    assert set(reports) == {B1, B2, B3}
    for b, r in reports.items():
        assert r.html_path == tmp_path / r.agency_id / b / "datakvalitet.html" and r.html_path.exists()
        assert r.csv_path == tmp_path / r.agency_id / b / "datakvalitet.csv" and r.csv_path.exists()

    # The agency-level C3 on top, in both branches of 715100 and not in 751000; then one entry per
    # patron, its findings oldest first (Anna: the I4 warning of 1 Sep before the T6 of 1 Oct);
    # patrons with a blocking finding first (the firm before the kid); the C5 finding without branch
    # lands on the patron's branch (B2).
    assert open_keys(reports[B1].html_path) == [k["c3"], k["i4"], k["t6"]]
    assert open_keys(reports[B2].html_path) == [k["c3"], k["t5"], k["c5"]]
    assert open_keys(reports[B3].html_path) == [k["carl"]]
    anna, firm, kid = (world.patrons[p]["patron_id"] for p in ("anna", "firm", "kid"))
    assert [(head.split()[0], keys) for head, keys in entries(reports[B1].html_path)] == [
        (str(anna), [k["i4"], k["t6"]])]
    assert [(head.split()[0], keys) for head, keys in entries(reports[B2].html_path)] == [
        (str(firm), [k["t5"]]), (str(kid), [k["c5"]])]
    # Neither a finding fixed long ago nor one first seen after the report's day is there.
    for r in reports.values():
        page = r.html_path.read_text(encoding="utf-8")
        assert k["old_fixed"] not in page and k["future"] not in page

    doc = lxml_html.fromstring(reports[B1].html_path.read_text(encoding="utf-8"))
    t6_row = doc.xpath(f'//tr[@data-key="{k["t6"]}"]')[0].text_content()
    anna1 = world.liabilities["anna1"]
    ((head, _),) = entries(reports[B1].html_path)
    assert head.startswith(f"{anna} Anna <Andersen> & Co · 2 fund på 2 mellemværender")      # number and name, once
    assert str(anna1["liability_id"]) in t6_row and anna1["number"] in t6_row                  # the liability ...
    assert "60,00 kr." in t6_row                                                                # ... and its amount
    assert dq_catalog.check("T6_person_without_usable_cpr").why in t6_row                      # why it matters
    assert "01.10.2026" in t6_row and "Blokerer" in t6_row
    assert "hele biblioteket" in doc.xpath(f'//table[@id="biblioteket"]//tr[@data-key="{k["c3"]}"]')[0].text_content()
    page = reports[B1].html_path.read_text(encoding="utf-8")
    assert '<html lang="da">' in page and "Det skal rettes" in page and "hele bibliotekets overførsel" in page.lower()


def test_M4_summary_counts_open_new_and_fixed_per_check(stores, world, tmp_path):
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    b1, b2, b3 = reports[B1], reports[B2], reports[B3]
    assert (b1.open_count, b1.new_count, b1.resolved_count, b1.blocking_count, b1.warning_count) == (3, 0, 1, 2, 1)
    none = {"integration": 0, "out_of_scope": 0}
    assert b1.counts == {"C3_agency_age_limit_out_of_range": {"open": 1, "new": 0, "resolved": 0, **none},
                         "I4_cpr_fails_modulus_11": {"open": 1, "new": 0, "resolved": 0, **none},
                         "T4_group_without_responsible_patron": {"open": 0, "new": 0, "resolved": 1, **none},
                         "T6_person_without_usable_cpr": {"open": 1, "new": 0, "resolved": 0, **none}}
    # T5 was first seen yesterday: new.
    assert (b2.open_count, b2.new_count, b2.resolved_count) == (3, 1, 0)
    assert b2.counts["T5_company_without_valid_cvr"] == {"open": 1, "new": 1, "resolved": 0, **none}
    assert b1.agency_blocked and b2.agency_blocked and not b3.agency_blocked
    assert (b3.open_count, b3.blocking_count) == (1, 1)

    doc = lxml_html.fromstring(b1.html_path.read_text(encoding="utf-8"))
    summary = {tr.get("data-check"): [td.text_content() for td in tr.xpath("td")]
               for tr in doc.xpath('//table[@id="tjek"]/tbody/tr')}
    assert summary["T4_group_without_responsible_patron"][3:8] == ["0", "0", "1", "0", "0"]
    assert summary["T6_person_without_usable_cpr"][8] == dq_catalog.check("T6_person_without_usable_cpr").why
    # Blocking checks before warnings in the summary too.
    assert list(summary)[-1] == "I4_cpr_fails_modulus_11"
    # The fixed list: what was fixed in the last 7 days, not what was fixed in August.
    assert doc.xpath('//ul[@id="rettet-liste"]/li/@data-key') == [world.keys["t4_fixed"]]


def test_M4_chart_counts_open_findings_per_day_from_first_seen_and_resolved(stores, world, tmp_path):
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    days = chart(reports[B1].html_path)
    assert len(days) == 30 and min(days) == "2026-10-22" and max(days) == "2026-11-20"
    assert days["2026-10-22"] == (2, 1, 1)    # T6 (since 1 Oct) and I4 (since 1 Sep)
    assert days["2026-11-05"] == (3, 2, 1)    # + T4 (1 Nov - 18 Nov)
    assert days["2026-11-17"] == (4, 3, 1)    # + C3 (since 10 Nov)
    assert days["2026-11-18"] == (3, 2, 1)    # T4 resolved on the 18th: no longer open that day
    assert days["2026-11-20"][0] == reports[B1].open_count
    assert chart(reports[B2].html_path)["2026-11-19"] == (3, 2, 1)
    assert chart(reports[B2].html_path)["2026-11-18"] == (2, 1, 1)


def test_M4_issue20_trend_shows_new_open_and_fixed_per_day_in_chart_and_table(stores, world, tmp_path):
    """Issue 20: the 30-day trend has, per day, the findings first seen that day (new), those open at
    its end and those fixed in FBS that day (and resolved otherwise); the numbers add up, and the
    table says the same as the chart, in Danish formats."""
    # B1 also: one the integration resolved on 12 Nov (first seen 5 Nov), one first seen and fixed on 14 Nov.
    resolve(stores, put(stores, finding("I1_person_without_cpr_or_birth_date", A1, "P-i1", "Låner uden CPR",
                                        branch_id=B1), dt.datetime(2026, 11, 5, 8)),
            dt.datetime(2026, 11, 12, 9), "integration")
    put(stores, finding("F3_dates_out_of_order", A1, "L-f3", "Datoer", branch_id=B1), dt.datetime(2026, 11, 14, 8),
        resolved=dt.datetime(2026, 11, 14, 15))
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    days = trend(reports[B1].html_path)
    assert len(days) == 30
    new = {d: v[3] for d, v in days.items() if v[3]}
    fixed = {d: v[4] for d, v in days.items() if v[4]}
    other = {d: v[5] for d, v in days.items() if v[5]}
    # T4 (1 Nov), I1 (5 Nov), C3 (10 Nov), F3 (14 Nov); T6 and I4 were first seen before the window.
    assert new == {"2026-11-01": 1, "2026-11-05": 1, "2026-11-10": 1, "2026-11-14": 1}
    assert fixed == {"2026-11-14": 1, "2026-11-18": 1}              # F3 the same day, T4 (resolution NULL: fixed)
    assert other == {"2026-11-12": 1}                                # I1, by the integration: not fixed by staff
    ordered = sorted(days)
    for before, day in itertools.pairwise(ordered):
        assert days[day][0] == days[before][0] + days[day][3] - days[day][4] - days[day][5], day
    assert days["2026-11-20"][0] == reports[B1].open_count
    table = trend_table(reports[B1].html_path)
    assert list(table) == sorted(days, reverse=True)                 # newest first
    assert table["2026-11-14"] == ["14.11.2026", "1", "4", "3", "1", "0"]
    assert table["2026-11-12"] == ["12.11.2026", "0", "4", "3", "0", "1"]
    for day, (opened, blocking, _w, n, f, o) in days.items():
        assert table[day][1:] == [str(n), str(opened), str(blocking), str(f), str(o)]


def test_M4_report_for_an_earlier_day_shows_the_state_of_that_day(stores, world, tmp_path):
    k = world.keys
    reports = by_branch(dq_report.build_reports(stores, tmp_path, dt.date(2026, 11, 17)))
    # T4 was resolved on the 18th, so on the 17th it is open; T5 (first seen the 19th) is not there yet.
    assert open_keys(reports[B1].html_path) == [k["c3"], k["i4"], k["t6"], k["t4_fixed"]]
    assert open_keys(reports[B2].html_path) == [k["c3"], k["c5"]]
    assert reports[B1].resolved_count == 0


# --- issue 20: one entry per patron, Danish only, Danish formats, every row explained -----------

def test_issue20_danish_amounts_are_exact_with_comma_thousands_dots_and_never_rounded():
    assert danish.kroner(Decimal("-30.00")) == "-30,00 kr."
    assert danish.kroner(Decimal("1234.50")) == "1.234,50 kr."
    assert danish.kroner(Decimal("1234567.5")) == "1.234.567,50 kr."          # øre added: the same number
    assert danish.kroner(Decimal("-1234567.89")) == "-1.234.567,89 kr."
    assert danish.kroner(0) == "0,00 kr." and danish.kroner(Decimal("-0.00")) == "0,00 kr."
    assert danish.kroner(Decimal("999.99")) == "999,99 kr." and danish.kroner(Decimal("1000")) == "1.000,00 kr."
    # More than two decimals: every one shown, nothing rounded away.
    assert danish.kroner(Decimal("12.345")) == "12,345 kr."
    assert danish.kroner(Decimal("-0.005")) == "-0,005 kr."
    assert danish.kroner(Decimal("1E+3")) == "1.000,00 kr."
    assert danish.csv_amount(Decimal("-1234.50")) == "-1234,50" and danish.csv_amount(Decimal("12.345")) == "12,345"
    with pytest.raises(TypeError):
        danish.kroner(30.1)                                                     # never a float
    with pytest.raises(ValueError):
        danish.kroner(Decimal("NaN"))


def test_issue20_danish_dates_counts_and_the_danish_half_of_a_message():
    assert danish.date(dt.date(2026, 11, 30)) == "30.11.2026" and danish.date(dt.datetime(2026, 1, 2, 23)) == "02.01.2026"
    assert danish.count(0) == "0" and danish.count(999) == "999" and danish.count(1234) == "1.234"
    assert danish.count(1234567) == "1.234.567" and danish.count(-1234) == "-1.234"
    assert danish.danish_part("Beløbet er -30.00 kr.; en fordring skal være positiv / the amount must be positive") \
        == "Beløbet er -30,00 kr.; en fordring skal være positiv"
    assert danish.danish_part("Beløbet 1234.567 kr. kan ikke sendes præcist: 3 decimaler / the amount ...") \
        == "Beløbet 1.234,567 kr. kan ikke sendes præcist: 3 decimaler"
    assert danish.danish_part("fødselsdatoen 2026-02-30 kan ikke bruges") == "fødselsdatoen 30.02.2026 kan ikke bruges"
    assert danish.danish_part("Mindreårig uden økonomisk ansvarlig") == "Mindreårig uden økonomisk ansvarlig"
    # A number that is not an amount (no "kr.") and a liability number stay as they are.
    assert danish.danish_part("Låner 12345, mellemværende G00012.5") == "Låner 12345, mellemværende G00012.5"


def test_M4_issue20_counts_in_danish_singular_and_plural_on_the_page_and_in_the_mail(stores, world, tmp_path):
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    totals = lxml_html.fromstring(reports[B3].html_path.read_text(encoding="utf-8")).xpath('//p[@class="totals"]')
    assert totals[0].text_content().startswith("1 åbent fund: 1 blokerende og 0 advarsler. 0 nye siden i går.")
    totals = lxml_html.fromstring(reports[B2].html_path.read_text(encoding="utf-8")).xpath('//p[@class="totals"]')
    assert totals[0].text_content().startswith("3 åbne fund: 2 blokerende og 1 advarsel. 1 ny siden i går.")
    env = dq_report.templates()
    big = dq_report.BranchReport.from_dict({**reports[B3].as_dict(), "open_count": 12345, "warning_count": 1})
    assert env.get_template("mail_subject.txt.j2").render(report=reports[B3]).strip() == (
        "Datakvalitet 20.11.2026: Hovedbiblioteket – 1 åbent fund (1 blokerende)")
    plain = env.get_template("mail.txt.j2").render(report=big)
    assert "12.345 åbne fund: 1 blokerende og 1 advarsel." in plain


def test_M4_issue20_a_group_with_six_liabilities_is_one_entry_with_six_lines(stores, world, tmp_path):
    """Issue 20: the staff report showed a patron group once per liability (six times). T4 records a
    finding per liability, all on the group (transfer.run: the group is the subject patron); the
    report shows the group once, its six liabilities beneath it, oldest first, each with its amount."""
    amounts = ["60.00", "1234.50", "30.00", "0.50", "100.00", "45.25"]
    with stores.fbs.begin() as conn:
        group = fr.patron(conn, kind="group", name="Skoleklasse 8C", branch_id=B2)
        lis = [fr.liability(conn, group["patron_id"], amount=Decimal(a)) for a in amounts]
    keys = {}
    for i in reversed(range(6)):           # recorded newest first: the page orders them, not the ledger
        keys[i] = put(stores, finding("T4_group_without_responsible_patron", A1, f"L{lis[i]['liability_id']}",
                                      eligibility_rules.T4_REASON, branch_id=B2, patron_id=group["patron_id"],
                                      liability_id=lis[i]["liability_id"]), dt.datetime(2026, 11, 3 + i, 8))
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    found = [(head, ks) for head, ks in entries(reports[B2].html_path) if head.startswith(f"{group['patron_id']} ")]
    assert len(found) == 1
    head, shown = found[0]
    assert head.startswith(f"{group['patron_id']} Skoleklasse 8C · 6 fund på 6 mellemværender")
    assert shown == [keys[i] for i in range(6)]                            # oldest first (3 Nov ... 8 Nov)
    doc = lxml_html.fromstring(reports[B2].html_path.read_text(encoding="utf-8"))
    assert [doc.xpath(f'//tr[@data-key="{k}"]//span[@class="beloeb"]')[0].text_content() for k in shown] == [
        "60,00 kr.", "1.234,50 kr.", "30,00 kr.", "0,50 kr.", "100,00 kr.", "45,25 kr."]
    # Blocking (T4) before the kid's warning (C5), the firm (T5, blocking, 19 Nov) after the group (3 Nov).
    order = [head.split()[0] for head, _ in entries(reports[B2].html_path)]
    assert order == [str(group["patron_id"]), str(world.patrons["firm"]["patron_id"]),
                     str(world.patrons["kid"]["patron_id"])]
    # The CSV: one line per finding, in the page's order, amounts with a decimal comma.
    import pandas as pd
    df = pd.read_csv(reports[B2].csv_path, sep=";", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert list(df["Fund-id"]) == open_keys(reports[B2].html_path)
    assert list(df[df["Lånernummer"] == str(group["patron_id"])]["Beløb (kr.)"]) == [
        "60,00", "1234,50", "30,00", "0,50", "100,00", "45,25"]


# Messages as the rules and the claim builder write them ("Danish / English"), and their English halves.
BILINGUAL = {
    "T4_group_without_responsible_patron": eligibility_rules.T4_REASON,
    "F2_amount_not_positive": "Beløbet er -30.00 kr.; en fordring skal være positiv / the amount must be positive",
    "T6_person_without_usable_cpr": "Person uden CPR-nummer, og erstatnings-CPR er slået fra / "
                                    "no CPR number and replacement CPR is disabled",
    "T5_company_without_valid_cvr": "Virksomhed uden gyldigt CVR-nummer: CVR mangler / no CVR number",
    "C3_agency_age_limit_out_of_range": "Bibliotekets myndighedsalder er 0 (forventet 15-21): alle ville blive "
                                        "klassificeret forkert / the agency's age limit 0 is outside 15-21",
}
ENGLISH_WORDS = re.compile(r"\b(the|is|must|number|patron|amount|liability|cannot|missing|disabled|outside|"
                           r"unknown|invalid|not)\b", re.IGNORECASE)


def visible_text(path: Path) -> str:
    doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
    for el in doc.xpath("//style"):
        el.drop_tree()
    return doc.text_content()


def test_M4_issue20_danish_only_every_catalog_code_has_its_danish_explanation(stores, tmp_path):
    """Issue 20: every check of the catalog (and a code it does not know) renders as a row with its
    Danish title, a detail line and its explanation; the English halves of the messages (for the
    integration team's logs) appear neither in the HTML nor in the CSV; amounts are Danish."""
    with stores.fbs.begin() as conn:
        fr.agency(conn, A1)
        patron = fr.patron(conn, name="Dorte Dansk")
        lis = {code: fr.liability(conn, patron["patron_id"], amount=Decimal("-30.00")) for code in dq_catalog.CHECKS}
    codes = [*dq_catalog.CHECKS, "X9_check_added_elsewhere_first"]
    for i, code in enumerate(codes):
        c = dq_catalog.check(code)
        message = BILINGUAL.get(code, c.title)
        if c.severity == dq_catalog.BLOCKS_AGENCY:
            f = finding(code, A1, f"A-{code}", message)
        else:
            li = lis.get(code) or fr_liability_of(lis)
            f = finding(code, A1, f"L-{code}", message, branch_id=B1, patron_id=patron["patron_id"],
                        liability_id=li["liability_id"])
        put(stores, f, dt.datetime(2026, 11, 1, 8) + dt.timedelta(hours=i))
    report = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))[B1]
    doc = lxml_html.fromstring(report.html_path.read_text(encoding="utf-8"))
    rows = {tr.get("data-key").split(":")[0]: tr for tr in doc.xpath('//tr[@data-key]')}
    assert set(rows) == set(codes)
    for code in codes:
        c = dq_catalog.CHECKS.get(code)
        title = rows[code].xpath('.//*[@class="titel"]')[0].text_content()
        detail = rows[code].xpath('.//div[@class="detalje"]')[0].text_content()
        why = rows[code].xpath('.//div[@class="why"]')[0].text_content()
        assert detail.strip() and why.strip(), code                       # no row without its lines
        assert ENGLISH_WORDS.findall(title + " " + detail + " " + why) == [], (code, title, detail, why)
        if c is not None:
            assert (title, why) == (c.title, c.why)
        else:
            assert (title, why) == ("Ukendt tjek (X9)", dq_report.UNKNOWN_WHY)
        if code in BILINGUAL:
            assert detail == danish.danish_part(BILINGUAL[code]), code
    assert rows["F2_amount_not_positive"].xpath('.//div[@class="detalje"]')[0].text_content() == \
        "Beløbet er -30,00 kr.; en fordring skal være positiv"
    # Where the message says nothing beyond the title, the detail line names the liability and its amount.
    i1 = rows["I1_person_without_cpr_or_birth_date"].xpath('.//div[@class="detalje"]')[0].text_content()
    assert i1 == f"Gælder mellemværende {lis['I1_person_without_cpr_or_birth_date']['number']} på -30,00 kr."
    csv_text = report.csv_path.read_text(encoding="utf-8-sig")
    for text_ in (visible_text(report.html_path), csv_text):
        for message in BILINGUAL.values():
            english = message.split(" / ", 1)[1]
            assert english not in text_
        assert " / the " not in text_ and "-30.00" not in text_ and "2026-11-01" not in text_
    assert "-30,00 kr." in visible_text(report.html_path) and ";-30,00;" in csv_text


def fr_liability_of(lis: dict) -> dict:
    return next(iter(lis.values()))


def test_M4_issue20_amounts_as_fbs_holds_them_never_rounded(stores, tmp_path):
    """Issue 20: an amount FBS holds with more than two decimals (SQLite keeps 12.345 as written) is
    shown with all of them; 1234.5 reads 1.234,50 kr.; on PostgreSQL NUMERIC(12,2) keeps two."""
    with stores.fbs.begin() as conn:
        fr.agency(conn, A1)
        p = fr.patron(conn, name="Ole Øre")
        exact = fr.liability(conn, p["patron_id"], amount=Decimal("1234.5"))
        sqlite = stores.fbs.dialect.name == "sqlite"
        odd = fr.liability(conn, p["patron_id"], amount=Decimal("12.345")) if sqlite else None
        text_ = fr.liability(conn, p["patron_id"], amount="12,50") if sqlite else None   # SQLite keeps it as text
    put(stores, finding("F2_amount_not_exact", A1, "L-exact", "Beløbet", branch_id=B1, patron_id=p["patron_id"],
                        liability_id=exact["liability_id"]), dt.datetime(2026, 11, 1, 8))
    for i, li in enumerate((odd, text_)):
        if li:
            put(stores, finding("F2_amount_not_exact", A1, f"L-odd{i}", "Beløbet", branch_id=B1,
                                patron_id=p["patron_id"], liability_id=li["liability_id"]), dt.datetime(2026, 11, 2, 8))
    report = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))[B1]
    page = visible_text(report.html_path)
    assert "1.234,50 kr." in page
    csv_text = report.csv_path.read_text(encoding="utf-8-sig")
    assert ";1234,50;" in csv_text
    if odd:
        assert "12,345 kr." in page and ";12,345;" in csv_text and "12,35" not in page + csv_text
        # What is not a number is shown as FBS holds it, marked, never guessed at.
        assert "ulæseligt beløb: 12,50" in page and ";ulæseligt beløb: 12,50;" in csv_text


# --- no CPR, escaping, self-contained ----------------------------------------------------------

def test_M4_no_full_cpr_number_in_html_or_csv(stores, world, tmp_path):
    # Anna has a real CPR in FBS; and one finding was (wrongly) written with the full number.
    anna = world.patrons["anna"]
    put(stores, finding("T6_person_without_usable_cpr", A1, "P-raw", f"CPR {fr.ADULT_CPR} kunne ikke bruges",
                        branch_id=B1, patron_id=anna["patron_id"]), dt.datetime(2026, 11, 19, 8))
    reports = dq_report.build_reports(stores, tmp_path, TODAY)
    files = [p for r in reports for p in (r.html_path, r.csv_path)] + list(tmp_path.rglob("index.html"))
    assert len(files) == 8
    for path in files:
        assert full_cpr_numbers(path.read_text(encoding="utf-8-sig")) == [], path
    b1 = by_branch(reports)[B1]
    assert "CPR 070781-**** kunne ikke bruges" in b1.html_path.read_text(encoding="utf-8")
    assert "CPR 070781-**** kunne ikke bruges" in b1.csv_path.read_text(encoding="utf-8-sig")


def test_M4_html_escapes_all_text_and_needs_nothing_from_outside(stores, world, tmp_path):
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE branch SET name = :n WHERE branch_id = :b"),
                     {"n": '<script>alert("x")</script> Filial', "b": B2})
    key = put(stores, finding("F3_dates_out_of_order", A1, "L-esc", '<img src=x onerror="alert(1)"> & "datoer"',
                              branch_id=B2), dt.datetime(2026, 11, 19, 8))
    page = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))[B2].html_path.read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page
    # Escaped (a quote may be spelled &quot; or &#34;), and so shown as the very text FBS holds.
    q = "(?:&quot;|&#34;)"
    assert re.search(rf"&lt;script&gt;alert\({q}x{q}\)&lt;/script&gt; Filial", page)
    assert re.search(rf"&lt;img src=x onerror={q}alert\(1\){q}&gt; &amp; {q}datoer{q}", page)
    doc = lxml_html.fromstring(page)
    assert doc.xpath("//h1")[0].text_content() == 'Datakvalitet: <script>alert("x")</script> Filial'
    assert '<img src=x onerror="alert(1)"> & "datoer"' in doc.xpath(f'//tr[@data-key="{key}"]')[0].text_content()
    # Self-contained: inline CSS and SVG, no external stylesheet, script, image or font.
    assert "<style>" in page and "<svg" in page
    assert not re.search(r"<link|<script|<img|@import|url\(|src=\"|href=\"https?:", page)


EVIL_NAME = '<script>alert(1)</script> "><img src=x onerror=alert(2)> Eva'
EVIL_MESSAGE = '"><img src=x onerror=alert(3)> <script>alert(4)</script> & co'
EVIL_SUBJECT = 'x"><img src=x onerror=alert(5)>'      # the finding key, which goes into an attribute
EVIL_NUMBER = '"><svg onload=x>'                     # a liability number (VARCHAR(20) in FBS)
EVIL_MAIL = '<b onmouseover=alert(6)>hoved</b>@x.dk'
EVIL_AGENCY = "<script>alert(7)</script> Testby"


def markup_from_data(doc) -> list[str]:
    """Elements and attributes no report template writes: any of them came from the data."""
    return [el.tag for el in doc.xpath("//script | //img | //iframe | //object | //embed | //link")] + \
        [f"@{a.attrname}" for a in doc.xpath("//@*") if a.attrname.lower().startswith("on")]


def test_M4_hostile_names_messages_and_ids_are_shown_as_text_on_every_page(stores, world, tmp_path):
    """M4 (autoescaping): what FBS or a finding holds is shown as text, in element text and in
    attributes, on the branch page (open rows, fixed list, header) and the agency index."""
    with stores.fbs.begin() as conn:
        evil = fr.patron(conn, name=EVIL_NAME)                                    # branch B1
        evil_li = fr.liability(conn, evil["patron_id"], number=EVIL_NUMBER)
        conn.execute(text("UPDATE branch SET staff_email = :m WHERE branch_id = :b"), {"m": EVIL_MAIL, "b": B1})
        conn.execute(text("UPDATE agency SET name = :n WHERE agency_id = :a"), {"n": EVIL_AGENCY, "a": A1})
    ids = {"patron_id": evil["patron_id"], "liability_id": evil_li["liability_id"]}
    key = put(stores, finding("T6_person_without_usable_cpr", A1, EVIL_SUBJECT, EVIL_MESSAGE, branch_id=B1, **ids),
              dt.datetime(2026, 11, 19, 8))
    fixed = put(stores, finding("F2_amount_not_positive", A1, "L-evil-fixed", EVIL_MESSAGE, branch_id=B1, **ids),
                dt.datetime(2026, 11, 1, 8), resolved=dt.datetime(2026, 11, 19, 9))
    report = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))[B1]

    page = report.html_path.read_text(encoding="utf-8")
    doc = lxml_html.fromstring(page)
    assert markup_from_data(doc) == []
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page
    rows = {tr.get("data-key"): tr for tr in doc.xpath('//table[@id="aabne"]/tbody/tr')}
    assert key in rows                                       # the attribute holds the key exactly
    cells = [td.text_content() for td in rows[key].xpath("td")]
    assert EVIL_MESSAGE in cells[3] and EVIL_NUMBER in cells[0]
    (head,) = [h for h, keys in entries(report.html_path) if key in keys]
    assert head.startswith(f"{evil['patron_id']} {EVIL_NAME} · ")
    (li,) = doc.xpath(f'//ul[@id="rettet-liste"]/li[@data-key="{fixed}"]')
    assert EVIL_NAME in li.text_content() and f"nr. {EVIL_NUMBER} " in li.text_content()
    assert doc.xpath("//header/p")[0].text_content().startswith(f"{EVIL_AGENCY} (bibliotek {A1})")

    index = lxml_html.fromstring((tmp_path / A1 / "index.html").read_text(encoding="utf-8"))
    assert markup_from_data(index) == []
    assert index.xpath("//h1")[0].text_content() == f"Datakvalitet: {EVIL_AGENCY}"
    assert EVIL_MAIL in [td.text_content() for td in index.xpath('//table[@id="filialer"]/tbody/tr/td')]


def edited_templates(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of the report's template folder with ``file: (old text, new text)`` edits made."""
    folder = tmp_path / "templates"
    shutil.copytree(dq_report.TEMPLATE_DIR, folder)
    for name, (old, new) in edits.items():
        path = folder / name
        content = path.read_text(encoding="utf-8")
        assert old in content, (name, old)
        path.write_text(content.replace(old, new), encoding="utf-8")
    return folder


def test_M4_staff_texts_come_from_the_templates_and_an_edited_copy_changes_them(stores, world, tmp_path,
                                                                                  smtp_server):
    """M4/M1: every Danish text of the page and the mail is in the template folder; an edited copy
    changes what staff see without touching Python, and the package's own folder is the default."""
    handler, smtp = smtp_server
    folder = edited_templates(tmp_path, {
        "datakvalitet.html.j2": ("<h2>Det skal rettes</h2>", "<h2>Ret disse i FBS</h2>"),
        "_finding_row.html.j2": ('"hele biblioteket"', '"alle filialer"'),
        "chart.svg.j2": (">åbne, blokerende</text>", ">stopper</text>"),
        "_layout.html.j2": ("kontakt kommunens it-afdeling", "ring til biblioteksservice"),
        "index.html.j2": ("<th>Sendes til</th>", "<th>Modtager</th>"),
        "mail_subject.txt.j2": ("Datakvalitet {{", "Fejl i FBS-data {{"),
        "mail.txt.j2": ("Rapporten står i denne mail (HTML).", "Se rapporten nedenfor."),
    })
    edited = by_branch(dq_report.build_reports(stores, tmp_path / "edited", TODAY, template_dir=folder))
    plain = by_branch(dq_report.build_reports(stores, tmp_path / "plain", TODAY))
    for reports, texts, others in [(edited, ("Ret disse i FBS", "<i>alle filialer</i>", ">stopper<", "biblioteksservice",
                                             "<th>Modtager</th>"), ("Det skal rettes", "Sendes til")),
                                   (plain, ("Det skal rettes", "<i>hele biblioteket</i>", ">åbne, blokerende<",
                                            "kommunens it-afdeling", "<th>Sendes til</th>"),
                                    ("Ret disse i FBS", "Modtager"))]:
        page = reports[B1].html_path.read_text(encoding="utf-8") + \
            (reports[B1].html_path.parent.parent / "index.html").read_text(encoding="utf-8")
        assert all(t in page for t in texts) and not any(t in page for t in others)
        # ... and the same findings, in the same order, either way.
        assert open_keys(reports[B1].html_path) == [world.keys["c3"], world.keys["i4"], world.keys["t6"]]

    mailer.send_reports([edited[B1]], smtp, template_dir=folder)
    mailer.send_reports([plain[B1]], smtp)
    (msg_edited, _b, text_edited, *_), (msg_plain, _b2, text_plain, *_) = [parts(raw) for *_x, raw in handler.received]
    assert msg_edited["Subject"].startswith("Fejl i FBS-data 20.11.2026: Hovedbiblioteket")
    assert msg_plain["Subject"].startswith("Datakvalitet 20.11.2026: Hovedbiblioteket")
    assert "Se rapporten nedenfor." in text_edited and "Rapporten står i denne mail (HTML)." in text_plain
    assert "3 åbne fund" in text_edited and "3 åbne fund" in text_plain


def test_M4_a_folder_with_one_edited_template_takes_the_rest_from_the_package(stores, world, tmp_path):
    """M4: a municipality keeps only the templates it changed; the others are the package's."""
    folder = tmp_path / "egne"
    folder.mkdir()
    (folder / "index.html.j2").write_text(
        (dq_report.TEMPLATE_DIR / "index.html.j2").read_text(encoding="utf-8").replace("Alle åbne", "Hent CSV"),
        encoding="utf-8")
    dq_report.build_reports(stores, tmp_path / "out", TODAY, template_dir=folder)
    index = (tmp_path / "out" / A1 / "index.html").read_text(encoding="utf-8")
    page = (tmp_path / "out" / A1 / B1 / "datakvalitet.html").read_text(encoding="utf-8")
    assert "<th>Hent CSV</th>" in index and "Alle åbne" not in index
    assert "Det skal rettes" in page and "<svg" in page


def test_M4_an_edited_template_naming_an_unknown_value_stops_the_report_rather_than_leave_a_gap(
        stores, world, tmp_path):
    """M4: a typo in an edited template is an error, not a report silently missing its text."""
    folder = edited_templates(tmp_path, {"datakvalitet.html.j2": ("{{ branch.name }}</h1>", "{{ branch.nmae }}</h1>")})
    with pytest.raises(jinja2.UndefinedError, match="nmae"):
        dq_report.build_reports(stores, tmp_path / "out", TODAY, template_dir=folder)
    assert not list((tmp_path / "out").rglob("datakvalitet.html"))


# --- CSV ---------------------------------------------------------------------------------------

def test_M4_csv_opens_in_pandas_with_one_row_per_open_finding(stores, world, tmp_path):
    import pandas as pd

    k = world.keys
    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    for b, expected in [(B1, [k["c3"], k["i4"], k["t6"]]), (B2, [k["c3"], k["t5"], k["c5"]]), (B3, [k["carl"]])]:
        path = reports[b].csv_path
        raw = path.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")                        # BOM: Excel reads it as UTF-8
        df = pd.read_csv(path, sep=";", encoding="utf-8-sig", dtype=str, keep_default_na=False)
        assert list(df.columns) == list(dq_report.CSV_COLUMNS)
        assert len(df) == reports[b].open_count == len(expected)
        assert list(df["Fund-id"]) == expected
        assert all(re.fullmatch(r"\d{2}\.\d{2}\.\d{4}", d) for d in [*df["Først set"], *df["Sidst set"]])
    df = pd.read_csv(reports[B1].csv_path, sep=";", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    t6 = df[df["Fund-id"] == k["t6"]].iloc[0]
    assert t6["Lånernummer"] == str(world.patrons["anna"]["patron_id"])
    assert t6["Lånernavn"] == "Anna <Andersen> & Co"
    assert t6["Gebyr-/erstatningsnr."] == world.liabilities["anna1"]["number"]
    assert t6["Først set"] == "01.10.2026" and t6["Alvor"] == "Blokerer" and t6["Regel"] == "T6"
    assert t6["Beløb (kr.)"] == "60,00"                                 # decimal comma: a number in Danish Excel
    assert t6["Hvorfor det betyder noget"] == dq_catalog.check("T6_person_without_usable_cpr").why
    assert df[df["Fund-id"] == k["c3"]].iloc[0]["Lånernummer"] == ""


def count_statements(engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: seen.append(sql))
    return seen


def test_M4_set_based_a_few_queries_per_chunk_not_one_per_finding(stores, world, tmp_path):
    fbs_sql, ledger_sql = count_statements(stores.fbs), count_statements(stores.ledger)
    dq_report.build_reports(stores, tmp_path, TODAY)
    # 7 findings to show; one query for the branches, one for the patrons, one for the liabilities.
    assert len([s for s in fbs_sql if s.lstrip().upper().startswith("SELECT")]) == 3
    assert len([s for s in ledger_sql if "FROM finding" in s]) == 1
    fbs_sql.clear()
    dq_report.build_reports(stores, tmp_path / "chunks", TODAY, chunk=2)     # 4 chunks of <= 2 findings
    assert len([s for s in fbs_sql if s.lstrip().upper().startswith("SELECT")]) == 1 + 2 * 4


def test_M4_streamed_in_chunks_gives_the_same_report_and_html_is_capped(stores, world, tmp_path):
    whole = by_branch(dq_report.build_reports(stores, tmp_path / "a", TODAY))
    small = by_branch(dq_report.build_reports(stores, tmp_path / "b", TODAY, chunk=2, html_row_limit=1))
    for b in (B1, B2, B3):
        assert small[b].csv_path.read_bytes() == whole[b].csv_path.read_bytes()
        assert small[b].counts == whole[b].counts
    assert open_keys(small[B1].html_path) == [world.keys["c3"]]
    assert "Listen viser de første 1 af 3 åbne fund" in small[B1].html_path.read_text(encoding="utf-8")
    # Cut inside a patron's entry: the entry still says how many findings the patron has.
    two = by_branch(dq_report.build_reports(stores, tmp_path / "c", TODAY, chunk=2, html_row_limit=2))
    assert open_keys(two[B1].html_path) == [world.keys["c3"], world.keys["i4"]]
    ((head, keys),) = entries(two[B1].html_path)
    assert head.startswith(f"{world.patrons['anna']['patron_id']} Anna <Andersen> & Co · 2 fund på 2 mellemværender")
    assert "Listen viser de første 2 af 3 åbne fund" in two[B1].html_path.read_text(encoding="utf-8")


def test_M4_agency_index_links_every_branch_report(stores, world, tmp_path):
    dq_report.build_reports(stores, tmp_path, TODAY)
    doc = lxml_html.fromstring((tmp_path / A1 / "index.html").read_text(encoding="utf-8"))
    links = doc.xpath("//a/@href")
    assert f"{B1}/datakvalitet.html" in links and f"{B2}/datakvalitet.csv" in links
    for href in links:
        assert (tmp_path / A1 / href).exists()


def resolve(stores, key: str, at: dt.datetime, resolution: str) -> str:
    with stores.ledger.begin() as conn:
        conn.execute(text("UPDATE finding SET resolved_at = :t, resolution = :r WHERE finding_key = :k"),
                     {"t": at, "r": resolution, "k": key})
    return key


def test_item12_M4_report_shows_fixed_in_fbs_resolved_by_the_integration_and_no_longer_in_scope_apart(
        stores, world, tmp_path, smtp_server):
    """Issue 16 item 12: findings resolved in the last 7 days fall in three groups by the ledger's
    resolution: fixed in FBS (fixed, and NULL from before it existed), resolved by the integration
    (integration), no longer in scope (left_batch). Only the first counts as what staff fixed; each
    group has its own count (per check, per branch, in the agency index and the mail) and list, on
    the branches of the finding's own agency only."""
    li, k = world.liabilities, world.keys

    def on(name):
        return {"patron_id": li[name]["patron_id"], "liability_id": li[name]["liability_id"]}

    # B2 (715100): the kid's patron was given a replacement CPR by the integration.
    kid = resolve(stores, put(stores, finding("I1_person_without_cpr_or_birth_date", A1, f"L{li['kid']['liability_id']}",
                                              "Låner uden CPR-nummer og fødselsdato", branch_id=B2, **on("kid")),
                              dt.datetime(2026, 11, 2, 8)), dt.datetime(2026, 11, 19, 10), "integration")
    # B1 (715100): anna's second liability was sent meanwhile: no longer in scope.
    sent = resolve(stores, put(stores, finding("I4_cpr_fails_modulus_11", A1, f"L{li['anna2']['liability_id']}-2",
                                               "CPR 070781-**** fejler modulus-11", branch_id=B1, **on("anna2")),
                               dt.datetime(2026, 11, 3, 8)), dt.datetime(2026, 11, 17, 10), "left_batch")
    # B3 (751000): the integration again, in the other agency; and one fixed by staff there (recorded 'fixed').
    carl_i1 = resolve(stores, put(stores, finding("I1_person_without_cpr_or_birth_date", A2, "L-carl-i1",
                                                  "Låner uden CPR-nummer og fødselsdato", branch_id=B3, **on("carl")),
                                  dt.datetime(2026, 11, 4, 8)), dt.datetime(2026, 11, 18, 10), "integration")
    carl_fixed = resolve(stores, put(stores, finding("F2_amount_not_positive", A2, "L-carl-f2", "Beløbet er 0,00",
                                                     branch_id=B3, **on("carl")),
                                     dt.datetime(2026, 11, 4, 8)), dt.datetime(2026, 11, 20, 7), "fixed")

    reports = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))
    # What staff fixed: not the kid's finding, which the integration resolved (t4_fixed, NULL, reads as fixed).
    assert {b: r.resolved_count for b, r in reports.items()} == {B1: 1, B2: 0, B3: 1}
    counts = {b: (r.resolved_count, r.integration_count, r.out_of_scope_count) for b, r in reports.items()}
    assert counts == {B1: (1, 0, 1), B2: (0, 1, 0), B3: (1, 1, 0)}
    assert reports[B2].counts["I1_person_without_cpr_or_birth_date"] == {
        "open": 0, "new": 0, "resolved": 0, "integration": 1, "out_of_scope": 0}
    assert reports[B1].counts["I4_cpr_fails_modulus_11"] == {
        "open": 1, "new": 0, "resolved": 0, "integration": 0, "out_of_scope": 1}

    def lists(branch):
        doc = lxml_html.fromstring(reports[branch].html_path.read_text(encoding="utf-8"))
        return ({ul: doc.xpath(f'//ul[@id="{ul}"]/li/@data-key')
                 for ul in ("rettet-liste", "integration-liste", "udenfor-liste")},
                doc.xpath('//p[@class="totals"]')[0].text_content(),
                {tr.get("data-check"): [td.text_content() for td in tr.xpath("td")][3:8]
                 for tr in doc.xpath('//table[@id="tjek"]/tbody/tr')})

    shown, totals, per_check = lists(B1)
    assert shown == {"rettet-liste": [k["t4_fixed"]], "integration-liste": [], "udenfor-liste": [sent]}
    assert totals.endswith("De seneste 7 dage: 1 rettet i FBS, 0 løst af integrationen, 1 ikke længere med i "
                           "overførslen.")
    assert per_check["I4_cpr_fails_modulus_11"] == ["1", "0", "0", "0", "1"]
    shown, totals, per_check = lists(B2)
    assert shown == {"rettet-liste": [], "integration-liste": [kid], "udenfor-liste": []}
    assert per_check["I1_person_without_cpr_or_birth_date"] == ["0", "0", "0", "1", "0"]
    shown, _, _ = lists(B3)
    assert shown == {"rettet-liste": [carl_fixed], "integration-liste": [carl_i1], "udenfor-liste": []}

    index = lxml_html.fromstring((tmp_path / A1 / "index.html").read_text(encoding="utf-8"))
    rows = {tr.xpath("td")[1].text_content(): [td.text_content() for td in tr.xpath("td")][6:9]
            for tr in index.xpath('//table[@id="filialer"]/tbody/tr')}
    assert rows == {B1: ["1", "0", "1"], B2: ["0", "1", "0"]}

    handler, smtp = smtp_server
    mailer.send_reports([reports[B2]], smtp)
    (plain,) = [parts(raw)[2] for _f, _to, raw in handler.received]
    assert "De seneste 7 dage: 0 rettet i FBS, 1 løst af integrationen, 0 ikke længere med i overførslen." in plain


# --- email -------------------------------------------------------------------------------------

def parts(raw: bytes) -> tuple[email.message.EmailMessage, str, str, bytes, str]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    body = msg.get_body(("html",)).get_content()
    plain = msg.get_body(("plain",)).get_content()
    (attachment,) = list(msg.iter_attachments())
    return msg, body, plain, attachment.get_payload(decode=True), attachment.get_filename()


def test_M1_M4_each_branch_with_an_address_gets_its_report_by_email(stores, world, tmp_path, smtp_server):
    handler, smtp = smtp_server
    reports = dq_report.build_reports(stores, tmp_path, TODAY)
    results = {r.branch_id: r for r in mailer.send_reports(reports, smtp)}

    assert {b: r.status for b, r in results.items()} == {B1: "sent", B2: "sent", B3: "skipped"}
    assert "staff_email" in results[B3].detail                    # skipped, and the result says why
    assert results[B1].recipients == (MAIL_B1,)
    assert sorted(rcpt for _f, rcpt, _raw in handler.received) == [[MAIL_B1], [MAIL_B2]]
    for mail_from, (to,), raw in handler.received:
        assert mail_from == "fbs-debitor@kommune.example"
        branch = {MAIL_B1: B1, MAIL_B2: B2}[to]
        report = by_branch(reports)[branch]
        msg, body, plain, csv_bytes, filename = parts(raw)
        assert msg["To"] == to and report.branch_name in msg["Subject"]
        # The report is the HTML body (mail travels with CRLF line ends).
        assert body.replace("\r\n", "\n") == report.html_path.read_text(encoding="utf-8")
        assert csv_bytes == report.csv_path.read_bytes() and filename.endswith(".csv")
        assert f"{report.open_count} åbne fund" in plain
        assert report.agency_blocked and "HELE BIBLIOTEKETS OVERFØRSEL ER STANDSET" in plain    # C3 holds 715100
        for k in open_keys(report.html_path):
            assert k in body
        # No full CPR number in the raw message nor in any decoded part.
        assert full_cpr_numbers(raw.decode("ascii")) == []
        assert full_cpr_numbers(body + plain + csv_bytes.decode("utf-8-sig")) == []
    assert str(world.patrons["anna"]["patron_id"]) in parts(
        next(raw for _f, (to,), raw in handler.received if to == MAIL_B1))[1]


def test_M1_a_refused_recipient_does_not_stop_the_other_branches(stores, world, tmp_path, smtp_server):
    handler, smtp = smtp_server
    handler.refuse.add(MAIL_B1)
    reports = dq_report.build_reports(stores, tmp_path, TODAY)
    results = {r.branch_id: r for r in mailer.send_reports(reports, smtp)}
    assert results[B1].status == "failed" and "550" in results[B1].detail
    assert results[B2].status == "sent"
    assert [rcpt for _f, rcpt, _raw in handler.received] == [[MAIL_B2]]


def test_M1_an_unreachable_server_is_recorded_per_branch_not_raised(stores, world, tmp_path):
    smtp = mailer.SmtpSettings(host="127.0.0.1", port=free_port(), from_email="fbs-debitor@kommune.example",
                               timeout=5)
    results = mailer.send_reports(dq_report.build_reports(stores, tmp_path, TODAY), smtp)
    assert sorted((r.branch_id, r.status) for r in results) == [(B1, "failed"), (B2, "failed"), (B3, "skipped")]
    assert all("ConnectionRefused" in r.detail for r in results if r.status == "failed")


def test_M1_a_retry_sends_only_the_branches_not_sent_before(stores, world, tmp_path, smtp_server):
    handler, smtp = smtp_server
    reports = dq_report.build_reports(stores, tmp_path, TODAY)
    state = tmp_path / mailer.STATE_NAME
    handler.refuse.add(MAIL_B2)
    first = {r.branch_id: r.status for r in mailer.send_reports(reports, smtp, state_file=state)}
    assert first == {B1: "sent", B2: "failed", B3: "skipped"}
    handler.refuse.clear()
    again = {r.branch_id: r.status for r in mailer.send_reports(reports, smtp, state_file=state)}
    assert again == {B1: "already_sent", B2: "sent", B3: "skipped"}
    assert [rcpt for _f, rcpt, _raw in handler.received] == [[MAIL_B1], [MAIL_B2]]


def test_M1_manifest_round_trip_carries_paths_and_counts_only(stores, world, tmp_path):
    reports = dq_report.build_reports(stores, tmp_path, TODAY)
    path = dq_report.write_manifest(tmp_path, reports, TODAY)
    assert dq_report.load_manifest(path) == reports
    content = path.read_text(encoding="utf-8")
    assert "Anna" not in content and "CPR" not in content      # no finding data between the tasks


def test_smtp_settings_from_the_environment_and_from_an_airflow_connection():
    env = mailer.settings_from_env({"FBS_DEBITOR_SMTP_HOST": "smtp.kommune.local", "FBS_DEBITOR_SMTP_PORT": "587",
                                    "FBS_DEBITOR_SMTP_USER": "fbs@kommune.dk", "FBS_DEBITOR_SMTP_PASSWORD": "pw"})
    assert (env.host, env.port, env.from_email, env.user, env.starttls, env.ssl, env.timeout) == (
        "smtp.kommune.local", 587, "fbs@kommune.dk", "fbs@kommune.dk", True, False, 30.0)
    assert "pw" not in repr(env)
    plain = mailer.settings_from_env({"FBS_DEBITOR_SMTP_HOST": "relay", "FBS_DEBITOR_SMTP_FROM": "a@b.dk",
                                      "FBS_DEBITOR_SMTP_STARTTLS": "0"})
    assert (plain.port, plain.starttls, plain.user) == (25, False, None)
    with pytest.raises(mailer.SmtpNotConfigured):
        mailer.settings_from_env({})
    with pytest.raises(mailer.SmtpNotConfigured):
        mailer.settings_from_env({"FBS_DEBITOR_SMTP_HOST": "relay"})           # no sender address

    conn = SimpleNamespace(conn_id="smtp_default", host="smtp.kommune.local", port=587, login="u", password="p",
                           extra_dejson={"from_email": "fbs@kommune.dk", "disable_ssl": True, "timeout": 12})
    s = mailer.settings_from_connection(conn)
    assert (s.host, s.port, s.from_email, s.ssl, s.starttls, s.timeout) == (
        "smtp.kommune.local", 587, "fbs@kommune.dk", False, True, 12.0)
    # Airflow's SMTP provider defaults: implicit TLS unless disable_ssl; STARTTLS unless disable_tls.
    s = mailer.settings_from_connection(SimpleNamespace(host="h", port=None, login=None, password=None,
                                                        extra_dejson={"from_email": "a@b.dk"}))
    assert (s.ssl, s.port) == (True, 465)
    s = mailer.settings_from_connection(SimpleNamespace(host="h", port=25, login=None, password=None,
                                                        extra_dejson={"from_email": "a@b.dk", "disable_ssl": "true",
                                                                      "disable_tls": "true"}))
    assert (s.ssl, s.starttls) == (False, False)


def test_staff_email_may_hold_several_addresses_and_junk_is_no_address():
    assert mailer.recipients_of("a@kommune.dk; b@kommune.dk, a@kommune.dk") == ["a@kommune.dk", "b@kommune.dk"]
    assert mailer.recipients_of("  ") == [] and mailer.recipients_of("ingen") == [] and mailer.recipients_of(None) == []


# --- the DAG -----------------------------------------------------------------------------------

def test_dq_report_dag_runs_daily_at_six_with_a_real_window():
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.serialization.encoders import coerce_to_core_timetable

    bag = DagBag(dag_folder=str(HOME / "dags" / "debitor_dq_report.py"))
    assert bag.import_errors == {}
    dag = bag.dags["debitor_dq_report"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    # the window as the scheduler computes it from the DAG's timetable
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=pendulum.datetime(2026, 11, 20, 10, 0, tz="UTC"))
    assert interval.end - interval.start == dt.timedelta(days=1)
    assert interval.end.in_timezone("Europe/Copenhagen").hour == 6
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert {"fbs-debitor", "data-quality"} <= set(dag.tags) and dag.doc_md
    assert [t.task_id for t in dag.topological_sort()] == ["report_units", "build_reports", "email_reports",
                                                          "email_digest"]
    assert all(t.retries >= 1 for t in dag.tasks)


def test_issue18_M4_report_dag_builds_and_mails_per_municipality():
    """Build and email are mapped per municipality, each instance named by its unit's label; the
    digest is one task that runs whatever the mapped tasks did."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = DagBag(dag_folder=str(HOME / "dags" / "debitor_dq_report.py")).dags[
        "debitor_dq_report"]
    for task_id in ("build_reports", "email_reports"):
        task = dag.get_task(task_id)
        assert isinstance(task, MappedOperator), task_id
        assert task.map_index_template == "{{ unit_label }}"
    assert not isinstance(dag.get_task("email_digest"), MappedOperator)
    assert dag.get_task("email_digest").trigger_rule == "all_done"
    assert dag.get_task("email_digest").upstream_task_ids == {"email_reports"}


def test_report_date_is_the_run_day_in_copenhagen():
    # 06:00 Copenhagen on 21 Nov is 05:00 UTC; a late-evening UTC end is already the next day in Copenhagen.
    assert dq_report.report_date_for(dt.datetime(2026, 11, 21, 5, 0, tzinfo=dt.UTC)) == dt.date(2026, 11, 21)
    assert dq_report.report_date_for(dt.datetime(2026, 6, 30, 22, 30, tzinfo=dt.UTC)) == dt.date(2026, 7, 1)


def test_M4_a_message_repeating_the_catalog_text_is_not_shown_twice(stores, world, tmp_path):
    c = dq_catalog.check("I1_person_without_cpr_or_birth_date")
    key = put(stores, finding(c.code, A1, "P-dup", f"{c.title}. {c.why}", branch_id=B1), dt.datetime(2026, 11, 19, 8))
    page = by_branch(dq_report.build_reports(stores, tmp_path, TODAY))[B1].html_path.read_text(encoding="utf-8")
    row = lxml_html.fromstring(page).xpath(f'//tr[@data-key="{key}"]')[0].text_content()
    assert row.count(c.why) == 1 and row.count(c.title) == 1
