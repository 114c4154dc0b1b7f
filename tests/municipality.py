"""A small municipality in FBS for the delivery, change, payment and backfill tests: adults' fees,
a company's compensation, a minor without a guardian (C5), a person without CPR who gets a
replacement CPR (I1) and a group nobody answers for (T4), with what of it may be sent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import fbs_rows as fr

CHILD_CPR = "0303154124"


def municipality(stores, vendor: str = "KMD_OPUS", adults: int = 8, **agency) -> dict[str, list[int]]:
    """Fees of adults, a company's compensation, a minor without a guardian (C5 task) and a person
    without CPR who gets a replacement CPR (I1). Returns liability ids by kind."""
    ids: dict[str, list[int]] = {"adult": [], "company": [], "minor": [], "replacement": [], "blocked": []}
    with stores.fbs.connect() as conn:
        fr.agency(conn, debtor_vendor=vendor, **agency)
        for i in range(adults):
            p = fr.patron(conn, cpr=fr.ADULT_CPR if i % 2 else fr.ADULT2_CPR)
            ids["adult"].append(fr.liability(conn, p["patron_id"], amount=Decimal(f"{30 + i}.50"))["liability_id"])
        c = fr.patron(conn, kind="company")
        ids["company"].append(fr.liability(conn, c["patron_id"], kind="compensation", acknowledged=True,
                                           amount=Decimal("349.00"))["liability_id"])
        kid = fr.patron(conn, cpr=CHILD_CPR, birth_date=dt.date(2015, 3, 3))
        ids["minor"].append(fr.liability(conn, kid["patron_id"])["liability_id"])
        nocpr = fr.patron(conn, cpr=None, birth_date=dt.date(1990, 5, 17))
        ids["replacement"].append(fr.liability(conn, nocpr["patron_id"])["liability_id"])
        group = fr.patron(conn, kind="group", responsible_patron_id=None)
        ids["blocked"].append(fr.liability(conn, group["patron_id"])["liability_id"])   # T4: never sent
        conn.commit()
    return ids


def sendable(ids) -> set[int]:
    """The liability ids of a ``municipality`` that go to the debtor system (all but the T4 group's)."""
    return {i for k, v in ids.items() if k != "blocked" for i in v}


def fordring_ids(liability_ids) -> set[str]:
    return {f"FBS-715100-{i}" for i in liability_ids}
