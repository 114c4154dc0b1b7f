"""The transfer run: the steps the hourly DAG ``debitor_transfer`` and the CLI share.

A run assesses eligibility (T1–T6) and builds every eligible claim, so that a liability is only
counted eligible when its claim can really be built: problems only the builder can see (a guardian
without CPR, an amount of zero, a fee without its loan, ...) are counted as blocked with their
rule. Every blocked liability is recorded as a finding in the ledger (nothing is silently
skipped), and the run with its counts. With a client, each page's claims are delivered as soon
as they are built (``delivery``): first whatever earlier runs left unconfirmed, then the new ones;
rejections become staff tasks (``delivery.staff_tasks``).

Which liabilities a run looks at is its ``scope``: the hourly run's is everything from each
agency's cut-off date except ranges waiting for ``debitor_backfill`` (``cut_off``); a backfill
chunk's is one agency's month (``backfill``). Whoever sends (the hourly run, a backfill chunk,
the CLI) holds the ledger's ``sending`` lock meanwhile, so two senders never interleave.

One agency's trouble never stops the others: when delivery hits an unexpected error in one
agency's batches it counts them ``(agency, "failed", <exception type>)`` and goes on with the
next agency. Such a run ends *failed*, after every agency's work was done, with an error naming
the agencies that need attention (``agency 715100: RuntimeError``): ``run_transfer`` records it
so, and the DAG's ``close_run`` and its last task ``failed_agencies`` do the same.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from sqlalchemy import text

from fbs_debitor.changes import detection as change_detection
from fbs_debitor.changes import sending as change_delivery
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.model import Problem
from fbs_debitor.core import ledger
from fbs_debitor.core.db import chunked, exclusive, in_query
from fbs_debitor.core.settings import batch_size_default
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery import outbox as delivery
from fbs_debitor.delivery import rejections
from fbs_debitor.delivery import staff_tasks as delivery_tasks
from fbs_debitor.eligibility import cut_off, delta
from fbs_debitor.eligibility import rules as eligibility
from fbs_debitor.eligibility import scope as scopes
from fbs_debitor.quality import catalog as dq_catalog
from fbs_debitor.quality import checks as dq_checks
from fbs_debitor.quality.checks_process import ChecksFailed, ChecksProcess
from fbs_debitor.transfer import units as unit_list
from fbs_debitor.transfer.units import Unit

log = logging.getLogger(__name__)

FAILED = delivery.FAILED   # an agency whose work failed part-way: (agency, "failed", <exception type>)
# Findings of an agency the run did not assess to the end (``ledger.mark_assessed``) are left open:
# absence proves nothing.


def _finding(v: eligibility.Verdict) -> ledger.Finding:
    if v.rule == "C3":  # one finding for the agency, not one per liability
        return ledger.Finding(check_code=eligibility.CHECK_CODES["C3"], rule="C3", severity="blocks_agency",
                              agency_id=v.agency_id, subject=f"A{v.agency_id}", message=v.reason or "C3")
    return ledger.Finding(
        check_code=v.check_code, rule=v.rule, severity="blocks_liability",
        agency_id=v.agency_id, branch_id=v.branch_id, patron_id=v.subject_patron_id,
        liability_id=v.liability_id, subject=f"L{v.liability_id}", message=v.reason or v.rule)


def _problem_finding(p: Problem, branch_id: str | None) -> ledger.Finding:
    # Every rule the builder can stop on has a catalog code (tests/test_dq_checks.py checks it), so
    # the finding is resolved at the end of a run like any other.
    return ledger.Finding(check_code=p.code or eligibility.CHECK_CODES[p.rule],
                          rule=p.rule, severity="blocks_liability", agency_id=p.agency_id, branch_id=branch_id,
                          patron_id=p.patron_id, liability_id=p.liability_id, subject=f"L{p.liability_id}",
                          message=p.message)


def assess_eligibility(stores: Stores, run_id: str, page_size: int | None = None,
                       on_page: Callable[[claim_stream.Page], Counter] | None = None,
                       scope: scopes.Scope | None = None, unit: Unit | None = None,
                       checks: bool = True) -> Counter:
    """Stream every in-scope liability's verdict and build the eligible ones; record blocked ones
    as findings and the run's counts. ``on_page`` (delivery) gets each page after it is counted and
    may return more counts. The scope is the run's (default: the hourly run's; with ``unit``, that
    unit's agencies only, and only their counts are replaced). Returns the counts
    (agency, category, rule) -> n; every agency of the scope is then marked assessed in this run.
    In the hourly scope each page's frame for the run's GX checks is kept first (``checks``,
    ``quality.checks.stage_page``: eligibility is read once per run); a run without the checks
    (``run_transfer(data_quality=False)``) keeps none."""
    seen_at = ledger.now()
    today = dt.date.today()
    staging = checks and scope is None   # the hourly run's checks read the batch this step found (check_batch)
    if scope is None:   # the hourly run's: of the unit, and only what changed when the run has a window
        mine = unit.agencies if unit else None
        scope = scopes.hourly(stores.ledger, agencies=mine, changed=delta.changes(stores, run_id, mine))
    counts = eligibility.out_of_scope_counts(stores.fbs, scope)
    pages = 0
    for page in claim_stream.iter_pages(stores.fbs, stores.ledger, page_size, today, scope=scope):
        pages += 1
        not_buildable = {row.liability_id: (built.problem, row.b_branch_id) for row, built in page.built
                         if built.problem}
        for v in page.verdicts:
            if v.liability_id in not_buildable:
                counts[(v.agency_id, eligibility.BLOCKED, not_buildable[v.liability_id][0].rule)] += 1
            else:
                counts[(v.agency_id, v.category, v.rule)] += 1
        findings = [_finding(v) for v in page.verdicts if v.category == eligibility.BLOCKED]
        findings += [_problem_finding(problem, branch) for problem, branch in not_buildable.values()]
        blocked = list({f.key: f for f in findings}.values())
        if blocked:
            ledger.upsert_findings(stores.ledger, run_id, blocked, seen_at)
        if staging:   # before the page is sent: the checks see the rows as eligibility read them
            dq_checks.stage_page(stores, run_id, page, today)
        if on_page is not None:
            counts.update(on_page(page))
    # (delivery's own categories too: a retried task that no longer has them leaves none behind)
    ledger.record_counts(stores.ledger, run_id, counts,
                         (*eligibility.CATEGORIES, FAILED, "deferred", delivery.HELD_ACCESS),
                         agencies=unit.agencies if unit else None)
    ledger.mark_assessed(stores.ledger, run_id, _agencies_of(stores, scope))
    log.info("eligibility assessed in %d page(s): %s", pages, totals(counts))
    return counts


# Checks whose finding the integration itself can make go away, and how: a person without CPR
# and birth date (the I1 warning) is no longer one once a run gave them a replacement CPR and
# wrote it to FBS. (T6 cannot: where it blocks, replacement CPRs are off or the CPR is invalid,
# and then the integration assigns none; the other checks look at data it never writes.)
RESOLVED_BY_REPLACEMENT_CPR = frozenset({"I1_person_without_cpr_or_birth_date"})


def resolve_findings(stores: Stores, run_id: str, scope: scopes.Scope | None = None) -> int:
    """At the end of a run, findings this run did not see again are resolved, saying why:
    ``fixed`` when the liability still waits to go (the data was corrected in FBS) or for agency
    checks; ``integration`` when the integration changed the data itself (a patron without CPR and
    birth date it gave a replacement CPR, who still has neither: ``RESOLVED_BY_REPLACEMENT_CPR``),
    whether or not that liability has gone since; ``left_batch`` when the liability no longer waits
    (sent, closed, cancelled, before the cut-off): no longer in scope. Neither of the last two is
    something staff fixed. Only what the run looked at is decided: agencies held under C3 in this
    run are left alone (nothing was checked or built there, so absence proves nothing), and so are
    liabilities outside the run's scope: the hourly run leaves a range waiting for the backfill
    alone, a backfill chunk everything outside its month (and the agency checks). An agency this
    run did not assess to the end (its municipality's sending task failed or never ran) is left
    alone too."""

    if scope is None:
        run = ledger.get_run(stores.ledger, run_id)
        scope = scopes.hourly(stores.ledger, since=run.started_at if run else None,
                              changed=delta.changes(stores, run_id))
    with stores.ledger.connect() as conn:
        held = {r[0] for r in conn.execute(text(
            "SELECT agency_id FROM finding WHERE check_code = :c AND resolved_at IS NULL AND last_run_id = :r"),
            {"c": eligibility.CHECK_CODES["C3"], "r": run_id})}
    if not scope.is_chunk:   # a unit whose task did not get to the end decided nothing about its agencies
        held |= not_assessed(stores, run_id)
    changed = scope.changed if not scope.is_chunk else None   # incremental: decide only about the delta
    codes = set(dq_catalog.CHECKS)
    if not scope.is_chunk and dq_checks.unchecked(stores.ledger, run_id):
        # the run's GX checks did not finish: not seeing their findings again proves nothing
        codes -= {*dq_checks.LIABILITY_CHECKS, dq_checks.AGENCY_CHECK}
    unseen = ledger.unseen_findings(stores.ledger, run_id, codes, skip_agencies=held,
                                    agency_id=scope.agency_id,
                                    liabilities=changed.liability_ids if changed is not None else None,
                                    whole=changed.whole if changed is not None else ())
    if scope.is_chunk:
        unseen = [r for r in unseen if r.liability_id is not None and r.agency_id == scope.agency_id]
    here, elsewhere = _standing(stores, scope, {r.liability_id for r in unseen if r.liability_id is not None})
    decided = [r for r in unseen if r.liability_id is None or r.liability_id not in elsewhere]   # this run's
    by_integration = _resolved_by_integration(stores, decided)
    fixed = [r.finding_key for r in decided if r.finding_key not in by_integration
             and (r.liability_id is None or r.liability_id in here)]
    left = [r.finding_key for r in decided if r.finding_key not in by_integration
            and r.liability_id is not None and r.liability_id not in here]
    at = ledger.now()
    return (ledger.resolve_findings(stores.ledger, fixed, ledger.FIXED, at)
            + ledger.resolve_findings(stores.ledger, sorted(by_integration), ledger.INTEGRATION, at)
            + ledger.resolve_findings(stores.ledger, left, ledger.LEFT_BATCH, at))


def _resolved_by_integration(stores: Stores, unseen: list) -> set[str]:
    """The keys of those findings that went away because the integration changed the data: a
    check in ``RESOLVED_BY_REPLACEMENT_CPR`` about a patron the integration gave a replacement CPR
    (the ledger says so) and who, in FBS, has one and still no CPR or birth date (staff added
    neither: had they, it would be theirs, ``fixed``)."""
    candidates = [r for r in unseen if r.check_code in RESOLVED_BY_REPLACEMENT_CPR and r.patron_id is not None]
    if not candidates:
        return set()
    assigned = ledger.replacement_cpr_patrons(stores.ledger, {int(r.patron_id) for r in candidates})
    if not assigned:
        return set()
    query = in_query("SELECT patron_id FROM patron WHERE patron_id IN :ids AND replacement_cpr IS NOT NULL "
                     "AND (cpr IS NULL OR TRIM(cpr) = '') AND birth_date IS NULL", "ids")
    unchanged: set[int] = set()
    with stores.fbs.connect() as conn:
        for part in chunked(sorted(assigned), 2000):
            unchanged.update(int(r[0]) for r in conn.execute(query, {"ids": part}))
    return {r.finding_key for r in candidates if int(r.patron_id) in unchanged}


def _standing(stores: Stores, scope: scopes.Scope, liability_ids: set[int]) -> tuple[set[int], set[int]]:
    """(still waiting and this run's, not this run's to decide) among these liabilities. The rest
    no longer wait at all (sent, closed, cancelled, before the cut-off, gone from FBS)."""
    if not liability_ids:
        return set(), set()
    rows = scopes.standing(stores.fbs, scope, liability_ids)
    sent = eligibility.in_ledger(stores.ledger, [r.liability_id for r in rows if r.waiting])
    here = {r.liability_id for r in rows if r.in_universe and r.due and r.liability_id not in sent}
    elsewhere = {r.liability_id for r in rows if not r.in_universe
                 or (r.waiting and not r.due and r.liability_id not in sent)}
    if scope.is_chunk:   # a liability gone from FBS: the hourly run decides, it sees every agency
        elsewhere |= liability_ids - {r.liability_id for r in rows}
    return here, elsewhere


def _agencies_of(stores: Stores, scope: scopes.Scope) -> list[str]:
    """The agencies a scope covers: a chunk's one, a unit's, or every FBS agency."""
    if scope.is_chunk:
        return [str(scope.agency_id)]
    if scope.agencies:
        return list(scope.agencies)
    return [a for u in unit_list.units(stores.fbs) for a in u.agencies]


def not_assessed(stores: Stores, run_id: str) -> set[str]:
    """The FBS agencies this run has not (yet) assessed to the end (``ledger.mark_assessed``)."""
    done = ledger.assessed_agencies(stores.ledger, run_id)
    return {a for u in unit_list.units(stores.fbs) for a in u.agencies} - done


def unfinished_units(stores: Stores, run_id: str) -> list[Unit]:
    """The units whose sending did not get to the end in this run (a crash, a task that never ran):
    those with an agency not assessed (one read of the units, not one per question)."""
    done = ledger.assessed_agencies(stores.ledger, run_id)
    return [u for u in unit_list.units(stores.fbs) if not set(u.agencies) <= done]


def totals(counts: Counter) -> dict[str, int]:
    """Counts per category, and per rule for blocked and out-of-scope: small enough for XCom."""
    out: dict[str, int] = {}
    for (_agency, category, rule), n in counts.items():
        out[category] = out.get(category, 0) + n
        if category in (eligibility.BLOCKED, eligibility.OUT_OF_SCOPE, eligibility.AWAITING, "rejected",
                        "change_recorded", "changes_accepted", "changes_rejected", FAILED,
                        *delivery.HELD_ACCESS_CATEGORIES):
            key = f"{category}:{rule}"
            out[key] = out.get(key, 0) + n
    return dict(sorted(out.items()))


def agency_failures(counts: Counter) -> dict[str, list[str]]:
    """The agencies whose work failed part-way (delivery's ``(agency, "failed", <exception type>)``
    counts, and ``failed_resend`` for their unconfirmed claims sent again), each with its exception
    types, sorted."""
    failed: dict[str, set[str]] = {}
    for (agency, category, rule), n in counts.items():
        if category in (FAILED, delivery.RESEND_FAILED) and n:
            failed.setdefault(str(agency), set()).add(str(rule))
    return {a: sorted(failed[a]) for a in sorted(failed)}


def access_held(counts: Counter) -> dict[str, dict]:
    """The municipalities held this run for want of working Serviceplatformen access (delivery's
    ``held_access*`` counts): CVR -> {"reasons": [...], "agencies": [...], "messages": n}."""
    out: dict[str, dict] = {}
    for (agency, category, rule), n in counts.items():
        if category in delivery.HELD_ACCESS_CATEGORIES and n:
            cvr, _, reason = str(rule).partition(":")
            entry = out.setdefault(cvr, {"reasons": set(), "agencies": set(), "messages": 0})
            entry["reasons"].add(reason or "?")
            entry["agencies"].add(str(agency))
            entry["messages"] += n
    return {c: {"reasons": sorted(e["reasons"]), "agencies": sorted(e["agencies"]), "messages": e["messages"]}
            for c, e in sorted(out.items())}


def rejections_per_agency(counts: Counter) -> dict[str, int]:
    """The claims and changes the debtor system rejected in this run, per agency (each is a staff
    task in FBS already; the agency's ``rejections`` alarm says there are some to look at)."""
    out: dict[str, int] = {}
    for (agency, category, _rule), n in counts.items():
        if category in ("rejected", "changes_rejected") and n:
            out[str(agency)] = out.get(str(agency), 0) + n
    return dict(sorted(out.items()))


def failure_message(failures: dict[str, list[str]], held: dict[str, dict] | None = None,
                    unfinished: list[Unit] | None = None) -> str | None:
    """What ends such a run failed: the municipalities whose sending did not finish, the agencies
    that need attention and what went wrong there, and the municipalities held for want of working
    Serviceplatformen access."""
    parts = []
    if unfinished:
        parts.append(f"{len(unfinished)} municipality(ies) need attention, their sending did not finish (their "
                     "task's log says why; every other municipality's work was done): "
                     + "; ".join(f"municipality {u.label}, agencies {', '.join(u.agencies)}" for u in unfinished))
    if failures:
        parts.append(f"{len(failures)} agency(ies) need attention, their work failed part-way (every other agency's "
                     "work was done; the log of the run has the error): "
                     + "; ".join(f"agency {a}: {', '.join(types)}" for a, types in failures.items()))
    if held:
        parts.append(f"{len(held)} municipality(ies) held, no working Serviceplatformen access (the others were "
                     "delivered): " + "; ".join(f"municipality {c} ({', '.join(e['reasons'])}; agencies "
                                                f"{', '.join(e['agencies'])})" for c, e in held.items()))
    return " / ".join(parts) or None


def _units(stores: Stores, unit: Unit | None) -> list[Unit]:
    """The units a step works through: the one given (a mapped task's), else every unit in turn
    (the CLI, a test), each under its own lock, so a whole run never interleaves with a unit's task."""
    return [unit] if unit is not None else unit_list.units(stores.fbs)


def deliver(stores: Stores, client, run_id: str, batch_size: int | None = None,
            page_size: int | None = None, scope: scopes.Scope | None = None, link=None,
            unit: Unit | None = None, checks: bool = True) -> Counter:
    """Assess, build and send the new claims of the run's scope page by page (what earlier runs
    left unconfirmed goes first: ``resend_unconfirmed``). ``link`` may carry a send-rate limit.
    Returns the assessment's counts.

    The hourly run's scope is worked through per unit (``transfer.units``: one municipality at its
    debtor system), under that unit's ``sending`` lock and with a link of its own, so one
    municipality's outage stops only its own sending: ``unit`` (a mapped task's) or every unit in
    turn. A backfill chunk's scope is one agency's, under its unit's lock."""

    size = batch_size or batch_size_default()
    if scope is not None and scope.is_chunk:
        owner = unit or unit_list.agency_unit(stores.fbs, str(scope.agency_id))
        with exclusive(stores.ledger, "sending", part=owner.lock if owner else None):
            return _deliver_scope(stores, client, run_id, size, page_size, scope, link or delivery.Link(), None)
    if scope is not None:   # an explicit whole scope (tests, a preview): one pass under the whole lock
        with exclusive(stores.ledger, "sending"):
            return _deliver_scope(stores, client, run_id, size, page_size, scope, link or delivery.Link(), None)
    counts: Counter = Counter()
    for u in _units(stores, unit):
        with exclusive(stores.ledger, "sending", part=u.lock):
            counts.update(_deliver_scope(stores, client, run_id, size, page_size, None, link or delivery.Link(), u,
                                         checks))
    return counts


def _deliver_scope(stores: Stores, client, run_id: str, size: int, page_size: int | None,
                   scope: scopes.Scope | None, link, unit: Unit | None, checks: bool = True) -> Counter:
    counts = assess_eligibility(stores, run_id, page_size, scope=scope, unit=unit, checks=checks,
                                on_page=lambda page: _deliver_page(stores, client, run_id, page, size, link))
    if link.down:
        where = f" for {unit.label}" if unit else ""
        log.error("the debtor system stopped answering%s (%s); what was not sent waits for the next run", where,
                  link.down)
    return counts


def _deliver_page(stores: Stores, client, run_id: str, page: claim_stream.Page, size: int, link) -> Counter:
    """``delivery.deliver_page``, then the replacement CPRs it wrote to FBS remembered in the ledger
    (also when it raised: FBS is written first, so a number may be there all the same)."""
    try:
        counts = delivery.deliver_page(stores, client, run_id, page, size, link)
    except BaseException:
        try:
            _remember_replacement_cprs(stores, run_id, page)
        except Exception:   # the error on its way up matters more; that one is logged
            log.exception("the replacement CPRs of a page that failed could not be remembered")
        raise
    _remember_replacement_cprs(stores, run_id, page)
    return counts


def _remember_replacement_cprs(stores: Stores, run_id: str, page: claim_stream.Page) -> int:
    """The patrons whose replacement CPR this page's claims created and FBS now holds (the number as
    built: this run wrote it), recorded as the integration's doing (I1). Numbers are compared here,
    never logged or stored in the ledger."""
    built_numbers: dict[int, tuple[str, int, str]] = {}
    for row, built in page.built:
        if built.account is None:
            continue
        for patron_id, number in built.new_replacement_cprs.items():
            built_numbers.setdefault(int(patron_id), (number, int(row.liability_id), str(row.agency_id)))
    if not built_numbers:
        return 0
    query = in_query("SELECT patron_id, replacement_cpr FROM patron WHERE patron_id IN :ids", "ids")
    stored: dict[int, str | None] = {}
    with stores.fbs.connect() as conn:
        for part in chunked(sorted(built_numbers), 2000):
            stored.update({int(r.patron_id): r.replacement_cpr for r in conn.execute(query, {"ids": part})})
    assigned = [ledger.ReplacementCprAssigned(p, agency, liability)
                for p, (number, liability, agency) in sorted(built_numbers.items()) if stored.get(p) == number]
    return ledger.record_replacement_cprs(stores.ledger, run_id, assigned)


def resend_unconfirmed(stores: Stores, client, run_id: str, batch_size: int | None = None,
                       unit: Unit | None = None) -> int:
    """What earlier runs left unconfirmed, sent again under its own keys, per unit (``unit`` or every
    unit in turn, each under its lock); an agency whose part of it failed unexpectedly is recorded
    with the run (``failed_resend``), the others go on."""
    total = 0
    for u in _units(stores, unit):
        failed: Counter = Counter()
        with exclusive(stores.ledger, "sending", part=u.lock):
            total += delivery.resend_unconfirmed(stores, client, run_id, batch_size or batch_size_default(),
                                                 failed=failed, agencies=u.agencies)
        ledger.record_counts(stores.ledger, run_id, failed, [delivery.RESEND_FAILED, delivery.HELD_ACCESS_RESEND],
                             agencies=u.agencies)
    if total:
        log.info("%d claim(s) left unconfirmed by earlier runs sent again under their own keys", total)
    return total


def keep_claims_true(stores: Stores, client, run_id: str, batch_size: int | None = None,
                     unit: Unit | None = None) -> Counter:
    """After the new claims: what changed in FBS on claims already sent (U1-U4) is recorded as
    versioned messages, and rejected claims whose data changed since are recorded again under
    their next FordringID generation (``delivery.rejections``); all of it is sent in order per
    liability, with whatever earlier runs left unsent. Per unit, as ``resend_unconfirmed``."""

    counts: Counter = Counter()
    for u in _units(stores, unit):
        held: Counter = Counter()
        with exclusive(stores.ledger, "sending", part=u.lock):
            changed = delta.changes(stores, run_id, u.agencies)   # None: the run has no window, everything
            counts.update(change_detection.detect_changes(stores, run_id, agencies=u.agencies, changed=changed))
            counts.update(rejections.requeue_changed(stores, run_id, agencies=u.agencies, changed=changed))
            sent = change_delivery.send_changes(stores, client, run_id, batch_size or batch_size_default(),
                                                held=held, agencies=u.agencies)
        ledger.record_counts(stores.ledger, run_id, held, [delivery.HELD_ACCESS_CHANGES], agencies=u.agencies)
        if sent:
            log.info("%d change message(s) sent to the debtor system for %s", sent, u.label)
    return counts


def close_delivery(stores: Stores, run_id: str) -> Counter:
    """Staff tasks for rejections and long delays; the run's delivery counts (new claims and
    changes) from the outbox."""

    new = delivery_tasks.raise_delivery_tasks(stores, run_id)
    if new:
        log.info("%d staff task(s) raised in FBS for rejected or long-unconfirmed claims (M1)", new)
    counts = delivery.delivery_counts(stores.ledger, run_id)
    ledger.record_counts(stores.ledger, run_id, counts, delivery.DELIVERY_CATEGORIES)
    changes = change_delivery.change_counts(stores.ledger, run_id)
    ledger.record_counts(stores.ledger, run_id, changes, change_delivery.CHANGE_CATEGORIES)
    return counts + changes


def run_transfer(stores: Stores, client, kind: str = "manual", data_docs_dir=None, batch_size: int | None = None,
                 data_quality: bool = True, sweep: bool = False, checks_process: bool = False,
                 **run_fields) -> tuple[str, Counter]:
    """A whole delivering run outside Airflow, the same steps as the DAG (``data_quality=False``
    leaves out the GX checks, which only feed the staff reports). A cut-off moved back is recorded
    and its range left to a backfill (``python -m fbs_debitor backfill``), as in the DAG. When an
    agency's work failed part-way (see the module doc) the run goes on to the end for every other
    agency and is then recorded as failed, the error naming the agencies; it does not raise, so
    the caller still has the counts (the CLI prints them and exits 1 on the run's status).

    Like the hourly DAG it looks only at what FBS marked changed since the last run that finished
    each agency's work (``eligibility.delta``); ``sweep`` looks at everything, as debitor_sweep does
    at night, and says what the change markers had missed.

    ``checks_process`` (``python -m fbs_debitor transfer``): the checks run in a process started
    before the sending (``quality.checks_process``), which imports Great Expectations meanwhile;
    the same checks, the same results, without the import's seconds after the sending."""

    with ChecksProcess(data_docs_dir) if data_quality and checks_process else nullcontext() as ahead:
        return _run_transfer(stores, client, kind, data_docs_dir, batch_size, data_quality, sweep, ahead,
                             **run_fields)


def _run_transfer(stores: Stores, client, kind: str, data_docs_dir, batch_size: int | None, data_quality: bool,
                  sweep: bool, ahead: ChecksProcess | None, **run_fields) -> tuple[str, Counter]:
    with _recorded_run(stores, kind, **run_fields) as run:
        run_id = run.run_id
        cut_off.detect(stores, run_id)
        delta.open_window(stores, run_id, sweep=sweep)
        counts: Counter = Counter()
        for unit in unit_list.units(stores.fbs):
            try:
                counts.update(send_unit(stores, client, run_id, unit, batch_size, checks=data_quality))
            except Exception:   # noqa: BLE001 - one municipality's crash: logged, named at the end, the rest go on
                log.exception("municipality %s: its sending stopped with an unexpected error; the other "
                              "municipalities go on", unit.label)
                continue
            finish_unit(stores, run_id, unit)
        # the checks of what the sending steps found (eligibility is read once per run); the
        # sending never waited for them: they only feed the staff reports
        checks_failed = None
        if data_quality:
            try:
                if ahead is not None:
                    ahead.run(stores, run_id)
                else:
                    dq_checks.run_checks(stores, run_id, data_docs_dir=data_docs_dir,
                                         scope=run_scope(stores, run_id), staged=True)
            except ChecksFailed as exc:   # the process logged it; its text names the error's kind
                log.error("the data-quality checks failed; what was sent stands, the run ends failed: %s", exc)
                checks_failed = f"data quality checks: {exc}"
            except Exception as exc:   # noqa: BLE001 - the claims went; the run ends failed naming the checks
                log.exception("the data-quality checks failed; what was sent stands, the run ends failed")
                checks_failed = f"data quality checks: {type(exc).__name__}: {exc}"
        else:
            dq_checks.drop_staged(stores.ledger, run_id)
        counts.update(close_delivery(stores, run_id))
        resolve_findings(stores, run_id)
        if sweep:
            sweep_findings(stores, run_id)
        counts_now = ledger.run_counts(stores.ledger, run_id)
        run.failure = "; ".join(filter(None, [failure_message(agency_failures(counts_now), access_held(counts_now),
                                                              unfinished_units(stores, run_id)), checks_failed])) or None
    return run_id, counts


def run_scope(stores: Stores, run_id: str) -> scopes.Scope:
    """The whole run's scope for the checks over every municipality (the DAG's data_quality): the
    hourly scope, only what changed when the run has a window."""
    return scopes.hourly(stores.ledger, changed=delta.changes(stores, run_id))


def finish_unit(stores: Stores, run_id: str, unit: Unit) -> str | None:
    """After a unit's last step: what keeps its part of the run from being done (``unit_problems``),
    or None. When it is done and nothing was deferred to the next run, its agencies' change marks
    move to the run's mark, so the next run starts from there (``eligibility.delta``); otherwise
    they stay, and the next run looks at the same changes again."""
    problem = unit_problems(stores, run_id, unit)
    if problem is not None:
        log.info("municipality %s: its change marks stay where they were (its part of the run is not done)", unit.label)
        return problem
    mine = set(unit.agencies)
    deferred = sum(n for (a, c, _r), n in ledger.run_counts(stores.ledger, run_id).items()
                   if c == "deferred" and str(a) in mine)
    if deferred:
        log.info("municipality %s: %d claim(s) deferred to the next run; its change marks stay", unit.label, deferred)
    else:
        delta.advance(stores, run_id, unit.agencies)
    return None


def sweep_findings(stores: Stores, run_id: str) -> dict[str, int]:
    """A sweep's word on the change markers (``delta.missed``): recorded with the run (category
    ``missed_by_markers``) and logged as a warning naming the agencies; returns agency -> count."""
    missed = delta.missed(stores, run_id)
    ledger.record_counts(stores.ledger, run_id, missed, [delta.MISSED])
    per_agency: dict[str, int] = {}
    for (agency, _c, _kind), n in missed.items():
        per_agency[agency] = per_agency.get(agency, 0) + n
    if per_agency:
        log.warning("the nightly sweep found %d liability(ies) FBS changed without marking them changed (updated_at), "
                    "which the hourly runs had not looked at; now sent. Per agency: %s. FBS must set updated_at on "
                    "every change (README, the FBS extract contract)", sum(per_agency.values()),
                    ", ".join(f"{a}: {n}" for a, n in sorted(per_agency.items())))
    else:
        log.info("the nightly sweep found nothing the change markers had missed")
    return dict(sorted(per_agency.items()))


def send_unit(stores: Stores, client, run_id: str, unit: Unit, batch_size: int | None = None,
              checks: bool = True) -> Counter:
    """One unit's whole sending, as the DAG's mapped tasks do it: unconfirmed first, the new
    claims, then the changes."""
    resend_unconfirmed(stores, client, run_id, batch_size, unit=unit)
    counts = deliver(stores, client, run_id, batch_size, unit=unit, checks=checks)
    keep_claims_true(stores, client, run_id, batch_size, unit=unit)
    return counts


def unit_problems(stores: Stores, run_id: str, unit: Unit) -> str | None:
    """What keeps one unit's part of the run from being done, in words; None when it is done: its
    sending did not finish, an agency's work failed part-way, it was held for want of access, or
    claims or changes are still unconfirmed after every retry (an outage)."""
    mine = set(unit.agencies)
    counts = Counter({k: n for k, n in ledger.run_counts(stores.ledger, run_id).items() if str(k[0]) in mine})
    unconfirmed = Counter({k: n for k, n in (delivery.delivery_counts(stores.ledger, run_id)
                                              + change_delivery.change_counts(stores.ledger, run_id)).items()
                           if str(k[0]) in mine})
    parts = []
    if mine - ledger.assessed_agencies(stores.ledger, run_id):
        parts.append("its sending did not finish")
    failures = agency_failures(counts)
    if failures:
        parts.append("failed part-way: " + "; ".join(f"agency {a}: {', '.join(t)}" for a, t in failures.items()))
    held = access_held(counts)
    if held:
        parts.append("held, no working Serviceplatformen access (" + "; ".join(
            ", ".join(e["reasons"]) for e in held.values()) + ")")
    n = sum(v for (_a, c, _r), v in unconfirmed.items() if c == delivery.UNCONFIRMED)
    changes = sum(v for (_a, c, _r), v in unconfirmed.items() if c == "changes_unconfirmed")
    if n or changes:
        parts.append(f"{n} claim(s) and {changes} change(s) got no answer from the debtor system after every retry "
                     "(kept in the outbox, sent again under the same keys next run)")
    return f"municipality {unit.label}: " + "; ".join(parts) if parts else None


def run_assessment(stores: Stores, kind: str = "manual", data_docs_dir=None, **run_fields) -> tuple[str, Counter]:
    """A whole run outside Airflow: start, data-quality checks, assess, resolve what was fixed,
    finish (failed with the error if anything raises)."""

    with _recorded_run(stores, kind, **run_fields) as run:
        cut_off.detect(stores, run.run_id)
        counts = assess_eligibility(stores, run.run_id)
        dq_checks.run_checks(stores, run.run_id, data_docs_dir=data_docs_dir, staged=True)
        resolve_findings(stores, run.run_id)
    return run.run_id, counts


@dataclass
class _Run:
    run_id: str
    failure: str | None = None     # set by the steps: the run ends failed with it, after every step


@contextmanager
def _recorded_run(stores: Stores, kind: str, **run_fields) -> Iterator[_Run]:
    """A run in the ledger: started, then finished as success, or as failed with the error when
    anything (an interrupt too) ends it early, or with ``failure`` when the steps set one."""
    run = _Run(ledger.start_run(stores.ledger, kind, **run_fields))
    try:
        yield run
    except BaseException as exc:
        ledger.finish_run(stores.ledger, run.run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if run.failure:
        log.error("run %s failed: %s", run.run_id, run.failure)
        ledger.finish_run(stores.ledger, run.run_id, "failed", run.failure)
    else:
        ledger.finish_run(stores.ledger, run.run_id, "success")
