"""Benchmark: a million payment movements (P1, P2) applied by the payments run, then reconciled.

    python benchmarks/bench_payments_million.py                       # about 1,000,000 movements
    python benchmarks/bench_payments_million.py --movements 100000    # the same at a tenth

What it sets up (not timed):

* FBS: the sandbox generator (``sandbox.generator.generate``, five agencies, each its own
  municipality), enough patrons for about one open liability per ``--per-claim`` movements;
* the ledger: each open liability recorded as a claim the debtor system ACCEPTED, directly in the
  ledger through the project's own outbox functions (``delivery.outbox.record_batch`` then
  ``record_answers`` with an accepted receipt per claim), with no claim XML built and no call to the
  emulator: those are measured by ``bench_claims.py`` / ``bench_delivery.py``, and a million
  movements need a few hundred thousand claims;
* about ``--files`` payment files in the inbox folder (the file route, ``FolderInbox``), written
  by the project's own writer (``payments.files.to_xml``: schema-valid, ``write_atomically``). Each
  file is one municipality's (its agency's claims), names in delivery order. A debtor-side model
  (balance, paid, repaid per claim) makes the movements: partial and full payments, write-offs of
  the rest, reversals of an earlier payment (of the same or an earlier file), repayments, and two
  movements per file on claims the ledger does not know (held as P_UNKNOWN_CLAIM). Generated file
  by file, so nothing but the per-claim model stays in memory.

What it measures:

1. **apply**: one payments run exactly as ``debitor_payments`` / ``python -m fbs_debitor
   payments`` runs it (``payments.apply.ingest``: ``sort_inbox``, each municipality's
   ``ingest_unit`` under its lock, ``ingest_rest``; parse + schema, one ledger transaction per
   file, held movements looked at again, the write-back to FBS), then its counts recorded;
2. **reconciliation**: ``payments.reconciliation.reconcile_payments`` (the ledger against itself and
   against FBS; the debtor side's own movement list is not given: it would be this script's
   model, not the emulator's).

Prints movements, files, seconds and movements/s for apply, seconds for the reconciliation, peak
RSS of the process that runs them (``resource.getrusage``; the setup runs in a child process of
its own), and the ratio to ``floor_payments.py`` (bare lxml parse + one
executemany INSERT of the same files into a plain SQLite table, no rules) run on the same files in
a child process. SQLite files in a temporary folder (``--keep DIR`` keeps them there). Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "benchmarks")]
os.environ.setdefault("FBS_DEBITOR_FINGERPRINT_KEY", "benchmark-fingerprint-key-000001")

from common import peak_rss_mb
from sqlalchemy import text

from fbs_debitor.claims.fields import fordring_id
from fbs_debitor.claims.sf1590 import Receipt
from fbs_debitor.core import ledger
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.delivery import outbox
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments import reconciliation as payment_reconciliation
from fbs_debitor.payments.files import Movement, to_xml, write_atomically
from fbs_debitor.payments.inbox import FolderInbox
from fbs_debitor.sandbox.generator import generate

AS_OF = dt.date(2026, 11, 20)
LIABILITIES_PER_PATRON = 10.0
RECORD_BATCH = 5000


def setup_fbs(stores, claims_wanted: int, seed: int) -> None:
    """The generator's population, big enough for ``claims_wanted`` open liabilities."""
    patrons = max(1000, int(claims_wanted / (LIABILITIES_PER_PATRON * 0.5)) + 1)
    while True:
        generate(stores.fbs, patrons=patrons, seed=seed, as_of=AS_OF, liabilities_per_patron=LIABILITIES_PER_PATRON)
        with stores.fbs.connect() as conn:
            n = conn.execute(text("SELECT COUNT(*) FROM liability WHERE status = 'open' AND amount > 0")).scalar_one()
        if n >= claims_wanted:
            return
        patrons = int(patrons * claims_wanted / max(n, 1) * 1.05) + 1


def record_accepted(stores, claims_wanted: int) -> list[tuple[str, str, int]]:
    """The first ``claims_wanted`` open liabilities recorded as accepted claims (the outbox's own
    functions); returns (fordring_id, agency_id, amount in øre) in liability order."""
    with stores.fbs.connect() as conn:
        rows = conn.execute(text("SELECT liability_id, agency_id, amount FROM liability WHERE status = 'open' AND "
                                 "amount > 0 ORDER BY liability_id LIMIT :n"), {"n": claims_wanted}).all()
    run_id = ledger.start_run(stores.ledger, "transfer")
    out = []
    for start in range(0, len(rows), RECORD_BATCH):
        part = rows[start:start + RECORD_BATCH]
        claims = [SimpleNamespace(liability_id=r.liability_id, agency_id=r.agency_id,
                                  fordring_id=fordring_id(r.agency_id, r.liability_id),
                                  amount=Decimal(str(r.amount)).quantize(Decimal("0.01"))) for r in part]
        batch = SimpleNamespace(accounts=[SimpleNamespace(claims=claims)], transaction_id=uuid.uuid4())
        prints = {c.liability_id: SimpleNamespace(identity_print="0" * 64, source_print="0" * 64,
                                                  fingerprint="0" * 64) for c in claims}
        outbox.record_batch(stores.ledger, run_id, batch, prints)
        keys = {c.fordring_id: (outbox.message_key(c.liability_id), c.liability_id) for c in claims}
        outbox.record_answers(stores.ledger, run_id, keys,
                              [Receipt(c.fordring_id, True, f"D{c.liability_id}", None, None) for c in claims])
        out += [(c.fordring_id, c.agency_id, int(c.amount * 100)) for c in claims]
    ledger.finish_run(stores.ledger, run_id, "success")
    return out


class DebtorSide:
    """The debtor system's view of each claim (øre): balance, paid, repaid; the open claims of each
    agency; the recent payments that a reversal may undo. Compact: arrays, not objects."""

    def __init__(self, claims: list[tuple[str, str, int]], seed: int):
        self.rng = random.Random(seed)
        self.fid = [c[0] for c in claims]
        self.balance = array("q", (c[2] for c in claims))
        self.paid = array("q", bytes(8 * len(claims)))
        self.repaid = array("q", bytes(8 * len(claims)))
        self.open: dict[str, list[int]] = {}
        for i, c in enumerate(claims):
            self.open.setdefault(c[1], []).append(i)
        self.agencies = sorted(self.open)
        self.recent: dict[str, list[tuple[int, str, int]]] = {a: [] for a in self.agencies}   # (claim, id, øre)
        self.repayable: dict[str, list[int]] = {a: [] for a in self.agencies}
        self.n = 0

    def _id(self) -> str:
        self.n += 1
        return f"BENCH-{self.n:09d}-{self.rng.getrandbits(32):08x}"

    def _close(self, agency: str, pos: int) -> None:
        lst = self.open[agency]
        lst[pos] = lst[-1]
        lst.pop()

    def file(self, agency: str, size: int, booked: dt.date) -> tuple[list[Movement], int]:
        """One file's movements for ``agency``'s claims; and how many of them are on unknown claims."""
        rng, out = self.rng, []
        opened = self.open[agency]
        for _ in range(size - 2):
            roll = rng.random()
            if roll < 0.02 and self.recent[agency]:                     # a reversal of an earlier payment
                rec = self.recent[agency]
                i, mid, amount = rec.pop(rng.randrange(len(rec)))
                if self.paid[i] - amount >= self.repaid[i]:
                    if self.balance[i] == 0:
                        opened.append(i)
                    self.balance[i] += amount
                    self.paid[i] -= amount
                    out.append(Movement(self._id(), self.fid[i], "reversal", Decimal(amount) / 100, booked, mid))
                    continue
            if roll > 0.99 and self.repayable[agency]:                  # a repayment of what was paid
                rep = self.repayable[agency]
                i = rep.pop(rng.randrange(len(rep)))
                due = self.paid[i] - self.repaid[i]
                if due > 0:
                    amount = max(1, due // 2)
                    self.repaid[i] += amount
                    out.append(Movement(self._id(), self.fid[i], "repayment", Decimal(amount) / 100, booked))
                    continue
            if not opened:
                break
            pos = rng.randrange(len(opened))
            i = opened[pos]
            balance = self.balance[i]
            kind_roll = rng.random()
            if kind_roll < 0.75 and balance > 200:                        # in part
                amount = max(1, int(balance * rng.uniform(0.2, 0.6)))
                kind = "payment"
            elif kind_roll < 0.92:                                        # in full
                amount, kind = balance, "payment"
            else:                                                         # the rest written off
                amount, kind = balance, "write_off"
            self.balance[i] -= amount
            mid = self._id()
            if kind == "payment":
                self.paid[i] += amount
                self.recent[agency].append((i, mid, amount))
                if len(self.recent[agency]) > 5000:
                    self.recent[agency].pop(0)
                if rng.random() < 0.05:
                    self.repayable[agency].append(i)
            if self.balance[i] == 0:
                self._close(agency, pos)
            out.append(Movement(mid, self.fid[i], kind, Decimal(amount) / 100, booked))
        for _ in range(2):                                                  # claims the ledger does not know
            out.append(Movement(self._id(), f"FBS-{agency}-9{rng.randrange(10**8, 10**9)}", "payment",
                                Decimal(rng.randrange(2000, 40000)) / 100, booked))
        return out, 2


def write_files(folder: Path, debtor: DebtorSide, movements: int, files: int) -> tuple[int, int]:
    """``files`` files of about ``movements`` in all, each of one agency (chosen by its open claims); returns
    (files written, movements written)."""
    size = max(3, movements // files)
    at = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC)
    written = total = 0
    for n in range(files):
        weights = [len(debtor.open[a]) for a in debtor.agencies]     # each agency by its open claims
        agency = debtor.rng.choices(debtor.agencies, weights)[0]
        booked = AS_OF - dt.timedelta(days=(files - n) // 100)
        group, _ = debtor.file(agency, size, booked)
        write_atomically(folder, f"DA-BENCH-{n:06d}-{agency}.xml", to_xml(group, at))
        written += 1
        total += len(group)
    return written, total


def setup(args, urls: DatabaseUrls, box: FolderInbox, files: int) -> int:
    stores = open_stores(urls)
    init_stores(stores)
    claims_wanted = int(args.movements / args.per_claim) + 1
    t = time.perf_counter()
    setup_fbs(stores, claims_wanted, args.seed)
    claims = record_accepted(stores, claims_wanted)
    t_claims = time.perf_counter() - t
    box.inbox.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    debtor = DebtorSide(claims, args.seed)
    del claims
    n_files, n_movements = write_files(box.inbox, debtor, args.movements, files)
    t_files = time.perf_counter() - t
    print(f"setup: {claims_wanted:,} claims accepted in the ledger in {t_claims:.1f} s; "
          f"{n_files:,} files with {n_movements:,} movements written in {t_files:.1f} s "
          f"(setup's own peak RSS {peak_rss_mb():.0f} MB)", flush=True)
    (box.inbox.parent.parent / "setup.json").write_text(json.dumps({"files": n_files, "movements": n_movements}))
    stores.dispose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movements", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=None, help="default: one per 1,000 movements")
    parser.add_argument("--per-claim", type=float, default=3.0, help="movements per claim, about (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", default=None, help="a folder to keep the databases and files in")
    parser.add_argument("--no-floor", action="store_true", help="do not run floor_payments.py")
    parser.add_argument("--setup-only", action="store_true", help="stop after the files are written (with --keep)")
    parser.add_argument("--reuse", default=None, help="a folder a --setup-only --keep run made (same --movements): "
                        "copied, not set up again (the copy is run; the folder stays as it is)")
    args = parser.parse_args()
    files = args.files or max(1, args.movements // 1000)
    tmp_ctx = tempfile.TemporaryDirectory() if args.keep is None else None
    tmp = Path(args.keep) if args.keep else Path(tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        urls = DatabaseUrls(fbs=f"sqlite:///{tmp}/fbs.sqlite", ledger=f"sqlite:///{tmp}/ledger.sqlite")
        box = FolderInbox(tmp / "payments" / "inbox", own=True)
        if args.setup_only:
            return setup(args, urls, box, files)
        if args.reuse:
            shutil.copytree(args.reuse, tmp, dirs_exist_ok=True)
        else:
            # the setup in a child process, so that the peak RSS printed below is the run's own
            subprocess.run([sys.executable, __file__, "--setup-only", "--keep", str(tmp), "--movements",
                            str(args.movements), "--files", str(files), "--per-claim", str(args.per_claim),
                            "--seed", str(args.seed)], check=True)
        stores = open_stores(urls)
        if args.reuse:                  # a folder set up before a newer ledger migration: brought up to date
            init_stores(stores)
        written = json.loads((tmp / "setup.json").read_text())
        n_files, n_movements = written["files"], written["movements"]
        floor = None
        if not args.no_floor:    # before the run: the run moves the files to archive/
            out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor_payments.py"), str(box.inbox),
                                  "--quiet"], capture_output=True, text=True, check=True)
            floor = float(out.stdout.split()[0])
            print(f"floor (lxml parse + one executemany INSERT into plain SQLite, no rules): {floor:.1f} s = "
                  f"{n_movements / floor:,.0f} movements/s", flush=True)

        run_id = ledger.start_run(stores.ledger, "payments")
        rss_before = peak_rss_mb()
        t = time.perf_counter()
        done = payments.ingest(stores, box, run_id)
        counts = payments.totals(payments.record_run_counts(stores.ledger, run_id))
        t_apply = time.perf_counter() - t
        ledger.finish_run(stores.ledger, run_id, "success")
        print(f"apply: {n_movements:,} movements in {counts.get('files_applied', 0):,} of {n_files:,} files in "
              f"{t_apply:.1f} s = "
              f"{n_movements / t_apply:,.0f} movements/s; applied {counts.get('movements_applied', 0):,}, held "
              f"{counts.get('movements_held', 0):,}, written to FBS {done.get('written_back', 0):,}, "
              f"quarantined {counts.get('files_quarantined', 0)}, left {done.get('files_left', 0)}", flush=True)
        if floor:
            print(f"project / floor: {t_apply / floor:.1f}x", flush=True)

        t = time.perf_counter()
        report = payment_reconciliation.reconcile_payments(stores)
        t_rec = time.perf_counter() - t
        print(f"reconciliation: {report.claims:,} claims with payments, {report.movements['applied']:,} movements "
              f"applied, {report.movements['held']:,} held, in {t_rec:.1f} s: "
              + ("OK" if report.ok else f"{len(report.differences)} differences"), flush=True)
        for d in report.differences[:5]:
            print("  ", d)
        print(f"peak RSS of the run (apply and reconciliation; the setup ran in a child process): "
              f"{peak_rss_mb():.0f} MB (before the run {rss_before:.0f} MB)")
        stores.dispose()
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
