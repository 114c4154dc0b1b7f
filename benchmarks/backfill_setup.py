"""What the delivery and change benchmarks share: a synthetic municipality whose cut-off dates are
moved back (and broken age limits repaired), so most open liabilities become claims as in a
backfill, and the Serviceplatformen connection to an emulator on loopback."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import Stores, init_stores, open_stores
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.sandbox.generator import generate


def backfill_municipality(tmp: str, patrons: int, seed: int, as_of: str) -> tuple[Stores, str]:
    """The stores (SQLite files in ``tmp``) and the FBS URL."""
    fbs_url = f"sqlite:///{tmp}/fbs.sqlite"
    stores = open_stores(DatabaseUrls(fbs=fbs_url, ledger=f"sqlite:///{tmp}/ledger.sqlite"))
    init_stores(stores)
    generate(stores.fbs, patrons=patrons, seed=seed, as_of=dt.date.fromisoformat(as_of))
    with stores.fbs.begin() as conn:
        conn.execute(text("UPDATE agency SET cut_off_date = '1990-01-01', age_limit = 18"))
    return stores, fbs_url


def emulator_config(url: str) -> serviceplatformen.Config:
    return serviceplatformen.config_from_connection(url, None, None, {
        "service_agreement_uuid": "11111111-1111-4111-8111-111111111111",
        "user_system_uuid": "22222222-2222-4222-8222-222222222222",
        "user_uuid": "33333333-3333-4333-8333-333333333333", "operation_timeout": 120})
