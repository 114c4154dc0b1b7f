"""Which liabilities are due for transfer now (rules T1–T6), and which cannot go and why.

The selection is set-based SQL (``include/sql/queries/eligibility_*.sql``), streamed from FBS in
keyset pages; each page's ids are then looked up in the ledger (FBS and the ledger are separate
connections, so there is no cross-database join) and its debtors' identifiers
are checked with python-stdnum. Nothing is dropped silently: every liability in scope ends in
exactly one category, and the blocked ones carry the rule that stops them.

One row never stops the others: a value of a row that cannot be read (an identifier that is not
text, say) blocks that liability with its rule, and anything unexpected in one row blocks only it
(M1, logged with the liability id, never a CPR number).

T4 as corrected on 2026-11-30: liabilities on a patron group are never transferred, whether or not
the group names a responsible patron. Group liabilities sent under the earlier reading (a group
with a named responsible patron) stay at the debtor system: they are valid claims on a named
patron, they are not cancelled, and changes to them are still sent (``changes.detection`` reads
their parties as before); nothing new goes for any group.

Categories:
  eligible               due for transfer now
  awaiting_verification  compensation not yet verified while the agency verifies (T2)
  blocked                cannot be transferred until the data is fixed (F1 the borrower is missing,
                         T5, T6), never as it is (T4: a patron group's liability), or until the
                         agency's age limit is corrected (C3: the whole agency is held)
  already_sent           in the ledger already (sent or being sent): never sent again as new
  out_of_scope           not for transfer: before cut-off (T1), closed or sent to collection (T3),
                         cancelled before it was due; or not this run's: in a range that waits
                         for debitor_backfill (T3-backfill)
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
from collections import Counter, namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core.db import as_bool, in_query, keyset_pages, shown
from fbs_debitor.core.identity import check_cpr, check_cvr, mask_cpr, mask_cprs_in
from fbs_debitor.core.settings import BuildSettings, age_limit_range, build_settings, chunk_size
from fbs_debitor.eligibility import scope as scopes

log = logging.getLogger(__name__)

ELIGIBLE = "eligible"
AWAITING = "awaiting_verification"
BLOCKED = "blocked"
ALREADY_SENT = "already_sent"
OUT_OF_SCOPE = "out_of_scope"
CATEGORIES = (ELIGIBLE, AWAITING, BLOCKED, ALREADY_SENT, OUT_OF_SCOPE)

# Finding check codes for the rules that block a liability (stored in ledger.finding): those
# decided here, and those only building the claim can find (``claims.builder``'s problems). Where a
# rule has several codes, this is the default; a Verdict or Problem names its own (``code``).
CHECK_CODES = {
    "C3": "C3_agency_age_limit_out_of_range",
    "T4": "T4_group_without_responsible_patron",
    "T5": "T5_company_without_valid_cvr",
    "T6": "T6_person_without_usable_cpr",
    "I1": "I1_replacement_cpr_not_possible",
    "I2": "I2_replacement_cpr_without_name",
    "C4": "C4_minor_without_name",
    "F2": "F2_amount_not_positive",
    "F3": "F3_fee_without_loan",
    "F1": "F1_patron_missing",
    "F6": "F6_text_cannot_be_sent",
    "M1": "M1_liability_not_processable",
}


@dataclass(frozen=True)
class Verdict:
    liability_id: int
    agency_id: str
    patron_id: int                 # the borrower (for a group: the group)
    debtor_patron_id: int | None   # the borrower, or a group's responsible patron
    branch_id: str | None
    kind: str
    category: str
    rule: str = "-"
    reason: str | None = None      # Danish / English, CPR masked
    code: str | None = None        # the finding's check code where the rule has several (else CHECK_CODES)

    @property
    def check_code(self) -> str:
        return self.code or CHECK_CODES[self.rule]

    @property
    def subject_patron_id(self) -> int | None:
        """The patron whose data must be fixed: the group itself for T4, none for the agency's C3,
        otherwise the debtor."""
        if self.rule == "C3":
            return None
        return self.patron_id if self.rule == "T4" else (self.debtor_patron_id or self.patron_id)


def _not_text(value) -> bool:
    return value is not None and not isinstance(value, str)


# The run's values while it judges a page (``iter_verdicts``): the age limit range and the day, read
# once per run instead of per row. Outside a run (a single verdict) they are read when needed.
_PAGE: ContextVar[tuple[tuple[int, int], dt.date] | None] = ContextVar("eligibility_page", default=None)


def _limits() -> tuple[int, int]:
    page = _PAGE.get()
    return page[0] if page is not None else age_limit_range()


def _today() -> dt.date | None:
    page = _PAGE.get()
    return page[1] if page is not None else None


def _identity_verdict(row) -> tuple[str, str, str | None]:
    """(category, rule, reason) for a structurally eligible row, from its debtor's identifiers.
    An identifier that is not text at all (SQLite keeps a blob in any column) is not a number."""
    if row.debtor_kind == "company":
        if _not_text(row.debtor_cvr):
            return BLOCKED, "T5", "Virksomhed: CVR-feltet indeholder ikke tekst / the CVR field is not text"
        cvr = check_cvr(row.debtor_cvr)
        if not cvr.ok:
            return BLOCKED, "T5", f"Virksomhed uden gyldigt CVR-nummer: {cvr.error}"
        return ELIGIBLE, "-", None
    # A person: a real CPR, or a replacement CPR where the agency has them enabled (T6, I1).
    if _not_text(row.debtor_cpr) or _not_text(row.debtor_replacement_cpr):
        return BLOCKED, "T6", "Person: CPR-feltet indeholder ikke tekst / the CPR field is not text"
    if row.debtor_cpr:
        cpr = check_cpr(row.debtor_cpr, _today())
        if not cpr.ok:
            return BLOCKED, "T6", f"Person med ugyldigt CPR-nummer: {cpr.error}"
        return ELIGIBLE, "-", None
    if as_bool(row.replacement_cpr_enabled):
        return ELIGIBLE, "-", None
    if row.debtor_replacement_cpr:
        return BLOCKED, "T6", (
            f"Person uden CPR-nummer; erstatnings-CPR {mask_cpr(row.debtor_replacement_cpr)} findes, men "
            "erstatnings-CPR er slået fra for biblioteket / replacement CPR exists but is disabled for the agency")
    return BLOCKED, "T6", ("Person uden CPR-nummer, og erstatnings-CPR er slået fra / "
                           "no CPR number and replacement CPR is disabled")


T4_REASON = ("Mellemværender på en lånergruppe overføres aldrig, da der ikke er nogen ansvarlig på dem; opret "
             "mellemværendet på en navngiven låner i gruppen / liabilities on a patron group are never transferred "
             "(a group has no responsible party): create the liability on a named patron of the group")


def _verdict(row, sent: set[int]) -> Verdict:
    code = None
    if row.liability_id in sent:
        category, rule, reason = ALREADY_SENT, "-", None
    elif row.gate == "C3":
        low, high = _limits()
        category, rule, reason = BLOCKED, "C3", (
            f"Bibliotekets myndighedsalder er {shown(row.age_limit)} (forventet {low}-{high}): alle ville blive "
            f"klassificeret forkert / the agency's age limit {shown(row.age_limit)} is outside {low}-{high}")
    elif row.gate == "T2":
        category, rule, reason = AWAITING, "T2", None
    elif row.gate == "F1":
        category, rule, code = BLOCKED, "F1", "F1_patron_missing"
        reason = (f"Låner {row.patron_id} findes ikke i FBS, så der er ingen at opkræve / "
                  f"patron {row.patron_id} is not in FBS: there is no one to bill")
    elif row.gate == "T4":
        category, rule, reason = BLOCKED, "T4", T4_REASON
    else:
        category, rule, reason = _identity_verdict(row)
    return Verdict(liability_id=row.liability_id, agency_id=row.agency_id, patron_id=row.patron_id,
                   debtor_patron_id=row.debtor_patron_id, branch_id=row.branch_id, kind=row.kind,
                   category=category, rule=rule, reason=reason, code=code)


def _safe_verdict(row, sent: set[int]) -> Verdict:
    """The row's verdict; anything unexpected blocks this liability only (M1), never the page."""
    try:
        return _verdict(row, sent)
    except Exception as exc:  # noqa: BLE001 - one row's surprise must not stop the others
        log.error("liability %s could not be assessed: %s: %s", row.liability_id, type(exc).__name__,
                  mask_cprs_in(str(exc))[:300])
        return Verdict(liability_id=row.liability_id, agency_id=row.agency_id, patron_id=row.patron_id,
                       debtor_patron_id=None, branch_id=None, kind=row.kind, category=BLOCKED, rule="M1",
                       code="M1_liability_not_processable",
                       reason=(f"Mellemværendet kunne ikke vurderes ({type(exc).__name__}); fejlen er logget / "
                               "the liability could not be assessed; the error is logged"))


_IN_LEDGER = in_query("SELECT liability_id FROM claim WHERE liability_id IN :ids", "ids")


def in_ledger(ledger: Engine, liability_ids: list[int], per_query: int = 10_000) -> set[int]:
    """Which of these liabilities the ledger already has: one query per 10,000 ids of the page
    (only the page's own ids, so the cost follows the page, not the size of the ledger)."""
    found: set[int] = set()
    with ledger.connect() as conn:
        for start in range(0, len(liability_ids), per_query):
            found.update(r[0] for r in conn.execute(_IN_LEDGER, {"ids": liability_ids[start:start + per_query]}))
    return found


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a page is judged or built: a page creates some
    objects per row while it holds all its rows, and the collector would otherwise walk every one
    of them again and again (a third of the build's time), looking for cycles the page does not
    make. Reference counting still frees everything as usual; what a page leaves in a cycle is
    collected once the collector runs again, right after. Never paused across a ``yield``: the
    caller's own code always runs with the collector as it was."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@lru_cache(maxsize=8)
def _record(fields: tuple[str, ...]) -> type:
    return namedtuple("CandidateRow", fields)


def iter_verdicts(fbs: Engine, ledger: Engine, page_size: int | None = None,
                  scope: scopes.Scope | None = None, *, settings: BuildSettings | None = None) -> Iterator[list[Verdict]]:
    """Every in-scope liability's verdict, one page (list) at a time, in liability_id order. The
    scope is the run's (default: the hourly run's, which leaves ranges awaiting a backfill alone).
    The settings are read once, at the start (``settings``: the run's snapshot, when it has one)."""
    page_size = page_size or chunk_size()
    scope = scope if scope is not None else scopes.hourly(ledger)
    sql, params = scope.render("queries/eligibility_candidates.sql", fbs)
    query = text(sql)
    limits = (settings or build_settings()).age_limit_range
    low, high = limits
    today = dt.date.today()
    pages = keyset_pages(fbs, query, "liability_id", -1, {**params, "page_size": page_size,
                         "min_age_limit": low, "max_age_limit": high}, after="after_id")
    while True:
        token = _PAGE.set((limits, today))      # the run's values for this page's rows
        try:
            with paused_gc():                   # reading and judging the page; never across the yield
                rows = next(pages, None)
                if rows is None:
                    return
                sent = in_ledger(ledger, [r.liability_id for r in rows])
                make = _record(tuple(rows[0]._fields))._make    # plain tuples: fields read several times faster
                verdicts = [_safe_verdict(make(row), sent) for row in rows]
                del rows, sent                  # not held while the caller builds the page
        finally:
            _PAGE.reset(token)
        yield verdicts


def out_of_scope_counts(fbs: Engine, scope: scopes.Scope = scopes.EVERYTHING) -> Counter:
    """(agency_id, OUT_OF_SCOPE, rule) -> n for the liabilities of the run's scope that are not
    for transfer (T1, T3; T3-backfill: waiting for debitor_backfill)."""
    sql, params = scope.render("queries/eligibility_out_of_scope.sql", fbs)
    with fbs.connect() as conn:
        rows = conn.execute(text(sql), params).all()
    return Counter({(r.agency_id, OUT_OF_SCOPE, r.rule): int(r.n) for r in rows})
