"""The debtor side of payments (P1): the emulator's citizens pay, the municipality writes off, and
the debtor system delivers its DaekningAfskrivningRegistreringAfsend movements on its vendor's
rhythm (``payments.rhythm``): KMD OPUS once a night, Prisme hourly or nightly, EG every few
minutes. Two routes (a *sink*): ``InboundSink`` calls FBS's inbound SF1590_B_01A service as
Serviceplatformen does (``inbound_caller``), one call per municipality and delivery, the service
landing each in the payments inbox; ``FolderSink`` (the file route, for vendors that deliver files)
writes each delivery into the inbox folder.

Movements are made from the claims the emulator holds (``emulator.emu_claim``), seeded, with the
balance the debtor system keeps (claim amount less its own movements), so nothing is paid twice
unless asked for:

* per delivery period, each open claim is paid with probability ``rate`` per day: in full (60 %),
  in part (25 %) or the rest written off (15 %);
* in the first delivery of a call, per vendor: a reversal of an earlier payment, a repayment of
  what was paid on each compensation the FBS side asked to repay (U3), and ``unknown`` movements
  on claims the debtor system does not hold from FBS;
* ``overpayments`` / ``on_cancelled`` (for tests): a payment above the balance, a payment on a
  cancelled claim.

Every movement is recorded with the file it went out in (``emu_movement``), so reconciliation can
check that each one arrived exactly once. ``emu_payment_clock`` remembers, per vendor, up to when
files were delivered, so the next call continues from there.

Movement ids (BevaegelseID) are unique at the debtor system, as a real one keeps them: a call's
random stream is seeded with ``seed`` and the window it delivers (so a later call with the same
seed draws other movements), and an id already delivered is never drawn again. A second call
with the default seed, any time later, delivers only what fell due since.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePath, PurePosixPath
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from fbs_debitor.core.db import as_amount, make_engine
from fbs_debitor.core.settings import TIMEZONE
from fbs_debitor.payments.files import Movement, to_xml, write_atomically
from fbs_debitor.payments.rhythm import rhythm
from fbs_debitor.sandbox import emulator
from fbs_debitor.sandbox.inbound_caller import InboundCaller

UNKNOWN_CLAIM_PREFIX = "9"   # a movement on no claim: FordringID FBS-<agency>-9 and nine digits


def is_unknown_claim(fordring_id: str) -> bool:
    """Whether this emulator made ``fordring_id`` up for a movement on no claim: ``FBS-<agency>-9``
    and nine digits, a liability id no FBS extract here reaches (a real claim whose liability id
    merely starts with 9 is not one)."""
    parts = fordring_id.split("-")
    tail = parts[2] if len(parts) == 3 and parts[0] == "FBS" else ""
    return len(tail) == 10 and tail.isdigit() and tail.startswith(UNKNOWN_CLAIM_PREFIX)

metadata = sa.MetaData()
emu_movement = sa.Table(
    "emu_movement", metadata,
    sa.Column("movement_id", sa.String(100), primary_key=True),
    sa.Column("fordring_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("amount", sa.String(20), nullable=False),
    sa.Column("booked_on", sa.Date, nullable=False),
    sa.Column("reference_id", sa.String(100)),
    sa.Column("vendor", sa.String(10), nullable=False),
    sa.Column("file_name", sa.String(255), nullable=False),
)
emu_payment_clock = sa.Table(
    "emu_payment_clock", metadata,
    sa.Column("vendor", sa.String(10), primary_key=True),
    sa.Column("delivered_until", sa.DateTime, nullable=False),
)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Mix:
    rate: float = 0.05            # share of open claims with a movement per day
    reversals: int = 1            # per vendor and call
    unknown: int = 2              # per vendor and call
    overpayments: int = 0         # per vendor and call
    on_cancelled: int = 0         # per vendor and call
    repayments: bool = True


def _engine(db_url: str) -> sa.Engine:
    engine = make_engine(db_url, "emulator")
    emulator.metadata.create_all(engine)
    metadata.create_all(engine)
    return engine


def _agency(fordring_id: str) -> str:
    return fordring_id.split("-")[1]


class FolderSink:
    """The file route: each delivery written into the inbox folder (``files.write_atomically``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def deliver(self, name: str, data: bytes, municipality_cvr: str | None) -> PurePath:
        return write_atomically(self.folder, name, data)


class InboundSink:
    """The call route: each delivery sent as one SF1590_B_01A call on behalf of its municipality
    (``inbound_caller.InboundCaller``); it is recorded under the file name the receipt gives.
    ``sent`` lists (vendor's name of the delivery, landed file name)."""

    def __init__(self, caller: InboundCaller):
        self.caller = caller
        self.sent: list[tuple[str, str]] = []

    def deliver(self, name: str, data: bytes, municipality_cvr: str | None) -> PurePath:
        if municipality_cvr is None:
            raise ValueError("a call is made on behalf of one municipality: give municipality_of_agency")
        receipt = self.caller.call(data, municipality_cvr)
        self.sent.append((name, receipt.file_name))
        return PurePosixPath(receipt.file_name)


def deliver(db_url: str, inbox: Path | FolderSink | InboundSink, until: dt.datetime, vendor_of_agency: dict[str, str],
            seed: int = 0, mix: Mix = Mix(), since: dt.datetime | None = None,
            municipality_of_agency: dict[str, str] | None = None) -> list[PurePath]:
    """Deliver what is due up to ``until`` (aware), per vendor on its rhythm, continuing from the
    last call (or from ``since``, default one day before ``until``). Returns what was delivered:
    the files written (``inbox`` a folder or a FolderSink), or the landed file names (an
    InboundSink: one call each).

    With ``municipality_of_agency`` (agency -> the municipality's CVR) each delivery is split per
    municipality, one file or call each (``DA-<vendor>-<time>-<cvr>.xml``): a call is made on
    behalf of one municipality. Without it, one file per delivery holds all the vendor's agencies.

    Each delivery is recorded (its movements with the file name, the vendor's clock at its time) in
    its own transaction once it is written or its call answered, so a failure later in the call
    leaves what was delivered recorded, and a repeat of the failed call continues from there."""
    sink = inbox if isinstance(inbox, (FolderSink, InboundSink)) else FolderSink(inbox)
    if municipality_of_agency is not None:
        missing = sorted(set(vendor_of_agency) - set(municipality_of_agency))
        if missing:
            raise ValueError(f"municipality_of_agency: no municipality CVR for agency {missing[0]}")
    engine = _engine(db_url)
    written: list[PurePath] = []
    try:
        with engine.connect() as conn:
            claims = conn.execute(sa.select(emulator.emu_claim.c.fordring_id, emulator.emu_claim.c.kravtype,
                                            emulator.emu_claim.c.amount, emulator.emu_claim.c.status)
                                  .order_by(emulator.emu_claim.c.fordring_id)).all()
            moved = conn.execute(sa.select(emu_movement)).mappings().all()
            repay_asked = {r[0] for r in conn.execute(sa.select(emulator.emu_change.c.fordring_id)
                                                      .where(emulator.emu_change.c.kind == "Tilbagebetaling"))}
            clocks = dict(conn.execute(sa.select(emu_payment_clock.c.vendor, emu_payment_clock.c.delivered_until)).all())
            conn.rollback()
            # seeded per window: the same call gives the same files, a later one other movements
            rng = random.Random(f"{seed}|{until.astimezone(dt.UTC).isoformat()}|"
                                + "|".join(f"{v}={t.isoformat()}" for v, t in sorted(clocks.items())))
            book = _Ledger(claims, moved)
            by_vendor: dict[str, list[str]] = defaultdict(list)
            for fid, _k, _a, _s in claims:
                vendor = vendor_of_agency.get(_agency(fid))
                if vendor:
                    by_vendor[vendor].append(fid)

            def set_clock(vendor: str, at: dt.datetime) -> None:
                value = at.astimezone(dt.UTC).replace(tzinfo=None)
                if vendor in clocks:
                    conn.execute(emu_payment_clock.update().where(emu_payment_clock.c.vendor == vendor)
                                 .values(delivered_until=value))
                else:
                    conn.execute(emu_payment_clock.insert().values(vendor=vendor, delivered_until=value))
                clocks[vendor] = value

            for vendor in sorted(set(vendor_of_agency.values())):
                r = rhythm(vendor)
                start = clocks.get(vendor)
                start = (start.replace(tzinfo=dt.UTC) if start else (since or until - dt.timedelta(days=1)))
                first = True
                for period_start, at in r.deliveries(start, until):
                    movements = book.period(rng, by_vendor[vendor], period_start, at, mix.rate, vendor)
                    if first:
                        movements += book.extras(rng, by_vendor[vendor], vendor, mix, repay_asked, at,
                                                 sorted({a for a, v in vendor_of_agency.items() if v == vendor}))
                        first = False
                    if not movements:
                        continue
                    stamp = f"DA-{vendor}-{at.astimezone(ZoneInfo(TIMEZONE)):%Y%m%dT%H%M}"
                    if municipality_of_agency is None:
                        groups = [(None, f"{stamp}.xml", movements)]
                    else:
                        per: dict[str, list[Movement]] = defaultdict(list)
                        for m in movements:
                            per[municipality_of_agency[_agency(m.fordring_id)]].append(m)
                        groups = [(cvr, f"{stamp}-{cvr}.xml", per[cvr]) for cvr in sorted(per)]
                    for cvr, name, group in groups:
                        data = to_xml(group, at, uuid.UUID(int=rng.getrandbits(128)))
                        delivered = sink.deliver(name, data, cvr)
                        conn.execute(emu_movement.insert(), [
                            {"movement_id": m.movement_id, "fordring_id": m.fordring_id, "kind": m.kind,
                             "amount": str(m.amount), "booked_on": m.booked_on, "reference_id": m.reference_id,
                             "vendor": vendor, "file_name": delivered.name} for m in group])
                        conn.commit()
                        written.append(delivered)
                    set_clock(vendor, at)
                    conn.commit()
                set_clock(vendor, until)
                conn.commit()
    finally:
        engine.dispose()
    return written


class _Ledger:
    """The debtor system's own view: each claim's balance after its movements."""

    def __init__(self, claims, moved):
        self.status = {fid: status for fid, _k, _a, status in claims}
        self.kind = {fid: kravtype for fid, kravtype, _a, _s in claims}
        self.balance = {fid: as_amount(amount) for fid, _k, amount, _s in claims}
        self.paid: dict[str, Decimal] = defaultdict(Decimal)
        self.repaid: dict[str, Decimal] = defaultdict(Decimal)
        self.payments: list[Movement] = []
        self.ids = {m["movement_id"] for m in moved}        # BevaegelseID is unique: never drawn twice
        reversed_ids = {m["reference_id"] for m in moved if m["kind"] == "reversal"}
        for m in moved:
            mv = Movement(m["movement_id"], m["fordring_id"], m["kind"], as_amount(m["amount"]), m["booked_on"],
                          m["reference_id"])
            self._book(mv)
            if mv.kind == "payment" and mv.movement_id not in reversed_ids:
                self.payments.append(mv)

    def _book(self, m: Movement) -> None:
        if m.fordring_id not in self.balance:
            return
        if m.kind in ("payment", "write_off"):
            self.balance[m.fordring_id] -= m.amount
            if m.kind == "payment":
                self.paid[m.fordring_id] += m.amount
        elif m.kind == "reversal":
            self.balance[m.fordring_id] += m.amount
            self.paid[m.fordring_id] -= m.amount
        elif m.kind == "repayment":
            self.repaid[m.fordring_id] += m.amount

    def _new(self, rng: random.Random, vendor: str, fid: str, kind: str, amount: Decimal, booked: dt.date,
             ref: str | None = None) -> Movement:
        mid = None
        while mid is None or mid in self.ids:
            mid = f"{vendor.replace('_', '')}-{uuid.UUID(int=rng.getrandbits(128)).hex}"
        self.ids.add(mid)
        m = Movement(mid, fid, kind, amount.quantize(CENT), booked, ref)
        self._book(m)
        if kind == "payment":
            self.payments.append(m)
        return m

    def open_claims(self, fids: list[str]) -> list[str]:
        return [f for f in fids if self.status.get(f) == emulator.ACTIVE and self.balance.get(f, 0) > 0]

    def period(self, rng: random.Random, fids: list[str], start: dt.datetime, end: dt.datetime, rate: float,
               vendor: str) -> list[Movement]:
        open_now = self.open_claims(fids)
        expected = len(open_now) * rate * (end - start).total_seconds() / 86400
        n = int(expected) + (rng.random() < expected - int(expected))
        out = []
        for fid in rng.sample(open_now, min(n, len(open_now))):
            booked = (start + (end - start) * rng.random()).astimezone(ZoneInfo(TIMEZONE)).date()
            balance = self.balance[fid]
            roll = rng.random()
            if roll < 0.60 or balance <= Decimal("1.00"):
                out.append(self._new(rng, vendor, fid, "payment", balance, booked))
            elif roll < 0.85:
                part = (balance * Decimal(str(round(rng.uniform(0.2, 0.8), 2)))).quantize(CENT)
                out.append(self._new(rng, vendor, fid, "payment", max(part, CENT), booked))
            else:
                out.append(self._new(rng, vendor, fid, "write_off", balance, booked))
        return out

    def extras(self, rng: random.Random, fids: list[str], vendor: str, mix: Mix, repay_asked: set[str],
               at: dt.datetime, agencies: list[str]) -> list[Movement]:
        booked = at.astimezone(ZoneInfo(TIMEZONE)).date()
        mine = set(fids)
        out: list[Movement] = []
        candidates = [p for p in self.payments if p.fordring_id in mine]
        for p in rng.sample(candidates, min(mix.reversals, len(candidates))):
            self.payments.remove(p)
            out.append(self._new(rng, vendor, p.fordring_id, "reversal", p.amount, booked, p.movement_id))
        if mix.repayments:
            for fid in sorted(repay_asked & mine):
                due = self.paid[fid] - self.repaid[fid]
                if due > 0 and self.kind.get(fid, "").startswith("ERSTATNING"):
                    out.append(self._new(rng, vendor, fid, "repayment", due, booked))
        for _ in range(mix.unknown if agencies else 0):
            fid = f"FBS-{rng.choice(agencies)}-{UNKNOWN_CLAIM_PREFIX}{rng.randrange(10**8, 10**9)}"
            out.append(self._new(rng, vendor, fid, "payment", Decimal(rng.randrange(2000, 40000)) / 100, booked))
        open_now = self.open_claims(fids)
        for fid in rng.sample(open_now, min(mix.overpayments, len(open_now))):
            out.append(self._new(rng, vendor, fid, "payment", self.balance[fid] + Decimal("25.00"), booked))
        cancelled = [f for f in fids if self.status.get(f) == emulator.CANCELLED]
        for fid in rng.sample(cancelled, min(mix.on_cancelled, len(cancelled))):
            out.append(self._new(rng, vendor, fid, "payment", Decimal("10.00"), booked))
        return out


def movements(db_url: str) -> dict[str, dict]:
    """Every movement the debtor side delivered, by BevaegelseID, with its file (reconciliation)."""
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(emu_movement)).mappings().all()
    finally:
        engine.dispose()
    return {r["movement_id"]: {**r, "amount": as_amount(r["amount"])} for r in rows}
