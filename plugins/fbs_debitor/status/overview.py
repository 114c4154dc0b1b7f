"""What went today, per municipality: the status page's figures, from the FBS extract and the ledger.

A municipality is FBS's ``agency.municipality_cvr``; its agencies' figures are summed. Every panel
is one set-based query grouped by agency (``include/sql/queries/status_*.sql``), so the page costs
the same few queries for 98 municipalities as for one:

* the newest run of each kind and today's runs by state (``run``), and what the newest transfer
  run held back and failed at per agency (``run_count``: blocked / awaiting verification, a C3
  held agency, ``failed`` / ``failed_resend``);
* new claims and changes to claims already sent, today (``outbox`` joined to ``claim``):
  recorded, sent, accepted, rejected; unconfirmed now;
* payments and write-offs (``movement``): received and applied today (amounts paid and written
  off), held for review and applied-not-yet-in-FBS now; payment files received today;
* open alarms (``core.alarms.open_alarms``);
* the newest staff reports (``reports/<day>/<agency>/index.html``) and the newest payments
  run's reconciliation CSV (``reports/payments/reconciliation-<run>.csv``), as paths relative
  to ``reports`` in the shared store (``FBS_DEBITOR_STORAGE_URL``, default ``var/``: a folder here,
  or an ``ObjectStoragePath``; the status page serves it). Every municipality's mapped report task
  writes its agencies' folders side by side under the same day.

"Today" is the current day in Europe/Copenhagen; the ledger's timestamps are naive local time
(``ledger.now()``, the deployment runs with TZ=Europe/Copenhagen), compared with that day's
midnights. Only counts, amounts and ids: alarm messages are CPR-masked when written and once more
here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from sqlalchemy import text

from fbs_debitor.core import alarms as core_alarms
from fbs_debitor.core.db import as_amount, as_datetime, sql_file
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.settings import TIMEZONE
from fbs_debitor.core.stores import Stores
from fbs_debitor.delivery.outbox import FAILED, RESEND_FAILED
from fbs_debitor.eligibility.rules import AWAITING, BLOCKED

UNKNOWN = "-"                     # a municipality (or agency) the FBS extract does not know
PAYMENT_DIFFERENCES = core_alarms.PAYMENT_DIFFERENCES   # raised per agency by the payments run
HELD_AGENCY = core_alarms.HELD
RUN_KINDS = ("transfer", "payments", "dq_report", "backfill")
REPORT_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
ZERO = Decimal("0.00")


def today(now: dt.datetime | None = None) -> dt.date:
    """The current day in Copenhagen."""
    return (now or dt.datetime.now(ZoneInfo(TIMEZONE))).astimezone(ZoneInfo(TIMEZONE)).date()


def day_bounds(day: dt.date) -> dict[str, dt.datetime]:
    """The day's two midnights as the ledger stores times (naive Copenhagen time)."""
    start = dt.datetime(day.year, day.month, day.day)
    return {"day_start": start, "day_end": start + dt.timedelta(days=1)}


# --- the figures -----------------------------------------------------------------------------------

@dataclass
class RunStatus:
    run_id: str
    kind: str
    status: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    airflow_dag_id: str | None
    airflow_run_id: str | None
    error: str | None

    @property
    def airflow_path(self) -> str | None:
        """The run's page in the Airflow UI, relative to the UI's root (``dags/<dag>/runs/<run>``)."""
        if not (self.airflow_dag_id and self.airflow_run_id):
            return None
        return f"dags/{quote(self.airflow_dag_id, safe='')}/runs/{quote(self.airflow_run_id, safe='')}"

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "kind": self.kind, "status": self.status,
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "airflow_dag_id": self.airflow_dag_id, "airflow_run_id": self.airflow_run_id,
                "airflow_path": self.airflow_path, "error": mask_cprs_in(self.error) if self.error else None}


class _Sum:
    """Counts (and amounts) a municipality adds up over its agencies, field by field."""

    def add(self, other: _Sum) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class Claims(_Sum):
    """New claims (OpretDebitorkonto): today's, and what the newest transfer run held back."""
    recorded: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    unconfirmed: int = 0
    held: int = 0            # blocked + awaiting verification in the newest transfer run today
    blocked: int = 0
    awaiting: int = 0


@dataclass
class Changes(_Sum):
    """Changes to claims already sent (U1-U4), today."""
    recorded: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    unconfirmed: int = 0


@dataclass
class Payments(_Sum):
    """Movements from the debtor system: received and applied today; held and unwritten now."""
    received: int = 0
    applied: int = 0
    paid: Decimal = ZERO
    written_off: Decimal = ZERO
    held: int = 0
    unwritten: int = 0


@dataclass
class AlarmStatus:
    kind: str
    audience: str
    agency_id: str | None
    message: str
    first_seen_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    occurrences: int

    def as_dict(self) -> dict:
        return {**asdict(self), "first_seen_at": _iso(self.first_seen_at), "last_seen_at": _iso(self.last_seen_at)}


@dataclass
class AgencyStatus:
    agency_id: str
    name: str
    vendor: str
    claims: Claims = field(default_factory=Claims)
    changes: Changes = field(default_factory=Changes)
    payments: Payments = field(default_factory=Payments)
    held_agency: bool = False          # C3 in the newest transfer run, or an open held_agency alarm
    failed: list[str] = field(default_factory=list)    # error types of the newest transfer run
    alarms: list[AlarmStatus] = field(default_factory=list)
    report: str | None = None          # the newest staff report, relative to var/reports

    def as_dict(self) -> dict:
        return {"agency_id": self.agency_id, "name": self.name, "vendor": self.vendor,
                "claims": asdict(self.claims), "changes": asdict(self.changes),
                "payments": _amounts(asdict(self.payments)), "held_agency": self.held_agency,
                "failed": self.failed, "alarms": [a.as_dict() for a in self.alarms], "report": self.report}


@dataclass
class MunicipalityStatus:
    municipality_cvr: str
    agencies: list[AgencyStatus]
    last_transfer: RunStatus | None = None
    last_payments: RunStatus | None = None

    def _sum(self, part: str, cls):
        total = cls()
        for a in self.agencies:
            total.add(getattr(a, part))
        return total

    @property
    def claims(self) -> Claims:
        return self._sum("claims", Claims)

    @property
    def changes(self) -> Changes:
        return self._sum("changes", Changes)

    @property
    def payments(self) -> Payments:
        return self._sum("payments", Payments)

    @property
    def alarms(self) -> list[AlarmStatus]:
        return [al for a in self.agencies for al in a.alarms]

    @property
    def failed(self) -> dict[str, list[str]]:
        return {a.agency_id: a.failed for a in self.agencies if a.failed}

    @property
    def transfer_state(self) -> str:
        """The newest transfer run as this municipality saw it: failed (the run, or an agency's
        part of it), held (an agency held, C3), none (no run yet), else the run's own state."""
        if self.last_transfer is None:
            return "none"
        if self.failed or self.last_transfer.status == "failed":
            return "failed"
        if any(a.held_agency for a in self.agencies):
            return "held"
        return self.last_transfer.status

    @property
    def reconciliation(self) -> str:
        """differences: an open payment-differences alarm for its agencies (or the whole
        deployment); pending: movements applied but not yet in FBS; ok: a payments run finished
        with neither; none: no payments run yet; running / failed: the newest payments run's state."""
        if any(a.kind == PAYMENT_DIFFERENCES for a in self.alarms):
            return "differences"
        if self.payments.unwritten:
            return "pending"
        if self.last_payments is None:
            return "none"
        return "ok" if self.last_payments.status == "success" else self.last_payments.status

    @property
    def state(self) -> str:
        """ok, or attention (an open alarm, a rejection today, a held agency or claim), or failed."""
        if self.transfer_state == "failed":
            return "failed"
        c = self.claims
        if self.alarms or c.rejected or self.changes.rejected or self.transfer_state == "held" \
                or self.reconciliation == "differences" or self.payments.held:
            return "attention"
        return "ok"

    def as_dict(self) -> dict:
        return {"municipality_cvr": self.municipality_cvr, "state": self.state,
                "transfer_state": self.transfer_state, "reconciliation": self.reconciliation,
                "agencies": [a.as_dict() for a in self.agencies],
                "claims": asdict(self.claims), "changes": asdict(self.changes),
                "payments": _amounts(asdict(self.payments)), "failed": self.failed,
                "open_alarms": len(self.alarms)}


@dataclass
class Overview:
    day: dt.date
    generated_at: dt.datetime
    runs: dict[str, RunStatus]
    runs_today: dict[str, dict[str, int]]
    municipalities: list[MunicipalityStatus]
    deployment_alarms: list[AlarmStatus]          # alarms not about one agency
    payment_files: dict[str, int]                  # today's payment files by state
    report_day: str | None = None                  # the newest day of staff reports
    reconciliation_csv: str | None = None          # the newest payments run's CSV, relative to var/reports

    def municipality(self, cvr: str) -> MunicipalityStatus:
        return next(m for m in self.municipalities if m.municipality_cvr == cvr)

    def as_dict(self) -> dict:
        return {"day": self.day.isoformat(), "generated_at": _iso(self.generated_at),
                "runs": {k: r.as_dict() for k, r in self.runs.items()}, "runs_today": self.runs_today,
                "payment_files_today": self.payment_files, "report_day": self.report_day,
                "reconciliation_csv": self.reconciliation_csv,
                "deployment_alarms": [a.as_dict() for a in self.deployment_alarms],
                "municipalities": [m.as_dict() for m in self.municipalities]}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(sep=" ") if value else None


def _amounts(values: dict) -> dict:
    return {k: (f"{v:.2f}" if isinstance(v, Decimal) else v) for k, v in values.items()}


# --- reading it ----------------------------------------------------------------------------------

def _query(name: str):
    return text(sql_file(f"queries/{name}.sql"))


def build_overview(stores: Stores, day: dt.date | None = None, reports_root=None) -> Overview:
    """The overview of ``day`` (default: today in Copenhagen), with report links when
    ``reports_root`` (``reports`` in the shared store: a Path, or an ``ObjectStoragePath``) is
    given. A handful of queries, however many municipalities."""
    day = day or today()
    bounds = day_bounds(day)
    with stores.fbs.connect() as conn:
        agencies = conn.execute(_query("status_agencies")).all()
    with stores.ledger.connect() as conn:
        runs = {r.panel: RunStatus(r.run_id, r.kind, r.status, as_datetime(r.started_at), as_datetime(r.finished_at),
                                  r.airflow_dag_id, r.airflow_run_id, r.error)
                for r in conn.execute(_query("status_runs"))}
        runs_today: dict[str, dict[str, int]] = defaultdict(dict)
        for r in conn.execute(_query("status_runs_today"), bounds):
            runs_today[r.panel][r.status] = int(r.n)
        transfer = runs.get("transfer")
        counts = (conn.execute(_query("status_run_counts"), {"run_id": transfer.run_id}).all()
                  if transfer else [])
        outbox = conn.execute(_query("status_outbox"), bounds).all()
        movements = conn.execute(_query("status_payments"), bounds).all()
        files = {r.state: int(r.n) for r in conn.execute(_query("status_payment_files"), bounds)}
    open_alarms = core_alarms.open_alarms(stores.ledger)

    by_agency: dict[str, AgencyStatus] = {}
    municipality_of: dict[str, str] = {}
    for a in agencies:
        by_agency[a.agency_id] = AgencyStatus(a.agency_id, a.name, a.debtor_vendor)
        municipality_of[a.agency_id] = a.municipality_cvr

    def agency(agency_id: str | None) -> AgencyStatus:
        agency_id = agency_id or UNKNOWN
        if agency_id not in by_agency:          # in the ledger, not (or no longer) in FBS
            by_agency[agency_id] = AgencyStatus(agency_id, "", "")
            municipality_of[agency_id] = UNKNOWN
        return by_agency[agency_id]

    counted_today = transfer is not None and transfer.started_at is not None \
        and bounds["day_start"] <= transfer.started_at < bounds["day_end"]
    for r in counts:
        a, n = agency(r.agency_id), int(r.n)
        if r.category in (FAILED, RESEND_FAILED) and n:
            a.failed = sorted({*a.failed, r.rule})
        elif r.category == BLOCKED and r.rule == "C3" and n:
            a.held_agency = True
        if counted_today and r.category in (BLOCKED, AWAITING):
            a.claims.blocked += n if r.category == BLOCKED else 0
            a.claims.awaiting += n if r.category == AWAITING else 0
            a.claims.held += n
    for r in outbox:
        part = agency(r.agency_id).claims if r.what == "claim" else agency(r.agency_id).changes
        for name in ("recorded", "sent", "accepted", "rejected", "unconfirmed"):
            setattr(part, name, getattr(part, name) + int(r._mapping[name] or 0))
    for r in movements:
        p = agency(r.agency_id).payments
        p.received += int(r.received or 0)
        p.applied += int(r.applied or 0)
        p.paid += as_amount(r.paid or 0)
        p.written_off += as_amount(r.written_off or 0)
        p.held += int(r.held or 0)
        p.unwritten += int(r.unwritten or 0)
    deployment: list[AlarmStatus] = []
    for al in open_alarms:
        shown = AlarmStatus(al.kind, al.audience, al.agency_id, mask_cprs_in(al.message), al.first_seen_at,
                            al.last_seen_at, al.occurrences)
        if al.agency_id is None:
            deployment.append(shown)
        else:
            a = agency(al.agency_id)
            a.alarms.append(shown)
            a.held_agency = a.held_agency or al.kind == HELD_AGENCY

    report_day = newest_report_day(reports_root) if reports_root else None
    if report_day:
        for a in by_agency.values():
            page = reports_root / report_day / a.agency_id / "index.html"
            if a.agency_id != UNKNOWN and page.is_file():
                a.report = f"{report_day}/{a.agency_id}/index.html"
    reconciliation_csv = None
    if reports_root and runs.get("payments"):
        name = f"payments/reconciliation-{runs['payments'].run_id}.csv"
        reconciliation_csv = name if (reports_root / name).is_file() else None

    groups: dict[str, list[AgencyStatus]] = defaultdict(list)
    for agency_id in sorted(by_agency):
        groups[municipality_of[agency_id]].append(by_agency[agency_id])
    # agencies FBS does not know take no part in transfers (only movements or alarms name them)
    municipalities = [MunicipalityStatus(cvr, groups[cvr], runs.get("transfer") if cvr != UNKNOWN else None,
                                         runs.get("payments"))
                      for cvr in sorted(groups, key=lambda c: (c == UNKNOWN, c))]
    return Overview(day=day, generated_at=dt.datetime.now(ZoneInfo(TIMEZONE)).replace(microsecond=0, tzinfo=None),
                    runs=runs, runs_today=dict(runs_today), municipalities=municipalities,
                    deployment_alarms=deployment, payment_files=files, report_day=report_day,
                    reconciliation_csv=reconciliation_csv)


def newest_report_day(reports_root) -> str | None:
    """The newest ``YYYY-MM-DD`` folder under ``reports_root`` (a Path, or a folder in an object
    store; None when there is none)."""
    try:
        days = [p.name for p in reports_root.iterdir() if REPORT_DAY.match(p.name) and p.is_dir()
                and not (isinstance(p, Path) and p.is_symlink())]
    except OSError:
        return None
    return max(days, default=None)


# --- as plain text (the CLI) ---------------------------------------------------------------------

def format_overview(overview: Overview) -> str:
    """The overview as a plain-text table, one line per municipality, then the open alarms."""
    lines = [f"fbs-debitor status for {overview.day.isoformat()} (Europe/Copenhagen), "
             f"as of {overview.generated_at:%H:%M:%S}"]
    for kind in RUN_KINDS:
        r = overview.runs.get(kind)
        today_ = ", ".join(f"{s} {n}" for s, n in sorted(overview.runs_today.get(kind, {}).items())) or "none"
        lines.append(f"  last {kind} run: " + (f"{r.status}, started {_iso(r.started_at)} (run {r.run_id})"
                                                 if r else "none") + f"; today: {today_}")
    files = ", ".join(f"{s} {n}" for s, n in sorted(overview.payment_files.items())) or "none"
    lines.append(f"  payment files today: {files}")
    header = (f"{'municipality':<12} {'state':<9} {'transfer':<8} {'sent':>5} {'acc':>5} {'rej':>4} {'unconf':>6} "
              f"{'held':>5} {'chg':>4} {'chg rej':>7} {'pay in':>6} {'applied':>7} {'paid DKK':>10} "
              f"{'pay held':>8} {'reconciliation':<14} {'alarms':>6}")
    lines += ["", header, "-" * len(header)]
    for m in overview.municipalities:
        c, ch, p = m.claims, m.changes, m.payments
        lines.append(f"{m.municipality_cvr:<12} {m.state:<9} {m.transfer_state:<8} {c.sent:>5} {c.accepted:>5} "
                     f"{c.rejected:>4} {c.unconfirmed:>6} {c.held:>5} {ch.recorded:>4} {ch.rejected:>7} "
                     f"{p.received:>6} {p.applied:>7} {p.paid:>10.2f} {p.held:>8} {m.reconciliation:<14} "
                     f"{len(m.alarms):>6}")
        for a in m.agencies:
            extra = (["held (C3)"] if a.held_agency else []) + ([f"failed: {', '.join(a.failed)}"] if a.failed else [])
            lines.append(f"  {a.agency_id} {a.name} ({a.vendor or '?'}): sent {a.claims.sent}, accepted "
                         f"{a.claims.accepted}, rejected {a.claims.rejected}, held {a.claims.held}"
                         + (f"; {'; '.join(extra)}" if extra else ""))
    alarms = overview.deployment_alarms + [al for m in overview.municipalities for al in m.alarms]
    lines += ["", f"open alarms: {len(alarms)}"]
    for al in alarms:
        lines.append(f"  [{al.audience}] {al.kind} {al.agency_id or 'all'} since {_iso(al.first_seen_at)} "
                     f"(seen {al.occurrences}x): {al.message}")
    return "\n".join(lines)
