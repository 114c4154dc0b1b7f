"""Emailing the data-quality reports to each branch's ``staff_email`` (stdlib ``smtplib``).

The SMTP server is described by an Airflow Connection (``smtp_default``) inside a DAG task, with
the same meaning as Airflow's SMTP provider: host, port, login, password; extra ``from_email``,
``disable_ssl`` (default false: implicit TLS, port 465), ``disable_tls`` (default false: STARTTLS
when not on implicit TLS) and ``timeout`` (seconds, default 30). Outside Airflow (CLI, tests) the
environment describes it:

| variable                   | default                      | meaning                                  |
|----------------------------|------------------------------|------------------------------------------|
| FBS_DEBITOR_SMTP_HOST      | (required)                   | SMTP server                              |
| FBS_DEBITOR_SMTP_PORT      | 25                           | port                                     |
| FBS_DEBITOR_SMTP_FROM      | the user, if it is an address | sender address                          |
| FBS_DEBITOR_SMTP_USER      | none (no login)              | login                                    |
| FBS_DEBITOR_SMTP_PASSWORD  | none                         | password                                 |
| FBS_DEBITOR_SMTP_STARTTLS  | 1 with a user, else 0        | 0/1: STARTTLS before login               |
| FBS_DEBITOR_SMTP_SSL       | 0                            | 0/1: implicit TLS (SMTP over SSL)        |
| FBS_DEBITOR_SMTP_TIMEOUT   | 30                           | seconds per connection                   |

One mail per branch: the HTML report as the body (with a short plain-text alternative) and the CSV
attached. The subject and the plain-text part are the report's templates ``mail_subject.txt.j2`` and
``mail.txt.j2`` (plain text, not escaped), so their Danish texts are edited where the report's are. A branch without a usable address is skipped with a warning; a send that fails is
recorded and the others still go. Results come back per branch; nothing here logs a report's
contents, only branch ids, addresses, sizes and the server's answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path

from fbs_debitor.core import storage
from fbs_debitor.quality.report import BranchReport, location, templates

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "smtp_default"
DEFAULT_TIMEOUT = 30.0
STATE_NAME = "email-status.json"

SENT, SKIPPED, FAILED, ALREADY_SENT = "sent", "skipped", "failed", "already_sent"


class SmtpNotConfigured(RuntimeError):
    pass


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    from_email: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    ssl: bool = False
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class SendResult:
    agency_id: str
    branch_id: str
    status: str                         # sent | skipped | failed | already_sent
    recipients: tuple[str, ...] = ()
    detail: str = ""                    # why skipped or failed; refused addresses when partly sent

    def as_dict(self) -> dict:
        d = asdict(self)
        d["recipients"] = list(self.recipients)
        return d


# --- settings ----------------------------------------------------------------------------------

def _flag(value, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def settings_from_env(env: dict[str, str] | None = None) -> SmtpSettings:
    """SMTP settings from ``FBS_DEBITOR_SMTP_*`` (the CLI and tests)."""
    env = os.environ if env is None else env
    host = (env.get("FBS_DEBITOR_SMTP_HOST") or "").strip()
    if not host:
        raise SmtpNotConfigured("no SMTP server: set FBS_DEBITOR_SMTP_HOST (and _PORT, _FROM, ...)")
    user = env.get("FBS_DEBITOR_SMTP_USER") or None
    return SmtpSettings(
        host=host, port=int(env.get("FBS_DEBITOR_SMTP_PORT") or 25),
        from_email=_sender(env.get("FBS_DEBITOR_SMTP_FROM"), user, "FBS_DEBITOR_SMTP_FROM"),
        user=user, password=env.get("FBS_DEBITOR_SMTP_PASSWORD") or None,
        starttls=_flag(env.get("FBS_DEBITOR_SMTP_STARTTLS"), default=user is not None),
        ssl=_flag(env.get("FBS_DEBITOR_SMTP_SSL")),
        timeout=float(env.get("FBS_DEBITOR_SMTP_TIMEOUT") or DEFAULT_TIMEOUT))


def settings_from_connection(conn) -> SmtpSettings:
    """SMTP settings from an Airflow Connection (or any object with host, port, login, password and
    ``extra_dejson``), read as Airflow's SMTP provider reads it."""
    extra = getattr(conn, "extra_dejson", None) or {}
    if not conn.host:
        raise SmtpNotConfigured(f"connection {getattr(conn, 'conn_id', '?')!r} has no host")
    use_ssl = not _flag(extra.get("disable_ssl"))
    return SmtpSettings(
        host=conn.host, port=int(conn.port or (465 if use_ssl else 25)),
        from_email=_sender(extra.get("from_email"), conn.login, "the connection's extra from_email"),
        user=conn.login or None, password=conn.password or None,
        starttls=not use_ssl and not _flag(extra.get("disable_tls")), ssl=use_ssl,
        timeout=float(extra.get("timeout") or DEFAULT_TIMEOUT))


def _sender(from_email: str | None, user: str | None, where: str) -> str:
    if from_email:
        return from_email.strip()
    if user and "@" in user:
        return user.strip()
    raise SmtpNotConfigured(f"no sender address: set {where}")


_SPLIT = re.compile(r"[,;\s]+")


def recipients_of(staff_email: str | None) -> list[str]:
    """The addresses in a branch's ``staff_email`` (one, or several separated by , or ;)."""
    out = []
    for part in _SPLIT.split(staff_email or ""):
        _name, addr = parseaddr(part)
        if addr and re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", addr) and addr not in out:
            out.append(addr)
    return out


# --- messages ----------------------------------------------------------------------------------

def _message(subject: str, from_email: str, recipients: Sequence[str]) -> EmailMessage:
    """A new mail's headers. The subject on one line: no line breaks in a header (a branch name
    could hold one)."""
    msg = EmailMessage()
    msg["Subject"] = " ".join(subject.split())
    msg["From"] = from_email
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("fbs-debitor", domain=from_email.rpartition("@")[2] or "localhost")
    return msg


def build_message(report: BranchReport, from_email: str, recipients: Sequence[str], *,
                  template_dir: Path | None = None) -> EmailMessage:
    """The branch's mail: plain-text summary, the HTML report as the HTML body, the CSV attached.
    ``template_dir`` as for ``report.build_reports``."""
    html_body = location(report.html_path).read_bytes().decode("utf-8")   # here or in the shared store
    csv_bytes = location(report.csv_path).read_bytes()
    date = report.report_date
    env = templates(template_dir)
    msg = _message(env.get_template("mail_subject.txt.j2").render(report=report), from_email, recipients)
    msg.set_content(env.get_template("mail.txt.j2").render(report=report), cte="quoted-printable")
    # 7-bit safe on any relay (no 8BITMIME needed); quoted-printable keeps the text readable in the raw mail.
    msg.add_alternative(html_body, subtype="html", cte="quoted-printable")
    safe_branch = re.sub(r"[^A-Za-z0-9._-]", "_", report.branch_id)
    msg.add_attachment(csv_bytes, maintype="text", subtype="csv", params={"charset": "utf-8"},
                       filename=f"datakvalitet-{safe_branch}-{date}.csv")   # bytes as written: BOM kept
    return msg


def _deliver(smtp: SmtpSettings, msg: EmailMessage, recipients: Sequence[str]) -> dict:
    """One connection, one message; returns the recipients the server refused (others accepted)."""
    context = ssl.create_default_context()
    if smtp.ssl:
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    with client:
        client.ehlo()
        if smtp.starttls and not smtp.ssl:
            client.starttls(context=context)
            client.ehlo()
        if smtp.user:
            client.login(smtp.user, smtp.password or "")
        return client.send_message(msg, from_addr=smtp.from_email, to_addrs=list(recipients))


def _describe(exc: Exception) -> str:
    """What went wrong, without the message body (server answers and error types only)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "alle modtagere afvist / all recipients refused: " + "; ".join(
            f"{addr}: {code} {_text(reply)}" for addr, (code, reply) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
    return f"{type(exc).__name__}: {exc}"


def _text(reply) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


# --- sending -----------------------------------------------------------------------------------

def send_text(smtp: SmtpSettings, recipients: Sequence[str], subject: str, body: str) -> tuple[str, ...]:
    """One plain-text mail (the integration team's digest) to ``recipients``; returns the addresses
    the server accepted. Raises when the mail could not be sent at all (or every recipient was
    refused): the caller decides whether that fails its task."""
    msg = _message(subject, smtp.from_email, recipients)
    msg.set_content(body, cte="quoted-printable")
    refused = _deliver(smtp, msg, recipients)
    return tuple(a for a in recipients if a not in refused)


def send_reports(reports: Iterable[BranchReport], smtp: SmtpSettings, *, state_file=None,
                 template_dir: Path | None = None) -> list[SendResult]:
    """Send each branch its report; never raises for one branch. With ``state_file`` (a path here or
    in the shared store, next to the manifest), branches already sent (by an earlier attempt of the
    same run, on any worker) are not sent again."""
    done = _load_state(state_file)
    results = []
    for report in reports:
        key = f"{report.agency_id}/{report.branch_id}"
        recipients = recipients_of(report.staff_email)
        if key in done:
            results.append(SendResult(report.agency_id, report.branch_id, ALREADY_SENT, tuple(recipients),
                                      "sendt ved et tidligere forsøg / sent by an earlier attempt"))
            continue
        if not recipients:
            detail = ("filialen har ingen e-mailadresse i FBS (branch.staff_email) / no staff_email"
                      if not (report.staff_email or "").strip()
                      else "ugyldig e-mailadresse i FBS (branch.staff_email) / invalid staff_email")
            log.warning("report for branch %s not emailed: %s", key, detail)
            results.append(SendResult(report.agency_id, report.branch_id, SKIPPED, (), detail))
            continue
        try:
            msg = build_message(report, smtp.from_email, recipients, template_dir=template_dir)
            refused = _deliver(smtp, msg, recipients)
        except Exception as exc:   # one branch's failure never stops the others
            detail = _describe(exc)
            log.warning("report for branch %s to %s not sent: %s", key, ", ".join(recipients), detail)
            results.append(SendResult(report.agency_id, report.branch_id, FAILED, tuple(recipients), detail))
            continue
        accepted = tuple(a for a in recipients if a not in refused)
        detail = ("; ".join(f"afvist / refused {a}: {code} {_text(reply)}" for a, (code, reply) in refused.items())
                  if refused else "")
        log.info("report for branch %s sent to %s (%d bytes)%s", key, ", ".join(accepted), len(msg.as_bytes()),
                 f"; {detail}" if detail else "")
        results.append(SendResult(report.agency_id, report.branch_id, SENT, accepted, detail))
        done.add(key)
        _save_state(state_file, done)
    return results


def _load_state(path) -> set[str]:
    if path is None:
        return set()
    path = location(path)
    if not path.exists():
        return set()
    return set(json.loads(path.read_text(encoding="utf-8")).get("sent", []))


def _save_state(path, done: set[str]) -> None:
    """Who got theirs so far, written whole after each send (a PUT on a shared store)."""
    if path is None:
        return
    storage.write(location(path), json.dumps({"sent": sorted(done)}).encode("utf-8"))


def totals(results: Iterable[SendResult]) -> dict[str, int]:
    out = {SENT: 0, SKIPPED: 0, FAILED: 0, ALREADY_SENT: 0}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def format_results(results: Sequence[SendResult]) -> str:
    lines = [f"{r.agency_id}/{r.branch_id}: {r.status}"
             + (f" to {', '.join(r.recipients)}" if r.recipients and r.status != SKIPPED else "")
             + (f" ({r.detail})" if r.detail else "") for r in results]
    t = totals(results)
    lines.append(f"emails: {t[SENT]} sent, {t[SKIPPED]} skipped, {t[FAILED]} failed"
                 + (f", {t[ALREADY_SENT]} already sent" if t[ALREADY_SENT] else ""))
    return "\n".join(lines)
