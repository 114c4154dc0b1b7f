"""The fingerprint key (U2) comes from where every worker sees it (issue 18): the variable
FBS_DEBITOR_FINGERPRINT_KEY, then the Airflow connection ``fbs_debitor_fingerprint`` (its password,
through Airflow's lookup inside Airflow, ``AIRFLOW_CONN_FBS_DEBITOR_FINGERPRINT`` outside), then a
key file only for the embedded SQLite ledger or when FBS_DEBITOR_FINGERPRINT_KEY_FILE is set. A
ledger on PostgreSQL without a key is refused, naming the connection; the key is never shown."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine

from fbs_debitor.claims import fingerprints

CONN_KEY = "key-from-the-connection-0123456789"
ENV_KEY = "key-from-the-environment-0123456789"


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    """No key anywhere: no variable, no connection, no explicit key file; var/ in the test's folder."""
    monkeypatch.delenv("FBS_DEBITOR_FINGERPRINT_KEY", raising=False)
    monkeypatch.delenv("FBS_DEBITOR_FINGERPRINT_KEY_FILE", raising=False)
    monkeypatch.delenv(fingerprints.ENV_CONN, raising=False)
    monkeypatch.setenv("FBS_DEBITOR_VAR", str(tmp_path / "var"))
    monkeypatch.setattr(fingerprints, "_connection_lookup", None)
    return tmp_path


def conn_json(password: str) -> str:
    return json.dumps({"conn_type": "generic", "password": password})


def server_ledger():
    """An engine for a ledger on a database server (never connected: only its URL is read)."""
    return create_engine("postgresql+psycopg://fbs@db.kommune.example:5432/ledger")


def test_issue18_U2_the_variable_comes_before_the_connection(no_key, monkeypatch):
    monkeypatch.setenv(fingerprints.ENV_CONN, conn_json(CONN_KEY))
    assert fingerprints.key(server_ledger()) == CONN_KEY.encode()
    monkeypatch.setenv("FBS_DEBITOR_FINGERPRINT_KEY", ENV_KEY)
    assert fingerprints.key(server_ledger()) == ENV_KEY.encode()


@pytest.mark.parametrize("form", ["json", "uri"])
def test_issue18_U2_the_connection_outside_airflow_in_json_or_uri_form(no_key, monkeypatch, form):
    password = CONN_KEY + "/:@ æ"       # characters a URI must encode
    raw = conn_json(password) if form == "json" else f"generic://:{quote(password, safe='')}@"
    monkeypatch.setenv(fingerprints.ENV_CONN, raw)
    assert fingerprints.key(server_ledger()) == password.encode("utf-8")
    assert not (no_key / "var" / "secrets").exists()          # no key file made up


def test_issue18_U2_inside_airflow_the_key_comes_through_airflows_connection_lookup(no_key, monkeypatch):
    """Any secrets backend: the lookup is Airflow's BaseHook.get_connection (here answered by a fake
    backend), not the environment."""
    from airflow.sdk import BaseHook, Connection

    from fbs_debitor.airflow import connections

    asked = []

    def backend(conn_id):
        asked.append(conn_id)
        return Connection(conn_id=conn_id, conn_type="generic", password=CONN_KEY)

    monkeypatch.setattr(BaseHook, "get_connection", staticmethod(backend))
    monkeypatch.setattr(fingerprints, "_connection_lookup", connections.fingerprint_key_password)
    assert fingerprints.key(server_ledger()) == CONN_KEY.encode()
    assert asked == ["fbs_debitor_fingerprint"]


def test_issue18_U2_importing_the_airflow_connections_hands_the_lookup_to_the_fingerprints(monkeypatch):
    import importlib

    from fbs_debitor.airflow import connections

    monkeypatch.setattr(fingerprints, "_connection_lookup", None)
    importlib.reload(connections)
    assert fingerprints._connection_lookup is connections.fingerprint_key_password


def test_issue18_U2_a_server_ledger_without_a_key_is_refused_naming_the_connection(no_key):
    with pytest.raises(fingerprints.KeyMissing, match="fbs_debitor_fingerprint"):
        fingerprints.key(server_ledger())
    assert not (no_key / "var" / "secrets").exists()


def test_issue18_U2_a_unix_socket_postgresql_ledger_is_no_embedded_demo(no_key):
    ledger = create_engine("postgresql+psycopg:///ledger?host=/var/run/postgresql")
    with pytest.raises(fingerprints.KeyMissing):
        fingerprints.key(ledger)


def test_issue18_U2_an_explicit_key_file_is_used_with_a_server_ledger(no_key, monkeypatch):
    path = no_key / "shared" / "fingerprint.key"
    path.parent.mkdir()
    path.write_text("key-from-the-shared-file-0123456789\n")
    monkeypatch.setenv("FBS_DEBITOR_FINGERPRINT_KEY_FILE", str(path))
    assert fingerprints.key(server_ledger()) == b"key-from-the-shared-file-0123456789"


def test_issue18_U2_a_short_connection_password_is_refused_without_showing_it(no_key, monkeypatch):
    monkeypatch.setenv(fingerprints.ENV_CONN, conn_json("short-pw-12"))
    with pytest.raises(fingerprints.KeyMissing) as exc:
        fingerprints.key(server_ledger())
    assert "fbs_debitor_fingerprint" in str(exc.value) and "short-pw-12" not in str(exc.value)


def test_issue18_U2_a_broken_connection_value_is_not_echoed(no_key, monkeypatch):
    monkeypatch.setenv(fingerprints.ENV_CONN, '{"password": "secret-value-0123456789"')
    with pytest.raises(fingerprints.KeyMissing) as exc:
        fingerprints.key(server_ledger())
    assert "secret-value" not in str(exc.value)


def test_issue18_U2_ledger_key_per_database(no_key, db_urls, caplog):
    """On both databases: the embedded SQLite ledger makes its key file (the demo needs no set-up),
    a PostgreSQL ledger without a key is refused before anything is recorded."""
    from fbs_debitor.core.stores import init_stores, open_stores

    stores = open_stores(db_urls)
    try:
        init_stores(stores)
        caplog.set_level(logging.DEBUG)
        if stores.ledger.url.host is None:                  # the SQLite ledger, a file here
            secret = fingerprints.verify_key(stores.ledger)
            key_file = no_key / "var" / "secrets" / "fingerprint.key"
            assert key_file.read_text().encode() == secret and (key_file.stat().st_mode & 0o777) == 0o600
            assert fingerprints.verify_key(stores.ledger) == secret
        else:
            with pytest.raises(fingerprints.KeyMissing, match="fbs_debitor_fingerprint"):
                fingerprints.verify_key(stores.ledger)
            assert not (no_key / "var" / "secrets").exists()
    finally:
        stores.dispose()


def test_issue18_U2_a_different_connection_key_is_a_key_mismatch_that_never_shows_the_key(no_key, db_urls,
                                                                                        monkeypatch, caplog):
    from fbs_debitor.core.stores import init_stores, open_stores

    stores = open_stores(db_urls)
    try:
        init_stores(stores)
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv(fingerprints.ENV_CONN, conn_json(CONN_KEY))
        assert fingerprints.verify_key(stores.ledger) == CONN_KEY.encode()     # records its check value
        other = "another-connection-key-9876543210"
        monkeypatch.setenv(fingerprints.ENV_CONN, conn_json(other))
        with pytest.raises(fingerprints.KeyMismatch, match="not the one") as exc:
            fingerprints.verify_key(stores.ledger)
        assert "fbs_debitor_fingerprint" in str(exc.value)
        shown = str(exc.value) + caplog.text
        assert CONN_KEY not in shown and other not in shown
    finally:
        stores.dispose()
