"""Rejected claims going again (M1, M3, I3): once the cause of a rejection is fixed, the claim is
created again under the next generation of its FordringID, once.

A rejection is final for its FordringID: the debtor system keys every claim by it and answers a
repeat with its first answer, so the same FordringID would only be rejected again. The claim goes
again as a NEW claim, ``fields.fordring_id(agency, liability, generation + 1)`` (the generation
after the highest the liability ever used), recorded in the outbox like an increase's new claim
(U1): operation OpretDebitorkonto, ``change_kind`` ``recreate``, key ``<liability>:<version>``.

When:

* **its data changed** (``requeue_changed``, every transfer run, before the changes are sent):
  the claim rebuilt from FBS as it is now, under the REJECTED FordringID, differs from what the
  debtor system rejected (the fingerprint the outbox keeps of the rejected content). Staff gave
  the patron a real CPR number instead of the replacement CPR a Prisme municipality rejects (I3);
  a compensation became acknowledged, so another claim type (M3); the amount or the texts were
  corrected. A rejection whose data did not change is not sent again: at most one new claim per
  change, never one per run.
* **an operator requeues it** (``requeue``; CLI ``requeue <liability_id> [--note TEXT]``), for
  causes outside FBS: a claim type mapped at the debtor side since (M3), a manual process agreed
  for replacement CPR numbers (I3), the cause of an HTTP 4xx fixed.

Only a claim that may still go: the liability is open in FBS, in the same agency, and builds
(a problem such as a CPR number removed since leaves the rejection standing).

Exactly once. FBS first (a replacement CPR the claim needs, a C5 task: idempotent), then ONE ledger
transaction: the claim row moves from the rejected FordringID to the new one (only where it still
holds the rejected one at the version read, so a second attempt, a concurrent one or one after a
crash, changes nothing),
the new message is recorded ``pending``, the rejected message points to it (``superseded_by``)
and the audit trail says so (event ``sent_again``, M2). Nothing has left the process: the change
sending (``changes.sending.send_changes``, in the same run) sends it under its key like any new
claim, and after a crash or an outage the next run does. The staff task of the rejection is then
resolved in FBS (``staff_tasks.resolve_superseded_tasks``; a crash in between is finished by the
next run's task step). If the new claim is rejected too, staff get a new task for it.

The claim row is reset to what the new claim tells the debtor system (amount, parties' prints,
nothing paid): the change detection looks only at accepted claims, so it starts comparing once
the new claim is accepted. A rejected FordringID never receives payments: a movement on it is
held (``payments.apply``: unknown or replaced claim).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import text

from fbs_debitor.claims import fingerprints
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.builder import build
from fbs_debitor.claims.fields import generation_of
from fbs_debitor.claims.model import Account, StaffTask
from fbs_debitor.claims.writeback import persist_replacement_cprs, raise_tasks
from fbs_debitor.core import ledger
from fbs_debitor.core.db import in_query, keyset_pages
from fbs_debitor.core.identity import ReplacementCprRegistry, mask_cprs_in
from fbs_debitor.core.ledger import add_events
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery.outbox import (
    CREATE,
    Tracked,
    agency_list,
    agency_params,
    fingerprint,
    for_agencies,
    message_key,
    rule_of,
    tracked,
)
from fbs_debitor.delivery.staff_tasks import resolve_superseded_tasks
from fbs_debitor.eligibility.delta import Delta

log = logging.getLogger(__name__)

RECREATE = "recreate"          # outbox.change_kind of a rejected claim created again
SENT_AGAIN = "sent_again"      # counts (agency, SENT_AGAIN, rule of the rejection), and the event kind

# Keyset pages over the rejected claims, then their rejected creations by liability id: each
# query uses its index whatever the planner knows (a join here made SQLite without statistics
# range-scan the outbox once per claim).
# ({agencies}: a unit's agencies, issue 18)
_CLAIMS = ("SELECT liability_id, agency_id, fordring_id, generation, current_version FROM claim "
           "WHERE state = 'rejected'{agencies} AND liability_id > :last ORDER BY liability_id LIMIT :n")
_CREATIONS = in_query("SELECT liability_id, fordring_id, message_key, fingerprint, error_code FROM outbox "
                      "WHERE liability_id IN :ids AND operation = :op AND state = 'rejected' AND superseded_by IS NULL",
                      "ids")


@dataclass(frozen=True)
class _Rejected:
    """A rejected claim: the ledger's claim row and the creation message the debtor system rejected."""

    liability_id: int
    agency_id: str
    fordring_id: str
    generation: int
    current_version: int
    message_key: str
    fingerprint: str | None
    error_code: str | None


def _rejected(stores: Stores, claims) -> list[_Rejected]:
    """The claims (rows of claim in state rejected) with the rejected creation of their FordringID
    that was not superseded yet."""
    if not claims:
        return []
    with stores.ledger.connect() as conn:
        made = {(r.liability_id, r.fordring_id): r
                for r in conn.execute(_CREATIONS, {"ids": [c.liability_id for c in claims], "op": CREATE})}
    out = []
    for c in claims:
        m = made.get((c.liability_id, c.fordring_id))
        if m is not None:
            out.append(_Rejected(c.liability_id, c.agency_id, c.fordring_id, int(c.generation or 0),
                                 int(c.current_version), m.message_key, m.fingerprint, m.error_code))
    return out


@dataclass
class _Again:
    """A rejected claim to record again under the next generation."""

    rejected: _Rejected
    account: Account
    prints: Tracked
    generation: int
    version: int
    why: str
    tasks: list[StaffTask]
    new_replacement_cprs: dict[int, str]

    @property
    def key(self) -> str:
        return message_key(self.rejected.liability_id, self.version)

    @property
    def fordring_id(self) -> str:
        return self.account.claims[0].fordring_id


class _Context:
    """What one call shares: the day, the fingerprint key, the run's replacement CPR numbers."""

    def __init__(self, stores: Stores, today: dt.date | None):
        self.stores = stores
        self.today = today or dt.date.today()
        self.secret = fingerprints.verify_key(stores.ledger)
        self._registry: ReplacementCprRegistry | None = None

    @property
    def registry(self) -> ReplacementCprRegistry:
        if self._registry is None:    # loaded once, only when a claim is rebuilt
            self._registry = ReplacementCprRegistry(claim_stream.taken_replacement_cprs(self.stores.fbs))
        return self._registry


# --- automatically, when the data changed -------------------------------------------------------------

def requeue_changed(stores: Stores, run_id: str, page_size: int = 5000, today: dt.date | None = None, *,
                    agencies: Collection[str] | None = None, changed: Delta | None = None) -> Counter:
    """Every rejected claim whose data changed since the rejection, recorded again under the next
    generation of its FordringID (sent by ``changes.sending.send_changes``), its staff task
    resolved. Returns counts (agency, ``sent_again``, rule of the rejection). ``agencies`` (issue
    18: one unit's, a municipality at its debtor system): only the claims recorded for those
    agencies (``claim.agency_id``) and their tasks; None every agency. ``changed`` (issue 19, the
    incremental run's delta): only the rejected claims whose liability FBS marked changed, or of an
    agency looked at whole (data that did not change cannot have changed since the rejection)."""
    ctx = _Context(stores, today)
    counts: Counter = Counter()
    only = agency_list(agencies)
    sql, delta_params = _CLAIMS, {}
    if changed is not None:
        condition, delta_params = changed.condition("claim")
        sql = _CLAIMS.replace("{agencies}", "{agencies} AND " + condition)
    query = for_agencies(sql, only, "agency_id IN :agencies")
    for claims in keyset_pages(stores.ledger, query, "liability_id", -1,
                               {"n": page_size, **agency_params(only), **delta_params}, after="last"):
        rows = _rejected(stores, claims)
        fbs_rows = {r.liability_id: r for r in claim_stream.claim_rows(stores.fbs, [r.liability_id for r in rows],
                                                                       ctx.today)} if rows else {}
        changed = []
        for rec in rows:
            row = fbs_rows.get(rec.liability_id)
            if row is not None and not _not_to_go(rec, row) and _changed(ctx, rec, row):
                changed.append((rec, row))
        generations = _generations(stores, [rec for rec, _ in changed])
        again: list[_Again] = []
        for rec, row in changed:
            plan = _plan(ctx, rec, row, generations[rec.liability_id], "its data changed since the rejection")
            if isinstance(plan, _Again):
                again.append(plan)
        for plan in _record(stores, run_id, again):
            counts[(plan.rejected.agency_id, SENT_AGAIN, rule_of(plan.rejected.error_code))] += 1
    if counts:
        by_rule: Counter = Counter()
        for (_, _, rule), n in counts.items():
            by_rule[rule] += n
        log.info("%d rejected claim(s) whose data changed recorded again under a new FordringID: %s",
                 sum(counts.values()), dict(sorted(by_rule.items())))
    resolve_superseded_tasks(stores, run_id, agencies=only)
    return counts


def _not_to_go(rec, row) -> str | None:
    """Why a rejected claim may not go again now (None: it may)."""
    if row.status != "open":
        return f"the liability is {row.status} in FBS"
    if row.agency_id != rec.agency_id:
        return f"the liability moved from agency {rec.agency_id} to {row.agency_id}"
    return None


def _changed(ctx: _Context, rec, row) -> bool:
    """Whether the claim as FBS has it now differs from what the debtor system rejected."""
    generation = generation_of(rec.fordring_id, rec.agency_id, rec.liability_id)
    built = build(row, ctx.registry, ctx.today, generation or 0)
    if built.account is None:
        return False            # it does not build now: the rejection stands (its task tells staff)
    return fingerprint(built.account) != (rec.fingerprint or "").strip()


def _generations(stores: Stores, rows: list[_Rejected]) -> dict[int, int]:
    """The highest generation each liability ever used (every FordringID it was recorded under)."""
    query = in_query("SELECT liability_id, fordring_id FROM outbox WHERE liability_id IN :ids", "ids")
    agency = {r.liability_id: r.agency_id for r in rows}
    highest: dict[int, int] = defaultdict(int)
    for r in rows:
        highest[r.liability_id] = max(highest[r.liability_id], r.generation)
    if not rows:
        return highest
    with stores.ledger.connect() as conn:
        for r in conn.execute(query, {"ids": sorted(agency)}):
            g = generation_of(r.fordring_id, agency[r.liability_id], r.liability_id)
            if g is not None:
                highest[r.liability_id] = max(highest[r.liability_id], g)
    return highest


def _plan(ctx: _Context, rec, row, highest: int, why: str) -> _Again | str:
    """The claim built under the next generation, or why it cannot be."""
    generation = highest + 1
    built = build(row, ctx.registry, ctx.today, generation)
    if built.problem:
        return f"it does not build now ({built.problem.rule}: {mask_cprs_in(built.problem.message)})"
    return _Again(rec, built.account, tracked(built.account, row, ctx.secret), generation,
                  int(rec.current_version) + 1, why, list(built.tasks), dict(built.new_replacement_cprs))


def _record(stores: Stores, run_id: str | None, plans: list[_Again]) -> list[_Again]:
    """FBS first, then one ledger transaction; returns the plans recorded (a claim another caller
    moved on meanwhile is left alone)."""
    if not plans:
        return []
    numbers = {p: n for plan in plans for p, n in plan.new_replacement_cprs.items()}
    with stores.fbs.begin() as conn:
        stored = persist_replacement_cprs(conn, numbers)
        raise_tasks(conn, [t for plan in plans for t in plan.tasks])
    lost = {p for p, n in numbers.items() if stored.get(p) != n}
    plans = [plan for plan in plans if not lost & set(plan.new_replacement_cprs)]  # rebuilt next time
    at = ledger.now()
    recorded: list[_Again] = []
    move = text("UPDATE claim SET fordring_id = :new, generation = :g, state = 'pending', current_version = :v, "
                "debtor_amount = :m, debtor_status = 'live', identity_print = :ip, source_print = :sp, "
                "fbs_status = 'open', notice = NULL, paid_amount = 0, written_off_amount = 0, repaid_amount = 0, "
                "balance = NULL, settlement = 'unpaid', settled_on = NULL, checked_at = :t, updated_at = :t "
                "WHERE liability_id = :l AND fordring_id = :old AND current_version = :cv")
    with stores.ledger.begin() as conn:
        for plan in plans:
            rec, claim = plan.rejected, plan.account.claims[0]
            moved = conn.execute(move, {"new": plan.fordring_id, "g": plan.generation, "v": plan.version,
                                        "m": claim.amount, "ip": plan.prints.identity_print,
                                        "sp": plan.prints.source_print, "t": at, "l": rec.liability_id,
                                        "old": rec.fordring_id, "cv": rec.current_version}).rowcount
            if moved != 1:
                continue
            recorded.append(plan)
        if recorded:
            conn.execute(text("INSERT INTO outbox (message_key, liability_id, version, operation, fordring_id, "
                              "fingerprint, state, attempts, run_id, last_run_id, created_at, change_kind, amount) "
                              "VALUES (:k, :l, :v, :o, :f, :p, 'pending', 0, :r, :r, :t, :ck, :m)"),
                         [{"k": p.key, "l": p.rejected.liability_id, "v": p.version, "o": CREATE, "f": p.fordring_id,
                           "p": p.prints.fingerprint, "r": run_id, "t": at, "ck": RECREATE,
                           "m": p.account.claims[0].amount} for p in recorded])
            conn.execute(text("UPDATE outbox SET superseded_by = :k WHERE message_key = :old"),
                         [{"k": p.key, "old": p.rejected.message_key} for p in recorded])
            add_events(conn, [(p.rejected.liability_id, SENT_AGAIN, p.key,
                               f"{p.rejected.fordring_id} [{p.rejected.message_key}] was rejected "
                               f"({p.rejected.error_code or '?'}); created again as {p.fordring_id} (generation "
                               f"{p.generation}, {p.account.claims[0].amount} DKK): {p.why}"[:1000])
                              for p in recorded], run_id or "manual", at)
    return recorded


# --- by an operator -----------------------------------------------------------------------------------

def requeue(stores: Stores, liability_id: int, note: str | None = None, today: dt.date | None = None) -> str:
    """Queue the liability's rejected claim to go again under the next generation of its FordringID,
    for a cause outside FBS's data (a claim type mapped at the debtor side since, M3; a manual
    process for replacement CPR numbers, I3; an HTTP 4xx whose cause was fixed). Recorded now and
    its staff task resolved; the next transfer run sends it. Returns one line for the operator.

    Raises LookupError when the liability has no rejected claim (never sent, accepted, or already
    requeued / sent again), ValueError when it may not go now (not open in FBS, moved, gone, or
    it does not build)."""
    with stores.ledger.connect() as conn:
        claim = conn.execute(text("SELECT liability_id, agency_id, fordring_id, generation, current_version, state "
                                  "FROM claim WHERE liability_id = :l"), {"l": liability_id}).first()
    # (the claim's state is not asked: a ledger from before 0007 kept an increase's rejected new claim
    # as accepted; its rejected creation is what counts)
    rec = next(iter(_rejected(stores, [claim] if claim is not None else [])), None)
    if rec is None:
        if claim is None:
            raise LookupError(f"liability {liability_id} has no claim in the ledger: it was never sent to the debtor "
                              "system, so there is nothing to requeue")
        raise LookupError(f"liability {liability_id} has no rejected claim to requeue: its claim {claim.fordring_id} "
                          f"is {claim.state}" + (" (requeued or sent again already)" if claim.state in
                                                 ("pending", "sent") else ""))
    ctx = _Context(stores, today)
    row = next(iter(claim_stream.claim_rows(stores.fbs, [liability_id], ctx.today)), None)
    if row is None:
        raise ValueError(f"liability {liability_id} is no longer in FBS: its rejected claim {rec.fordring_id} is "
                         "not sent again")
    why_not = _not_to_go(rec, row)
    if why_not:
        raise ValueError(f"liability {liability_id}: {why_not}, so its rejected claim {rec.fordring_id} is not sent "
                         "again")
    said = mask_cprs_in(" ".join((note or "").split()))[:500]
    plan = _plan(ctx, rec, row, _generations(stores, [rec])[liability_id],
                 "requeued by an operator" + (f": {said}" if said else ""))
    if not isinstance(plan, _Again):
        raise ValueError(f"liability {liability_id}: {plan}; its rejected claim {rec.fordring_id} is not sent again")
    if not _record(stores, None, [plan]):
        raise LookupError(f"liability {liability_id}: its rejected claim {rec.fordring_id} was requeued or sent again "
                          "meanwhile")
    resolve_superseded_tasks(stores, None)
    log.info("liability %s: rejected claim %s requeued as %s (message %s)", liability_id, rec.fordring_id,
             plan.fordring_id, plan.key)
    return (f"liability {liability_id}: claim {rec.fordring_id} (rejected {rec.error_code or '?'}) requeued as "
            f"{plan.fordring_id}, message {plan.key}; the next transfer run sends it")
