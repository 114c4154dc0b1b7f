"""Opening the two stores — the FBS extract and the ledger — and bringing their schemas up."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from fbs_debitor.core import migrations
from fbs_debitor.core.db import make_engine, run_script, sql_file
from fbs_debitor.core.settings import FBS_SCHEMA, LEDGER_SCHEMA, DatabaseUrls, database_urls

FBS_TABLES = ("agency", "branch", "patron", "guardianship", "material", "loan", "liability", "task", "payment")


@dataclass
class Stores:
    fbs: Engine
    ledger: Engine

    def dispose(self) -> None:
        self.fbs.dispose()
        self.ledger.dispose()


def open_stores(urls: DatabaseUrls | None = None) -> Stores:
    urls = urls or database_urls()
    return Stores(fbs=make_engine(urls.fbs, FBS_SCHEMA), ledger=make_engine(urls.ledger, LEDGER_SCHEMA))


def create_fbs_schema(engine: Engine) -> None:
    """Create the FBS extract tables where missing (demo, tests; in production FBS provides them)."""
    with engine.begin() as conn:
        _add_change_markers(conn)
        run_script(conn, sql_file("fbs/schema.sql"))


MARKED_TABLES = ("agency", "patron", "guardianship")   # liability has had its updated_at from the start


def _add_change_markers(conn) -> None:
    """Tables made before the change markers (issue 19) get their ``updated_at`` column (NULL:
    unknown, counted as changed until FBS sets it), so the schema's indexes on it can be made."""
    found = inspect(conn)
    for table in MARKED_TABLES:
        if found.has_table(table) and "updated_at" not in {c["name"] for c in found.get_columns(table)}:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN updated_at TIMESTAMP")


def init_stores(stores: Stores) -> list[int]:
    """FBS tables present and the ledger at the newest version; returns ledger versions applied."""
    create_fbs_schema(stores.fbs)
    return migrations.migrate(stores.ledger)
