"""Hand-built FBS rows for rule tests: defaults are a healthy adult's open fee at a KMD OPUS agency.

Every helper takes the column values that matter to the test as keyword arguments; the rest get
realistic defaults. CPR numbers here are test numbers (valid format, modulus-11 valid unless a test
says otherwise) and are never printed.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

from sqlalchemy import text

_ids = itertools.count(1000)

ADULT_CPR = "0707811234"       # born 7 Jul 1981, modulus-11 valid
MOD11_FAIL_CPR = "0707811235"  # born 7 Jul 1981, fails modulus-11 (allowed since 2007, I4)
ADULT2_CPR = "1208722359"      # born 12 Aug 1972, modulus-11 valid
VALID_CVR = "13585628"
INVALID_CVR = "13585627"
TODAY = dt.date(2026, 11, 20)
CUT_OFF = dt.date(2026, 1, 1)


def insert(conn, table: str, **values) -> dict:
    cols = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({params})"),  # noqa: S608 - test helper
                 {k: v for k, v in values.items()})
    return values


def agency(conn, agency_id="715100", **over) -> dict:
    row = dict(agency_id=agency_id, name=f"Testby Bibliotek {agency_id}", municipality_cvr="29189404",
               age_limit=18, cut_off_date=CUT_OFF, replacement_cpr_enabled=True, verify_compensations=False,
               auto_compensation_acknowledged=False, debtor_vendor="KMD_OPUS",
               org_unit_uuid="5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e11",
               sender_system_uuid="0b7f7a8e-3c1b-4f0e-8a4a-6d2f0e9c1a22")
    row.update(over)
    insert(conn, "agency", **row)
    insert(conn, "branch", branch_id=f"{agency_id}-01", agency_id=agency_id, name="Hovedbiblioteket",
           staff_email=f"hoved@{agency_id}.kommune.example")
    return row


def patron(conn, agency_id="715100", kind="person", **over) -> dict:
    pid = over.pop("patron_id", next(_ids))
    row = dict(patron_id=pid, agency_id=agency_id, branch_id=f"{agency_id}-01", kind=kind,
               name=f"Testperson {pid}", street="Bibliotekvej 1", postal_code="8000", city="Aarhus C")
    if kind == "person":
        row.update(cpr=ADULT_CPR, birth_date=dt.date(1981, 7, 7))
    elif kind == "company":
        row.update(cvr=VALID_CVR, name=f"Tømrerfirmaet {pid} ApS")
    else:
        row.update(name=f"Læsekreds {pid}")
    row.update(over)
    insert(conn, "patron", **row)
    return row


def material(conn, item_number=None) -> str:
    item = item_number or f"5{next(_ids):09d}"
    insert(conn, "material", item_number=item, faust="12345678", classification="99.4 Andersen",
           author="Andersen, H.C.", title="Eventyr og historier")
    return item


def loan(conn, patron_id, **over) -> dict:
    item = over.pop("item_number", None) or material(conn)
    row = dict(loan_id=next(_ids), patron_id=patron_id, item_number=item, loan_date=dt.date(2026, 3, 1),
               due_date=dt.date(2026, 3, 31), reloan_date=None, returned_at=dt.datetime(2026, 4, 10, 14, 0))
    row.update(over)
    insert(conn, "loan", **row)
    return row


def liability(conn, patron_id, agency_id="715100", kind="fee", with_loan=True, **over) -> dict:
    lid = over.pop("liability_id", next(_ids))
    ln = loan(conn, patron_id) if with_loan else None
    created = over.get("created_at", dt.datetime(2026, 4, 1, 9, 30))
    row = dict(liability_id=lid, agency_id=agency_id, patron_id=patron_id, kind=kind,
               number=("G" if kind == "fee" else "E") + str(lid), loan_id=ln["loan_id"] if ln else None,
               item_number=ln["item_number"] if ln else material(conn), amount=Decimal("60.00"),
               created_at=created, acknowledged=False, auto_created=False, verified_at=None, status="open",
               refund_requested_at=None, updated_at=created)
    row.update(over)
    insert(conn, "liability", **row)
    return row
