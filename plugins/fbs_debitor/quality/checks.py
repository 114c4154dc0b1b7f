"""Data-quality checks with Great Expectations, run in-process on the extracted batch.

The batch is every in-scope liability not yet sent (open, on or after the cut-off, within the
run's scope: eligibility's pages) plus the agencies. Each check is computed page by page from the
same set-based extract the claims are built from (``claim_rows.sql``), as one boolean column
``ok_<check>`` per check. GX then
validates the accumulated frame once: one expectation per check that the column is all True, with
the failing rows returned by liability id. The frame GX sees holds ids and booleans only, so no
identifier can reach GX's results or its Data Docs.

Severities and texts come from ``dq_catalog``. The codes are the ones eligibility and claim
building use, so one problem is one finding, whoever saw it first.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from fbs_debitor.claims.stream import claim_rows
from fbs_debitor.core import ledger
from fbs_debitor.core.identity import birth_date_from_cpr, check_cpr, check_cvr, mask_cpr
from fbs_debitor.core.settings import age_limit_range
from fbs_debitor.core.stores import Stores
from fbs_debitor.eligibility import rules as eligibility
from fbs_debitor.quality import catalog as cat

log = logging.getLogger(__name__)

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


def _page_frame(rows, today: dt.date):
    """The check columns for one page of claim rows (pandas, vectorised where it matters)."""
    import pandas as pd

    df = pd.DataFrame.from_records(rows, columns=list(rows[0]._fields))  # callers pass a non-empty page
    person = df["d_kind"].eq("person")
    company = df["d_kind"].eq("company")
    cpr = df["d_cpr"].fillna("").astype(str).str.strip()
    has_cpr = cpr.ne("")
    # Each distinct number is checked once (a patron's number recurs on all their liabilities).
    checks = {v: check_cpr(v, today) for v in cpr[has_cpr].unique()}
    cpr_usable = cpr.map(lambda v: bool(v) and checks[v].ok)
    cpr_mod11_warn = cpr.map(lambda v: bool(v) and checks[v].ok and bool(checks[v].warning))
    repl_enabled = df["replacement_cpr_enabled"].astype(bool)
    repl = df["d_replacement_cpr"].fillna("").astype(str).str.strip()
    has_repl = repl.ne("")
    guardian_has_cpr = df["g_cpr"].fillna("").astype(str).str.strip().ne("")

    cvrs = df["d_cvr"].fillna("").astype(str)
    cvr_valid = {v: check_cvr(v).ok for v in cvrs[company].unique()}
    cvr_ok = cvrs.map(lambda v: cvr_valid.get(v, False))
    births_from_cpr = {v: birth_date_from_cpr(v) for v in checks}
    births_from_repl = {v: birth_date_from_cpr(v) for v in repl[has_repl].unique()}
    birth = pd.to_datetime(df["d_birth_date"], errors="coerce")
    birth = birth.fillna(pd.to_datetime(cpr.map(births_from_cpr), errors="coerce"))
    # A child known only by a stored replacement CPR is still a child (I1: it encodes the birth date).
    birth = birth.fillna(pd.to_datetime(repl.map(births_from_repl), errors="coerce"))
    created = pd.to_datetime(df["created_at"], errors="coerce")
    age = created.dt.year - birth.dt.year - ((created.dt.month * 100 + created.dt.day)
                                             < (birth.dt.month * 100 + birth.dt.day)).astype(int)
    low, high = age_limit_range()
    sane_limit = df["age_limit"].astype(int).between(low, high)   # C3 agencies are held whole instead
    minor = person & birth.notna() & sane_limit & (age < df["age_limit"].astype(int))
    loan_date = pd.to_datetime(df["loan_date"], errors="coerce")
    due = pd.to_datetime(df["due_date"], errors="coerce")
    reloan = pd.to_datetime(df["reloan_date"], errors="coerce")
    # F2/F3 as the builder computes them: a compensation's founding date is the re-loan or loan
    # date and its due date the loan's due date; a fee's due date is its founding date (the day
    # after the loan's due date) plus the payment term, so it can never come first.
    founding = reloan.fillna(loan_date)
    compensation = df["kind"].eq("compensation")
    dates_ok = ~((compensation & founding.notna() & due.notna() & (founding > due))
                 | (loan_date.notna() & (created.dt.normalize() < loan_date)))

    out = pd.DataFrame({
        "liability_id": df["liability_id"].astype("int64"),
        "agency_id": df["agency_id"].astype(str),
        "branch_id": df["b_branch_id"],
        "patron_id": df["d_patron_id"].fillna(df["b_patron_id"]).astype("int64"),
    })
    out["ok_T4_group_without_responsible_patron"] = ~(df["b_kind"].eq("group") & df["d_patron_id"].isna())
    out["ok_T5_company_without_valid_cvr"] = ~company | cvr_ok
    out["ok_T5_company_without_ean_or_p_number"] = ~company | df["d_ean"].notna() | df["d_p_number"].notna()
    out["ok_T6_person_without_usable_cpr"] = ~person | (has_cpr & cpr_usable) | (~has_cpr & repl_enabled)
    # I1 and I3 concern liabilities that will travel on a replacement CPR: only where the agency
    # enables them (elsewhere a patron without CPR is blocked under T6 instead).
    out["ok_I1_person_without_cpr_or_birth_date"] = ~(person & repl_enabled & ~has_cpr & ~has_repl
                                                      & df["d_birth_date"].isna())
    out["ok_I4_cpr_fails_modulus_11"] = ~(person & cpr_mod11_warn)
    guardian_on_replacement = minor & df["g_patron_id"].notna() & ~guardian_has_cpr
    out["ok_I3_replacement_cpr_at_prisme"] = ~(df["debtor_vendor"].eq("PRISME") & repl_enabled
                                               & ((person & ~has_cpr) | guardian_on_replacement))
    out["ok_C5_minor_without_guardian"] = ~minor | df["g_patron_id"].notna()
    out["ok_F2_amount_not_positive"] = pd.to_numeric(df["amount"]).gt(0)
    out["ok_F3_dates_out_of_order"] = dates_ok
    masked = cpr.map(lambda v: mask_cpr(v) if v else "")
    return out, masked


def _message(code: str, masked_cpr: str) -> str:
    """What is wrong (the report adds the catalog's reason why it matters)."""
    detail = f" (CPR {masked_cpr})" if masked_cpr and code in ("T6_person_without_usable_cpr",
                                                                 "I4_cpr_fails_modulus_11") else ""
    return f"{cat.check(code).title}{detail}"


def _validate(frame, context_dir: Path | None):
    """Run the GX suite over the frame; returns {code: [row positions]} and the docs index path."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = gx.get_context(mode="ephemeral")
    # An ephemeral context brings a default docs site in a new temporary folder; the hourly run
    # would leave one behind every time. Drop it: the only site is ours, when one is asked for.
    for name, site in dict(context.variables.data_docs_sites or {}).items():
        context.delete_data_docs_site(name)
        shutil.rmtree(site.get("store_backend", {}).get("base_directory", ""), ignore_errors=True)
    if context_dir is not None:
        context.add_data_docs_site(site_name="fbs_debitor", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(context_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    batch = context.data_sources.add_pandas("fbs_extract").add_dataframe_asset("in_scope_liabilities") \
        .add_batch_definition_whole_dataframe("batch")
    suite = context.suites.add(gx.ExpectationSuite(name="fbs_debitor_data_quality"))
    for column in [c for c in frame.columns if c.startswith("ok_")]:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True],
                                                             meta={"check": column[3:]}))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="data_quality", data=batch, suite=suite))
    actions = ([gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["fbs_debitor"])]
               if context_dir is not None else [])
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="fbs_debitor_dq", validation_definitions=[definition], actions=actions,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row"],
                       "return_unexpected_index_query": False, "partial_unexpected_count": 20}))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    failing: dict[str, list[int]] = {}
    for run_result in result.run_results.values():
        for r in run_result.results:
            column = r.expectation_config.kwargs["column"]
            failing[column[3:]] = [int(item["row"]) for item in (r.result.get("unexpected_index_list") or [])]
    docs = str(context_dir / "index.html") if context_dir is not None else None
    return failing, docs


def run_checks(stores: Stores, run_id: str, today: dt.date | None = None, data_docs_dir: Path | None = None,
               page_size: int | None = None, scope=None) -> DQResult:
    """Check the batch, record every failing row as a finding (keyed by liability; agency checks by
    agency) and return the counts and the agencies whose run is blocked (C3). The batch is the
    run's scope (default the hourly run's; a backfill chunk checks its own month and agency)."""
    import pandas as pd

    today = today or dt.date.today()
    seen_at = ledger.now()
    result = DQResult()
    clock = time.perf_counter()
    parts, masks = [], []
    for verdicts in eligibility.iter_verdicts(stores.fbs, stores.ledger, page_size, scope):
        ids = [v.liability_id for v in verdicts if v.category != eligibility.ALREADY_SENT]
        if not ids:
            continue
        rows = claim_rows(stores.fbs, ids, today)
        if not rows:      # the liabilities changed between the two reads: the next run sees them
            continue
        frame, masked = _page_frame(rows, today)
        parts.append(frame)
        masks.append(masked)
    with stores.fbs.connect() as conn:
        agencies = pd.DataFrame([r._mapping for r in conn.execute(text(
            "SELECT agency_id, age_limit FROM agency WHERE CAST(:a AS VARCHAR(20)) IS NULL OR agency_id = :a "
            "ORDER BY agency_id"),
            {"a": scope.agency_id if scope is not None else None})])
    low, high = age_limit_range()
    frame = pd.concat(parts, ignore_index=True) if parts else None
    masked_cpr = pd.concat(masks, ignore_index=True) if masks else None

    # One GX frame: the liability rows, then one row per agency for the agency check.
    agency_ok = agencies["age_limit"].astype(int).between(low, high) if not agencies.empty else pd.Series([], dtype=bool)
    gx_frame = pd.DataFrame({"row": range((0 if frame is None else len(frame)) + len(agencies))})
    for code in LIABILITY_CHECKS:
        column = [] if frame is None else list(frame[f"ok_{code}"])
        gx_frame[f"ok_{code}"] = column + [True] * len(agencies)
    gx_frame[f"ok_{AGENCY_CHECK}"] = [True] * (0 if frame is None else len(frame)) + list(agency_ok)
    result.rows_checked = 0 if frame is None else len(frame)
    extracted = time.perf_counter()
    failing, result.data_docs = _validate(gx_frame, data_docs_dir)
    validated = time.perf_counter()

    findings: list[ledger.Finding] = []
    n_rows = result.rows_checked
    for position in failing.get(AGENCY_CHECK, []):
        agency = agencies.iloc[position - n_rows]
        reason = (f"Myndighedsalderen er {int(agency.age_limit)} (forventet {low}-{high}): alle lånere ville blive "
                  f"klassificeret forkert. / Age limit {int(agency.age_limit)} outside {low}-{high} (C3).")
        result.blocked_agencies[str(agency.agency_id)] = reason
        findings.append(ledger.Finding(check_code=AGENCY_CHECK, rule="C3", severity=cat.BLOCKS_AGENCY,
                                       agency_id=str(agency.agency_id), subject=f"A{agency.agency_id}",
                                       message=f"{cat.check(AGENCY_CHECK).title}: {reason}"))
        result.per_check[AGENCY_CHECK] += 1
    for code in LIABILITY_CHECKS:
        check = cat.check(code)
        for position in failing.get(code, []):
            row = frame.iloc[position]
            findings.append(ledger.Finding(
                check_code=code, rule=check.rule, severity=check.severity, agency_id=row.agency_id,
                branch_id=row.branch_id, patron_id=int(row.patron_id), liability_id=int(row.liability_id),
                subject=f"L{int(row.liability_id)}", message=_message(code, masked_cpr.iloc[position])))
            result.per_check[code] += 1
    result.findings = ledger.upsert_findings(stores.ledger, run_id, findings, seen_at)
    result.seconds = {"extract_and_derive": round(extracted - clock, 1), "gx_validate_and_docs":
                      round(validated - extracted, 1), "record_findings": round(time.perf_counter() - validated, 1)}
    log.info("data quality: %d rows checked, %d findings %s; agencies held: %s; seconds %s", result.rows_checked,
             result.findings, dict(result.per_check), sorted(result.blocked_agencies) or "none", result.seconds)
    return result
