"""The integration team's daily digest (issue 20): what is open, said once.

The ledger's open alarms (``core.alarms``), the integration's own first (``operator``: it could not
do its work), then held agencies (C3) and the other conditions staff must fix in FBS, the
blocked liabilities per agency (open findings that stop a liability), and the alarms resolved
since the last digest. An alarm no digest has said yet is marked NEW; after the mail went, every
alarm in it is marked notified, so the next digest says an unchanged condition again only as
"still open since ...". Hourly runs never mail these conditions: only this digest does.

Airflow-free: the DAG task (``debitor_dq_report.email_digest``) and the CLI both call
``send_digest``. Plain text, English; counts and ids only (messages are masked on write anyway).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core import alarms
from fbs_debitor.core.alarms import Alarm
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.quality import mailer

log = logging.getLogger(__name__)

HELD = alarms.HELD
SENT, NOT_SENT = "sent", "not_sent"


@dataclass(frozen=True)
class Digest:
    made_at: dt.datetime
    operator: list[Alarm]
    held: list[Alarm]
    staff: list[Alarm]
    resolved: list[Alarm]
    blocked: dict[str, int]                   # agency -> liabilities blocked by an open finding

    @property
    def said(self) -> list[Alarm]:
        return [*self.operator, *self.held, *self.staff, *self.resolved]

    @property
    def new_count(self) -> int:
        return sum(1 for a in (*self.operator, *self.held, *self.staff) if a.is_new)

    def subject(self) -> str:
        return (f"fbs-debitor digest {self.made_at:%Y-%m-%d}: {len(self.operator)} operator alarm(s), "
                f"{len(self.held)} held agency(ies), {len(self.staff)} other staff alarm(s), "
                f"{self.new_count} new, {len(self.resolved)} resolved")

    def text(self) -> str:
        lines = [self.subject(), ""]
        lines += _section("Operator alarms: the integration could not do its work (act now)", self.operator)
        lines += _section("Held agencies (C3): nothing is sent for them until the setting is fixed in FBS",
                          self.held)
        lines += _section("Other conditions staff must fix in FBS", self.staff)
        lines.append("Blocked liabilities per agency (open findings that stop a liability; see the staff reports):")
        lines += [f"  agency {a}: {n}" for a, n in sorted(self.blocked.items())] or ["  none"]
        lines.append("")
        lines.append("Resolved since the last digest:")
        lines += [f"  {_what(a)}: resolved {a.resolved_at:%Y-%m-%d %H:%M} (open since {a.first_seen_at:%Y-%m-%d %H:%M})"
                  for a in self.resolved] or ["  none"]
        lines += ["", "Each condition is one alarm while it lasts; NEW marks what no digest has said before.",
                  "docs/operations.md, 'When is a run red', says what each kind means and what to do."]
        return mask_cprs_in("\n".join(lines) + "\n")


def _what(a: Alarm) -> str:
    return f"{a.kind} ({'agency ' + a.agency_id if a.agency_id else 'all agencies'})"


def _section(title: str, items: Sequence[Alarm]) -> list[str]:
    lines = [f"{title}:"] + ([] if items else ["  none"])
    for a in items:
        mark = "NEW" if a.is_new else f"still open since {a.first_seen_at:%Y-%m-%d %H:%M}"
        lines.append(f"  [{mark}] {_what(a)}: {a.message} (seen by {a.occurrences} run(s), last "
                     f"{a.last_seen_at:%Y-%m-%d %H:%M})")
    return [*lines, ""]


def blocked_per_agency(ledger: Engine) -> dict[str, int]:
    sql = ("SELECT agency_id, COUNT(DISTINCT liability_id) AS n FROM finding WHERE resolved_at IS NULL "
           "AND severity = 'blocks_liability' AND liability_id IS NOT NULL GROUP BY agency_id")
    with ledger.connect() as conn:
        return {str(r.agency_id): int(r.n) for r in conn.execute(text(sql)) if r.n}


def build_digest(ledger: Engine, at: dt.datetime | None = None) -> Digest:
    open_now = alarms.open_alarms(ledger)
    return Digest(made_at=at or dt.datetime.now().replace(microsecond=0),
                  operator=[a for a in open_now if a.audience == alarms.OPERATOR],
                  held=[a for a in open_now if a.audience == alarms.STAFF and a.kind == HELD],
                  staff=[a for a in open_now if a.audience == alarms.STAFF and a.kind != HELD],
                  resolved=alarms.resolved_unsaid(ledger), blocked=blocked_per_agency(ledger))


@dataclass(frozen=True)
class DigestResult:
    status: str                                   # sent | not_sent
    digest: Digest
    recipients: tuple[str, ...] = ()
    detail: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = self.digest
        return {"status": self.status, "recipients": list(self.recipients), "detail": self.detail,
                "operator": len(d.operator), "held": len(d.held), "staff": len(d.staff), "new": d.new_count,
                "resolved": len(d.resolved), "blocked": sum(d.blocked.values())}


def send_digest(ledger: Engine, smtp: mailer.SmtpSettings | None, recipients: Sequence[str],
                at: dt.datetime | None = None) -> DigestResult:
    """Build the digest and mail it to ``recipients`` (the integration team: FBS_DEBITOR_ALERT_EMAIL);
    then mark every alarm in it notified. Without an SMTP server or without recipients it is only
    logged (a warning) and nothing is marked: the next digest that is sent says it all, new as
    new. A failed send raises (nothing marked either)."""
    digest = build_digest(ledger, at)
    if smtp is None or not recipients:
        missing = "no SMTP server (smtp_default or FBS_DEBITOR_SMTP_HOST)" if smtp is None else \
            "no recipients (FBS_DEBITOR_ALERT_EMAIL)"
        log.warning("digest not sent: %s. It would say: %s", missing, digest.subject())
        return DigestResult(NOT_SENT, digest, detail=missing)
    accepted = mailer.send_text(smtp, list(recipients), digest.subject(), digest.text())
    if not accepted:
        raise RuntimeError(f"digest refused for every recipient: {', '.join(recipients)}")
    alarms.mark_notified(ledger, digest.said, at)
    log.info("digest sent to %s: %s", ", ".join(accepted), digest.subject())
    return DigestResult(SENT, digest, accepted)
