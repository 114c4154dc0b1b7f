"""The transfer run: the steps the hourly DAG ``debitor_transfer`` and the CLI share.

Today the run assesses eligibility (T1–T6), records every blocked liability as a finding in the
ledger (nothing is silently skipped) and records the run with its counts. Building and sending
claims hang off ``iter_verdicts`` in later steps.
"""

from __future__ import annotations

import logging
from collections import Counter

from fbs_debitor import eligibility, ledger
from fbs_debitor.stores import Stores

log = logging.getLogger(__name__)


def _finding(v: eligibility.Verdict) -> ledger.Finding:
    if v.rule == "C3":  # one finding for the agency, not one per liability
        return ledger.Finding(check_code=eligibility.CHECK_CODES["C3"], rule="C3", severity="blocks_agency",
                              agency_id=v.agency_id, subject=f"A{v.agency_id}", message=v.reason or "C3")
    return ledger.Finding(
        check_code=eligibility.CHECK_CODES[v.rule], rule=v.rule, severity="blocks_liability",
        agency_id=v.agency_id, branch_id=v.branch_id, patron_id=v.subject_patron_id,
        liability_id=v.liability_id, subject=f"L{v.liability_id}", message=v.reason or v.rule)


def assess_eligibility(stores: Stores, run_id: str, page_size: int | None = None) -> Counter:
    """Stream every in-scope liability's verdict; record blocked ones as findings (resolving the
    ones no longer seen) and the run's counts. Returns the counts (agency, category, rule) -> n."""
    seen_at = ledger.now()
    counts = eligibility.out_of_scope_counts(stores.fbs)
    pages = 0
    for page in eligibility.iter_verdicts(stores.fbs, stores.ledger, page_size):
        pages += 1
        eligibility.count(page, counts)
        blocked = list({f.key: f for f in (_finding(v) for v in page if v.category == eligibility.BLOCKED)}.values())
        if blocked:
            ledger.upsert_findings(stores.ledger, run_id, blocked, seen_at)
    resolved = ledger.resolve_unseen_findings(stores.ledger, run_id, eligibility.CHECK_CODES.values(), seen_at)
    ledger.record_counts(stores.ledger, run_id, counts)
    log.info("eligibility assessed in %d page(s): %s; %d finding(s) resolved", pages, totals(counts), resolved)
    return counts


def totals(counts: Counter) -> dict[str, int]:
    """Counts per category, and per rule for blocked and out-of-scope: small enough for XCom."""
    out: dict[str, int] = {}
    for (_agency, category, rule), n in counts.items():
        out[category] = out.get(category, 0) + n
        if category in (eligibility.BLOCKED, eligibility.OUT_OF_SCOPE, eligibility.AWAITING):
            key = f"{category}:{rule}"
            out[key] = out.get(key, 0) + n
    return dict(sorted(out.items()))


def run_assessment(stores: Stores, kind: str = "manual", **run_fields) -> tuple[str, Counter]:
    """A whole run outside Airflow: start, assess, finish (failed with the error if it raises)."""
    run_id = ledger.start_run(stores.ledger, kind, **run_fields)
    try:
        counts = assess_eligibility(stores, run_id)
    except Exception as exc:
        ledger.finish_run(stores.ledger, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    ledger.finish_run(stores.ledger, run_id, "success")
    return run_id, counts

