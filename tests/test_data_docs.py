"""The data-quality Data Docs (M4) as staff see them: on a server without internet access.

A small batch with failing rows (T5, F2, I4, C3) is checked twice with Data Docs; the site is then
read as files (no URL to the internet anywhere, every local asset present) and rendered in
headless Chromium with every host name unresolvable (tests/browser.py): the index's table is
filled by its scripts, a validation page shows the failing rows by liability id, and Bootstrap,
bootstrap-table and the Font Awesome font apply, served from 127.0.0.1 with no request missing.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import re
import threading
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import browser
import fbs_rows as fr
import pytest

from fbs_debitor.core import ledger
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.quality import checks as dq_checks

TODAY = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two runs' Data Docs over one agency held (C3) and three failing liabilities."""
    tmp = tmp_path_factory.mktemp("data_docs")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FBS_DEBITOR_VAR", str(tmp / "var"))
        stores = open_stores(DatabaseUrls(fbs=f"sqlite:///{tmp / 'fbs.sqlite'}",
                                          ledger=f"sqlite:///{tmp / 'ledger.sqlite'}"))
        init_stores(stores)
        with stores.fbs.connect() as conn:
            fr.agency(conn)
            fr.agency(conn, agency_id="799900", age_limit=0)
            company = fr.patron(conn, kind="company", cvr=None)
            no_cvr = fr.liability(conn, company["patron_id"])["liability_id"]
            zero = fr.liability(conn, fr.patron(conn)["patron_id"], amount=Decimal("0.00"))["liability_id"]
            mod11 = fr.liability(conn, fr.patron(conn, cpr=fr.MOD11_FAIL_CPR)["patron_id"])["liability_id"]
            conn.commit()
        runs = []
        for _ in range(2):
            run_id = ledger.start_run(stores.ledger, "manual")
            dq_checks.run_checks(stores, run_id, today=TODAY, data_docs_dir=tmp / "docs")
            runs.append(run_id)
        stores.dispose()
    docs = tmp / "docs"
    pages = sorted((docs / "validations" / dq_checks.LIABILITY_SUITE).rglob("*.html"))
    return SimpleNamespace(docs=docs, runs=runs, no_cvr=no_cvr, zero=zero, mod11=mod11,
                           liability_page=next(p for p in pages if runs[-1] in p.parts))


def html_pages(docs: Path) -> list[Path]:
    return sorted(docs.rglob("*.html"))


def test_M4_data_docs_pages_name_no_internet_address_and_ship_every_asset(site):
    """No page links or loads anything by http(s) (no CDN, no S3 logo, no link to GX's website),
    and every file a page loads is in the site."""
    pages = html_pages(site.docs)
    assert len(pages) == 1 + 2 + 4                     # index, two suites, two runs x two validations
    for page in pages:
        html = page.read_text()
        assert re.findall(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html) == [], page
        for ref in re.findall(r'(?:src|href)="([^"#]+)"', html):
            if not ref.startswith(("javascript:", "data:")):
                assert (page.parent / ref.split("?")[0]).resolve().is_file(), (page, ref)


def table_rows(dom: str) -> list[str]:
    """The table rows bootstrap-table rendered (it numbers them with data-index)."""
    return re.findall(r'<tr[^>]*data-index="\d+"[^>]*>(.*?)</tr>', dom, re.S)


@pytest.mark.browser
def test_M4_index_renders_offline_with_its_table_filled_by_its_scripts(site):
    """The index's table exists only as data in a script: rows in the DOM prove the scripts ran."""
    raw = (site.docs / "index.html").read_text()
    assert table_rows(raw) == []
    rows = table_rows(browser.rendered_dom(site.docs / "index.html"))
    runs = [run for run in site.runs for row in rows if run in row]
    assert sorted(runs) == sorted(site.runs * 2)         # each run: liabilities and agencies
    assert any(dq_checks.LIABILITY_SUITE in row and ".html" in row for row in rows)


@pytest.mark.browser
def test_M4_validation_page_renders_offline_and_names_failing_rows_by_liability_id(site):
    dom = browser.rendered_dom(site.liability_page)
    rows = table_rows(dom)
    assert rows, "bootstrap-table did not run"
    cells = re.findall(r'<div class="show-scrollbars">\s*([^<]*?)\s*</div>', dom)
    for liability_id in (site.no_cvr, site.zero, site.mod11):
        assert str(liability_id) in cells
    assert "liability_id" in dom


PROBE = """<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><pre id="out">waiting</pre>
<iframe id="page" src="{page}" style="width:1280px;height:1000px"></iframe>
<script>
document.getElementById("page").addEventListener("load", () => setTimeout(() => {{
  const w = document.getElementById("page").contentWindow, d = w.document;
  d.fonts.ready.then(() => {{
    document.getElementById("out").textContent = JSON.stringify({{
      navbar_position: w.getComputedStyle(d.querySelector(".navbar")).position,
      button_background: w.getComputedStyle(d.querySelector(".btn-primary")).backgroundColor,
      icon_font: w.getComputedStyle(d.querySelector(".fas")).fontFamily,
      icon_font_loaded: d.fonts.check('900 16px "Font Awesome 6 Free"'),
      bootstrap_table: typeof (w.jQuery && w.jQuery.fn.bootstrapTable),
      bootstrap_modal: typeof (w.jQuery && w.jQuery.fn.modal),
    }});
  }});
}}, 300));
</script></body></html>"""


@pytest.mark.browser
def test_M4_stylesheets_scripts_and_icon_font_apply_offline_and_no_asset_is_missing(site):
    """Served from 127.0.0.1 (the only host Chromium can reach): Bootstrap's CSS styles the page
    (a sticky navbar, blue primary buttons), jQuery, Bootstrap and bootstrap-table are loaded, the
    Font Awesome font renders the status icons, and every request the page made found its file."""
    page = site.liability_page.relative_to(site.docs).as_posix()
    (site.docs / "_probe.html").write_text(PROBE.format(page=page))
    requests: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            requests.append((self.path, int(code)))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site.docs)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom = browser.rendered_dom(f"http://127.0.0.1:{server.server_port}/_probe.html")
    finally:
        server.shutdown()
        server.server_close()
        (site.docs / "_probe.html").unlink()
    seen = json.loads(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1))
    assert seen["navbar_position"] == "sticky"                            # Bootstrap's .sticky-top
    assert seen["button_background"] in ("rgb(0, 123, 255)", "rgb(0, 98, 204)")   # .btn-primary (active)
    assert "Font Awesome 6 Free" in seen["icon_font"] and seen["icon_font_loaded"] is True
    assert seen["bootstrap_table"] == "function" and seen["bootstrap_modal"] == "function"
    assert [r for r in requests if r[1] != 200] == []
    loaded = {path for path, _ in requests}
    assert any(p.endswith("bootstrap.min.css") for p in loaded) and any(p.endswith(".woff2") for p in loaded)
