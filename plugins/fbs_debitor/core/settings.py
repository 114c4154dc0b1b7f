"""Where things are and how they are reached, read from the environment with embedded defaults,
each with its allowed range.

Nothing here imports Airflow. Inside Airflow the DAG tasks resolve the two databases from the
Connections ``fbs_db`` and ``debitor_ledger`` when they exist (see ``fbs_debitor.airflow.connections``) and
fall back to these settings, so the demo needs no Airflow configuration at all.

Every ``FBS_DEBITOR_*`` variable the package reads is declared once in ``SETTINGS``: its default,
its allowed range and what it means. ``validate()`` checks them all and returns every problem;
``check()`` raises ``SettingError`` with them, and the command lines call it before any work (a
bad setting stops the command before anything is read or written, exit code 3). Each accessor
below (``chunk_size()``, ``batch_size_default()``, ...) parses its variable the same way, so code
that reads a setting without ``check()`` (a DAG task) fails with the same message, never with a
bare ``int()`` error or a silently wrong value. A message names the variable, the value (never a
secret's) and the range. An empty variable counts as not set.

``python -m fbs_debitor settings`` prints each setting, its value and its range.

| variable                          | default                       | allowed                                       |
|-----------------------------------|-------------------------------|-----------------------------------------------|
| FBS_DEBITOR_HOME                  | the repository root           | absolute folder holding include/sql, include/xsd |
| FBS_DEBITOR_VAR                   | ``<home>/var``                | absolute path (a folder when it exists)       |
| FBS_DEBITOR_FBS_URL               | ``sqlite:///<var>/fbs.sqlite``| a SQLAlchemy URL; a database file must exist  |
| FBS_DEBITOR_LEDGER_URL            | ``sqlite:///<var>/ledger.sqlite`` | as above                                  |
| FBS_DEBITOR_CHUNK_SIZE            | 20000                         | 100-500000 rows per streamed page             |
| FBS_DEBITOR_AGE_LIMIT_RANGE       | 15-21                         | LOW-HIGH, 12 <= LOW <= HIGH <= 25 (C3)        |
| FBS_DEBITOR_BATCH_SIZE            | 500                           | 1-5000 claims per message                     |
| ... (the rest: ``SETTINGS``; docs/operations.md has the whole table)                                      |

A database "file must exist": a URL that names a local file (no host; the database part a path,
as SQLite URLs are) is refused when the file is missing, unless the command creates its
databases (``init``; the sandbox's ``generate``). A server database is never created by a URL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

HOME = Path(os.environ.get("FBS_DEBITOR_HOME") or Path(__file__).resolve().parents[3])
SQL_DIR = HOME / "include" / "sql"
XSD_DIR = HOME / "include" / "xsd"

FBS_SCHEMA = "fbs"
LEDGER_SCHEMA = "ledger"
TIMEZONE = "Europe/Copenhagen"

PREFIX = "FBS_DEBITOR_"
EXIT_CODE = 3            # a command refused for a setting (or a missing database) ends with this
MAX_BATCH_SIZE = 5000
DEBTOR_VENDORS = ("KMD_OPUS", "PRISME", "EG")
EG_MINUTES = (5, 6, 10, 12, 15, 20, 30, 60)      # divisors of 60: the EG rhythm must fit the hour
STORES = ("fbs", "ledger")
# Variables with the prefix that the package does not read: the run script's, the tests', Compose's.
NOT_SETTINGS = frozenset({"FBS_DEBITOR_DEMO_PATRONS", "FBS_DEBITOR_DEMO_SEED", "FBS_DEBITOR_DEMO_CUT_OFF",
                          "FBS_DEBITOR_TEST_PG_URL", "FBS_DEBITOR_IMAGE"})


class SettingError(ValueError):
    """One or more settings outside their allowed range; ``problems`` holds one line each, naming
    the variable, the value (never a secret's) and the range."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class _Refused(ValueError):
    """Raised by a parser: the value is not allowed (the message, when given, says why)."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str                              # as documented
    allowed: str                              # the allowed range, as shown in errors and docs
    meaning: str
    parse: Callable[[str], object]            # the text of a set variable -> its value, or _Refused
    fallback: Callable[[Mapping[str, str]], object] | None = None   # the value when not set
    secret: bool = False

    def shown(self, raw: str) -> str:
        if self.secret:
            return f"{self.name} (value not shown)"
        return f"{self.name}={raw[:80]!r}" + ("..." if len(raw) > 80 else "")


# --- parsers ------------------------------------------------------------------------------------

def _whole(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _Refused("not a whole number") from None
        if not low <= value <= high:
            raise _Refused()
        return value
    return parse


def _number(low: float, high: float, zero_allowed: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Refused("not a number") from None
        if not math.isfinite(value) or not (low <= value <= high or (zero_allowed and value == 0)):
            raise _Refused()
        return value
    return parse


def _choice(options: Iterable) -> Callable[[str], object]:
    by_text = {str(o): o for o in options}

    def parse(raw: str):
        if raw.strip() not in by_text:
            raise _Refused()
        return by_text[raw.strip()]
    return parse


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _Refused()


def _text(low: int, high: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not low <= len(raw) <= high or any(ord(c) < 32 for c in raw):
            raise _Refused()
        return raw
    return parse


def _absolute(raw: str) -> Path:
    path = Path(raw.strip())
    if not path.is_absolute():
        raise _Refused("not an absolute path")
    return path


def _folder(raw: str) -> Path:
    path = _absolute(raw)
    if path.exists() and not path.is_dir():
        raise _Refused("exists and is not a folder")
    return path


def _file(raw: str) -> Path:
    path = _absolute(raw)
    if path.exists() and not path.is_file():
        raise _Refused("exists and is not a file")
    return path


def _home(raw: str) -> Path:
    path = _absolute(raw)
    if not ((path / "include" / "sql").is_dir() and (path / "include" / "xsd").is_dir()):
        raise _Refused("holds no include/sql and include/xsd")
    return path


def _storage_url(raw: str) -> str:
    if raw != raw.strip() or len(raw) > 1000 or not re.match(r"[a-z][a-z0-9+.-]{0,15}://.", raw):
        raise _Refused("not an fsspec URL")
    if raw.startswith("file://") and not raw.startswith("file:///"):
        raise _Refused("a file:// URL needs an absolute path (file:///...)")
    return raw.rstrip("/")


def _conn_id(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,250}", raw):
        raise _Refused()
    return raw


def _url(raw: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise _Refused("not a SQLAlchemy URL") from None
    return raw.strip()


def _age_range(raw: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,3})\s*-\s*(\d{1,3})\s*", raw)
    if not match:
        raise _Refused("not LOW-HIGH")
    low, high = int(match.group(1)), int(match.group(2))
    if not 12 <= low <= high <= 25:
        raise _Refused()
    return low, high


def _vendors(raw: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not chosen or set(chosen) - set(DEBTOR_VENDORS) or len(set(chosen)) != len(chosen):
        raise _Refused()
    return chosen


def _inbox(raw: str) -> str:
    where = raw.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", where, re.IGNORECASE) and not where.lower().startswith("file://"):
        raise _Refused("only a folder (a path or file://) in this build; mount an SFTP folder")
    _absolute(where[len("file://"):] if where.lower().startswith("file://") else where)
    return where


def _payment_inbox(raw: str) -> str:
    """The payments inbox: a local folder as ``_inbox``, or any fsspec URL but sftp:// (mount that)."""
    where = raw.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", where, re.IGNORECASE) and not where.lower().startswith("file://"):
        if where.lower().startswith("sftp://"):
            raise _Refused("sftp:// is not served in this build; mount the SFTP folder")
        return _storage_url(where)
    return _inbox(where)


def _payment_folder(raw: str) -> Path:
    """The payments archive or quarantine: a local folder as ``_folder``, or an fsspec URL (kept as
    a path of its text: ``payment_folders`` only compares the three; ``payments.inbox`` reads the
    URL itself)."""
    where = raw.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", where, re.IGNORECASE):
        if where.lower().startswith("file://"):
            return _folder(where[len("file://"):])
        _payment_inbox(where)
        return Path(where)
    return _folder(where)


def _payment_inbox_default(env: Mapping[str, str]) -> str:
    """``payments/inbox`` under FBS_DEBITOR_STORAGE_URL; a plain path on a local root."""
    from urllib.parse import unquote

    root = value("FBS_DEBITOR_STORAGE_URL", env)
    if root.lower().startswith("file://"):
        return str(Path(unquote(root[len("file://"):])) / "payments" / "inbox")
    return f"{root}/payments/inbox"


def _address(raw: str) -> str:
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", raw.strip()):
        raise _Refused()
    return raw.strip()


def _addresses(raw: str) -> tuple[str, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if not parts or len(parts) > 20 or any(not p for p in parts):
        raise _Refused("1 to 20 addresses, comma-separated")
    out = tuple(dict.fromkeys(_address(p) for p in parts))
    return out


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _dotted_paths(raw: str) -> tuple[str, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > 10 or any(not _DOTTED.fullmatch(p) for p in parts):
        raise _Refused("1 to 10 dotted paths module.name, comma-separated")
    return tuple(dict.fromkeys(parts))


# --- the settings -------------------------------------------------------------------------------

def _var(env: Mapping[str, str]) -> Path:
    return value("FBS_DEBITOR_VAR", env)


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("FBS_DEBITOR_HOME", "the repository root", "an absolute path to a folder holding include/sql and "
            "include/xsd", "where include/ is found", _home, lambda env: HOME),
    Setting("FBS_DEBITOR_VAR", "<home>/var", "an absolute path (a folder when it exists)",
            "embedded databases, reports, outputs", _folder, lambda env: value("FBS_DEBITOR_HOME", env) / "var"),
    Setting("FBS_DEBITOR_STORAGE_URL", "file://<var>", "an fsspec URL: file:///absolute/path, or a store's "
            "scheme://bucket/prefix (s3://, gs://, ...; its filesystem package installed); at most 1000 characters",
            "the shared files every worker sees: payments inbox/archive/quarantine, reports, dry runs, GX docs",
            _storage_url, lambda env: _var(env).resolve().as_uri()),
    Setting("FBS_DEBITOR_STORAGE_CONN_ID", "none", "an Airflow connection id (letters, digits, _ . -; 1-250)",
            "the connection holding the store's credentials (e.g. aws_default); none for file://",
            _conn_id, lambda env: None),
    Setting("FBS_DEBITOR_FBS_URL", "sqlite:///<var>/fbs.sqlite", "a SQLAlchemy URL; a database file must exist "
            "(created only by init and the sandbox's generate)", "the FBS extract (schema fbs)", _url,
            lambda env: f"sqlite:///{_var(env) / 'fbs.sqlite'}"),
    Setting("FBS_DEBITOR_LEDGER_URL", "sqlite:///<var>/ledger.sqlite", "a SQLAlchemy URL; a database file must "
            "exist (created only by init and the sandbox's generate)", "the ledger (schema ledger)", _url,
            lambda env: f"sqlite:///{_var(env) / 'ledger.sqlite'}"),
    Setting("FBS_DEBITOR_CHUNK_SIZE", "20000", "a whole number from 100 to 500000", "rows per streamed page",
            _whole(100, 500_000), lambda env: 20_000),
    Setting("FBS_DEBITOR_AGE_LIMIT_RANGE", "15-21", "LOW-HIGH, whole numbers with 12 <= LOW <= HIGH <= 25",
            "sane agency age limits; outside, the agency is held (C3)", _age_range, lambda env: (15, 21)),
    Setting("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS", "30", "a whole number from 0 to 365",
            "fee due date = overdue date + this (F2)", _whole(0, 365), lambda env: 30),
    Setting("FBS_DEBITOR_BATCH_SIZE", "500", f"a whole number from 1 to {MAX_BATCH_SIZE}",
            "claims (or changes) per message", _whole(1, MAX_BATCH_SIZE), lambda env: 500),
    Setting("FBS_DEBITOR_CHANGE_OVERLAP_MINUTES", "15", "a whole number from 0 to 1440",
            "the longest FBS may take to commit a change after marking it (updated_at): the hourly run's mark "
            "stays this far behind FBS's clock; the nightly sweep catches a later one", _whole(0, 1440),
            lambda env: 15),
    Setting("FBS_DEBITOR_CHANGE_DELTA_MAX", "50000", "a whole number from 1000 to 1000000",
            "changed liabilities above which a municipality's hourly run looks at all of its liabilities "
            "instead (cheaper than a list that long)", _whole(1000, 1_000_000), lambda env: 50_000),
    Setting("FBS_DEBITOR_SWEEP_HOUR", "2", "a whole number from 0 to 23 (Europe/Copenhagen)",
            "the hour debitor_sweep runs the full nightly sweep (off-peak)", _whole(0, 23), lambda env: 2),
    Setting("FBS_DEBITOR_DELAYED_TASK_ATTEMPTS", "24", "a whole number from 1 to 1000",
            "attempts without an answer before a delivery_delayed staff task", _whole(1, 1000), lambda env: 24),
    Setting("FBS_DEBITOR_FINGERPRINT_KEY", "none (the connection fbs_debitor_fingerprint)",
            "16 to 1024 characters, no control characters", "key of the parties' fingerprints (U2); before the "
            "Airflow connection fbs_debitor_fingerprint (its password) and the key file", _text(16, 1024),
            lambda env: None, secret=True),
    Setting("FBS_DEBITOR_FINGERPRINT_KEY_FILE", "<var>/secrets/fingerprint.key (embedded SQLite ledger only)",
            "an absolute path (a file when it exists)", "the key file, used when neither the key nor the connection "
            "fbs_debitor_fingerprint is set: always when this is set, else only with a ledger on SQLite (created "
            "on first use)", _file, lambda env: _var(env) / "secrets" / "fingerprint.key"),
    Setting("FBS_DEBITOR_PAYMENT_INBOX", "<storage>/payments/inbox (<var>/payments/inbox on the default root)",
            "an absolute folder path, a file:// URL, or an fsspec URL of a store every worker sees (s3://bucket/"
            "prefix, ...; not sftp://: mount it)", "where the debtor system's payment files arrive", _payment_inbox,
            _payment_inbox_default),
    Setting("FBS_DEBITOR_PAYMENT_ARCHIVE", "archive/ next to the inbox", "an absolute folder path or an fsspec URL "
            "(as the inbox), apart from the inbox and the quarantine; unset: the inbox must be a folder named inbox",
            "applied or recognised files", _payment_folder, lambda env: None),
    Setting("FBS_DEBITOR_PAYMENT_QUARANTINE", "quarantine/ next to the inbox", "an absolute folder path or an "
            "fsspec URL (as the inbox), apart from the inbox and the archive; unset: the inbox must be a folder "
            "named inbox", "refused files, each with a .reason.txt", _payment_folder, lambda env: None),
    Setting("FBS_DEBITOR_PAYMENT_VENDORS", ",".join(DEBTOR_VENDORS), f"a comma list of {', '.join(DEBTOR_VENDORS)} "
            "(at least one, each once)", "vendors in use: debitor_payments is scheduled from their rhythms",
            _vendors, lambda env: DEBTOR_VENDORS),
    Setting("FBS_DEBITOR_PRISME_PAYMENT_RHYTHM", "hourly", "hourly or nightly", "Prisme's delivery (P1)",
            _choice(("hourly", "nightly")), lambda env: "hourly"),
    Setting("FBS_DEBITOR_EG_PAYMENT_MINUTES", "15", f"one of {', '.join(map(str, EG_MINUTES))} (divides 60)",
            "EG's delivery interval (P1)", _choice(EG_MINUTES), lambda env: 15),
    Setting("FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES", str(50 * 1024 * 1024), "a whole number from 1024 to 1073741824",
            "larger payment files are quarantined unread", _whole(1024, 1024 ** 3), lambda env: 50 * 1024 * 1024),
    Setting("FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND", "200", "0 (no ceiling) or a number from 1 to 100000",
            "the backfill's ceiling on claims sent per second", _number(1, 100_000, zero_allowed=True),
            lambda env: 200.0),
    Setting("FBS_DEBITOR_SMTP_HOST", "none", "a host name (1-253 characters)", "SMTP server for report --email "
            "and, without smtp_default, the DAG", _text(1, 253), lambda env: None),
    Setting("FBS_DEBITOR_SMTP_PORT", "25", "a whole number from 1 to 65535", "SMTP port", _whole(1, 65535),
            lambda env: 25),
    Setting("FBS_DEBITOR_SMTP_FROM", "the user, if it is an address", "an email address", "sender address",
            _address, lambda env: None),
    Setting("FBS_DEBITOR_SMTP_USER", "none (no login)", "1 to 256 characters", "SMTP login", _text(1, 256),
            lambda env: None, secret=True),
    Setting("FBS_DEBITOR_SMTP_PASSWORD", "none", "1 to 1024 characters", "SMTP password", _text(1, 1024),
            lambda env: None, secret=True),
    Setting("FBS_DEBITOR_SMTP_STARTTLS", "1 with a user, else 0", "0/1 (or true/false, yes/no, on/off)",
            "STARTTLS before login", _flag, lambda env: None),
    Setting("FBS_DEBITOR_SMTP_SSL", "0", "0/1 (or true/false, yes/no, on/off)", "implicit TLS (SMTP over SSL)",
            _flag, lambda env: False),
    Setting("FBS_DEBITOR_ALERT_EMAIL", "none (alerts and digest only logged)", "1 to 20 email addresses, "
            "comma-separated", "the integration team: run-failure and deadline alerts, the daily digest",
            _addresses, lambda env: ()),
    Setting("FBS_DEBITOR_ALERT_NOTIFIERS", "none", "1 to 10 dotted paths module.name, comma-separated, each an "
            "importable Airflow notifier (instance, or class taking no arguments) or function of the context",
            "further notifiers called with each alert, besides the email", _dotted_paths, lambda env: ()),
    Setting("FBS_DEBITOR_SMTP_TIMEOUT", "30", "a number of seconds from 1 to 600", "seconds per SMTP connection",
            _number(1, 600), lambda env: 30.0),
)}


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def problem(setting: Setting, raw: str, reason: str = "") -> str:
    return f"{setting.shown(raw)}{f' ({reason})' if reason else ''}: allowed is {setting.allowed}"


def value(name: str, environ: Mapping[str, str] | None = None):
    """The setting's value: parsed from the environment, or its default. Raises SettingError."""
    env = _environ(environ)
    setting = SETTINGS[name]
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return setting.fallback(env) if setting.fallback else None
    try:
        return setting.parse(raw)
    except _Refused as exc:
        raise SettingError([problem(setting, raw, str(exc))]) from None


# --- accessors (every module reads its setting through one of these) ------------------------------

def var_dir() -> Path:
    return value("FBS_DEBITOR_VAR")


def storage_url() -> str:
    return value("FBS_DEBITOR_STORAGE_URL")


def storage_conn_id() -> str | None:
    return value("FBS_DEBITOR_STORAGE_CONN_ID")


@dataclass(frozen=True)
class DatabaseUrls:
    fbs: str
    ledger: str


def database_urls() -> DatabaseUrls:
    return DatabaseUrls(fbs=value("FBS_DEBITOR_FBS_URL"), ledger=value("FBS_DEBITOR_LEDGER_URL"))


def chunk_size() -> int:
    return value("FBS_DEBITOR_CHUNK_SIZE")


def age_limit_range() -> tuple[int, int]:
    """Agency age limits outside this range are misconfigurations (C3) that hold the agency."""
    return value("FBS_DEBITOR_AGE_LIMIT_RANGE")


def batch_size_default() -> int:
    return value("FBS_DEBITOR_BATCH_SIZE")


def fee_payment_term_days() -> int:
    return value("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS")


@dataclass(frozen=True)
class BuildSettings:
    """The settings the eligibility and build hot path needs, read and checked ONCE at the start of
    a run (``build_settings()``) and passed down, never looked up per row. A setting changed in the
    environment takes effect in the next run, which reads a new snapshot."""

    age_limit_range: tuple[int, int]     # FBS_DEBITOR_AGE_LIMIT_RANGE (C3)
    fee_payment_term_days: int           # FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS (F2)


def build_settings(environ: Mapping[str, str] | None = None) -> BuildSettings:
    """A snapshot of the hot path's settings, each parsed and checked against its range as its
    accessor does (SettingError naming the variable, the value and the range)."""
    return BuildSettings(age_limit_range=value("FBS_DEBITOR_AGE_LIMIT_RANGE", environ),
                         fee_payment_term_days=value("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS", environ))


def change_overlap_minutes() -> int:
    return value("FBS_DEBITOR_CHANGE_OVERLAP_MINUTES")


def change_delta_max() -> int:
    return value("FBS_DEBITOR_CHANGE_DELTA_MAX")


def sweep_hour() -> int:
    return value("FBS_DEBITOR_SWEEP_HOUR")


def delayed_task_attempts() -> int:
    return value("FBS_DEBITOR_DELAYED_TASK_ATTEMPTS")


def fingerprint_key() -> str | None:
    return value("FBS_DEBITOR_FINGERPRINT_KEY")


def fingerprint_key_file() -> Path:
    return value("FBS_DEBITOR_FINGERPRINT_KEY_FILE")


def payment_vendors() -> tuple[str, ...]:
    return value("FBS_DEBITOR_PAYMENT_VENDORS")


def prisme_payment_rhythm() -> str:
    return value("FBS_DEBITOR_PRISME_PAYMENT_RHYTHM")


def eg_payment_minutes() -> int:
    return value("FBS_DEBITOR_EG_PAYMENT_MINUTES")


def payment_file_max_bytes() -> int:
    return value("FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES")


def alert_email() -> tuple[str, ...]:
    return value("FBS_DEBITOR_ALERT_EMAIL")


def alert_notifiers() -> tuple[str, ...]:
    return value("FBS_DEBITOR_ALERT_NOTIFIERS")


def backfill_max_claims_per_second() -> float:
    """0 means no ceiling."""
    return value("FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND")


@dataclass(frozen=True)
class PaymentFolders:
    inbox: str            # as given (a path or file:// URL)
    path: Path            # the inbox folder
    archive: Path
    quarantine: Path


def payment_folders(inbox: str | Path | None = None, environ: Mapping[str, str] | None = None,
                    inbox_name: str = "FBS_DEBITOR_PAYMENT_INBOX") -> PaymentFolders:
    """The inbox (``inbox``, e.g. the CLI's ``--inbox``, named ``inbox_name`` in errors; else the
    setting) and the two folders files are moved into. Files are only ever moved into the
    project's own layout: the archive and quarantine given, or ``archive/`` and ``quarantine/``
    next to an inbox folder named ``inbox``; the three apart, none inside another."""
    env = _environ(environ)
    if inbox is None or str(inbox).strip() == "":
        where = value("FBS_DEBITOR_PAYMENT_INBOX", env)
    else:
        try:
            where = _inbox(str(inbox))
        except _Refused as exc:
            raise SettingError([f"{inbox_name}={str(inbox)[:80]!r} ({exc}): allowed is "
                                f"{SETTINGS['FBS_DEBITOR_PAYMENT_INBOX'].allowed}"]) from None
    path = Path(where[len("file://"):] if where.lower().startswith("file://") else where)
    archive = value("FBS_DEBITOR_PAYMENT_ARCHIVE", env)
    quarantine = value("FBS_DEBITOR_PAYMENT_QUARANTINE", env)
    problems = []
    if (archive is None or quarantine is None) and path.name != "inbox":
        problems.append(f"{inbox_name}={where[:80]!r}: without FBS_DEBITOR_PAYMENT_ARCHIVE and "
                        "FBS_DEBITOR_PAYMENT_QUARANTINE the inbox must be a folder named 'inbox' (files are moved "
                        "into archive/ and quarantine/ next to it); set both for another layout")
    archive = archive or path.parent / "archive"
    quarantine = quarantine or path.parent / "quarantine"
    folders = {inbox_name: path, "FBS_DEBITOR_PAYMENT_ARCHIVE": archive, "FBS_DEBITOR_PAYMENT_QUARANTINE": quarantine}
    if path.exists() and not path.is_dir():
        problems.append(f"{inbox_name}={where[:80]!r} exists and is not a folder")
    names = list(folders)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = folders[a].resolve(), folders[b].resolve()
            if pa == pb or pa in pb.parents or pb in pa.parents:
                problems.append(f"{a} ({folders[a]}) and {b} ({folders[b]}) must be apart: the same folder, or one "
                                "inside the other")
    if problems:
        raise SettingError(problems)
    return PaymentFolders(where, path, archive, quarantine)


# --- databases ----------------------------------------------------------------------------------

def database_file(url: str) -> Path | None:
    """The local file a database URL names (no host, and a path as its database part, as SQLite
    URLs are), or None for a server database or an in-memory one."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    db = u.database or ""
    if u.host or not db or db.startswith((":memory:", "file:")) or not (os.path.isabs(db) or os.sep in db):
        return None
    return Path(db)


def safe(url: str) -> str:
    """A URL for messages: its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is not shown at all
        return "(a URL that does not parse)"


CREATED_BY = "python -m fbs_debitor init, or the sandbox's generate"


def missing_database(url: str, name: str, created_by: str = CREATED_BY) -> str | None:
    """A problem line when ``url`` names a database file that does not exist (``name`` says whose
    URL it is: a variable or an option; ``created_by`` what creates it), else None. Nothing is
    created."""
    path = database_file(url)
    if path is None or path.is_file():
        return None
    return (f"{name}: the database file {path} does not exist ({safe(url)}); it is created only when asked "
            f"for ({created_by}): check the path")


# --- validation ---------------------------------------------------------------------------------

def validate(environ: Mapping[str, str] | None = None, stores: Iterable[str] = STORES,
             create: Iterable[str] = ()) -> list[str]:
    """Every problem with the settings, one line each (empty: all within range). ``stores``: the
    databases (``fbs``, ``ledger``) the command uses, which must exist unless in ``create``."""
    env = _environ(environ)
    problems: list[str] = []
    for name, setting in SETTINGS.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            setting.parse(raw)
        except _Refused as exc:
            problems.append(problem(setting, raw, str(exc)))
    if problems:
        return problems            # the checks below build on the single values
    try:
        payment_folders(environ=env)
    except SettingError as exc:
        problems += exc.problems
    for store in set(stores) - set(create):
        name = f"FBS_DEBITOR_{store.upper()}_URL"
        missing = missing_database(value(name, env), name)
        if missing:
            problems.append(missing)
    return problems


def check(environ: Mapping[str, str] | None = None, stores: Iterable[str] = STORES,
          create: Iterable[str] = ()) -> None:
    """``validate``, raising SettingError with every problem."""
    problems = validate(environ, stores, create)
    if problems:
        raise SettingError(problems)


def unknown(environ: Mapping[str, str] | None = None) -> list[str]:
    """Variables with the prefix that are no setting (a typo leaves the default in force)."""
    return sorted(n for n in _environ(environ) if n.startswith(PREFIX) and n not in SETTINGS and n not in NOT_SETTINGS)


def describe(environ: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(variable, value as shown, allowed) per setting: secrets as set / not set."""
    env = _environ(environ)
    rows = []
    for name, setting in SETTINGS.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            shown = f"(default: {setting.default})"
        elif setting.secret:
            shown = "(set, not shown)"
        elif name.endswith("_URL"):
            shown = safe(raw)
        else:
            shown = raw
        rows.append((name, shown, setting.allowed))
    return rows


# --- command-line values: argparse types, each with its allowed range ---------------------------

def whole(low: int, high: int | None = None):
    """An argparse type: a whole number from ``low`` to ``high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{text!r}: allowed is a whole number from {low}" + (f" to {high}" if high is not None else " up"))
        return value
    return parse


def number(low: float, high: float):
    """An argparse type: a (finite) number from ``low`` to ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text!r}: allowed is a number from {low:g} to {high:g}")
        return value
    return parse


def iso_date(text: str) -> dt.date:
    """An argparse type: a date, YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a date, YYYY-MM-DD") from None


def iso_time(text: str) -> dt.datetime:
    """An argparse type: a time, YYYY-MM-DDTHH:MM[:SS][+HH:MM] (local time without an offset)."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a time, YYYY-MM-DDTHH:MM:SS") from None


def folder(text: str) -> str:
    """An argparse type: a folder path (made absolute); not an existing file."""
    path = Path(text).expanduser().absolute()
    if not text.strip() or (path.exists() and not path.is_dir()):
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is a folder (it may not exist yet), not a file")
    return str(path)


def existing_database(what: str, created_by: str = CREATED_BY):
    """An argparse type: a database URL whose file, when it names one, exists (nothing is
    created); ``what`` names it in the message, ``created_by`` says what creates it. The URL is
    never echoed with its password."""
    def parse(text: str) -> str:
        try:
            _url(text)
            missing = missing_database(text, what, created_by)
        except Exception:  # noqa: BLE001 - any unparsable URL: said without echoing it
            raise argparse.ArgumentTypeError(f"{what}: allowed is a SQLAlchemy URL ({safe(text)})") from None
        if missing:
            raise argparse.ArgumentTypeError(missing)
        return text.strip()
    return parse
