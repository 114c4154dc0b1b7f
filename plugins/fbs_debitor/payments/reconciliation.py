"""Reconciliation of payments (P1, P2): per claim, what was sent, what the debtor system reported
paid or written off, and what FBS shows; every difference listed. Zero differences is the
expected result.

Checks, streamed page by page:

1. **The ledger against itself**: each claim's paid / written-off / repaid sums are the sums of the
   applied movements on its current FordringID (reversals netted), its balance is what was sent
   (the amount the debtor system holds) less what was paid and written off, no claim is overpaid,
   and nothing more was repaid than paid.
2. **The ledger against FBS**: every applied movement is in ``fbs.payment`` once, with the same
   liability, kind and amount; nothing is in ``fbs.payment`` from the debtor system that the
   ledger did not apply; a claim paid or written off in full is not open in FBS; a
   liability fbs-debitor closed has no balance left; nothing is waiting to be written back.
3. **The debtor side against the ledger** (when its movements are given, e.g. ``emulator_payments.
   movements``): every movement it delivered arrived exactly once with the same content (applied,
   or held for review with a staff task), and each claim's balance there equals the ledger's,
   for claims with nothing held.

Movements held for review and quarantined files are not differences: each has a staff task and
is listed on its own. Neither are the entries of the inbox that are not payment files (a file with
another name, a link, a FIFO, a folder, ...): they were never taken, and are listed, name shown
escaped, with their kind, for operations to clear. (What a quarantined file of the debtor side held is a difference, "reported,
not received", when the debtor side's movements are given.)
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy import text

from fbs_debitor.core import settings, storage
from fbs_debitor.core.db import as_amount, as_bool, chunked, in_query, keyset_pages, select_in
from fbs_debitor.core.stores import Stores
from fbs_debitor.payments.apply import SOURCE, collector_paused, payment_id, source_movement

ZERO = Decimal(0)


@dataclass(frozen=True)
class Difference:
    liability_id: int | None
    fordring_id: str
    what: str
    sent: str          # what the debtor system was told (the claim's amount)
    reported: str      # what the debtor system reported (paid / written off / the movement)
    ledger: str
    fbs: str


@dataclass
class PaymentReport:
    claims: int = 0
    files: Counter = field(default_factory=Counter)
    movements: Counter = field(default_factory=Counter)
    held: Counter = field(default_factory=Counter)
    paid: Decimal = ZERO
    written_off: Decimal = ZERO
    repaid: Decimal = ZERO
    debtor_movements: int | None = None
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)     # (name shown, kind), still in the inbox
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        kinds = Counter(d.what for d in self.differences)
        held = ", ".join(f"{k} {n}" for k, n in sorted(self.held.items())) or "none"
        lines = [
            f"payments reconciliation: {self.files['applied']} file(s) applied, {self.files['quarantined']} quarantined; "
            f"movements applied {self.movements['applied']}, held for review {self.movements['held']} ({held}; each "
            f"a staff task), dismissed {self.movements['dismissed']}; {self.claims} claim(s) with payments compared "
            f"(paid {self.paid:.2f}, written off {self.written_off:.2f}, repaid {self.repaid:.2f} DKK)"
            + (f"; {self.debtor_movements} movement(s) delivered by the debtor side checked"
               if self.debtor_movements is not None else ""),
        ]
        for name, reason in self.quarantined[:20]:
            lines.append(f"  quarantined (staff task; nothing in it booked; to be delivered again): {name}: {reason}")
        if len(self.quarantined) > 20:
            lines.append(f"  ... and {len(self.quarantined) - 20} more quarantined file(s)")
        for name, kind in self.ignored[:20]:
            lines.append(f"  in the inbox, not a payment file (never taken; for operations to clear): {name} ({kind})")
        if len(self.ignored) > 20:
            lines.append(f"  ... and {len(self.ignored) - 20} more entries in the inbox that are not payment files")
        if self.ok:
            lines.append("every movement reported reached FBS exactly once or is held for review: OK")
        else:
            lines.append(f"MISMATCH: {len(self.differences)} difference(s) ("
                         + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
        return "\n".join(lines)

    def write_csv(self, path):
        """The report as CSV at ``path`` (a ``Path``, or an ``ObjectStoragePath`` of the shared
        store), written whole or not at all (``core.storage.write``)."""
        out = io.StringIO(newline="")
        w = csv.writer(out)
        w.writerow(["liability_id", "fordring_id", "difference", "sent", "debtor_reported", "ledger", "fbs"])
        for d in self.differences:
            w.writerow([d.liability_id or "", d.fordring_id, d.what, d.sent, d.reported, d.ledger, d.fbs])
        storage.write(path, out.getvalue().encode("utf-8"))
        return path


def report_path(report_id: str):
    """The one place a payments reconciliation report is written:
    ``<FBS_DEBITOR_STORAGE_URL>/reports/payments/reconciliation-<id>.csv`` (``var/reports/...``
    on the default root; a plain ``Path`` on a local root, else an ``ObjectStoragePath``),
    ``report_id`` the payments run's ledger id (debitor_payments, ``python -m fbs_debitor
    payments``) or, for a reconciliation outside a run (``reconcile``), the time it started
    (YYYYMMDDTHHMMSS-microseconds)."""
    root = settings.storage_url()
    if root.lower().startswith("file://"):      # a local root: no need to import Airflow's storage
        return Path(unquote(root[len("file://"):])) / "reports" / "payments" / f"reconciliation-{report_id}.csv"
    return storage.path("reports", "payments", f"reconciliation-{report_id}.csv")


def differences_per_agency(stores: Stores, report: PaymentReport) -> dict[str | None, int]:
    """How many of the report's differences concern each agency (by the claim's agency in the
    ledger); a difference the ledger cannot place (a movement for a claim it never sent) counts
    under None, the whole deployment."""
    ids = sorted({d.liability_id for d in report.differences if d.liability_id is not None})
    agency_of: dict[int, str] = {}
    with stores.ledger.connect() as conn:
        for page in chunked(ids, 5000):
            agency_of.update(conn.execute(in_query(
                "SELECT liability_id, agency_id FROM claim WHERE liability_id IN :ids", "ids"), {"ids": page}).all())
    counts: Counter = Counter(agency_of.get(d.liability_id) if d.liability_id is not None else None
                              for d in report.differences)
    return dict(counts)


def reconcile_payments(stores: Stores, debtor: dict[str, dict] | None = None, page_size: int = 5000) -> PaymentReport:
    report = PaymentReport()
    with stores.ledger.connect() as conn:
        report.files.update(dict(conn.execute(text("SELECT state, COUNT(*) FROM payment_file GROUP BY state")).all()))
        report.movements.update(dict(conn.execute(text("SELECT state, COUNT(*) FROM movement GROUP BY state")).all()))
        report.held.update(dict(conn.execute(text("SELECT hold_reason, COUNT(*) FROM movement WHERE state = 'held' "
                                                  "GROUP BY hold_reason")).all()))
        report.quarantined = [(r.name, r.reason or "-") for r in conn.execute(text(
            "SELECT name, reason FROM payment_file WHERE state = 'quarantined' ORDER BY name"))]
        report.ignored = [(r.name, r.kind) for r in conn.execute(text(
            "SELECT name, kind FROM payment_inbox_entry WHERE gone_at IS NULL AND kind <> 'partial' ORDER BY name"))]
    with collector_paused():                 # (each page's rows are freed as it goes; see apply)
        _claims(stores, report, page_size)
        matched = _movements(stores, report, page_size)
        _fbs_only(stores, report, page_size, matched)
        if debtor is not None:
            _debtor_side(stores, report, debtor, page_size)
    return report


_SUMS = text(   # each claim's sums of its applied movements on its current FordringID, reversals netted
    "SELECT c.liability_id, "
    "SUM(CASE WHEN m.kind = 'payment' AND m.reversed_by IS NULL THEN m.amount ELSE 0 END) AS paid, "
    "SUM(CASE WHEN m.kind = 'write_off' AND m.reversed_by IS NULL THEN m.amount ELSE 0 END) AS written_off, "
    "SUM(CASE WHEN m.kind = 'repayment' AND m.reversed_by IS NULL THEN m.amount ELSE 0 END) AS repaid "
    "FROM claim c JOIN movement m ON m.fordring_id = c.fordring_id AND m.state = 'applied' "
    "AND m.liability_id = c.liability_id "
    "WHERE c.liability_id >= :lo AND c.liability_id <= :hi GROUP BY c.liability_id")


def _claims(stores: Stores, report: PaymentReport, page_size: int) -> None:
    """1 and the FBS status of settled claims (2). Set-based, page by page in liability order: the
    sums per claim are the database's (one GROUP BY over the page's range of claims, each claim's
    movements read by its FordringID, ``ix_movement_fordring``), and FBS is asked only for the claims whose status matters (settled,
    or closed by fbs-debitor with a balance)."""
    page = text("SELECT liability_id, fordring_id, debtor_amount, debtor_status, paid_amount, written_off_amount, "
                "repaid_amount, balance, settlement, fbs_closed_by_payment FROM claim WHERE liability_id > :a AND "
                "settled_on IS NOT NULL ORDER BY liability_id LIMIT :n")
    for claims in keyset_pages(stores.ledger, page, "liability_id", -1, {"n": page_size}, after="a"):
        with stores.ledger.connect() as conn:
            sums = {r.liability_id: r for r in conn.execute(
                _SUMS, {"lo": claims[0].liability_id, "hi": claims[-1].liability_id})}
        checked = []
        for c in claims:
            report.claims += 1
            s = sums.get(c.liability_id)
            t = (as_amount(s.paid), as_amount(s.written_off), as_amount(s.repaid)) if s is not None else (ZERO,) * 3
            paid, off, repaid = as_amount(c.paid_amount), as_amount(c.written_off_amount), as_amount(c.repaid_amount)
            report.paid += paid
            report.written_off += off
            report.repaid += repaid
            balance = as_amount(c.balance)
            found = []
            if (paid, off, repaid) != t:
                found.append("ledger sums differ from the movements")
            if c.debtor_status != "cancelled" and balance != as_amount(c.debtor_amount) - paid - off:
                found.append("balance is not the amount less paid and written off")
            if repaid > paid:
                found.append("more repaid than paid")
            if c.settlement == "overpaid":
                found.append("overpaid: more paid or written off than the claim holds")
            settled = c.settlement in ("paid", "written_off") and c.debtor_status != "cancelled"
            closed_with_balance = as_bool(c.fbs_closed_by_payment) and (balance or ZERO) > 0
            if found or settled or closed_with_balance:      # only these need FBS's status
                checked.append((c, t, paid, off, repaid, balance, found, settled, closed_with_balance))
        status: dict[int, str] = {}
        if checked:
            with stores.fbs.connect() as conn:
                status = dict(select_in(conn, "SELECT liability_id, status FROM liability WHERE liability_id IN :k", "k",
                                        [x[0].liability_id for x in checked]))
        for c, t, paid, off, repaid, balance, found, settled, closed_with_balance in checked:
            fbs = status.get(c.liability_id, "missing")
            if settled and fbs == "open":
                found.append("settled, but open in FBS")
            if closed_with_balance and fbs == "closed":
                found.append("closed in FBS by fbs-debitor, but a balance is left")
            if found:                  # what each side says, written out only for a difference
                sent = f"{c.debtor_status or 'live'} {as_amount(c.debtor_amount)}"
                ledger_says = f"paid {paid} written off {off} repaid {repaid} balance {balance} ({c.settlement})"
                reported = f"paid {t[0]:.2f} written off {t[1]:.2f} repaid {t[2]:.2f}"
                report.differences += [Difference(c.liability_id, c.fordring_id, what, sent, reported, ledger_says, fbs)
                                       for what in found]


# FBS's payments from the debtor system: what ``_fbs_only`` looks at (LIKE as each database reads it)
_FROM_DEBTOR = f"source_ref LIKE '{SOURCE} %'"


def _movements(stores: Stores, report: PaymentReport, page_size: int) -> int:
    """2: every applied movement in fbs.payment once, the same; nothing left to write back. Page
    by page in movement order, each page's FBS payments read in one query by key. Returns how many
    of FBS's payments from the debtor system (``_FROM_DEBTOR``) name the applied movement they
    were found under: each is a different payment (it names one movement), so when they are all of
    them, no such payment lacks its applied movement and ``_fbs_only`` has nothing to look for."""
    page = text("SELECT movement_id, fordring_id, liability_id, kind, amount, written_back_at FROM movement "
                "WHERE state = 'applied' AND movement_id > :a ORDER BY movement_id LIMIT :n")
    matched = 0
    for rows in keyset_pages(stores.ledger, page, "movement_id", "", {"n": page_size}, after="a"):
        keys = [payment_id(r.movement_id) for r in rows]
        with stores.fbs.connect() as conn:
            fbs = {r.payment_id: r for r in select_in(
                conn, f"SELECT payment_id, liability_id, kind, amount, source_ref, CASE WHEN {_FROM_DEBTOR} "  # noqa: S608
                "THEN 1 ELSE 0 END AS from_debtor FROM payment WHERE payment_id IN :k", "k", keys)}
        for r, key in zip(rows, keys, strict=True):
            f = fbs.get(key)
            if f is not None and f.from_debtor and source_movement(f.source_ref) == r.movement_id:
                matched += 1
            if r.written_back_at is None:
                what = "applied, not yet written to FBS"
            elif f is None:
                what = "applied, not in FBS"
            elif (f.liability_id, f.kind) != (r.liability_id, r.kind) or (
                    f.amount != r.amount and as_amount(f.amount) != as_amount(r.amount)):
                what = "applied, different in FBS"   # (the same stored amount is the same amount: not converted)
            else:
                continue
            reported = f"{r.kind} {as_amount(r.amount)} (movement {r.movement_id})"
            report.differences.append(Difference(r.liability_id, r.fordring_id, what, "-", reported, "applied",
                                                 "-" if f is None else f"{f.kind} {as_amount(f.amount)} on {f.liability_id}"))
    return matched


def _fbs_only(stores: Stores, report: PaymentReport, page_size: int, matched: int) -> None:
    """2: payments in FBS from the debtor system (source_ref SF1590_B_01A) the ledger did not apply;
    page by page, each page's movements read in one query by key. Not read at all when ``matched``
    (``_movements``' count) is every such payment: then each names an applied movement."""
    with stores.fbs.connect() as conn:
        if conn.execute(text(f"SELECT COUNT(*) FROM payment WHERE {_FROM_DEBTOR}")).scalar() == matched:  # noqa: S608
            return
    page = text("SELECT payment_id, liability_id, kind, amount, source_ref FROM payment WHERE payment_id > :a "  # noqa: S608
                f"AND {_FROM_DEBTOR} ORDER BY payment_id LIMIT :n")
    for rows in keyset_pages(stores.fbs, page, "payment_id", "", {"n": page_size}, after="a"):
        ids = {source_movement(r.source_ref): r for r in rows}
        with stores.ledger.connect() as conn:
            applied = {m[0] for m in select_in(conn, "SELECT movement_id FROM movement WHERE state = 'applied' AND "
                                                     "movement_id IN :k", "k", list(ids))}
        for mid, r in ids.items():
            if mid not in applied:
                report.differences.append(Difference(r.liability_id, r.source_ref.split(" ")[1], "in FBS, not applied "
                                                     "in the ledger", "-", f"movement {mid}", "not applied",
                                                     f"{r.kind} {as_amount(r.amount)}"))


def _debtor_side(stores: Stores, report: PaymentReport, debtor: dict[str, dict], page_size: int) -> None:
    """3: what the debtor side delivered, arrived once and the same; balances agree."""
    report.debtor_movements = len(debtor)
    ids = sorted(debtor)
    balances: dict[str, Decimal] = defaultdict(Decimal)
    for start in range(0, len(ids), page_size):
        part = ids[start:start + page_size]
        with stores.ledger.connect() as conn:
            got = {r.movement_id: r for r in conn.execute(in_query(
                "SELECT movement_id, fordring_id, liability_id, kind, amount, state FROM movement "
                "WHERE movement_id IN :m", "m"), {"m": part})}
        for mid in part:
            m = debtor[mid]
            r = got.get(mid)
            reported = f"{m['kind']} {m['amount']} in {m['file_name']}"
            if r is None:
                report.differences.append(Difference(None, m["fordring_id"], "reported, not received", "-", reported,
                                                     "nothing", "-"))
            elif (r.fordring_id, r.kind, as_amount(r.amount)) != (m["fordring_id"], m["kind"], m["amount"]):
                report.differences.append(Difference(r.liability_id, m["fordring_id"], "received differently", "-",
                                                     reported, f"{r.kind} {as_amount(r.amount)} on {r.fordring_id}",
                                                     "-"))
            sign = {"payment": -1, "write_off": -1, "reversal": 1}.get(m["kind"], 0)
            balances[m["fordring_id"]] += sign * m["amount"]
    fids = sorted(balances)
    for start in range(0, len(fids), page_size):
        part = fids[start:start + page_size]
        with stores.ledger.connect() as conn:
            claims = {r.fordring_id: r for r in conn.execute(in_query(
                "SELECT c.liability_id, c.fordring_id, c.debtor_amount, c.debtor_status, c.balance, "
                "(SELECT COUNT(*) FROM movement m WHERE m.fordring_id = c.fordring_id AND m.state <> 'applied') "
                "AS not_applied FROM claim c WHERE c.fordring_id IN :f", "f"), {"f": part})}
        for fid in part:
            c = claims.get(fid)
            if c is None or c.not_applied or c.debtor_status == "cancelled":
                continue        # unknown or cancelled claims: held for review, each with its task
            theirs = as_amount(c.debtor_amount) + balances[fid]
            if theirs != as_amount(c.balance):
                report.differences.append(Difference(c.liability_id, fid, "balance differs from the debtor side",
                                                     f"{as_amount(c.debtor_amount)}", f"balance {theirs}",
                                                     f"balance {as_amount(c.balance)}", "-"))
