"""Every setting has an allowed range, checked before any work (issue 16, items 3 and 8, and
"settings validated at start"): ``core.settings`` on plain environments, and ``python -m
fbs_debitor settings`` as an operator runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fbs_debitor.core import settings
from fbs_debitor.core.settings import HOME

PACKAGE = HOME / "plugins" / "fbs_debitor"


def env(tmp_path, **over) -> dict[str, str]:
    """A whole environment of valid settings in ``tmp_path`` (nothing inherited), plus ``over``."""
    base = {"FBS_DEBITOR_HOME": str(HOME), "FBS_DEBITOR_VAR": str(tmp_path / "var")}
    return {**base, **over}


def problems(tmp_path, **over) -> list[str]:
    return settings.validate(env(tmp_path, **over), stores=())


# --- item 3: sizes, rates and counts -------------------------------------------------------------

BAD = {   # variable -> values outside its range, and the range as the error states it
    "FBS_DEBITOR_BATCH_SIZE": (["0", "-1", "5001", "1e9", "abc", "2.5"], "a whole number from 1 to 5000"),
    "FBS_DEBITOR_CHUNK_SIZE": (["0", "-1", "99", "1000000000", "x"], "a whole number from 100 to 500000"),
    "FBS_DEBITOR_AGE_LIMIT_RANGE": (["0-100", "21-15", "18", "15-", "a-b", "11-21", "15-26"],
                                    "LOW-HIGH, whole numbers with 12 <= LOW <= HIGH <= 25"),
    "FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS": (["-1", "366", "1e9"], "a whole number from 0 to 365"),
    "FBS_DEBITOR_DELAYED_TASK_ATTEMPTS": (["0", "-5", "1001"], "a whole number from 1 to 1000"),
    "FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES": (["0", "-1", "1023", "1073741825"],
                                           "a whole number from 1024 to 1073741824"),
    "FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND": (["-1", "0.5", "1e9", "nan", "inf", "fast"],
                                                   "0 (no ceiling) or a number from 1 to 100000"),
    "FBS_DEBITOR_EG_PAYMENT_MINUTES": (["0", "7", "-15", "120"], "one of 5, 6, 10, 12, 15, 20, 30, 60"),
    "FBS_DEBITOR_PRISME_PAYMENT_RHYTHM": (["daily", "Hourly"], "hourly or nightly"),
    "FBS_DEBITOR_PAYMENT_VENDORS": (["NAVISION", "EG,EG", ",", "KMD_OPUS;EG"], "a comma list of KMD_OPUS, PRISME, EG"),
    "FBS_DEBITOR_SMTP_PORT": (["0", "65536", "smtp"], "a whole number from 1 to 65535"),
    "FBS_DEBITOR_SMTP_TIMEOUT": (["0", "601", "1e9"], "a number of seconds from 1 to 600"),
    "FBS_DEBITOR_SMTP_SSL": (["2", "maybe"], "0/1"),
    "FBS_DEBITOR_SMTP_FROM": (["not-an-address"], "an email address"),
    "FBS_DEBITOR_ALERT_EMAIL": (["team", "a@b.dk,", "a@b.dk;c@d.dk", "a@b.dk,,c@d.dk"],
                                "1 to 20 email addresses, comma-separated"),
    "FBS_DEBITOR_ALERT_NOTIFIERS": (["notifier", "a.b,", "a.b c", "1a.b", "a.b;c.d"], "1 to 10 dotted paths"),
    "FBS_DEBITOR_VAR": (["var", "./var"], "an absolute path"),
    "FBS_DEBITOR_FBS_URL": (["::not a url::"], "a SQLAlchemy URL"),
}


@pytest.mark.parametrize("name, value", [(n, v) for n, (values, _) in BAD.items() for v in values])
def test_item3_a_setting_outside_its_range_is_refused_naming_the_variable_the_value_and_the_range(tmp_path, name,
                                                                                                   value):
    """Issue 16 item 3 (FBS_DEBITOR_BATCH_SIZE=0 looped for ever, FBS_DEBITOR_CHUNK_SIZE=0 resolved
    every finding): each setting refuses values outside its range with one line that says which."""
    (line,) = problems(tmp_path, **{name: value})
    assert line.startswith(f"{name}={value!r}") and BAD[name][1] in line


def test_item3_the_accessors_refuse_the_same_values_for_code_that_reads_a_setting_without_check(monkeypatch):
    """A DAG task reading FBS_DEBITOR_CHUNK_SIZE or _BATCH_SIZE gets the same clear error, never a
    bare int() error or a zero that pages for ever."""
    for name, read in (("FBS_DEBITOR_CHUNK_SIZE", settings.chunk_size),
                       ("FBS_DEBITOR_BATCH_SIZE", settings.batch_size_default),
                       ("FBS_DEBITOR_AGE_LIMIT_RANGE", settings.age_limit_range)):
        monkeypatch.setenv(name, "0")
        with pytest.raises(settings.SettingError, match=f"{name}='0'.*allowed is"):
            read()
        monkeypatch.delenv(name)
    assert (settings.chunk_size(), settings.batch_size_default(), settings.age_limit_range()) == (20000, 500, (15, 21))


def test_defaults_and_values_in_range_pass_and_empty_counts_as_not_set(tmp_path):
    assert problems(tmp_path) == []
    assert problems(tmp_path, FBS_DEBITOR_BATCH_SIZE="1", FBS_DEBITOR_CHUNK_SIZE="500000",
                    FBS_DEBITOR_AGE_LIMIT_RANGE=" 16 - 20 ", FBS_DEBITOR_BACKFILL_MAX_CLAIMS_PER_SECOND="0",
                    FBS_DEBITOR_EG_PAYMENT_MINUTES="30", FBS_DEBITOR_PAYMENT_VENDORS="PRISME,EG",
                    FBS_DEBITOR_SMTP_STARTTLS="yes", FBS_DEBITOR_CHUNK_SIZE_UNUSED="") == []
    assert settings.value("FBS_DEBITOR_BATCH_SIZE", env(tmp_path, FBS_DEBITOR_BATCH_SIZE="")) == 500
    assert settings.value("FBS_DEBITOR_AGE_LIMIT_RANGE", env(tmp_path, FBS_DEBITOR_AGE_LIMIT_RANGE="16-20")) == (16, 20)


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, FBS_DEBITOR_BATCH_SIZE="0", FBS_DEBITOR_CHUNK_SIZE="0", FBS_DEBITOR_SMTP_PORT="0")
    assert [line.split("=")[0] for line in found] == ["FBS_DEBITOR_CHUNK_SIZE", "FBS_DEBITOR_BATCH_SIZE",
                                                      "FBS_DEBITOR_SMTP_PORT"]


# --- credentials are never echoed ----------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("FBS_DEBITOR_FINGERPRINT_KEY", "short-secret"),
                                         ("FBS_DEBITOR_SMTP_PASSWORD", "pa\x01ss-secret"),
                                         ("FBS_DEBITOR_SMTP_USER", "x" * 300 + "-secret")])
def test_item8_a_secret_setting_out_of_range_is_named_but_its_value_never_shown(tmp_path, name, value):
    (line,) = problems(tmp_path, **{name: value})
    assert line.startswith(f"{name} (value not shown)") and "secret" not in line


def test_item8_database_urls_are_shown_without_their_password(tmp_path):
    url = "postgresql+psycopg://debitor:Ledger-S3cret@db.kommune.example:5432/debitor"
    shown = dict((n, v) for n, v, _ in settings.describe(env(tmp_path, FBS_DEBITOR_LEDGER_URL=url)))
    assert "Ledger-S3cret" not in str(settings.describe(env(tmp_path, FBS_DEBITOR_LEDGER_URL=url)))
    assert shown["FBS_DEBITOR_LEDGER_URL"].startswith("postgresql+psycopg://debitor:***@db.kommune.example")
    missing = settings.missing_database(f"sqlite:///{tmp_path / 'none.sqlite'}", "X")
    assert missing and str(tmp_path / "none.sqlite") in missing


# --- databases: a URL that does not exist is an error unless creation is asked for ---------------

def test_item4_a_database_file_that_does_not_exist_is_a_problem_unless_created_and_nothing_is_created(tmp_path):
    urls = {"FBS_DEBITOR_FBS_URL": f"sqlite:///{tmp_path / 'db' / 'fbs.sqlite'}",
            "FBS_DEBITOR_LEDGER_URL": f"sqlite:///{tmp_path / 'db' / 'ledger.sqlite'}"}
    found = settings.validate(env(tmp_path, **urls))
    assert len(found) == 2 and all("does not exist" in line for line in found)
    assert found[0].startswith(("FBS_DEBITOR_FBS_URL", "FBS_DEBITOR_LEDGER_URL"))
    assert settings.validate(env(tmp_path, **urls), create=settings.STORES) == []
    assert settings.validate(env(tmp_path, **urls), stores=("fbs",), create=("fbs",)) == []
    assert not (tmp_path / "db").exists()


def test_item4_only_urls_naming_a_local_file_are_checked_for_a_file(tmp_path):
    assert settings.database_file(f"sqlite:///{tmp_path / 'x.sqlite'}") == tmp_path / "x.sqlite"
    for url in ("postgresql+psycopg://u:p@db.example:5432/fbs", "postgresql:///fbs", "sqlite://",
                "sqlite:///:memory:", "postgresql+psycopg:///fbs?host=/var/run/postgresql"):
        assert settings.database_file(url) is None, url


# --- folders files are moved into: the project's own layout --------------------------------------

def test_payment_folders_must_be_the_projects_own_layout(tmp_path):
    """Files are only moved into archive/ and quarantine/ next to an inbox named inbox, or into the
    folders set for them; the three apart, none inside another."""
    layout = settings.payment_folders(tmp_path / "payments" / "inbox", {})
    assert (layout.archive, layout.quarantine) == (tmp_path / "payments" / "archive",
                                                   tmp_path / "payments" / "quarantine")
    with pytest.raises(settings.SettingError, match="must be a folder named 'inbox'"):
        settings.payment_folders(tmp_path / "home" / "someone", {}, inbox_name="--inbox")
    with pytest.raises(settings.SettingError, match="must be apart"):
        settings.payment_folders(tmp_path / "inbox", {"FBS_DEBITOR_PAYMENT_ARCHIVE": str(tmp_path / "inbox" / "a"),
                                                      "FBS_DEBITOR_PAYMENT_QUARANTINE": str(tmp_path / "q")})
    own = settings.payment_folders(tmp_path / "drop", {"FBS_DEBITOR_PAYMENT_ARCHIVE": str(tmp_path / "done"),
                                                       "FBS_DEBITOR_PAYMENT_QUARANTINE": str(tmp_path / "bad")})
    assert (own.path, own.archive, own.quarantine) == (tmp_path / "drop", tmp_path / "done", tmp_path / "bad")
    assert any("named 'inbox'" in p for p in problems(tmp_path, FBS_DEBITOR_PAYMENT_INBOX="/"))
    assert any("sftp" in p.lower() for p in problems(tmp_path, FBS_DEBITOR_PAYMENT_INBOX="sftp://host/inbox"))


# --- the registry is complete, and typos are said ------------------------------------------------

def test_every_variable_the_package_reads_is_a_declared_setting():
    """A variable read somewhere without an entry in settings.SETTINGS would escape validation."""
    read = set()
    for path in PACKAGE.rglob("*.py"):
        read |= set(re.findall(r"\bFBS_DEBITOR_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    assert {"FBS_DEBITOR_SMTP_HOST", "FBS_DEBITOR_PAYMENT_FILE_MAX_BYTES"} <= read       # the search sees them
    undeclared = read - set(settings.SETTINGS) - settings.NOT_SETTINGS
    assert undeclared == set()


def test_an_unknown_variable_with_the_prefix_is_named_as_a_possible_typo(tmp_path):
    assert settings.unknown(env(tmp_path, FBS_DEBITOR_BATCHSIZE="100", FBS_DEBITOR_DEMO_SEED="1")) == [
        "FBS_DEBITOR_BATCHSIZE"]


# --- the command an operator runs --------------------------------------------------------------

def run_settings(tmp_path, **over) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FBS_DEBITOR_")}
    clean.update(env(tmp_path, **over), PYTHONPATH=str(HOME / "plugins"))
    return subprocess.run([sys.executable, "-m", "fbs_debitor", "settings"], env=clean, capture_output=True,
                          text=True, timeout=120)


def test_the_settings_command_lists_every_setting_and_its_range_and_exits_3_on_a_bad_one(tmp_path):
    ok = run_settings(tmp_path, FBS_DEBITOR_FINGERPRINT_KEY="a-long-enough-secret-key-0001")
    assert ok.returncode == 0, ok.stderr
    assert all(name in ok.stdout for name in settings.SETTINGS)
    assert "FBS_DEBITOR_FINGERPRINT_KEY = (set, not shown)" in ok.stdout and "a-long-enough" not in ok.stdout
    bad = run_settings(tmp_path, FBS_DEBITOR_CHUNK_SIZE="0", FBS_DEBITOR_BATCHSIZE="9")
    assert bad.returncode == 3
    assert "setting refused: FBS_DEBITOR_CHUNK_SIZE='0': allowed is a whole number from 100 to 500000" in bad.stderr
    assert "FBS_DEBITOR_BATCHSIZE is not a setting" in bad.stderr


def test_issue20_alert_recipients_and_notifiers_are_read_as_lists(monkeypatch):
    """Issue 20 item 2: the integration team's addresses and the further notifiers are comma lists
    (each once, spaces ignored); unset, there are none."""
    monkeypatch.delenv("FBS_DEBITOR_ALERT_EMAIL", raising=False)
    monkeypatch.delenv("FBS_DEBITOR_ALERT_NOTIFIERS", raising=False)
    assert settings.alert_email() == () and settings.alert_notifiers() == ()
    monkeypatch.setenv("FBS_DEBITOR_ALERT_EMAIL", "drift@kommune.example, it@kommune.example,drift@kommune.example")
    monkeypatch.setenv("FBS_DEBITOR_ALERT_NOTIFIERS", "my_alerts.pager, my_alerts.chat")
    assert settings.alert_email() == ("drift@kommune.example", "it@kommune.example")
    assert settings.alert_notifiers() == ("my_alerts.pager", "my_alerts.chat")
