"""The staff data-quality report (M4) as a person sees it: Debian's headless Chromium, offline.

One agency (715100, branch -01 Hovedbiblioteket, plus -02 Filial Nord) with hand-built findings:
blocking and warning ones, one that holds the whole agency (C3), one fixed in FBS this week, one the
integration resolved itself and one no longer in scope (issue 16 item 12), one message
that (wrongly) holds a full CPR number, a patron whose name is hostile markup, and a patron group
with six liabilities (issue 20: shown once, its six liabilities beneath it). The page must render
from nothing but itself (no network: every host name is unresolvable), in Danish only, show the
title, the counts, the 30-day trend (new / open / fixed) and one entry per patron with Danish
amounts and dates and masked CPR numbers only. The screenshot is kept for a person to look at:
``var/test-artifacts/staff-report.png`` (see tests/browser.py ``artifact``).
SQLite only: the page does not depend on the database (test_dq_report.py runs both).
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import zlib
from decimal import Decimal
from pathlib import Path

import fbs_rows as fr
import pytest
from browser import artifact, rendered_dom, screenshot
from leaks import full_cpr_numbers
from lxml import html as lxml_html
from sqlalchemy import text

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.eligibility import rules as eligibility_rules
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import report as dq_report

pytestmark = pytest.mark.browser

TODAY = dt.date(2026, 11, 20)
A1, B1, B2 = "715100", "715100-01", "715100-02"
HOSTILE = '<script>document.title="hacked"</script>"><img src=x onerror=alert(1)> Eva'
RED, ORANGE, BANNER = (0xB3, 0x26, 0x1E), (0xE8, 0xA3, 0x3D), (0x5C, 0x0B, 0x07)   # chart bars, C3 banner
BLUE, GREEN = (0x1A, 0x5F, 0xB4), (0x2E, 0x7D, 0x32)                                # new and fixed per day


@pytest.fixture
def db_urls(tmp_path) -> DatabaseUrls:
    return DatabaseUrls(fbs=f"sqlite:///{tmp_path / 'fbs.sqlite'}", ledger=f"sqlite:///{tmp_path / 'ledger.sqlite'}")


def put(stores, code: str, subject: str, message: str, first_seen: dt.datetime,
        resolved: dt.datetime | None = None, resolution: str | None = None, **ids) -> str:
    c = dq_catalog.check(code)
    f = ledger.Finding(check_code=code, rule=c.rule, severity=c.severity, agency_id=A1, subject=subject,
                       message=message, **ids)
    ledger.upsert_findings(stores.ledger, "browser-run", [f], first_seen)
    if resolved is not None:
        with stores.ledger.begin() as conn:
            conn.execute(text("UPDATE finding SET resolved_at = :t, resolution = :r WHERE finding_key = :k"),
                         {"t": resolved, "r": resolution, "k": f.key})
    return f.key


@pytest.fixture
def reports(stores, tmp_path) -> dict[str, dq_report.BranchReport]:
    with stores.fbs.connect() as conn:
        fr.agency(conn, A1)
        fr.insert(conn, "branch", branch_id=B2, agency_id=A1, name="Filial Nord", staff_email=None)
        anna = fr.patron(conn, name="Anna Andersen", cpr=fr.ADULT_CPR)
        eva = fr.patron(conn, name=HOSTILE)
        firm = fr.patron(conn, kind="company", cvr=None)
        li = {n: fr.liability(conn, p["patron_id"]) for n, p in [("anna", anna), ("eva", eva), ("firm", firm),
                                                                   ("anna2", anna)]}
        group = fr.patron(conn, kind="group", name="Skoleklasse 8C, Nordstrand Skole")
        amounts = ["60.00", "1234.50", "30.00", "-30.00", "100.00", "45.25"]
        for i, a in enumerate(amounts):
            li[f"group{i}"] = fr.liability(conn, group["patron_id"], amount=Decimal(a))
        conn.commit()

    def on(name):
        return {"branch_id": B1, "patron_id": li[name]["patron_id"], "liability_id": li[name]["liability_id"]}

    put(stores, "C3_agency_age_limit_out_of_range", f"A{A1}", "Bibliotekets myndighedsalder er 0 (forventet 15-21)",
        dt.datetime(2026, 11, 10, 8))
    put(stores, "T6_person_without_usable_cpr", "L-anna", f"CPR {fr.ADULT_CPR} kunne ikke bruges",
        dt.datetime(2026, 10, 1, 8), **on("anna"))
    put(stores, "T5_company_without_valid_cvr", "L-firm", "Virksomhed uden CVR-nummer", dt.datetime(2026, 11, 19, 9),
        **on("firm"))
    put(stores, "I4_cpr_fails_modulus_11", "L-eva", "CPR 070781-**** fejler modulus-11", dt.datetime(2026, 11, 2, 8),
        **on("eva"))
    put(stores, "F2_amount_not_positive", "L-anna2", "Beløbet er 0,00", dt.datetime(2026, 11, 1, 8),
        resolved=dt.datetime(2026, 11, 18, 8), **on("anna2"))
    put(stores, "I1_person_without_cpr_or_birth_date", "L-eva-i1", "Låner uden CPR-nummer og fødselsdato",
        dt.datetime(2026, 11, 3, 8), resolved=dt.datetime(2026, 11, 19, 8), resolution="integration", **on("eva"))
    put(stores, "T5_company_without_ean_or_p_number", "L-firm-ean", "Virksomhed uden EAN- eller P-nummer",
        dt.datetime(2026, 11, 4, 8), resolved=dt.datetime(2026, 11, 16, 8), resolution="left_batch", **on("firm"))
    for i in range(6):   # T4: one finding per liability, all on the group (issue 20: the group six times)
        put(stores, "T4_group_without_responsible_patron", f"L-group{i}", eligibility_rules.T4_REASON,
            dt.datetime(2026, 11, 5 + i, 8), **on(f"group{i}"))
    out = tmp_path / "reports"
    return {r.branch_id: r for r in dq_report.build_reports(stores, out, TODAY)}


def png_pixels(path: Path) -> tuple[int, int, set[tuple[int, int, int]]]:
    """Width, height and the set of RGB colours of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _c, _f, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, colours = zlib.decompress(idat), width * bpp, set()
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, {tuple(c) for c in colours}


def external_references(doc) -> list[str]:
    """Anything the page would fetch: elements that load, src attributes, absolute or protocol-relative
    links, CSS imports and url()."""
    found = [el.tag for el in doc.xpath("//link | //script | //img | //iframe | //object | //embed | //source"
                                        " | //video | //audio | //base")]
    found += [f"src={v}" for v in doc.xpath("//@src")]
    found += [f"href={v}" for v in doc.xpath("//@href | //@*[local-name()='href']") if re.match(r"[a-z]+:|//", v)]
    found += [f"css:{m}" for s in doc.xpath("//style/text()") for m in re.findall(r"@import|url\(", s)]
    return found


def test_M4_issue20_branch_report_renders_offline_in_chromium_per_patron_in_danish_with_trend(reports, tmp_path):
    report = reports[B1]
    dom = rendered_dom(report.html_path)          # after Chromium parsed and laid it out, offline
    doc = lxml_html.fromstring(dom)

    assert doc.findtext(".//title") == "Datakvalitet – Hovedbiblioteket – 20.11.2026"   # not "hacked"
    assert doc.xpath("//h1")[0].text_content() == "Datakvalitet: Hovedbiblioteket"
    assert "Hele bibliotekets overførsel til debitorsystemet er standset" in doc.xpath('//p[@class="banner"]')[0] \
        .text_content()
    # The counts: 10 open (C3, T6, T5 and the group's six T4 blocking; I4 a warning), T5 new since
    # yesterday; this week F2 fixed in FBS, I1 resolved by the integration, T5's EAN warning no
    # longer in scope (item 12).
    assert doc.xpath('//p[@class="totals"]')[0].text_content() == (
        "10 åbne fund: 9 blokerende og 1 advarsel. 1 ny siden i går. De seneste 7 dage: 1 rettet i FBS, "
        "1 løst af integrationen, 1 ikke længere med i overførslen.")
    assert (report.open_count, report.blocking_count, report.warning_count, report.new_count,
            report.resolved_count, report.integration_count, report.out_of_scope_count) == (10, 9, 1, 1, 1, 1, 1)

    # The trend: inline SVG, one group per day of the last 30 with new / open / fixed, and the same
    # numbers in a table; today's open = the open findings.
    days = doc.xpath('//section[@id="udvikling"]//*[local-name()="svg"]//*[local-name()="g"][@data-day]')
    assert len(days) == 30 and days[-1].get("data-day") == TODAY.isoformat()
    assert (days[-1].get("data-open"), days[-1].get("data-blocking"), days[-1].get("data-warning")) == ("10", "9", "1")
    by_day = {g.get("data-day"): (g.get("data-new"), g.get("data-open"), g.get("data-fixed"), g.get("data-other"))
              for g in days}
    assert by_day["2026-11-18"] == ("0", "10", "1", "0")         # F2 fixed in FBS that day
    assert by_day["2026-11-19"] == ("1", "10", "0", "1")         # T5 new, I1 resolved by the integration
    assert by_day["2026-11-10"][0] == "2"                        # C3 and the group's sixth liability
    table = {tr.get("data-day"): [c.text_content() for c in tr.xpath("th|td")]
             for tr in doc.xpath('//table[@id="udvikling-tabel"]/tbody/tr')}
    assert table["2026-11-18"] == ["18.11.2026", "0", "10", "8", "1", "0"]
    assert doc.xpath('//table[@id="udvikling-tabel"]/caption')[0].text_content().startswith("Nye, åbne og rettede")
    assert len(doc.xpath('//*[local-name()="svg"]//*[local-name()="rect"]')) > 30

    # The agency's C3 on top; then one entry per patron, blocking patrons first, then the oldest.
    (c3,) = doc.xpath('//table[@id="biblioteket"]/tbody/tr')
    assert c3.xpath("td")[0].text_content() == "hele biblioteket"
    assert c3.xpath('.//div[@class="detalje"]')[0].text_content() == (
        "Bibliotekets myndighedsalder er 0 (forventet 15-21)")
    entries = [(tb.xpath('tr[@class="laaner-hoved"]')[0].text_content(),
                [[td.text_content() for td in tr.xpath("td")] for tr in tb.xpath("tr[@data-key]")])
               for tb in doc.xpath('//table[@id="aabne"]/tbody[@class="laaner"]')]
    heads = [h for h, _ in entries]
    assert [re.sub(r"^\d+ ", "", h) for h in heads] == [
        "Anna Andersen · 1 fund på 1 mellemværende · Blokerer",                      # T6 since 1 Oct
        "Skoleklasse 8C, Nordstrand Skole · 6 fund på 6 mellemværender · Blokerer",    # T4 since 5 Nov, once
        re.sub(r"^\d+ ", "", heads[2]),                                               # the firm: T5 since 19 Nov
        f"{HOSTILE} · 1 fund på 1 mellemværende"]                                       # only a warning (I4)
    assert re.fullmatch(r"\d+ Tømrerfirmaet \d+ ApS · 1 fund på 1 mellemværende · Blokerer", heads[2]), heads[2]
    assert all(re.match(r"\d+ ", h) for h in heads), heads                        # the patron number, first
    (group_rows,) = [rows for h, rows in entries if "Skoleklasse 8C" in h]
    assert [r[1] for r in group_rows] == [f"{d:02d}.11.2026" for d in range(5, 11)]       # oldest first
    amounts = doc.xpath('//tbody[@class="laaner"][tr[contains(., "Skoleklasse 8C")]]//span[@class="beloeb"]')
    assert [a.text_content() for a in amounts] == ["60,00 kr.", "1.234,50 kr.", "30,00 kr.", "-30,00 kr.",
                                                   "100,00 kr.", "45,25 kr."]
    (anna_rows,) = [rows for h, rows in entries if "Anna Andersen" in h]
    assert anna_rows[0][3] == (dq_catalog.check("T6_person_without_usable_cpr").title + "CPR 070781-**** kunne ikke "
                               "bruges" + dq_catalog.check("T6_person_without_usable_cpr").why)
    assert heads[-1].endswith(HOSTILE + " · 1 fund på 1 mellemværende")    # the hostile name is text ...
    assert not doc.xpath("//script | //img") and doc.findtext(".//title") != "hacked"   # ... and ran nothing
    # Danish only: none of the English half of the group's message (the integration team's logs).
    page_text = doc.xpath("//body")[0].text_content()
    assert eligibility_rules.T4_REASON.split(" / ", 1)[1] not in page_text and " / the " not in page_text
    assert not re.search(r"\d\.\d\d kr\.|\d{4}-\d{2}-\d{2}", page_text)      # no "-30.00 kr.", no ISO date
    # CPR numbers: masked as the birth date only, never in full (FBS holds Anna's full CPR).
    assert full_cpr_numbers(dom) == [] and "070781-****" in dom
    (fixed,) = [li.text_content() for li in doc.xpath('//ul[@id="rettet-liste"]/li')]
    assert re.fullmatch(rf"18.11.2026: {dq_catalog.check('F2_amount_not_positive').title} – \d+ Anna Andersen, "
                        r"mellemværende nr\. G(\d+) \(id \1\)", fixed), fixed
    # Issue 16 item 12: what staff fixed, what the integration resolved itself, and what left the
    # transfer are three sections, each with its own heading and list, as Chromium laid them out.
    sections = {sec.get("id"): (sec.xpath("h2")[0].text_content(), [li.text_content() for li in sec.xpath(".//li")])
                for sec in doc.xpath("//section[@id='rettet' or @id='integration' or @id='ikke-laengere-med']")}
    assert {k: v[0] for k, v in sections.items()} == {
        "rettet": "Rettet i FBS de seneste 7 dage", "integration": "Løst af integrationen de seneste 7 dage",
        "ikke-laengere-med": "Ikke længere med i overførslen de seneste 7 dage"}
    assert sections["rettet"][1] == [fixed]
    (by_integration,) = sections["integration"][1]
    assert re.fullmatch(rf"19.11.2026: {dq_catalog.check('I1_person_without_cpr_or_birth_date').title} – \d+ "
                        rf"{re.escape(HOSTILE)}, mellemværende nr\. G(\d+) \(id \1\)", by_integration), by_integration
    (out_of_scope,) = sections["ikke-laengere-med"][1]
    assert out_of_scope.startswith("16.11.2026: " + dq_catalog.check("T5_company_without_ean_or_p_number").title)
    assert external_references(doc) == []

    # Kept for a person to look at (CI keeps var/test-artifacts): the top of the report.
    png = screenshot(report.html_path, artifact("staff-report.png"), size=(1280, 2400))
    width, height, colours = png_pixels(png)
    assert (width, height) == (1280, 2400)
    # Painted, with its own CSS and SVG: the C3 banner, the open bars, and the new and fixed bars.
    assert {BANNER, RED, ORANGE, BLUE, GREEN} <= colours


def test_M4_agency_index_renders_offline_and_links_every_branch_report(reports):
    index = reports[B1].html_path.parent.parent / "index.html"
    doc = lxml_html.fromstring(rendered_dom(index))
    assert doc.findtext(".//title") == f"Datakvalitet – Testby Bibliotek {A1} – 20.11.2026"
    rows = {tr.xpath("td")[1].text_content(): [td.text_content() for td in tr.xpath("td")]
            for tr in doc.xpath('//table[@id="filialer"]/tbody/tr')}
    assert rows[B1][:9] == ["Hovedbiblioteket", B1, "10", "9", "1", "1", "1", "1", "1"]  # fixed, integration, out
    assert rows[B2][0] == "Filial Nord" and rows[B2][-1] == "ingen e-mail i FBS"
    assert external_references(doc) == []
    for href in doc.xpath("//a/@href"):
        assert (index.parent / href).is_file(), href
    # Kept for a person to look at: the agency's overview, Danish date in the title and heading.
    png = screenshot(index, artifact("staff-report-index.png"), size=(1280, 500))
    assert png_pixels(png)[:2] == (1280, 500)
