"""Reconciliation: does the debtor side hold FBS's current truth for every transferred liability?

Two checks, streamed page by page over the ledger's claims:

1. **Exactly once**: every claim the debtor system accepted (a creation, or an increase's new
   claim) is held, nothing is held that was not accepted, and nothing is still unconfirmed.
2. **FBS's truth** (U1-U4), per liability whose claim was accepted, against what the debtor side
   holds now:
   * the current claim (the ledger's FordringID) is CANCELLED when FBS has the liability
     cancelled (or at amount 0), else ACTIVE at exactly FBS's amount;
   * every earlier claim of the liability (before an increase) is CANCELLED;
   * the account's identification and responsible party are the ones FBS gives now (compared as
     keyed prints: no CPR number is read into the report);
   * a compensation FBS marked for repayment has a repayment on the debtor side.

Every difference is listed with what FBS says, what the debtor side holds, and what the ledger
knows about it (a message still unconfirmed, a rejection with its staff task, a change that is
not sent on by design, like a negative amount). Zero differences is the expected result.
The debtor side is read through ``emulator.holdings`` here; against a real debtor system the same
comparison runs on its export.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import text

from fbs_debitor.changes.detection import sent_claim_pages
from fbs_debitor.claims import fingerprints
from fbs_debitor.claims import stream as claim_stream
from fbs_debitor.claims.builder import build
from fbs_debitor.claims.fields import fordring_id
from fbs_debitor.core import storage
from fbs_debitor.core.db import as_amount, in_query
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.core.stores import Stores


@dataclass(frozen=True)
class Difference:
    liability_id: int
    fordring_id: str
    what: str
    fbs: str
    debtor: str
    ledger: str


@dataclass
class Report:
    held: int = 0
    accepted: int = 0
    rejected: int = 0
    unconfirmed: int = 0
    checked: int = 0
    missing: list[str] = field(default_factory=list)      # accepted, not held
    unknown: list[str] = field(default_factory=list)      # held, never accepted
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unknown or self.unconfirmed or self.differences)

    def summary(self) -> str:
        kinds = Counter(d.what for d in self.differences)
        head = (f"reconciliation: the debtor side holds {self.held} claim(s); the ledger has {self.accepted} accepted, "
                f"{self.rejected} rejected (staff tasks) and {self.unconfirmed} unconfirmed message(s); "
                f"{self.checked} transferred liabilities compared with FBS now")
        if self.ok:
            return head + "\nevery accepted claim is held exactly once and holds FBS's current truth: OK"
        return (head + f"\nMISMATCH: {len(self.missing)} accepted but not held, {len(self.unknown)} held but never "
                f"accepted, {self.unconfirmed} unconfirmed, {len(self.differences)} difference(s) from FBS"
                + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if kinds else ""))

    def write_csv(self, path):
        """The differences as CSV at ``path`` (a Path or a shared ``ObjectStoragePath``), whole or not
        at all (``core.storage.write``)."""
        out = io.StringIO(newline="")
        w = csv.writer(out)
        w.writerow(["liability_id", "fordring_id", "difference", "fbs", "debtor_side", "ledger"])
        for d in self.differences:
            w.writerow([d.liability_id, d.fordring_id, d.what, d.fbs, d.debtor, d.ledger])
        for fid in self.missing:
            w.writerow(["", fid, "accepted but not held", "", "", "accepted"])
        for fid in self.unknown:
            w.writerow(["", fid, "held but never accepted", "", "held", ""])
        storage.write(path, out.getvalue().encode("utf-8"))
        return path


def reconcile(stores: Stores, held: dict[str, dict], page_size: int = 5000, today: dt.date | None = None) -> Report:
    """Compare the ledger and FBS with ``held`` (FordringID -> status, amount, identity, repaid, as
    ``emulator.holdings`` gives it)."""
    today = today or dt.date.today()
    secret = fingerprints.verify_key(stores.ledger)
    report = Report(held=len(held))
    with stores.ledger.connect() as conn:
        states = Counter(dict(conn.execute(text("SELECT state, COUNT(*) FROM outbox GROUP BY state")).all()))
        accepted = {r[0] for r in conn.execute(text(
            "SELECT fordring_id FROM outbox WHERE state = 'accepted' AND operation = 'OpretDebitorkonto'"))}
    report.accepted, report.rejected = states["accepted"], states["rejected"]
    report.unconfirmed = states["pending"] + states["sent"]
    report.missing = sorted(accepted - set(held))
    report.unknown = sorted(set(held) - accepted)
    notes_query = in_query("SELECT liability_id, state, change_kind, error_code FROM outbox "
                           "WHERE state <> 'accepted' AND liability_id IN :ids", "ids")
    registry = ReplacementCprRegistry(claim_stream.taken_replacement_cprs(stores.fbs))
    for claims, fbs in sent_claim_pages(stores, page_size):
        ids = [c.liability_id for c in claims]
        notes: dict[int, list[str]] = {}
        with stores.ledger.connect() as conn:
            for r in conn.execute(notes_query, {"ids": ids}):
                notes.setdefault(r.liability_id, []).append(
                    f"{r.change_kind or 'create'} {r.state}" + (f" {r.error_code}" if r.error_code else ""))
        rows = {r.liability_id: r for r in claim_stream.claim_rows(stores.fbs, ids, today)}
        for c in claims:
            report.checked += 1
            report.differences += _compare(c, fbs.get(c.liability_id), rows.get(c.liability_id), held, registry,
                                           secret, today, "; ".join(notes.get(c.liability_id, [])) or "-")
    return report


def _compare(c, st, row, held: dict[str, dict], registry, secret: bytes, today: dt.date, notes: str) -> list[Difference]:
    def diff(what: str, fbs_says: str, debtor_has: str, fid: str = c.fordring_id) -> Difference:
        return Difference(c.liability_id, fid, what, fbs_says, debtor_has, notes)

    if st is None:
        return [diff("not in FBS", "no such liability", _show(held.get(c.fordring_id)))]
    out: list[Difference] = []
    for g in range(c.generation):
        old = fordring_id(c.agency_id, c.liability_id, g)
        if old in held and held[old]["status"] != "CANCELLED":
            out.append(diff("earlier claim still live", "replaced (increase)", _show(held[old]), old))
    now = held.get(c.fordring_id)
    amount = as_amount(st.amount)
    cancelled = st.status == "cancelled" or amount == 0
    if now is None:
        return [*out, diff("claim not held", f"{st.status} {amount}", "nothing")]
    if cancelled:
        if now["status"] != "CANCELLED":
            out.append(diff("not cancelled", f"{st.status} {amount}", _show(now)))
    else:
        if now["status"] != "ACTIVE":
            out.append(diff("cancelled, FBS has it open", f"{st.status} {amount}", _show(now)))
        elif now["amount"] != amount:
            out.append(diff("amount", f"{amount}", f"{now['amount']}"))
        if row is not None:
            told = amount if amount and amount > 0 else Decimal("0.01")
            built = build(claim_stream.RowWith(row, amount=told), registry, today)
            if built.problem or built.new_replacement_cprs:
                why = built.problem.rule if built.problem else "I1"
                out.append(diff("parties do not build", f"rule {why}", "-"))
            else:
                a = built.account
                if fingerprints.identity_print(a.identification.id_kind, a.identification.number,
                                               a.responsible.id_kind, a.responsible.number, secret) != now["identity"]:
                    out.append(diff("identification or responsible party", f"{a.identification.masked} / "
                                    f"{a.responsible.masked}", "other parties"))
    if st.refund_requested_at is not None and st.kind == "compensation":
        repaid = sum((held[fordring_id(c.agency_id, c.liability_id, g)]["repaid"] for g in range(c.generation + 1)
                      if fordring_id(c.agency_id, c.liability_id, g) in held), Decimal(0))
        if repaid <= 0:
            out.append(diff("repayment not registered", "marked for repayment", "no repayment"))
    return out


def _show(h: dict | None) -> str:
    return "nothing" if h is None else f"{h['status']} {h['amount']}"
