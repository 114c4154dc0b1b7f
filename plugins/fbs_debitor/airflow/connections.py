"""Airflow Connections turned into the package's own settings, for code running inside a task.

| Connection           | what                              | where it is not defined                        |
|----------------------|-----------------------------------|------------------------------------------------|
| ``fbs_db``           | the FBS extract                   | ``FBS_DEBITOR_FBS_URL`` (default SQLite)       |
| ``debitor_ledger``   | the ledger                        | ``FBS_DEBITOR_LEDGER_URL`` (default SQLite)    |
| ``serviceplatformen``| SF1590 endpoint, UUIDs, certificate: the default of every municipality | see below |
| ``serviceplatformen_<cvr>`` | one municipality's own agreement / mode, over the default | the default alone |
| ``smtp_default``     | the staff reports' mail server    | ``FBS_DEBITOR_SMTP_*``                         |
| ``fbs_debitor_fingerprint`` | the fingerprint key (password) | see ``claims.fingerprints`` (after ``FBS_DEBITOR_FINGERPRINT_KEY``) |

Database connections: conn_type ``postgres`` (host, port, login, password, schema = the database
name) or ``sqlite`` (host = the database file path). The meaning of the ``serviceplatformen`` and
``smtp_default`` fields is documented where they are read (``delivery.serviceplatformen``,
``delivery.access``, ``quality.mailer``); this module only looks them up. A municipality with
neither ``serviceplatformen`` nor its own connection is held (an operator alarm), the others go on.
"""

from __future__ import annotations

import logging

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from fbs_debitor.claims import fingerprints
from fbs_debitor.core import settings
from fbs_debitor.core.db import url_for
from fbs_debitor.core.settings import DatabaseUrls, database_urls
from fbs_debitor.delivery import access, serviceplatformen
from fbs_debitor.quality import mailer

log = logging.getLogger(__name__)

FBS_CONN_ID = "fbs_db"
LEDGER_CONN_ID = "debitor_ledger"


def connection_url(conn) -> str:
    """A SQLAlchemy URL for an Airflow Connection object."""
    return url_for(conn.conn_type, host=conn.host, port=conn.port, login=conn.login, password=conn.password,
                   database=conn.schema, name=conn.conn_id)


def _lookup(conn_id: str):
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def database_urls_for_task() -> DatabaseUrls:
    """The two databases: the Connections where defined, else the settings. Every setting is
    checked first (``settings.SettingError`` names each one outside its range), and a database file
    that does not exist is an error: a task never creates one (``python -m fbs_debitor init`` does)."""
    settings.check(stores=())
    for name in settings.unknown():
        log.warning("%s is not a setting of fbs-debitor (a typo?): ignored", name)
    defaults = database_urls()
    fbs_conn, ledger_conn = _lookup(FBS_CONN_ID), _lookup(LEDGER_CONN_ID)
    urls = DatabaseUrls(fbs=connection_url(fbs_conn) if fbs_conn else defaults.fbs,
                        ledger=connection_url(ledger_conn) if ledger_conn else defaults.ledger)
    fbs_from = f"connection {FBS_CONN_ID}" if fbs_conn else "FBS_DEBITOR_FBS_URL"
    ledger_from = f"connection {LEDGER_CONN_ID}" if ledger_conn else "FBS_DEBITOR_LEDGER_URL"
    missing = [m for m in (settings.missing_database(urls.fbs, fbs_from),
                           settings.missing_database(urls.ledger, ledger_from)) if m]
    if missing:
        raise settings.SettingError(missing)
    log.info("databases: FBS from %s, ledger from %s", fbs_from, ledger_from)
    return urls


def serviceplatformen_config() -> serviceplatformen.Config:
    """The Connection ``serviceplatformen`` (Airflow also reads ``AIRFLOW_CONN_SERVICEPLATFORMEN``).
    A login or password on it is refused (never echoed): the client certificate authenticates."""
    conn = _lookup(serviceplatformen.CONN_ID)
    if conn is None:
        raise serviceplatformen.ConfigError(f"the Airflow Connection {serviceplatformen.CONN_ID!r} is not defined")
    return serviceplatformen.config_from_connection(conn.host, conn.port, conn.schema, conn.extra_dejson,
                                                    conn.conn_type, login=conn.login, password=conn.password)


def _access_fields(conn_id: str) -> access.ConnFields | None:
    conn = _lookup(conn_id)
    return access.ConnFields.of(conn) if conn is not None else None


def serviceplatformen_clients(fbs) -> access.Clients:
    """One client per municipality of FBS (``delivery.access``): the Connection
    ``serviceplatformen`` as the default, ``serviceplatformen_<cvr>`` over it per municipality
    (Airflow also reads them from ``AIRFLOW_CONN_SERVICEPLATFORMEN[_<CVR>]``)."""
    return access.clients_for(fbs, _access_fields)


def smtp_settings(conn_id: str = mailer.DEFAULT_CONN_ID) -> mailer.SmtpSettings:
    """The Connection ``conn_id``, else the environment (``FBS_DEBITOR_SMTP_*``)."""
    conn = _lookup(conn_id)
    if conn is None:
        log.info("no Airflow connection %r; SMTP settings from FBS_DEBITOR_SMTP_*", conn_id)
        try:
            return mailer.settings_from_env()
        except mailer.SmtpNotConfigured as exc:
            raise mailer.SmtpNotConfigured(f"no Airflow connection {conn_id!r} and {exc}") from None
    log.info("SMTP settings from Airflow connection %r", conn_id)
    return mailer.settings_from_connection(conn)


def fingerprint_key_password() -> str | None:
    """The Connection ``fbs_debitor_fingerprint``'s password (the fingerprint key) through Airflow's
    connection lookup, so any secrets backend may hold it; None when it is not defined. Never logged."""
    conn = _lookup(fingerprints.CONN_ID)
    return (conn.password or None) if conn is not None else None


# Inside Airflow (every task reaches its stores through this module), the key comes from Airflow's lookup.
fingerprints.use_connection_lookup(fingerprint_key_password)
