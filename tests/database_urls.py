"""The two stores' URLs for one test: SQLite files in its folder, or two fresh databases (FBS and
the ledger apart, as a municipality runs them) on a PostgreSQL server."""

from __future__ import annotations

import itertools
import os

from pgcluster import create_database

from fbs_debitor.core.settings import DatabaseUrls

_db_counter = itertools.count()


def make_urls(kind: str, tmp_path, pg_admin_url_factory) -> DatabaseUrls:
    """``kind`` is ``sqlite`` or ``postgresql``; ``pg_admin_url_factory`` is called only for PostgreSQL."""
    if kind == "sqlite":
        return DatabaseUrls(fbs=f"sqlite:///{tmp_path / 'fbs.sqlite'}", ledger=f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    admin = pg_admin_url_factory()
    n = next(_db_counter)
    # FBS and the ledger in separate databases, as a municipality would run them.
    return DatabaseUrls(fbs=create_database(admin, f"fbs_{os.getpid()}_{n}"),
                        ledger=create_database(admin, f"ledger_{os.getpid()}_{n}"))
