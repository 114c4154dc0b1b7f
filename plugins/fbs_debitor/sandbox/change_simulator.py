"""Life after the hand-over, for the synthetic municipality: what library staff and patrons do to
liabilities that were already transferred (``python -m fbs_debitor.sandbox simulate-changes``).

It changes FBS the way FBS would (amount, status, repayment mark, ``updated_at``; a patron's CPR)
on a seeded random sample of the liabilities the debtor system accepted, so the next transfer run
has every kind of change to send (U1-U4) and the reconciliation can prove the result:

* compensations cancelled (the book was found, U1/U4) and fees cancelled;
* amounts lowered by half of what is still owed (U1; never below what was paid or written off)
  and raised (U1: cancellation plus a new claim);
* replacement CPRs replaced by the patron's real CPR, and real CPRs corrected (U2);
* compensations marked for repayment (U3);
* liabilities closed in FBS without a payment, and set to sent to collection (told to staff,
  not to the debtor system).

``new_fees`` is the other half of an hour in FBS: late returns booked as new fees (a loan returned
late and its fee, open), for patrons drawn at random from every agency, so each hourly run has new
claims to send (the national day benchmark, benchmarks/bench_national_day.py).
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from decimal import Decimal

from sqlalchemy import text

from fbs_debitor.core.db import as_amount, as_date, in_query
from fbs_debitor.core.identity import birth_date_from_cpr
from fbs_debitor.core.stores import Stores
from fbs_debitor.sandbox import generator

KINDS = ("cancel_compensation", "cancel_fee", "write_down", "increase", "real_cpr", "cpr_corrected",
         "repayment", "closed", "sent_to_collection")


def simulate(stores: Stores, seed: int = 7, per_kind: int = 10, at: dt.datetime | None = None) -> Counter:
    """Change up to ``per_kind`` transferred liabilities of each kind; returns what was changed.
    Each liability is changed at most once per call."""
    rng = random.Random(seed)
    at = at or dt.datetime.now().replace(microsecond=0)
    with stores.ledger.connect() as conn:
        # what the debtor system reported paid or written off on each claim (P2: FBS shows it too)
        settled = {r[0]: as_amount(r[1]) for r in conn.execute(text(
            "SELECT liability_id, paid_amount + written_off_amount FROM claim "
            "WHERE state = 'accepted' AND debtor_status = 'live' ORDER BY liability_id"))}
    sent = list(settled)
    query = in_query("SELECT l.liability_id, l.kind, l.amount, l.status, l.patron_id, p.kind AS p_kind, p.cpr, "
                     "p.replacement_cpr, p.birth_date FROM liability l JOIN patron p ON p.patron_id = l.patron_id "
                     "WHERE l.liability_id IN :ids", "ids")
    rows = []
    with stores.fbs.connect() as conn:
        for start in range(0, len(sent), 10_000):
            rows += conn.execute(query, {"ids": sent[start:start + 10_000]}).all()
    rows = [r for r in rows if r.status == "open"]
    rng.shuffle(rows)
    used: set[int] = set()
    patrons_used: set[int] = set()

    def take(pred) -> list:
        picked = []
        for r in rows:
            if len(picked) >= per_kind:
                break
            if r.liability_id not in used and pred(r):
                picked.append(r)
                used.add(r.liability_id)
        return picked

    def owed(r) -> Decimal:
        return as_amount(r.amount) - settled[r.liability_id]

    def written_down(r) -> Decimal:
        return settled[r.liability_id] + (owed(r) / 2).quantize(Decimal("0.01"))

    def person(r) -> bool:
        return r.p_kind == "person" and r.patron_id not in patrons_used

    done: Counter = Counter()
    with stores.fbs.begin() as conn:

        def update(sql: str, params: list[dict], kind: str) -> None:
            if params:
                conn.execute(text(sql), params)
                done[kind] += len(params)

        update("UPDATE liability SET status = 'cancelled', updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at} for r in take(lambda r: r.kind == "compensation")],
               "cancel_compensation")
        update("UPDATE liability SET status = 'cancelled', updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at} for r in take(lambda r: r.kind == "fee")], "cancel_fee")
        # half of what is still owed is written off: a claim is never lowered below what was
        # already paid or written off on it (staff see the payments in FBS, P2), so the write-down
        # leaves no overpaid claim for the reconciliation to list
        update("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at, "a": written_down(r)}
                for r in take(lambda r: owed(r) >= Decimal("2.00"))], "write_down")
        update("UPDATE liability SET amount = :a, updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at, "a": as_amount(r.amount) + Decimal("25.00")}
                for r in take(lambda r: True)], "increase")
        update("UPDATE liability SET refund_requested_at = :t, updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at} for r in take(lambda r: r.kind == "compensation")], "repayment")
        update("UPDATE liability SET status = 'closed', updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at} for r in take(lambda r: True)], "closed")
        update("UPDATE liability SET status = 'sent_to_collection', updated_at = :t WHERE liability_id = :l",
               [{"l": r.liability_id, "t": at} for r in take(lambda r: True)], "sent_to_collection")
        taken = {r[0] for r in conn.execute(text("SELECT cpr FROM patron WHERE cpr IS NOT NULL"))}
        pyr = random.Random(seed + 1)

        def new_cpr(r) -> str:
            born = as_date(r.birth_date) or (birth_date_from_cpr(r.cpr) if r.cpr else None) or dt.date(1980, 1, 1)
            return generator._cpr(pyr, born, pyr.random() < 0.5, True, taken)

        params = []
        for r in take(lambda r: person(r) and not r.cpr and r.replacement_cpr):
            patrons_used.add(r.patron_id)
            params.append({"p": r.patron_id, "c": new_cpr(r), "t": at})
        update("UPDATE patron SET cpr = :c, updated_at = :t WHERE patron_id = :p", params, "real_cpr")
        params = []
        for r in take(lambda r: person(r) and r.cpr and birth_date_from_cpr(r.cpr) is not None):
            patrons_used.add(r.patron_id)
            params.append({"p": r.patron_id, "c": new_cpr(r), "t": at})
        update("UPDATE patron SET cpr = :c, updated_at = :t WHERE patron_id = :p", params, "cpr_corrected")
    return done


FEE_AMOUNTS = ("20.00", "30.00", "50.00", "75.00", "120.00")


def new_fees(stores: Stores, count: int, at: dt.datetime, seed: int = 7) -> Counter:
    """``count`` new open fees in FBS at ``at`` (a naive FBS local time), each with its loan returned
    late an hour before, for patrons drawn at random (so agencies get them in proportion to their
    patrons; some patrons have data problems, as real ones do). Returns the fees per agency."""
    rng = random.Random(f"{seed}|{at.isoformat()}")
    done: Counter = Counter()
    if count <= 0:
        return done
    with stores.fbs.begin() as conn:
        patrons = conn.execute(text("SELECT patron_id, agency_id FROM patron ORDER BY patron_id")).all()
        items = [r[0] for r in conn.execute(text("SELECT item_number FROM material ORDER BY item_number LIMIT 500"))]
        if not patrons or not items:
            return done
        next_liability = (conn.execute(text("SELECT MAX(liability_id) FROM liability")).scalar() or 0) + 1
        next_loan = (conn.execute(text("SELECT MAX(loan_id) FROM loan")).scalar() or 0) + 1
        newest = conn.execute(text("SELECT MAX(number) FROM liability WHERE kind = 'fee'")).scalar() or "G0"
        next_number = int(newest[1:]) + 1 if newest[1:].isdigit() else 1   # G + 8 digits: MAX is the highest
        loans, fees = [], []
        for k in range(count):
            patron_id, agency_id = rng.choice(patrons)
            item = rng.choice(items)
            due = at.date() - dt.timedelta(days=rng.randint(1, 20))
            loans.append({"loan_id": next_loan + k, "patron_id": patron_id, "item_number": item,
                          "loan_date": due - dt.timedelta(days=28), "due_date": due,
                          "returned_at": at - dt.timedelta(hours=1)})
            fees.append({"liability_id": next_liability + k, "agency_id": agency_id, "patron_id": patron_id,
                         "number": f"G{next_number + k:08d}", "loan_id": next_loan + k, "item_number": item,
                         "amount": Decimal(rng.choice(FEE_AMOUNTS)), "at": at})
            done[agency_id] += 1
        conn.execute(text("INSERT INTO loan (loan_id, patron_id, item_number, loan_date, due_date, returned_at) "
                          "VALUES (:loan_id, :patron_id, :item_number, :loan_date, :due_date, :returned_at)"), loans)
        conn.execute(text("INSERT INTO liability (liability_id, agency_id, patron_id, kind, number, loan_id, "
                          "item_number, amount, created_at, status, updated_at) VALUES (:liability_id, :agency_id, "
                          ":patron_id, 'fee', :number, :loan_id, :item_number, :amount, :at, 'open', :at)"), fees)
    return done
