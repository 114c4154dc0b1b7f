"""Staff reports on data quality (M4): per branch, in Danish, an HTML page and a CSV.

``build_reports(stores, out_dir, today)`` writes, for every branch in FBS,

    out_dir/<agency_id>/<branch_id>/datakvalitet.html   the report staff read (self-contained)
    out_dir/<agency_id>/<branch_id>/datakvalitet.csv    every open finding, for Danish Excel
    out_dir/<agency_id>/index.html                      the agency's branches, linked

from the ledger's ``finding`` table. The report is "as of the end of ``today``": a finding is open
on day d when it was first seen on or before d and not resolved on or before d, so the chart's
last day is the number of open findings in the table.

A finding resolved in the last 7 days is shown in one of three groups, by why it went away
(``finding.resolution``): **fixed in FBS** (``fixed``: staff corrected the data; NULL from before
the column existed reads so too), **resolved by the integration** (``integration``: the
integration changed the data itself, e.g. gave a patron without CPR and birth date a replacement
CPR, I1) and **no longer in scope** (``left_batch``: the liability was sent, closed, cancelled,
sent to collection or is before the cut-off). Only the first is what staff fixed.

Which branch sees a finding: its own ``branch_id``; else the patron's branch in FBS; else (an
agency-level finding such as C3, or a patron/branch FBS does not know) every branch of the agency,
so nothing is left out.

What staff read is Danish only, in Danish formats (``quality.danish``): amounts ``-30,00 kr.`` /
``1.234,50 kr.`` exactly as FBS holds them (never rounded), dates ``30.11.2026``, counts ``1.234``.
A finding's message is written "Danish / English" by the rules; the page and the CSV show the
Danish half only (the English stays in the integration team's logs). Every row has its title, a
detail line (the message's own words, else what it is about: the liability and its amount) and
its explanation (the catalog's reason; ``UNKNOWN_WHY`` for a code the catalog does not know).

"Det skal rettes" has one entry per patron: the patron once (number and name, never a CPR), its
open findings beneath it, oldest first; patrons with an open blocking finding first, then by their
oldest open finding. A group (one patron, many liabilities) is so one entry. Findings without a
patron (C3: the agency's age limit) are a section of their own at the top. The trend shows per day
of the last 30 the findings first seen (new), open at the day's end, fixed in FBS, and resolved
otherwise, as inline SVG and as a table.

Set-based and streamed: one ledger query (server-side cursor, in chunks) for the findings of the
last 30 days and all open ones, already in the order shown (a patron's findings together: a window
over the patron ranks it; the rank is over its open findings in any branch), and per chunk one FBS
query for the patrons (number, name, branch) and one for the liabilities (number, amount). Open
rows go straight to each branch's CSV, and each finished patron entry to a fragment on disk, so
memory stays flat however many findings there are (one patron's entry at a time per branch). CPR
numbers are never read; free text is scrubbed of anything shaped like a full CPR number all the same.

The CSV is for Danish Excel: ``;`` between fields (Excel's list separator where the comma is the
decimal mark), UTF-8 with a BOM (so Excel reads æøå), amounts with a decimal comma and no
thousands separator or unit (``-1234,50``: a number Excel can sum), dates ``30.11.2026``.

The pages come from the Jinja2 templates in ``templates/`` (every Danish text of the HTML is
there; see its README.md), with autoescaping on: nothing from the data is ever marked safe. The
patron entries are rendered per chunk by ``open_rows.html.j2`` into the fragment, which the page
template then includes as it is (markup our own template made, already escaped). Texts the CSV
shares (``SEVERITY_LABEL``, ``CSV_COLUMNS``, the catalog's titles and reasons) stay in Python.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import heapq
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from sqlalchemy import text

from fbs_debitor.core import storage
from fbs_debitor.core.db import Unreadable, as_datetime, in_query, stored_number
from fbs_debitor.core.settings import TIMEZONE
from fbs_debitor.core.stores import Stores
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import danish
from fbs_debitor.quality.catalog import BLOCKS_AGENCY, BLOCKS_LIABILITY, WARNING

log = logging.getLogger(__name__)

CHART_DAYS = 30          # the chart's window, today included
FIXED_DAYS = 7           # "rettet de seneste 7 dage", today included
HTML_ROW_LIMIT = 5000    # open rows shown in the HTML; the CSV always has them all
FIXED_LIST_LIMIT = 200   # newest resolved findings listed in the HTML, per group
STREAM_CHUNK = 5000      # findings per streamed chunk (and per FBS lookup)

HTML_NAME = "datakvalitet.html"
CSV_NAME = "datakvalitet.csv"
MANIFEST_NAME = "manifest.json"
MANIFESTS = "manifests"          # <day>/manifests/<unit>/: one municipality's manifest and sent-state
ROWS_NAME = ".rows.html.tmp"   # the open rows' fragment while the report is built
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

SEVERITY_LABEL = {BLOCKS_AGENCY: "Standser hele biblioteket", BLOCKS_LIABILITY: "Blokerer", WARNING: "Advarsel"}
BLOCKING = frozenset({BLOCKS_AGENCY, BLOCKS_LIABILITY})

# The three groups of resolved findings, in the order shown: group -> the ledger's resolutions.
FIXED, BY_INTEGRATION, OUT_OF_SCOPE = "fixed", "integration", "out_of_scope"
RESOLVED_GROUPS = (FIXED, BY_INTEGRATION, OUT_OF_SCOPE)
_GROUP_OF = {None: FIXED, "fixed": FIXED, "integration": BY_INTEGRATION, "left_batch": OUT_OF_SCOPE}

CSV_COLUMNS = ("Alvor", "Regel", "Tjek", "Lånernummer", "Lånernavn", "Mellemværende-id", "Gebyr-/erstatningsnr.",
               "Beløb (kr.)", "Hvad er galt", "Hvorfor det betyder noget", "Først set", "Sidst set", "Ny siden i går",
               "Fund-id")
# The explanation of a finding whose check the catalog does not know (a code added elsewhere first):
# every row has one.
UNKNOWN_WHY = ("Rapporten kender ikke dette tjek endnu, så der er ingen forklaring på det; kontakt kommunens "
               "it-afdeling, som kan se fundet i integrationens log.")

# A full CPR or replacement CPR (DDMMYY-SSSS, with or without the dash): masked wherever it shows up.
_CPR_SHAPE = re.compile(r"(?<!\d)((?:0[1-9]|[12]\d|3[01]|6[1-9]|[78]\d|9[01])(?:0[1-9]|1[0-2])\d{2})-?\d{4}(?!\d)")
_CATALOG_ORDER = {code: i for i, code in enumerate(dq_catalog.CHECKS)}

_BRANCHES = text("SELECT b.branch_id, b.agency_id, b.name, b.staff_email, a.name AS agency_name "
                 "FROM branch b JOIN agency a ON a.agency_id = b.agency_id ORDER BY b.agency_id, b.branch_id")
# Every finding that is open, or was open at some point in the chart's window, in the order shown:
# findings without a patron (the agency's, C3) first, blocking before warnings; then one run per
# patron, patrons with an open blocking finding first, then by their oldest open finding; each
# patron's findings oldest first. (A patron's rank is over all its open findings, in any branch.)
_FINDINGS = text(
    "SELECT * FROM (SELECT finding_key, check_code, rule, severity, agency_id, branch_id, patron_id, liability_id, "
    "message, first_seen_at, last_seen_at, resolved_at, resolution, "
    "MIN(CASE WHEN resolved_at IS NULL OR resolved_at >= :until THEN "
    "(CASE WHEN severity = 'warning' THEN 1 ELSE 0 END) END) OVER (PARTITION BY patron_id) AS patron_rank, "
    "MIN(CASE WHEN resolved_at IS NULL OR resolved_at >= :until THEN first_seen_at END) "
    "OVER (PARTITION BY patron_id) AS patron_oldest "
    "FROM finding WHERE first_seen_at < :until AND (resolved_at IS NULL OR resolved_at >= :since)) shown "
    "ORDER BY CASE WHEN patron_id IS NULL THEN 0 ELSE 1 END, COALESCE(patron_rank, 2), "
    "CASE WHEN patron_oldest IS NULL THEN 1 ELSE 0 END, patron_oldest, patron_id, "
    "CASE WHEN patron_id IS NULL AND severity = 'warning' THEN 1 ELSE 0 END, first_seen_at, finding_key")
# The same, for some agencies only (one municipality's mapped task): a patron belongs to one agency,
# so its rank is the same as over all findings.
_FINDINGS_OF = in_query(_FINDINGS.text.replace(
    "FROM finding WHERE ", "FROM finding WHERE agency_id IN :agencies AND "), "agencies")
_PATRONS = in_query("SELECT patron_id, name, branch_id FROM patron WHERE patron_id IN :ids", "ids")
_LIABILITIES = in_query("SELECT liability_id, number, amount FROM liability WHERE liability_id IN :ids", "ids")


@dataclass
class BranchReport:
    agency_id: str
    branch_id: str
    branch_name: str
    staff_email: str | None
    html_path: Path                     # a Path on this machine, or an ObjectStoragePath in the shared store
    csv_path: Path
    counts: dict[str, dict[str, int]]   # check code -> {"open", "new", "resolved", "integration", "out_of_scope"}
    open_count: int
    new_count: int                      # open and first seen since yesterday
    resolved_count: int                 # fixed in FBS (by staff) in the last 7 days
    blocking_count: int = 0             # open and blocking (liability or agency)
    warning_count: int = 0
    agency_blocked: bool = False        # an open finding holds the agency's whole run (C3)
    agency_name: str = ""
    report_date: str = ""               # YYYY-MM-DD
    integration_count: int = 0          # resolved by the integration itself in the last 7 days
    out_of_scope_count: int = 0         # no longer in scope (sent, closed, ...) in the last 7 days

    def as_dict(self) -> dict:
        """JSON-safe: paths and counts only (for XCom and the manifest), never finding data."""
        d = asdict(self)
        d["html_path"], d["csv_path"] = str(self.html_path), str(self.csv_path)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BranchReport:
        return cls(**{**d, "html_path": location(d["html_path"]), "csv_path": location(d["csv_path"])})


def build_reports(stores: Stores, out_dir, today: dt.date, *, agencies: Iterable[str] | None = None,
                  html_row_limit: int = HTML_ROW_LIMIT, chunk: int = STREAM_CHUNK,
                  template_dir: Path | None = None) -> list[BranchReport]:
    """Write every branch's report for ``today`` under ``out_dir``; returns them in branch order.
    ``out_dir``: a folder on this machine, or an ``ObjectStoragePath`` in the shared store (the
    reports are then built in a local temporary folder and copied there, each file whole).
    ``agencies``: only these agencies' branches (one municipality's reports); None: every branch.
    ``template_dir``: a folder whose templates are used before the package's own (see ``templates``)."""
    local = _local(out_dir)
    if local is None:
        with tempfile.TemporaryDirectory(prefix="fbs-debitor-reports-") as tmp:
            reports = build_reports(stores, Path(tmp), today, agencies=agencies, html_row_limit=html_row_limit,
                                    chunk=chunk, template_dir=template_dir)
            _upload(Path(tmp), out_dir)
        for r in reports:
            r.html_path = storage.under(out_dir, r.html_path.relative_to(tmp))
            r.csv_path = storage.under(out_dir, r.csv_path.relative_to(tmp))
        log.info("data-quality reports for %s copied to %s", today, out_dir)
        return reports
    out_dir = local
    env = templates(template_dir)
    builder = _Builder(stores, out_dir, today, html_row_limit, env,
                       None if agencies is None else sorted({str(a) for a in agencies}))
    try:
        builder.load_branches()
        builder.stream_findings(chunk)
        reports = builder.finish()
    finally:
        builder.close()
    _write_indexes(out_dir, reports, today, env)
    log.info("data-quality reports for %s: %d branch(es), %d open finding row(s) in %s", today, len(reports),
             sum(r.open_count for r in reports), out_dir)
    return reports


# --- where the files live: this machine, or the shared store -----------------------------------

def _local(p) -> Path | None:
    """``p`` as a plain Path when it is on this machine (a Path, or a ``file://`` storage path)."""
    return Path(p) if isinstance(p, str) else storage.local_path(p)


def _upload(folder: Path, target) -> None:
    """Every finished file under ``folder`` to the same place under ``target`` (one PUT each)."""
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.name.endswith(".tmp"):
            storage.write(storage.under(target, f.relative_to(folder)), f.read_bytes())


def location(value):
    """A path as the manifest (or XCom) holds it, back as what it was (``storage.at``)."""
    return storage.at(value)


# --- building ----------------------------------------------------------------------------------

@dataclass
class _Row:
    """One finding as shown (computed once, written to every branch it belongs to)."""
    key: str
    check: dq_catalog.Check
    severity: str
    patron_id: int | None
    patron_name: str
    liability_id: int | None
    liability_number: str
    message: str                  # the Danish detail line: never empty
    first_seen: dt.date
    last_seen: dt.date
    resolved: dt.datetime | None
    is_new: bool
    group: str = FIXED            # why it was resolved (RESOLVED_GROUPS); only FIXED is what staff fixed
    amount: Decimal | None = None  # the liability's amount in FBS, exact (None: no liability or unreadable)
    amount_text: str = ""         # the amount as staff read it: "-30,00 kr.", or what FBS holds when unreadable

    @property
    def why(self) -> str:
        return self.check.why or UNKNOWN_WHY


def _check(code: str) -> dq_catalog.Check:
    """The catalog's check, or for a code it does not know a Danish stand-in: staff never see a bare
    code, and every row has its explanation."""
    if code in dq_catalog.CHECKS:
        return dq_catalog.CHECKS[code]
    known = dq_catalog.check(code)
    return dq_catalog.Check(code, known.rule, known.severity, f"Ukendt tjek ({known.rule})", UNKNOWN_WHY)


@dataclass
class _Entry:
    """One patron in "Det skal rettes": the patron once, its open findings beneath it, oldest first."""
    patron_id: int
    patron_name: str
    rows: list[_Row] = field(default_factory=list)
    total: int = 0                # open findings of this patron in the branch (rows may be capped)
    blocking: bool = False
    liability_ids: set[int] = field(default_factory=set)   # of all its open findings, shown or not

    @property
    def liabilities(self) -> int:
        return len(self.liability_ids)


@dataclass
class _Branch:
    branch_id: str
    agency_id: str
    name: str
    staff_email: str | None
    agency_name: str
    folder: Path
    counts: dict[str, list[int]] = field(default_factory=dict)   # code -> [open, new, fixed, integration, out]
    blocking: int = 0
    warning: int = 0
    agency_blocked: bool = False
    chart_blocking: list[int] = field(default_factory=lambda: [0] * (CHART_DAYS + 1))   # difference arrays
    chart_warning: list[int] = field(default_factory=lambda: [0] * (CHART_DAYS + 1))
    chart_new: list[int] = field(default_factory=lambda: [0] * CHART_DAYS)      # first seen that day
    chart_fixed: list[int] = field(default_factory=lambda: [0] * CHART_DAYS)    # fixed in FBS that day
    chart_other: list[int] = field(default_factory=lambda: [0] * CHART_DAYS)    # resolved otherwise that day
    resolved: dict[str, list] = field(default_factory=lambda: {g: [] for g in RESOLVED_GROUPS})
    # per group a min-heap of (resolved, seq, row): the newest FIXED_LIST_LIMIT kept
    html_rows: int = 0
    agency_rows: list[_Row] = field(default_factory=list)   # open findings without a patron (C3), shown on top
    entry: _Entry | None = None                              # the patron whose findings are coming in
    pending: list = field(default_factory=list)   # finished entries for the HTML, not yet rendered
    patrons: int = 0                              # patrons with an open finding in this branch
    csv_file: object = None
    csv_writer: object = None
    rows_file: object = None

    @property
    def open_count(self) -> int:
        return self.blocking + self.warning


class _Builder:
    def __init__(self, stores: Stores, out_dir: Path, today: dt.date, html_row_limit: int, env: Environment,
                 agencies: list[str] | None = None):
        self.stores, self.out_dir, self.today, self.html_row_limit = stores, out_dir, today, html_row_limit
        self.agencies = agencies
        self.rows_template = env.get_template("open_rows.html.j2")
        self.page_template = env.get_template("datakvalitet.html.j2")
        self.chart_start = today - dt.timedelta(days=CHART_DAYS - 1)
        self.fixed_since = today - dt.timedelta(days=FIXED_DAYS - 1)
        self.new_since = today - dt.timedelta(days=1)
        self.branches: dict[str, _Branch] = {}
        self.by_agency: dict[str, list[_Branch]] = {}
        self.unplaced = 0
        self._seq = 0

    def load_branches(self) -> None:
        with self.stores.fbs.connect() as conn:
            rows = conn.execute(_BRANCHES).all()
        if self.agencies is not None:
            rows = [r for r in rows if str(r.agency_id) in self.agencies]
        used: set[Path] = set()
        for r in rows:
            folder = self.out_dir / _safe_part(r.agency_id) / _safe_part(r.branch_id)
            while folder in used:   # two ids that only differ in characters a file name cannot hold
                folder = folder.with_name(folder.name + "_")
            used.add(folder)
            b = _Branch(str(r.branch_id), str(r.agency_id), r.name or str(r.branch_id),
                        (r.staff_email or "").strip() or None, r.agency_name or str(r.agency_id), folder)
            self.branches[b.branch_id] = b
            self.by_agency.setdefault(b.agency_id, []).append(b)

    def stream_findings(self, chunk: int) -> None:
        until = dt.datetime.combine(self.today + dt.timedelta(days=1), dt.time())
        since = dt.datetime.combine(self.chart_start, dt.time())
        params = {"until": until, "since": since}
        query = _FINDINGS
        if self.agencies is not None:
            if not self.agencies:
                return
            query, params = _FINDINGS_OF, {**params, "agencies": self.agencies}
        with self.stores.ledger.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query, params)
            for part in result.partitions(chunk):
                self._add_chunk(part)
        if self.unplaced:
            log.warning("%d finding(s) belong to agencies without any branch in FBS and are in no report",
                        self.unplaced)

    def _add_chunk(self, part: Sequence) -> None:
        patron_ids = sorted({r.patron_id for r in part if r.patron_id is not None})
        liability_ids = sorted({r.liability_id for r in part if r.liability_id is not None})
        patrons, liabilities = {}, {}
        with self.stores.fbs.connect() as conn:
            if patron_ids:
                patrons = {int(p.patron_id): p for p in conn.execute(_PATRONS, {"ids": patron_ids})}
            if liability_ids:
                liabilities = {int(x.liability_id): x for x in conn.execute(_LIABILITIES, {"ids": liability_ids})}
        for r in part:
            patron = patrons.get(int(r.patron_id)) if r.patron_id is not None else None
            targets = self._targets(r, patron)
            if not targets:
                self.unplaced += 1
                continue
            row = self._row(r, patron, liabilities)
            for b in targets:
                self._add(b, row)
        self._flush_rows()

    def _flush_rows(self) -> None:
        """The finished patron entries, rendered by the row template and appended to each branch's fragment."""
        for b in self.branches.values():
            if b.pending:
                self.rows_template.stream(entries=b.pending).dump(b.rows_file)
                b.pending.clear()

    def _targets(self, r, patron) -> list[_Branch]:
        branch_id = r.branch_id or (patron.branch_id if patron is not None else None)
        if branch_id and str(branch_id) in self.branches:
            return [self.branches[str(branch_id)]]
        return self.by_agency.get(str(r.agency_id), [])

    def _row(self, r, patron, liabilities: dict) -> _Row:
        first, last, resolved = as_datetime(r.first_seen_at), as_datetime(r.last_seen_at), as_datetime(r.resolved_at)
        is_open = resolved is None or resolved.date() > self.today
        check = _check(r.check_code)
        liability = liabilities.get(int(r.liability_id)) if r.liability_id is not None else None
        number = scrub(liability.number) if liability is not None and liability.number else ""
        amount, amount_text = _amount(liability.amount) if liability is not None else (None, "")
        row = _Row(
            key=r.finding_key, check=check, severity=r.severity,
            patron_id=int(r.patron_id) if r.patron_id is not None else None,
            patron_name=scrub(patron.name) if patron is not None and patron.name else "",
            liability_id=int(r.liability_id) if r.liability_id is not None else None,
            liability_number=number, message="",
            first_seen=first.date(), last_seen=last.date(),
            resolved=None if is_open else resolved, is_new=is_open and first.date() >= self.new_since,
            group=_GROUP_OF.get(getattr(r, "resolution", None), FIXED), amount=amount, amount_text=amount_text)
        row.message = _own_words(danish.danish_part(scrub(r.message or "")), check) or _detail(row)
        return row

    def _add(self, b: _Branch, row: _Row) -> None:
        counts = b.counts.setdefault(row.check.code, [0, 0, 0, 0, 0])
        blocking = row.severity in BLOCKING
        # The chart: open on day d when first seen on or before d and not resolved on or before d.
        lo = max(0, (row.first_seen - self.chart_start).days)
        end = row.resolved.date() if row.resolved is not None else self.today + dt.timedelta(days=1)
        hi = min(CHART_DAYS, (end - self.chart_start).days)
        if lo < hi:
            diff = b.chart_blocking if blocking else b.chart_warning
            diff[lo] += 1
            diff[hi] -= 1
        # New that day (first seen), fixed in FBS / resolved otherwise that day: open(d) = open(d-1) + new - both.
        if 0 <= (row.first_seen - self.chart_start).days < CHART_DAYS:
            b.chart_new[(row.first_seen - self.chart_start).days] += 1
        if row.resolved is not None and 0 <= (row.resolved.date() - self.chart_start).days < CHART_DAYS:
            (b.chart_fixed if row.group == FIXED else b.chart_other)[(row.resolved.date() - self.chart_start).days] += 1
        if row.resolved is None:
            counts[0] += 1
            counts[1] += row.is_new
            if blocking:
                b.blocking += 1
            else:
                b.warning += 1
            b.agency_blocked |= row.severity == BLOCKS_AGENCY
            self._write_open(b, row)
        elif row.resolved.date() >= self.fixed_since:
            counts[2 + RESOLVED_GROUPS.index(row.group)] += 1
            self._seq += 1
            item = (row.resolved, self._seq, row)
            heap = b.resolved[row.group]
            if len(heap) < FIXED_LIST_LIMIT:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)

    def _write_open(self, b: _Branch, row: _Row) -> None:
        if b.csv_writer is None:
            self._open_files(b)
        b.csv_writer.writerow(_csv_cells(row))
        shown = b.html_rows < self.html_row_limit
        b.html_rows += shown
        if row.patron_id is None:
            if shown:
                b.agency_rows.append(row)
            return
        if b.entry is None or b.entry.patron_id != row.patron_id:
            self._end_entry(b)
            b.entry = _Entry(row.patron_id, row.patron_name)
            b.patrons += 1
        b.entry.total += 1
        b.entry.blocking |= row.severity in BLOCKING
        if row.liability_id is not None:
            b.entry.liability_ids.add(row.liability_id)
        if shown:
            b.entry.rows.append(row)

    def _end_entry(self, b: _Branch) -> None:
        if b.entry is not None and b.entry.rows:
            b.pending.append(b.entry)
        b.entry = None

    def _open_files(self, b: _Branch) -> None:
        b.folder.mkdir(parents=True, exist_ok=True)
        # utf-8-sig: the BOM tells Danish Excel the file is UTF-8; ';' is its list separator (the comma
        # is its decimal mark, as in the amounts).
        b.csv_file = open(b.folder / (CSV_NAME + ".tmp"), "w", encoding="utf-8-sig", newline="")
        b.csv_writer = csv.writer(b.csv_file, delimiter=";", lineterminator="\r\n")
        b.csv_writer.writerow(CSV_COLUMNS)
        b.rows_file = open(b.folder / ROWS_NAME, "w", encoding="utf-8")

    def finish(self) -> list[BranchReport]:
        reports = []
        for b in self.branches.values():
            if b.csv_writer is None:
                self._open_files(b)   # a branch with nothing open still gets its (empty) report
            self._end_entry(b)
            if b.pending:
                self.rows_template.stream(entries=b.pending).dump(b.rows_file)
                b.pending.clear()
            b.csv_file.close()
            b.rows_file.close()
            os.replace(b.folder / (CSV_NAME + ".tmp"), b.folder / CSV_NAME)
            self._write_html(b)
            (b.folder / ROWS_NAME).unlink()
            reports.append(self._report(b))
        return reports

    def close(self) -> None:
        """Close what is still open (after an error); temporary files are left for inspection."""
        for b in self.branches.values():
            for f in (b.csv_file, b.rows_file):
                if f is not None and not f.closed:
                    f.close()

    def _report(self, b: _Branch) -> BranchReport:
        counts = {code: {"open": c[0], "new": c[1], "resolved": c[2], "integration": c[3], "out_of_scope": c[4]}
                  for code, c in sorted(b.counts.items())}
        return BranchReport(
            agency_id=b.agency_id, branch_id=b.branch_id, branch_name=b.name, staff_email=b.staff_email,
            html_path=b.folder / HTML_NAME, csv_path=b.folder / CSV_NAME, counts=counts,
            open_count=b.open_count, new_count=sum(c[1] for c in b.counts.values()),
            resolved_count=sum(c[2] for c in b.counts.values()), blocking_count=b.blocking,
            warning_count=b.warning, agency_blocked=b.agency_blocked, agency_name=b.agency_name,
            report_date=self.today.isoformat(), integration_count=sum(c[3] for c in b.counts.values()),
            out_of_scope_count=sum(c[4] for c in b.counts.values()))

    # --- the HTML page ---------------------------------------------------------------------

    def _write_html(self, b: _Branch) -> None:
        """The page from ``datakvalitet.html.j2``, streamed to disk with the rows' fragment spliced in."""
        checks = [(_check(code), b.counts[code])
                  for code in sorted(b.counts, key=lambda c: (dq_catalog.check(c).severity not in BLOCKING,
                                                              _CATALOG_ORDER.get(c, len(_CATALOG_ORDER)), c))]
        resolved = {g: [(at, row) for at, _seq, row in sorted(b.resolved[g], reverse=True)] for g in RESOLVED_GROUPS}
        resolved_counts = {g: sum(c[2 + i] for c in b.counts.values()) for i, g in enumerate(RESOLVED_GROUPS)}
        tmp = b.folder / (HTML_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            self.page_template.stream(
                branch=b, today=self.today, generated=_generated(), checks=checks,
                new_count=sum(c[1] for c in b.counts.values()), fixed_count=resolved_counts[FIXED],
                chart=_chart(self._series(b)), agency_rows=b.agency_rows, open_rows=_fragment(b.folder / ROWS_NAME),
                shown=min(b.html_rows, b.open_count), fixed=resolved[FIXED], resolved=resolved,
                resolved_counts=resolved_counts, unknown_why=UNKNOWN_WHY).dump(out)
        os.replace(tmp, b.folder / HTML_NAME)

    def _series(self, b: _Branch) -> list[_Day]:
        out, blocking, warning = [], 0, 0
        for i in range(CHART_DAYS):
            blocking += b.chart_blocking[i]
            warning += b.chart_warning[i]
            out.append(_Day(self.chart_start + dt.timedelta(days=i), blocking, warning, b.chart_new[i],
                            b.chart_fixed[i], b.chart_other[i]))
        return out


@dataclass(frozen=True)
class _Day:
    """One day of the trend: open at its end (blocking, warning), new, fixed in FBS, resolved otherwise."""
    day: dt.date
    blocking: int
    warning: int
    new: int
    fixed: int
    other: int

    @property
    def open(self) -> int:
        return self.blocking + self.warning


# --- rendering helpers -------------------------------------------------------------------------

def scrub(value) -> str:
    """Free text with anything shaped like a full CPR number masked (DDMMYY-****), and a byte FBS
    held that was not UTF-8 (read as a lone surrogate) shown escaped (\\udcff), never a crash."""
    if not value:
        return ""
    shown = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return _CPR_SHAPE.sub(r"\1-****", shown)


def _own_words(message: str, check: dq_catalog.Check) -> str:
    """The finding's message without the catalog's title and reason, which the report shows anyway."""
    if check.why:
        message = message.replace(check.why, "")
    message = message.strip()
    return "" if message.rstrip(".").strip() == check.title else message


def _detail(row: _Row) -> str:
    """The detail line of a finding whose message says nothing beyond the catalog's title: what it
    is about, from FBS (so no row is without one)."""
    if row.liability_id is not None:
        what = f"mellemværende {row.liability_number}" if row.liability_number else f"mellemværende id {row.liability_id}"
        return f"Gælder {what}" + (f" på {row.amount_text}" if row.amount_text else "") + ("" if (
            row.amount_text or what).endswith(".") else ".")
    if row.patron_id is not None:
        return f"Gælder låner {row.patron_id}."
    return "Gælder hele biblioteket."


def _amount(value) -> tuple[Decimal | None, str]:
    """A liability's amount as FBS holds it: (exact Decimal, "-30,00 kr."); never rounded (12.345 is
    shown "12,345 kr."; ``db.stored_number`` reads it, as ``exact_amount`` does before its checks).
    What is not a number is shown as it is, marked (None, "ulæseligt beløb: …")."""
    if value is None:
        return None, ""
    try:
        amount = stored_number(value.strip() if isinstance(value, str) else value)
    except Unreadable:
        return None, f"ulæseligt beløb: {scrub(value)}"
    return amount, danish.kroner(amount)


def _generated() -> str:
    now = dt.datetime.now()
    return f"{danish.date(now)} kl. {now:%H.%M}"


def _excel_safe(value: str) -> str:
    """Text Excel would read as a formula gets a leading apostrophe (CSV injection)."""
    return "'" + value if value and value[0] in "=+-@\t\r" else value


def _csv_cells(row: _Row) -> list:
    amount = danish.csv_amount(row.amount) if row.amount is not None else _excel_safe(row.amount_text)
    return [SEVERITY_LABEL.get(row.severity, row.severity), row.check.rule, _excel_safe(row.check.title),
            "" if row.patron_id is None else row.patron_id, _excel_safe(row.patron_name),
            "" if row.liability_id is None else row.liability_id, _excel_safe(row.liability_number), amount,
            _excel_safe(row.message), row.why, danish.date(row.first_seen), danish.date(row.last_seen),
            "ja" if row.is_new else "nej", row.key]


def _chart(series: Sequence[_Day], width: int = 720, height: int = 250) -> dict:
    """The geometry of ``chart.svg.j2``: per day a stacked bar of the open findings (blocking below,
    warnings above) and, in a band beneath, the day's new findings (up) and fixed ones (down)."""
    left, right, top, band = 44, 8, 10, 56
    bottom = 34 + band
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((d.open for d in series), default=0) or 1
    flow = max((max(d.new, d.fixed + d.other) for d in series), default=0) or 1
    step = plot_w / max(len(series), 1)
    scale, flow_scale = plot_h / peak, (band / 2 - 4) / flow
    base = top + plot_h
    mid = base + 14 + band / 2
    days = [{"day": d.day, "total": d.open, "blocking": d.blocking, "warning": d.warning, "new": d.new,
             "fixed": d.fixed, "other": d.other, "x": left + i * step + 1.5, "bar": max(step - 3, 1),
             "hb": d.blocking * scale, "hw": d.warning * scale, "hn": d.new * flow_scale,
             "hf": d.fixed * flow_scale, "ho": d.other * flow_scale}
            for i, d in enumerate(series)]
    ticks = [(left + i * step + step / 2, series[i].day)
             for i in (sorted({0, len(series) // 2, len(series) - 1}) if series else [])]
    return {"width": width, "height": height, "left": left, "right": right, "top": top, "base": base,
            "mid": mid, "peak": peak, "flow": flow, "days": days, "ticks": ticks, "band": band}


def _fragment(path: Path, size: int = 1 << 16) -> Iterator[Markup]:
    """The open rows' fragment, read in pieces: markup ``open_rows.html.j2`` wrote (every value in it
    escaped there), so the page includes it as it is. This is the only ``Markup`` in the report."""
    with open(path, encoding="utf-8") as f:
        while piece := f.read(size):
            yield Markup(piece)   # our own template's output, escaped when it was rendered


# --- the templates ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _environment(template_dir: str | None) -> Environment:
    loader = FileSystemLoader(TEMPLATE_DIR)
    if template_dir is not None:
        loader = ChoiceLoader([FileSystemLoader(template_dir), loader])
    env = Environment(
        loader=loader,
        # HTML and SVG (and anything else) escaped; only the mail's plain-text parts are not.
        autoescape=select_autoescape(enabled_extensions=("html.j2", "svg.j2"), disabled_extensions=("txt.j2",),
                                     default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["n"] = danish.count
    env.filters["dato"] = _dato
    env.filters["kr"] = danish.kroner
    env.globals.update(severity_label=SEVERITY_LABEL, chart_days=CHART_DAYS, fixed_days=FIXED_DAYS,
                       csv_name=CSV_NAME)
    return env


def _dato(value) -> str:
    """The templates' filter ``dato``: a date (or an ISO date as in the manifest) as 30.11.2026."""
    return danish.date(dt.date.fromisoformat(value) if isinstance(value, str) else value)


def templates(template_dir: Path | str | None = None) -> Environment:
    """The report's and the mail's Jinja2 templates: the package's ``templates/`` folder, or first
    ``template_dir`` (a folder holding edited copies of some of them) and then the package's."""
    return _environment(None if template_dir is None else str(Path(template_dir).resolve()))


def _safe_part(value) -> str:
    """An FBS id as one safe path component (ids are not trusted to be file names)."""
    part = re.sub(r"[^A-Za-z0-9._-]", "_", str(value))
    return part if part.strip(".") else "_" + part


# --- the agency index and the manifest -------------------------------------------------------

def _write_indexes(out_dir: Path, reports: Iterable[BranchReport], today: dt.date, env: Environment) -> None:
    by_agency: dict[str, list[BranchReport]] = {}
    for r in reports:
        by_agency.setdefault(r.agency_id, []).append(r)
    page = env.get_template("index.html.j2")
    for agency_id, items in by_agency.items():
        folder = out_dir / _safe_part(agency_id)
        branches = [(r, quote(r.html_path.relative_to(folder).as_posix()),
                     quote(r.csv_path.relative_to(folder).as_posix())) for r in items]
        tmp = folder / "index.html.tmp"
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as out:
            page.stream(agency_id=agency_id, agency_name=items[0].agency_name or agency_id, today=today,
                        generated=_generated(), blocked=any(r.agency_blocked for r in items),
                        branches=branches).dump(out)
        os.replace(tmp, folder / "index.html")


def manifest_path(out_dir, unit: str | None = None):
    """Where a manifest is: ``out_dir/manifest.json`` for every branch (the CLI), or one
    municipality's ``out_dir/manifests/<unit>/manifest.json`` (a mapped task of the DAG; the
    mailer's sent-state file goes next to it). ``out_dir`` as for ``build_reports``."""
    base = _local(out_dir) or out_dir
    if unit is not None:
        base = base / MANIFESTS / _safe_part(unit)
    return base / MANIFEST_NAME


def write_manifest(out_dir, reports: Sequence[BranchReport], today: dt.date, unit: str | None = None):
    """The manifest (``manifest_path``): every branch report's paths and counts (what the email step
    reads), written whole or not at all, on this machine or in the shared store."""
    path = manifest_path(out_dir, unit)
    storage.write(path, json.dumps({"report_date": today.isoformat(), "unit": unit,
                                    "reports": [r.as_dict() for r in reports]},
                                   ensure_ascii=False, indent=1).encode("utf-8"))
    return path


def load_manifest(path) -> list[BranchReport]:
    data = json.loads(location(path).read_text(encoding="utf-8"))
    return [BranchReport.from_dict(d) for d in data["reports"]]


def format_reports(reports: Sequence[BranchReport]) -> str:
    """One line per branch report, for the CLI and the task log (paths and counts only)."""
    lines = [f"{r.agency_id}/{r.branch_id} {r.branch_name}: {r.open_count} open ({r.blocking_count} blocking, "
             f"{r.warning_count} warnings), {r.new_count} new; in 7 days {r.resolved_count} fixed in FBS, "
             f"{r.integration_count} resolved by the integration, {r.out_of_scope_count} no longer in scope"
             + (" [AGENCY BLOCKED]" if r.agency_blocked else "") + f"\n  {r.html_path}\n  {r.csv_path}"
             for r in reports]
    lines.append(f"{len(reports)} branch report(s), {sum(r.open_count for r in reports)} open finding row(s)")
    return "\n".join(lines)


# --- where and for which day ------------------------------------------------------------------

def reports_root():
    """The staff reports' root in the shared store (``<FBS_DEBITOR_STORAGE_URL>/reports``): a plain
    Path when the store is this machine's disk, else an ``ObjectStoragePath``."""
    root = storage.path("reports")
    return storage.local_path(root) or root


def report_dir(today: dt.date):
    """One day's reports: ``reports/<date>/<agency>/<branch>/`` (agencies of every municipality side
    by side: an agency belongs to one municipality, so two municipalities never write one file)."""
    return reports_root() / today.isoformat()


def report_date_for(interval_end: dt.datetime | None) -> dt.date:
    """The report's day: the run's data-interval end in Copenhagen time (today for a run without one)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(TIMEZONE)
    if interval_end is None:
        return dt.datetime.now(zone).date()
    if interval_end.tzinfo is None:
        interval_end = interval_end.replace(tzinfo=dt.UTC)
    return interval_end.astimezone(zone).date()
