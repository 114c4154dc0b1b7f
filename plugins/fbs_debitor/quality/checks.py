"""Data-quality checks with Great Expectations, run in-process on the extracted batch.

The batch is every in-scope liability not yet sent (open, on or after the cut-off, within the
run's scope: eligibility's pages) plus the agencies. Each page of the set-based extract the claims
are built from (``claim_rows.sql``) becomes one row per liability of a frame GX validates, and the
agencies one row per agency of a second frame. The expectations are GX's own (not-null, in-set,
between, column pairs) with row conditions, and they live in the versioned GX project
``include/gx/`` (suites, validation definitions, checkpoints): this module loads them, it does not
define them. Failing rows come back by ``liability_id`` / ``agency_id``
(``unexpected_index_column_names``), and each becomes a finding.

No CPR, CVR, replacement CPR, name or address is ever a column of a frame GX sees, so none can
reach GX's results, its stores or the Data Docs. Where a check needs such a number, Python
checks it (``core.identity``) and GX gets the verdict as a boolean: ``cvr_valid`` (T5),
``cpr_usable`` (T6), ``cpr_passes_modulus_11`` (I4). The other inputs are facts without the
identifier in them: kinds, the agency's settings, ``has_cpr``, ``has_birth_date``, ``is_minor``
(from the birth date and the agency's age limit), patron ids, amounts and dates.

Where GX writes (``include/`` is read-only in the image; ``var/`` is writable):

* validation results: ``<FBS_DEBITOR_VAR>/gx/validations/``, each with a sample of 20 failing
  rows per expectation (the store in include/gx/plugins; the findings come from the complete
  result in memory). A run with Data Docs keeps its results for its pages; a run without (a
  backfill month) removes its own results at once.
* Data Docs: ``data_docs_dir`` (the callers pass ``data_docs_dir()``: ``data_docs`` in the shared
  store, ``FBS_DEBITOR_STORAGE_URL``, by default ``<var>/data_docs``). They accumulate runs: the
  newest ``DATA_DOCS_RUNS`` runs keep their pages, older results are removed and GX's index
  builder drops their pages. The site's CSS, JavaScript and fonts are copied next to it from
  ``include/gx/static/`` (see include/gx/README.md), so it works without internet access.

GX writes to folders on this machine only. When ``data_docs_dir`` is in a shared object store
(an ``ObjectStoragePath`` that is not ``file://``), the results live in the store too
(``gx/validations``) and this machine keeps working copies (``<var>/gx/shared/``): before a build
the results other workers added are fetched, the site is built into the local copy, and then
the new results, the pages this build wrote and the index are copied to the store (each file
whole), the results pruned here removed there along with their pages. Two workers building at the
same moment may each write an index without the other's newest run; the next build lists both.

Runs may validate at the same time (the hourly transfer, backfill months, several workers): no run
writes a shared definition, results have per-run keys, and the Data Docs (index, pruning) are built
under a file lock. The GX context is loaded once per process and reused.

Severities and texts come from ``dq_catalog``. The codes are the ones eligibility and claim
building use, so one problem is one finding, whoever saw it first.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import functools
import logging
import os
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from fbs_debitor.claims.stream import claim_rows, plain_rows, read_values
from fbs_debitor.core import ledger, storage
from fbs_debitor.core.identity import birth_date_from_cpr, check_cpr, check_cvr, mask_cpr, mask_cprs_in
from fbs_debitor.core.settings import HOME, age_limit_range, var_dir
from fbs_debitor.core.stores import Stores
from fbs_debitor.eligibility import rules as eligibility
from fbs_debitor.quality import catalog as cat

log = logging.getLogger(__name__)

# The versioned GX project: great_expectations.yml, suites, validation definitions, checkpoints.
GX_DIR = HOME / "include" / "gx"
LIABILITY_SUITE = "fbs_debitor_liabilities"   # suite, validation definition and checkpoint name
AGENCY_SUITE = "fbs_debitor_agencies"
DATA_DOCS_SITE = "fbs_debitor"
DATA_DOCS_RUNS = 48                           # runs whose validation pages the Data Docs keep

# Liability-level checks, in report order. (C3 is checked on the agencies.)
LIABILITY_CHECKS = (
    "T4_group_without_responsible_patron",
    "T5_company_without_valid_cvr",
    "T5_company_without_ean_or_p_number",
    "T6_person_without_usable_cpr",
    "I1_person_without_cpr_or_birth_date",
    "I4_cpr_fails_modulus_11",
    "I3_replacement_cpr_at_prisme",
    "C5_minor_without_guardian",
    "F2_amount_not_positive",
    "F3_dates_out_of_order",
)
AGENCY_CHECK = "C3_agency_age_limit_out_of_range"

# The columns of the frame GX validates: ids, facts and verdicts, never an identifier.
LIABILITY_COLUMNS = (
    "liability_id", "liability_kind", "borrower_kind", "debtor_kind", "debtor_patron_id", "guardian_patron_id",
    "debtor_vendor", "replacement_cpr_enabled", "has_cpr", "cpr_usable", "cpr_passes_modulus_11",
    "has_replacement_cpr", "has_birth_date", "guardian_has_cpr", "is_minor", "cvr_valid", "has_ean_or_p_number",
    "amount", "founding_date", "due_date", "created_date", "loan_date",
)
AGENCY_COLUMNS = ("agency_id", "age_limit")
_CATEGORICAL = ("liability_kind", "borrower_kind", "debtor_kind", "debtor_vendor")
# An empty batch still goes through GX (its Data Docs page shows 0 rows), with the same dtypes.
_EMPTY_DTYPES = {
    **{c: "bool" for c in LIABILITY_COLUMNS}, **{c: "category" for c in _CATEGORICAL},
    "liability_id": "int64", "debtor_patron_id": "float64", "guardian_patron_id": "float64", "amount": "float64",
    **{c: "datetime64[us]" for c in ("founding_date", "due_date", "created_date", "loan_date")},
}


@dataclass
class DQResult:
    findings: int = 0
    per_check: Counter = field(default_factory=Counter)
    blocked_agencies: dict[str, str] = field(default_factory=dict)   # agency_id -> reason
    rows_checked: int = 0
    data_docs: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"findings": self.findings, "rows_checked": self.rows_checked, "per_check": dict(self.per_check),
                "blocked_agencies": self.blocked_agencies, "data_docs": self.data_docs, "seconds": self.seconds}


def _page_data(rows, today: dt.date) -> dict:
    """One page of claim rows as the checks' data: ``{"frame": {column: values}, "details":
    {column: values}}``, plain Python (``_frames`` makes the two frames of it; a sending step keeps
    it as it is, ``stage_page``, without importing pandas).

    Identifiers are read here and only their verdicts leave: the details (agency, branch,
    patron, masked CPR for the message) never go to GX.

    Amounts and dates are read one row at a time, as the claims are built (``read_values``): one
    that cannot be read as it is becomes a gap in the frame (GX passes over it) and is the claim
    building's finding (F2, I1) for that liability alone, never an error for the page. A patron
    group's liability is described by the group itself: it never goes (T4), so its named
    responsible patron's data is not checked as if it were the debtor's.

    Values as the frame holds them: dates as microseconds since 1970 (``_NAT`` for none), numbers
    as floats (NaN for none or not a number), kinds as their text (None for none)."""
    low, high = age_limit_range()
    frame: dict[str, list] = {c: [] for c in LIABILITY_COLUMNS}
    details: dict[str, list] = {c: [] for c in _DETAIL_COLUMNS}
    checked: dict[str, object] = {}     # each distinct number once (a patron's recurs on all their liabilities)
    births: dict[str, dt.date | None] = {}
    parts = []
    for row in rows:
        group = row.b_kind == "group"
        values = read_values(row)[0]
        cpr = "" if group else _text(row.d_cpr).strip()
        repl = "" if group else _text(row.d_replacement_cpr).strip()
        cvr = "" if group else _text(row.d_cvr)
        if cpr and cpr not in checked:
            checked[cpr] = check_cpr(cpr, today)
            births[cpr] = birth_date_from_cpr(cpr)
        if repl and repl not in births:
            births[repl] = birth_date_from_cpr(repl)
        parts.append((row, group, values, cpr, repl, cvr))
    company_cvrs = {cvr for row, group, _v, _c, _r, cvr in parts if not group and row.d_kind == "company"}
    cvr_valid = {v: check_cvr(v).ok for v in company_cvrs}
    for row, group, values, cpr, repl, cvr in parts:
        debtor_kind = "group" if group else row.d_kind
        usable = bool(cpr) and checked[cpr].ok
        birth = _moment(None if group else values["d_birth_date"])
        if birth is None and cpr:
            birth = _moment(births[cpr])
        if birth is None and repl:   # a child known only by a stored replacement CPR is still a child (I1)
            birth = _moment(births[repl])
        created = _moment(values["created_at"])
        age_limit = _number(row.age_limit)
        is_minor = False
        if debtor_kind == "person" and birth is not None and created is not None and low <= age_limit <= high:
            age = created.year - birth.year - ((created.month, created.day) < (birth.month, birth.day))
            is_minor = age < age_limit
        loan = _moment(values["loan_date"])
        reloan = _moment(values["reloan_date"])
        amount = values["amount"]
        for name, value in (
                ("liability_id", int(row.liability_id)),
                ("liability_kind", _kind(row.kind)),
                ("borrower_kind", _kind(row.b_kind)),
                ("debtor_kind", _kind(debtor_kind)),
                ("debtor_patron_id", _NAN if group else _number(row.d_patron_id)),
                ("guardian_patron_id", _NAN if group else _number(row.g_patron_id)),
                ("debtor_vendor", _kind(row.debtor_vendor)),
                ("replacement_cpr_enabled", bool(row.replacement_cpr_enabled)),
                ("has_cpr", cpr != ""),
                ("cpr_usable", usable),
                ("cpr_passes_modulus_11", not (usable and bool(checked[cpr].warning))),
                ("has_replacement_cpr", repl != ""),
                ("has_birth_date", not group and row.d_birth_date is not None),
                ("guardian_has_cpr", not group and _text(row.g_cpr).strip() != ""),
                ("is_minor", is_minor),
                ("cvr_valid", cvr_valid.get(cvr, False)),
                ("has_ean_or_p_number", not group and (row.d_ean is not None or row.d_p_number is not None)),
                ("amount", float(amount) if amount is not None else _NAN),
                # F3 as the builder computes it: a compensation's founding date is the re-loan or
                # loan date and its due date the loan's due date; a fee's due date is its founding
                # date (the day after the loan's due date) plus the payment term, so it can never
                # come first.
                ("founding_date", _micros(reloan if reloan is not None else loan)),
                ("due_date", _micros(_moment(values["due_date"]))),
                ("created_date", _micros(dt.datetime.combine(created.date(), dt.time()) if created is not None else None)),
                ("loan_date", _micros(loan))):
            frame[name].append(value)
        # the patron whose data must be fixed: the group itself for a group (T4), else the debtor
        debtor = None if group else row.d_patron_id
        for name, value in (("liability_id", int(row.liability_id)), ("agency_id", str(row.agency_id)),
                            ("branch_id", row.b_branch_id),
                            ("patron_id", int(debtor if debtor is not None else row.b_patron_id)),
                            ("masked_cpr", mask_cpr(cpr) if cpr else "")):
            details[name].append(value)
    return {"frame": frame, "details": details}


_NAN = float("nan")
_NAT = -(2 ** 63)                    # numpy's NaT as int64
_EPOCH = dt.datetime(1970, 1, 1)


def _kind(value) -> str | None:
    return None if value is None else str(value)


def _number(value) -> float:
    """A number as a float; NaN for none, or for a value that is not a number (SQLite keeps text
    in any column)."""
    if value is None:
        return _NAN
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NAN


def _moment(value) -> dt.datetime | None:
    """A date or timestamp already read (``read_values``) as a naive datetime; None for none."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)
    return dt.datetime.combine(value, dt.time())


def _micros(value: dt.datetime | None) -> int:
    if value is None:
        return _NAT
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _frames(data: dict):
    """The GX frame and the finding details (by liability id) of a page's data (``_page_data``):
    dates at microseconds (which hold every date a claim can carry, years 1-9998), kinds as
    categoricals."""
    import numpy as np
    import pandas as pd

    columns = {}
    for name in LIABILITY_COLUMNS:
        values = data["frame"][name]
        if name in _DATES:
            columns[name] = pd.Series(np.array(values, dtype="int64").view("datetime64[us]"))
        elif name in _CATEGORICAL:
            columns[name] = pd.Series(values, dtype=object).astype("str").astype("category")
        else:
            columns[name] = pd.Series(values, dtype=_EMPTY_DTYPES[name])
    frame = pd.DataFrame(columns, columns=list(LIABILITY_COLUMNS))
    d = data["details"]
    details = pd.DataFrame({"liability_id": pd.Series(d["liability_id"], dtype="int64"),
                            "agency_id": pd.Series(d["agency_id"], dtype=object),
                            "branch_id": pd.Series(d["branch_id"], dtype=object),
                            "patron_id": pd.Series(d["patron_id"], dtype="int64"),
                            "masked_cpr": pd.Series(d["masked_cpr"], dtype=object)})
    return frame, details


def _page_frame(rows, today: dt.date):
    """One page of claim rows as (the GX frame's rows, the finding details by liability id)."""
    return _frames(_page_data(rows, today))


def _text(value) -> str:
    """An identifier as text for the checks ('' for none; a blob is not a number, whatever it holds)."""
    if value is None or isinstance(value, float) and value != value:    # None, or NaN where pandas masked it
        return ""
    return value if isinstance(value, str) else "<not text>"


def _concat(parts):
    """The pages as one frame. Kinds and vendors stay categoricals (small, and fast in the row
    conditions GX evaluates on every metric): pandas would turn pages with different categories
    into strings."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    return pd.DataFrame({
        column: (pd.Series(union_categoricals([p[column] for p in parts], ignore_order=True))
                 if column in _CATEGORICAL else pd.concat([p[column] for p in parts], ignore_index=True))
        for column in LIABILITY_COLUMNS})


def _message(code: str, masked_cpr: str) -> str:
    """What is wrong (the report adds the catalog's reason why it matters)."""
    detail = f" (CPR {masked_cpr})" if masked_cpr and code in ("T6_person_without_usable_cpr",
                                                                 "I4_cpr_fails_modulus_11") else ""
    return f"{cat.check(code).title}{detail}"


@functools.lru_cache(maxsize=8)
def _context(gx_dir: str, results_dir: str, data_docs_dir: str):
    """The file-backed GX context of the versioned project, loaded once per process and place.

    Nothing is written under ``gx_dir``: GX only reads the project there; the two run-time
    places are substituted into great_expectations.yml."""
    import great_expectations as gx

    return gx.get_context(mode="file", context_root_dir=gx_dir, runtime_environment={
        "fbs_debitor_gx_results": results_dir, "fbs_debitor_data_docs": data_docs_dir})


def prepare(data_docs_dir=None) -> None:
    """Import GX and load the project's context and checkpoints for this Data Docs place, ahead of
    the checks (``checks_process`` does it while the sending goes on); ``run_checks`` then finds
    them loaded. Writes nothing."""
    results_dir, site_dir = _local_places(data_docs_dir)
    context = _context(str(GX_DIR), str(results_dir), str(site_dir))
    for suite in (LIABILITY_SUITE, AGENCY_SUITE):
        context.checkpoints.get(suite)


@contextmanager
def _locked(path: Path):
    """An exclusive lock between processes (one Data Docs build at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_empty_dirs(root: Path) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda w: len(w[0]), reverse=True):
        if Path(folder) != root:
            try:
                os.rmdir(folder)
            except OSError:
                pass   # not empty


def _drop_result(context, results_dir: Path, key) -> None:
    """Remove one validation result and its run's folders (<suite>/<run name>/<run time>/, which
    only that run writes to, so no other run's folder can vanish under it)."""
    context.validation_results_store.remove_key(key)
    suite, run_name, run_time = key.to_tuple()[:3]
    for folder in (results_dir / suite / run_name / run_time, results_dir / suite / run_name):
        try:
            folder.rmdir()
        except OSError:
            pass   # not empty (or already gone)


def _copy_static(source: Path, target: Path) -> None:
    """The site's vendored CSS, JavaScript and fonts (copied when missing or changed)."""
    for src in source.rglob("*"):
        if src.is_file():
            dst = target / src.relative_to(source)
            if not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


def data_docs_dir():
    """Where the Data Docs site is: ``data_docs`` in the shared store (a Path when the store is this
    machine's disk, else an ``ObjectStoragePath``)."""
    local = storage.local_root()
    if local is not None:
        return local / "data_docs"
    p = storage.path("data_docs")
    return storage.local_path(p) or p


def _shared_results():
    return storage.path("gx", "validations")


def _local_places(data_docs_dir) -> tuple[Path, Path]:
    """(results folder, site folder) on this machine for a site at ``data_docs_dir``: the site
    itself when it is here, else this machine's working copies of the shared store's."""
    local = storage.local_path(data_docs_dir) if data_docs_dir is not None else None
    if data_docs_dir is None or local is not None:
        return var_dir() / "gx" / "validations", local or var_dir() / "data_docs"
    return var_dir() / "gx" / "shared" / "validations", var_dir() / "gx" / "shared" / "data_docs"


def _files(folder: Path) -> set[str]:
    return {f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()} if folder.is_dir() else set()


def _store_files(folder) -> set[str]:
    base = str(folder).rstrip("/") + "/"
    try:
        return {str(f)[len(base):] for f in folder.rglob("*") if f.is_file()} if folder.exists() else set()
    except FileNotFoundError:
        return set()


def _at(base, rel: str):
    for part in rel.split("/"):
        base = base / part
    return base


def _publish(context, keys, results_dir: Path, data_docs_dir) -> None:
    """Build this run's pages and the index; keep the newest DATA_DOCS_RUNS runs. ``data_docs_dir``
    on this machine: built in place; in a shared store: built in the local copy and copied there."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    store = context.validation_results_store
    shared = storage.local_path(data_docs_dir) is None
    results_store, site_dir = (_shared_results(), _local_places(data_docs_dir)[1]) if shared else (None, data_docs_dir)
    with _locked(results_dir.parent / "data_docs.lock"):
        if shared:      # the results other workers added (and none another worker pruned)
            there, here = _store_files(results_store), _files(results_dir)
            for rel in sorted(there - here):
                target = results_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                storage.write_atomically(target.parent, target.name, _at(results_store, rel).read_bytes())
        before = _files(results_dir)
        run_times = sorted({k.run_id.run_time for k in store.list_keys()}, reverse=True)
        if len(run_times) > DATA_DOCS_RUNS:
            oldest_kept = run_times[DATA_DOCS_RUNS - 1]
            for key in store.list_keys():
                if key.run_id.run_time < oldest_kept:
                    _drop_result(context, results_dir, key)   # GX's index builder then drops the page
        built_from = time.time() - 1
        context.build_data_docs(site_names=[DATA_DOCS_SITE], resource_identifiers=[
            *keys, ExpectationSuiteIdentifier(name=LIABILITY_SUITE), ExpectationSuiteIdentifier(name=AGENCY_SUITE)])
        _copy_static(Path(context.root_directory) / "static", site_dir / "static")
        _remove_empty_dirs(site_dir / "validations")     # only written under this lock
        if shared:
            _push(results_dir, results_store, before, site_dir, data_docs_dir, built_from)


def _push(results_dir: Path, results_store, before: set[str], site_dir: Path, target, built_from: float) -> None:
    """The local copies to the shared store: new results, the files this build wrote (pages, index,
    suites) and static assets the store lacks; the results pruned here, and their pages, removed."""
    after = _files(results_dir)
    there = _store_files(results_store)
    for rel in sorted(after - there):
        storage.write(_at(results_store, rel), (results_dir / rel).read_bytes())
    pruned = before - after
    for rel in sorted(pruned & there):
        _at(results_store, rel).unlink(missing_ok=True)
    pages = {f"validations/{rel.rsplit('.', 1)[0]}.html" for rel in pruned}
    site_there = _store_files(target)
    for rel in sorted(pages & site_there):
        _at(target, rel).unlink(missing_ok=True)
    for rel in sorted(_files(site_dir)):
        local = site_dir / rel
        if local.stat().st_mtime >= built_from or (rel.startswith("static/") and rel not in site_there):
            storage.write(_at(target, rel), local.read_bytes())


def _gx_error(info) -> str | None:
    """The message of an exception GX caught while evaluating an expectation (GX 1.x reports one
    per metric, keyed by metric id, or a single one)."""
    infos = [info, *info.values()] if isinstance(info, dict) else []
    for item in infos:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message") or "an exception")
    return None


def _validate(liabilities, agencies, data_docs_dir, run_name: str):
    """Run the versioned checkpoints over the two frames. Returns ({check code: failing ids}
    for the liabilities, {check code: failing ids} for the agencies, the docs index path)."""
    from great_expectations.core.run_identifier import RunIdentifier

    # On this machine; with the site in a shared store, working copies of it (see the module doc).
    # A run without Data Docs never builds the site; its context names the usual place anyway.
    results_dir, site_dir = _local_places(data_docs_dir)
    context = _context(str(GX_DIR), str(results_dir), str(site_dir))
    low, high = age_limit_range()
    run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
    failing: dict[str, dict[str, set]] = {}
    keys = []
    try:
        for suite, frame, id_column in ((LIABILITY_SUITE, liabilities, "liability_id"),
                                        (AGENCY_SUITE, agencies, "agency_id")):
            outcome = context.checkpoints.get(suite).run(
                batch_parameters={"dataframe": frame}, run_id=run_id,
                expectation_parameters={"age_limit_min": low, "age_limit_max": high})
            failing[suite] = {}
            for key, suite_result in outcome.run_results.items():
                keys.append(key)
                for r in suite_result.results:
                    error = _gx_error(r.exception_info)
                    if error:      # never a silent "no finding": the check did not run
                        raise RuntimeError(f"GX could not evaluate {r.expectation_config.type} "
                                           f"({r.expectation_config.meta.get('check')}) in {suite}: {error}")
                    ids = failing[suite].setdefault(r.expectation_config.meta["check"], set())
                    ids.update(item[id_column] for item in (r.result.get("unexpected_index_list") or []))
        if data_docs_dir is not None:
            _publish(context, keys, results_dir, data_docs_dir)
    finally:
        if data_docs_dir is None:          # nothing to show them on: a backfill month keeps none
            for key in keys:
                _drop_result(context, results_dir, key)
    missing = (set(LIABILITY_CHECKS) - set(failing[LIABILITY_SUITE])) | ({AGENCY_CHECK} - set(failing[AGENCY_SUITE]))
    if missing:
        raise RuntimeError(f"the GX suites in {GX_DIR} have no expectation for {sorted(missing)}")
    docs = str(data_docs_dir / "index.html") if data_docs_dir is not None else None
    return failing[LIABILITY_SUITE], failing[AGENCY_SUITE], docs


# --- the batch as the sending steps found it (eligibility is read once per run) ----------------

_DATES = ("founding_date", "due_date", "created_date", "loan_date")
_DETAIL_COLUMNS = ("liability_id", "agency_id", "branch_id", "patron_id", "masked_cpr")


def batch_ids(verdicts) -> list[int]:
    """The liabilities of an eligibility page the checks look at: every one not already sent."""
    return [v.liability_id for v in verdicts if v.category != eligibility.ALREADY_SENT]


def _payload(data: dict) -> str:
    """A page's data (``_page_data``) as text, exactly (``_unframe`` gives its frames back)."""
    import json
    import zlib

    return base64.b64encode(zlib.compress(json.dumps(data).encode("utf-8"), 6)).decode("ascii")


def _unframe(text_: str):
    """(frame, details) of a staged page, as ``_page_frame`` gives them."""
    import json
    import zlib

    return _frames(json.loads(zlib.decompress(base64.b64decode(text_))))


def stage_page(stores: Stores, run_id: str, page, today: dt.date) -> int:
    """The checks' part of one page of a sending step (``claims.stream.Page``), kept in the
    ledger's ``check_batch`` (0015) for the run's data_quality step: the frame of every liability
    of the page not already sent, derived from its claim rows as they are before the page is
    sent (a replacement CPR the sending then writes to FBS does not hide the I1 warning). The
    eligible liabilities' rows are the ones the page read to build them; only the rest (blocked,
    waiting) are read here. Returns the rows kept."""
    wanted = set(batch_ids(page.verdicts))
    if not wanted:
        return 0
    have = {row.liability_id: row for row, _built in page.built if row.liability_id in wanted}
    missing = sorted(wanted - have.keys())
    rows = list(have.values()) + (plain_rows(claim_rows(stores.fbs, missing, today)) if missing else [])
    if not rows:
        return 0
    try:
        payload, error = _payload(_page_data(rows, today)), None
    except Exception as exc:   # noqa: BLE001 - the page's claims still go; the checks fail naming it
        first, last = min(wanted), max(wanted)
        payload, error = "", mask_cprs_in(f"liabilities {first}-{last} ({len(rows)}): {type(exc).__name__}: {exc}")[:2000]
        log.exception("the checks' frame of a page could not be derived (%s); its claims go on, data_quality "
                      "will fail naming it", error)
    with stores.ledger.begin() as conn:
        conn.execute(text("INSERT INTO check_batch (run_id, page_id, row_count, frame, error) "
                          "VALUES (:r, :p, :n, :f, :e)"),
                     {"r": run_id, "p": ledger.ordered_id(time.time_ns(), 0), "n": len(rows), "f": payload, "e": error})
    return len(rows)


def staged_frames(ledger_engine, run_id: str, errors: list[str]):
    """The run's staged pages as (frame, details), in the order they were written; a page that
    could not be prepared adds its error to ``errors`` instead."""
    query = text("SELECT page_id, frame, error FROM check_batch WHERE run_id = :r AND page_id > :after "
                 "ORDER BY page_id LIMIT 1")
    after = ""
    while True:
        with ledger_engine.connect() as conn:
            row = conn.execute(query, {"r": run_id, "after": after}).first()
        if row is None:
            return
        after = row.page_id
        if row.error:
            errors.append(row.error)
            continue
        yield _unframe(row.frame)


def unchecked(ledger_engine, run_id: str) -> bool:
    """True while the run's checks have not finished: pages its sending kept for them are still
    there (data_quality failed, or has not run). Their findings are then not the run's to resolve."""
    with ledger_engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM check_batch WHERE run_id = :r"), {"r": run_id}).first() is not None


def drop_staged(ledger_engine, run_id: str) -> int:
    """The run's staged batch is used up (its findings are recorded), or the run has no checks."""
    with ledger_engine.begin() as conn:
        return conn.execute(text("DELETE FROM check_batch WHERE run_id = :r"), {"r": run_id}).rowcount


def _read_pages(stores: Stores, run_id: str, today: dt.date, page_size: int | None, scope):
    """(frame, details) page by page of a run whose sending did not stage its batch (a backfill
    month checks its own month before sending it): its scope's eligibility and claim rows."""
    for verdicts in eligibility.iter_verdicts(stores.fbs, stores.ledger, page_size, scope):
        ids = batch_ids(verdicts)
        if not ids:
            continue
        rows = claim_rows(stores.fbs, ids, today)
        if not rows:      # the liabilities changed between the two reads: the next run sees them
            continue
        yield _page_frame(rows, today)


def _latest_only(parts: list, details: list) -> tuple[list, list]:
    """A liability staged twice (a retried sending step staged its page again) counts once, as
    the later page has it."""
    seen: set[int] = set()
    out_parts, out_details = [], []
    for frame, detail in zip(reversed(parts), reversed(details), strict=True):
        keep = ~frame["liability_id"].isin(seen)
        seen.update(frame["liability_id"].tolist())
        if keep.all():
            out_parts.append(frame)
            out_details.append(detail)
        elif keep.any():
            out_parts.append(frame[keep].reset_index(drop=True))
            out_details.append(detail[keep.to_numpy()].reset_index(drop=True))
    return out_parts[::-1], out_details[::-1]


def run_checks(stores: Stores, run_id: str, today: dt.date | None = None, data_docs_dir: Path | None = None,
               page_size: int | None = None, scope=None, staged: bool = False) -> DQResult:
    """Check the batch, record every failing row as a finding (keyed by liability; agency checks by
    agency) and return the counts and the agencies whose run is blocked (C3). The batch is the
    run's scope (default the hourly run's; a backfill chunk checks its own month and agency).
    ``staged``: the batch is what the run's sending steps looked at (``stage_page``, after
    them): neither eligibility nor the claim rows are read again; the staged pages are then
    deleted."""
    import pandas as pd

    today = today or dt.date.today()
    seen_at = ledger.now()
    result = DQResult()
    clock = time.perf_counter()
    parts, details, unprepared = [], [], []
    pages = (staged_frames(stores.ledger, run_id, unprepared) if staged
             else _read_pages(stores, run_id, today, page_size, scope))
    for gx_rows, page_details in pages:
        parts.append(gx_rows)
        details.append(page_details)
    if staged:
        parts, details = _latest_only(parts, details)
    with stores.fbs.connect() as conn:
        agencies = pd.DataFrame([tuple(r) for r in conn.execute(text(
            "SELECT agency_id, age_limit FROM agency WHERE CAST(:a AS VARCHAR(20)) IS NULL OR agency_id = :a "
            "ORDER BY agency_id"),
            {"a": scope.agency_id if scope is not None else None})], columns=list(AGENCY_COLUMNS))
    # An age limit that is not a number (SQLite keeps text in any column) is a gap the suite
    # refuses (C3: not null), not an error for every agency.
    agencies = agencies.assign(agency_id=agencies["agency_id"].astype(str),
                               age_limit=pd.to_numeric(agencies["age_limit"], errors="coerce").astype("float64"))
    low, high = age_limit_range()
    if parts:
        liabilities = _concat(parts)
        detail = pd.concat(details, ignore_index=True).set_index("liability_id")
        parts.clear()      # the pages are in the two frames now: not held through validation
        details.clear()
    else:
        liabilities = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_DTYPES.items()})
        detail = pd.DataFrame(columns=["agency_id", "branch_id", "patron_id", "masked_cpr"],
                              index=pd.Index([], dtype="int64", name="liability_id"))
    result.rows_checked = len(liabilities)
    extracted = time.perf_counter()
    failing, failing_agencies, result.data_docs = _validate(liabilities, agencies, data_docs_dir, run_id)
    validated = time.perf_counter()

    findings: list[ledger.Finding] = []
    held = failing_agencies.get(AGENCY_CHECK, set())
    for agency in agencies[agencies["agency_id"].isin(held)].itertuples(index=False):
        limit = f"{agency.age_limit:g}" if agency.age_limit == agency.age_limit else "ikke et tal / not a number"
        reason = (f"Myndighedsalderen er {limit} (forventet {low}-{high}): alle lånere ville blive "
                  f"klassificeret forkert. / Age limit {limit} outside {low}-{high} (C3).")
        result.blocked_agencies[str(agency.agency_id)] = reason
        findings.append(ledger.Finding(check_code=AGENCY_CHECK, rule="C3", severity=cat.BLOCKS_AGENCY,
                                       agency_id=str(agency.agency_id), subject=f"A{agency.agency_id}",
                                       message=f"{cat.check(AGENCY_CHECK).title}: {reason}"))
        result.per_check[AGENCY_CHECK] += 1
    extra = [c for c in failing if c not in LIABILITY_CHECKS]     # a check added to the suite only
    for code in (*LIABILITY_CHECKS, *extra):
        check = cat.check(code)
        rows = detail[detail.index.isin(failing.get(code, ()))]    # in batch order, once per liability
        for liability_id, row in zip(rows.index, rows.itertuples(index=False), strict=True):
            findings.append(ledger.Finding(
                check_code=code, rule=check.rule, severity=check.severity, agency_id=row.agency_id,
                branch_id=row.branch_id, patron_id=int(row.patron_id), liability_id=int(liability_id),
                subject=f"L{int(liability_id)}", message=_message(code, row.masked_cpr)))
            result.per_check[code] += 1
    if staged:   # the sending step already recorded these this run, with its own (fuller) message
        with stores.ledger.connect() as conn:
            seen = {r[0] for r in conn.execute(text("SELECT finding_key FROM finding WHERE last_run_id = :r"),
                                               {"r": run_id})}
        findings = [f for f in findings if f.key not in seen]
    result.findings = ledger.upsert_findings(stores.ledger, run_id, findings, seen_at)
    if unprepared:   # what was checked is recorded; the gap is an error, never a silent "no finding"
        raise RuntimeError(f"the checks could not see {len(unprepared)} page(s) the sending looked at in run "
                           f"{run_id}: {'; '.join(unprepared[:3])}")
    if staged:
        drop_staged(stores.ledger, run_id)
    result.seconds = {"extract_and_derive": round(extracted - clock, 1), "gx_validate_and_docs":
                      round(validated - extracted, 1), "record_findings": round(time.perf_counter() - validated, 1)}
    log.info("data quality: %d rows checked, %d findings %s; agencies held: %s; seconds %s", result.rows_checked,
             result.findings, dict(result.per_check), sorted(result.blocked_agencies) or "none", result.seconds)
    return result
