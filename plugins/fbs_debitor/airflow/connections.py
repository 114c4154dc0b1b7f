"""Database URLs from Airflow Connections, for code running inside an Airflow task.

Connection ``fbs_db`` (the FBS extract) and ``debitor_ledger`` (the ledger) win when defined:
conn_type ``postgres`` (host, port, login, password, schema = the database name) or ``sqlite``
(host = the database file path). Where one is not defined, the environment settings apply
(``FBS_DEBITOR_FBS_URL`` / ``FBS_DEBITOR_LEDGER_URL``, default: SQLite files under ``var/``).
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import URL

from fbs_debitor.core.settings import DatabaseUrls, database_urls

log = logging.getLogger(__name__)

FBS_CONN_ID = "fbs_db"
LEDGER_CONN_ID = "debitor_ledger"


def connection_url(conn) -> str:
    """A SQLAlchemy URL for an Airflow Connection object."""
    conn_type = (conn.conn_type or "").lower()
    if conn_type in ("postgres", "postgresql"):
        return URL.create("postgresql+psycopg", username=conn.login or None, password=conn.password or None,
                          host=conn.host or None, port=conn.port or None,
                          database=conn.schema or None).render_as_string(hide_password=False)
    if conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    raise ValueError(f"connection {conn.conn_id!r}: type {conn_type!r} is not supported (use postgres or sqlite)")


def _lookup(conn_id: str):
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def urls_for_task() -> DatabaseUrls:
    defaults = database_urls()
    fbs_conn, ledger_conn = _lookup(FBS_CONN_ID), _lookup(LEDGER_CONN_ID)
    urls = DatabaseUrls(fbs=connection_url(fbs_conn) if fbs_conn else defaults.fbs,
                        ledger=connection_url(ledger_conn) if ledger_conn else defaults.ledger)
    log.info("databases: FBS from %s, ledger from %s",
             f"connection {FBS_CONN_ID}" if fbs_conn else "settings",
             f"connection {LEDGER_CONN_ID}" if ledger_conn else "settings")
    return urls
