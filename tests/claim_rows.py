"""Hand-built rows in the shape of ``claim_rows.sql`` for the pure builder tests, and the SF1590
batch (OpretDebitorkonto) built from representative ones for the emulator and client tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace

from fbs_rows import ADULT2_CPR, ADULT_CPR, VALID_CVR
from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims.builder import build
from fbs_debitor.core.identity import ReplacementCprRegistry

TODAY = dt.date(2026, 11, 20)
AT = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)     # when the batch was built
REPLACEMENT_FID = "FBS-715100-2"                          # the minor on a replacement CPR in ``batch_root``


def row(**over) -> SimpleNamespace:
    """An adult's open fee at a KMD OPUS agency with replacement CPR on: override what matters."""
    base = dict(
        liability_id=501, agency_id="715100", kind="fee", number="G501", amount=Decimal("60.00"),
        created_at=dt.datetime(2026, 4, 1, 9, 30), acknowledged=False, auto_created=False, verified_at=None,
        item_number="5000000017",
        age_limit=18, replacement_cpr_enabled=True, auto_compensation_acknowledged=False, debtor_vendor="KMD_OPUS",
        org_unit_uuid="5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e11", sender_system_uuid="0b7f7a8e-3c1b-4f0e-8a4a-6d2f0e9c1a22",
        b_patron_id=11, b_kind="person", b_branch_id="715100-01",
        d_patron_id=11, d_kind="person", d_cpr=ADULT_CPR, d_replacement_cpr=None, d_birth_date=dt.date(1981, 7, 7),
        d_name="Karen Jensen", d_street="Bibliotekvej 1", d_postal_code="8000", d_city="Aarhus C",
        d_cvr=None, d_p_number=None, d_ean=None,
        g_patron_id=None, gnow_patron_id=None, g_cpr=None, g_replacement_cpr=None, g_birth_date=None, g_name=None, g_street=None,
        g_postal_code=None, g_city=None,
        loan_date=dt.date(2026, 3, 1), due_date=dt.date(2026, 3, 31), reloan_date=None,
        classification="99.4 Andersen", author="Andersen, H.C.", title="Eventyr og historier",
    )
    base.update(over)
    return SimpleNamespace(**base)


def child(born: dt.date, guardian: bool = True, **over) -> SimpleNamespace:
    """A child (CPR 0303151238, born 3 Mar 2015 unless ``born`` says otherwise) with or without a
    guardian (CPR ADULT2_CPR) at the liability's creation."""
    values = dict(d_patron_id=21, b_patron_id=21, d_cpr=None, d_birth_date=born, d_name="Emil Jensen")
    if guardian:
        values.update(g_patron_id=22, gnow_patron_id=22, g_cpr=ADULT2_CPR, g_birth_date=dt.date(1972, 8, 12),
                      g_name="Mette Jensen")
    values.update(over)
    return row(**values)


# The sender settings of the default row's agency, as messages.build_batches wants them.
AGENCY = {"agency_id": "715100", "sender_system_uuid": "0b7f7a8e-3c1b-4f0e-8a4a-6d2f0e9c1a22",
          "org_unit_uuid": "5f1d8a52-0c38-4a43-9f5e-2b7a1c0d9e11"}


def representative_rows() -> dict[int, SimpleNamespace]:
    """Representative claims by liability id: 1 adult CPR fee; 2 minor with guardian on a replacement
    CPR, a re-loaned acknowledged compensation; 3 minor without guardian; 4 company with P-number
    and EAN."""
    return {
        1: row(liability_id=1, number="G1"),
        2: row(liability_id=2, kind="compensation", number="E2", acknowledged=True, d_patron_id=21, b_patron_id=21,
               d_cpr=None, d_birth_date=dt.date(2015, 3, 3), d_name="Emil Jensen", g_patron_id=22, g_cpr=ADULT2_CPR,
               g_name="Mette Jensen", reloan_date=dt.date(2026, 3, 20), due_date=dt.date(2026, 4, 19)),
        3: row(liability_id=3, number="G3", d_patron_id=31, b_patron_id=31, d_cpr="0303154124",
               d_birth_date=dt.date(2015, 3, 3), d_name="Ida Holm"),
        4: row(liability_id=4, number="G4", amount=Decimal("1234.50"), d_patron_id=41, b_patron_id=41,
               d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR,
               d_p_number="1003388394", d_ean="5790000123452", d_name="Tømrerfirmaet Holm ApS"),
    }


def accounts():
    """An adult fee (CPR), a minor on a replacement CPR with a guardian (compensation), a company."""
    registry = ReplacementCprRegistry()
    rows = [representative_rows()[i] for i in (1, 2, 4)]
    return [build(r, registry, TODAY).account for r in rows]


def batch_root() -> etree._Element:
    """The one OpretDebitorkonto batch of ``accounts()`` from the default agency, built at ``AT``."""
    (batch,) = messages.build_batches(accounts(), AGENCY, batch_size=500, at=AT)
    return batch.root
