"""Keyed fingerprints of what the debtor system was told about a claim's parties (U2).

The ledger must notice when a sent claim's CPR or CVR changes, but must never hold a CPR number,
and a plain hash of a CPR number is no protection (there are only a few billion of them). So
identity fingerprints are HMAC-SHA256 under a key kept OUTSIDE the ledger:

* ``FBS_DEBITOR_FINGERPRINT_KEY`` (the key itself; in Airflow put it in the workers' environment
  or a secrets backend), else
* the file ``FBS_DEBITOR_FINGERPRINT_KEY_FILE``, default ``<var>/secrets/fingerprint.key``,
  created with 32 random bytes (mode 0600) on first use: the embedded demo needs no set-up.

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
import os
import secrets
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core.db import as_bool, as_date
from fbs_debitor.core.settings import var_dir

KEY_NAME = "fingerprint_key"


class KeyMismatch(RuntimeError):
    """The fingerprint key is not the one the ledger's prints were made with."""


def key_file() -> Path:
    return Path(os.environ.get("FBS_DEBITOR_FINGERPRINT_KEY_FILE") or var_dir() / "secrets" / "fingerprint.key")


def key() -> bytes:
    given = os.environ.get("FBS_DEBITOR_FINGERPRINT_KEY")
    if given:
        if len(given) < 16:
            raise ValueError("FBS_DEBITOR_FINGERPRINT_KEY must be at least 16 characters")
        return given.encode("utf-8")
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    value = path.read_text(encoding="utf-8").strip()
    if len(value) < 16:
        raise ValueError(f"the fingerprint key in {path} is too short")
    return value.encode("utf-8")


def keyed(*parts, secret: bytes | None = None) -> str:
    """HMAC-SHA256 (hex) of the parts, each written as text, None as empty, joined by a separator
    that cannot occur in them."""
    # (surrogatepass: a value FBS held as bytes that are not UTF-8 is read with lone surrogates;
    # it is printed as it is, never a crash, and valid text encodes as plain UTF-8)
    message = "\x1f".join("" if p is None else str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hmac.new(secret or key(), message, hashlib.sha256).hexdigest()


def identity_print(ident_kind: str, ident_number: str, resp_kind: str, resp_number: str,
                   secret: bytes | None = None) -> str:
    """What the debtor system holds as the account's parties: identification and responsible."""
    return keyed("identity", ident_kind, ident_number.strip(), resp_kind, resp_number.strip(), secret=secret)


def check_value(secret: bytes) -> str:
    return hmac.new(secret, b"fbs-debitor fingerprint key check", hashlib.sha256).hexdigest()


def verify_key(ledger: Engine) -> bytes:
    """The key, after checking it is the one the ledger's prints were made with (the first use
    records its check value)."""
    secret = key()
    want = check_value(secret)
    with ledger.begin() as conn:
        found = conn.execute(text("SELECT check_value FROM secret_check WHERE name = :n"), {"n": KEY_NAME}).scalar()
        if found is None:
            conn.execute(text("INSERT INTO secret_check (name, check_value, created_at) VALUES (:n, :v, :t)"),
                         {"n": KEY_NAME, "v": want,
                          "t": dt.datetime.now().replace(microsecond=0)})
        elif found.strip() != want:
            raise KeyMismatch("the fingerprint key (FBS_DEBITOR_FINGERPRINT_KEY or its key file) is not the one the "
                              "ledger's claims were fingerprinted with; nothing is compared or sent as a change. "
                              "Restore the key, or rotate it as described in docs/deployment.md")
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
