"""Keyed fingerprints of what the debtor system was told about a claim's parties (U2).

The ledger must notice when a sent claim's CPR or CVR changes, but must never hold a CPR number,
and a plain hash of a CPR number is no protection (there are only a few billion of them). So
identity fingerprints are HMAC-SHA256 under a key kept OUTSIDE the ledger. Every worker of a
deployment must use the same key, so it comes from where every worker sees it, in this order:

1. ``FBS_DEBITOR_FINGERPRINT_KEY`` (the key itself, in the workers' environment);
2. the Airflow connection ``fbs_debitor_fingerprint``, its password (16 to 1024 characters): inside
   a task through Airflow's connection lookup (``fbs_debitor.airflow.connections`` hands it to
   ``use_connection_lookup``), so any secrets backend holds it; outside Airflow (the CLI) from
   ``AIRFLOW_CONN_FBS_DEBITOR_FINGERPRINT`` (Airflow's JSON or URI form);
3. a key file, only for the embedded demo (a ledger that is a file on this machine, SQLite) or
   when ``FBS_DEBITOR_FINGERPRINT_KEY_FILE`` is set explicitly: that file, default
   ``<var>/secrets/fingerprint.key``, created with 32 random bytes (mode 0600) on first use, so
   the demo needs no set-up.

A ledger on a database server (PostgreSQL) with none of these is refused (``KeyMissing``, naming the
connection to create): a key file made up on one worker would differ from another worker's. The
key is never logged or shown, nor is the connection's raw value.

The ledger keeps a check value of the key (``secret_check``). Comparing prints made under
another key would make every claim look changed and send thousands of identifier changes; so a
different key stops the change detection with a clear error instead (``KeyMismatch``). Rotating
the key means clearing ``claim.source_print``/``identity_print`` and the check value together,
after which the next run re-derives them as a new baseline and sends nothing (see docs/deployment.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core import settings
from fbs_debitor.core.db import as_bool, as_date, is_embedded

KEY_NAME = "fingerprint_key"
CONN_ID = "fbs_debitor_fingerprint"
ENV_CONN = "AIRFLOW_CONN_FBS_DEBITOR_FINGERPRINT"
KEY_FILE_SETTING = "FBS_DEBITOR_FINGERPRINT_KEY_FILE"
MIN_LENGTH, MAX_LENGTH = 16, 1024


class KeyMismatch(RuntimeError):
    """The fingerprint key is not the one the ledger's prints were made with."""


class KeyMissing(RuntimeError):
    """No fingerprint key where every worker sees it (a ledger on a database server)."""


# The connection's password as Airflow looks it up (set inside Airflow by fbs_debitor.airflow.connections);
# None: read AIRFLOW_CONN_FBS_DEBITOR_FINGERPRINT from the environment.
_connection_lookup: Callable[[], str | None] | None = None


def use_connection_lookup(lookup: Callable[[], str | None] | None) -> None:
    """Read the connection ``fbs_debitor_fingerprint``'s password through ``lookup`` (Airflow's
    connection lookup, any secrets backend) instead of the environment; None: the environment."""
    global _connection_lookup
    _connection_lookup = lookup


def password_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The password of ``AIRFLOW_CONN_FBS_DEBITOR_FINGERPRINT``: Airflow's JSON form
    (``{"conn_type": "generic", "password": "..."}``) or URI form (``generic://:<password>@``,
    the password percent-encoded). None when it is not set; never echoes the value."""
    raw = (os.environ if environ is None else environ).get(ENV_CONN, "").strip()
    if not raw:
        return None
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError:
            raise KeyMissing(f"{ENV_CONN} is not valid JSON (the value is not shown)") from None
        password = data.get("password") if isinstance(data, dict) else None
        return str(password) if password else None
    try:
        password = urlsplit(raw).password
    except ValueError:
        raise KeyMissing(f"{ENV_CONN} is not a valid connection URI (the value is not shown)") from None
    return unquote(password) if password else None


def _from_connection() -> str | None:
    if _connection_lookup is not None:
        return _connection_lookup()
    return password_from_env()


def key_file() -> Path:
    return settings.fingerprint_key_file()


def key_source(ledger: Engine | None = None) -> str:
    """Where the key comes from (for messages; never the key): the variable, the connection, or the file."""
    if settings.fingerprint_key():
        return "FBS_DEBITOR_FINGERPRINT_KEY"
    if _from_connection():
        return f"the Airflow connection {CONN_ID!r}"
    return f"the key file {key_file()}"


def key(ledger: Engine | None = None) -> bytes:
    """The key, in the order of the module's doc. ``ledger``: the ledger it is for (default: the
    one the settings name), which decides whether a key file may be used."""
    given = settings.fingerprint_key()          # 16-1024 characters, checked by the setting
    if given:
        return given.encode("utf-8")
    from_conn = _from_connection()
    if from_conn:
        if not MIN_LENGTH <= len(from_conn) <= MAX_LENGTH or any(ord(c) < 32 for c in from_conn):
            raise KeyMissing(f"the password of the Airflow connection {CONN_ID!r} is not a usable fingerprint key: "
                             f"allowed are {MIN_LENGTH} to {MAX_LENGTH} characters, no control characters "
                             f"(the value is not shown)")
        return from_conn.encode("utf-8")
    if not (os.environ.get(KEY_FILE_SETTING, "").strip() or is_embedded(ledger.url if ledger is not None else settings.database_urls().ledger)):
        raise KeyMissing(
            f"no fingerprint key: the ledger is on a database server, so every worker must read the same key. "
            f"Create the Airflow connection {CONN_ID!r} (conn_type generic, the key as its password, {MIN_LENGTH} "
            f"to {MAX_LENGTH} characters; a secrets backend may hold it; outside Airflow {ENV_CONN}), or set "
            f"FBS_DEBITOR_FINGERPRINT_KEY, or {KEY_FILE_SETTING} to a key file every worker sees")
    return _key_from_file(key_file())


def _key_from_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:             # another process made it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    value = path.read_text(encoding="utf-8").strip()
    if len(value) < MIN_LENGTH:
        raise ValueError(f"the fingerprint key in {path} is too short")
    return value.encode("utf-8")


def keyed(*parts, secret: bytes | None = None) -> str:
    """HMAC-SHA256 (hex) of the parts, each written as text, None as empty, joined by a separator
    that cannot occur in them."""
    # (surrogatepass: a value FBS held as bytes that are not UTF-8 is read with lone surrogates;
    # it is printed as it is, never a crash, and valid text encodes as plain UTF-8)
    message = "\x1f".join(["" if p is None else str(p) for p in parts]).encode("utf-8", "surrogatepass")
    # (hmac.digest: the one-shot HMAC in C, the same value as hmac.new(...).hexdigest())
    return hmac.digest(secret or key(), message, "sha256").hex()


def identity_print(ident_kind: str, ident_number: str, resp_kind: str, resp_number: str,
                   secret: bytes | None = None) -> str:
    """What the debtor system holds as the account's parties: identification and responsible."""
    return keyed("identity", ident_kind, ident_number.strip(), resp_kind, resp_number.strip(), secret=secret)


def check_value(secret: bytes) -> str:
    return hmac.new(secret, b"fbs-debitor fingerprint key check", hashlib.sha256).hexdigest()


def verify_key(ledger: Engine) -> bytes:
    """The key, after checking it is the one the ledger's prints were made with (the first use
    records its check value)."""
    secret = key(ledger)
    want = check_value(secret)
    with ledger.begin() as conn:
        found = conn.execute(text("SELECT check_value FROM secret_check WHERE name = :n"), {"n": KEY_NAME}).scalar()
        if found is None:
            conn.execute(text("INSERT INTO secret_check (name, check_value, created_at) VALUES (:n, :v, :t)"),
                         {"n": KEY_NAME, "v": want,
                          "t": dt.datetime.now().replace(microsecond=0)})
        elif found.strip() != want:
            raise KeyMismatch(f"the fingerprint key (from {key_source(ledger)}) is not the one the ledger's claims "
                              f"were fingerprinted with; nothing is compared or sent as a change. Restore the key "
                              f"(FBS_DEBITOR_FINGERPRINT_KEY, the Airflow connection {CONN_ID!r}, or the key file), "
                              f"or rotate it as described in docs/deployment.md")
    return secret


def source_print(row, secret: bytes) -> str:
    """Keyed print of the FBS fields a claim's parties are built from (``claim_rows.sql`` and
    ``claim_state.sql`` name them alike): when it is unchanged, so are the parties."""
    return keyed(
        "source", row.agency_id, row.b_kind, row.d_patron_id, row.d_kind, _s(row.d_cpr), _s(row.d_replacement_cpr),
        as_date(row.d_birth_date), _s(row.d_cvr), row.g_patron_id, _s(row.g_cpr), _s(row.g_replacement_cpr),
        as_date(row.g_birth_date), as_bool(row.replacement_cpr_enabled), row.age_limit, secret=secret)


def _s(value) -> str | None:
    return value.strip() if isinstance(value, str) else value
