"""A run's counts as the short plain-text table the main job and the CLI print; a backfill's
(all its months) and the list of backfills likewise."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core.ledger import RunInfo
from fbs_debitor.delivery.outbox import ACCEPTED, REJECTED, UNCONFIRMED
from fbs_debitor.eligibility.rules import ALREADY_SENT, AWAITING, BLOCKED, ELIGIBLE, OUT_OF_SCOPE

BLOCK_RULES = ("C3", "T4", "T5", "T6")          # own columns; other rules are summed under "blk other"
OUT_RULES = ("T1", "T3-closed", "T3-collection", "cancelled", "T3-backfill")
RUN_KINDS = ("transfer", "backfill", "payments", "dq_report", "manual")   # the ledger's run.kind values


def _agencies(fbs: Engine) -> dict[str, tuple[str, str, int]]:
    with fbs.connect() as conn:
        rows = conn.execute(text("SELECT agency_id, name, debtor_vendor, age_limit FROM agency ORDER BY agency_id"))
        return {r.agency_id: (r.name, r.debtor_vendor, r.age_limit) for r in rows}


def _by_rule(counts: Counter, category: str) -> str:
    rules = Counter()
    for (_, c, r), v in counts.items():
        if c == category:
            rules[r] += v
    total = sum(rules.values())
    return f"{total}" + (f" ({', '.join(f'{r} {v}' for r, v in sorted(rules.items()))})" if total else "")


def format_run(run: RunInfo, counts: Counter, fbs: Engine, title: str | None = None) -> str:
    """A transfer-like run (transfer, manual, one backfill month): per agency, then the totals.
    ``title`` replaces the first line (``fbs-debitor transfer run <id> (<kind>): <status>``)."""
    agencies = _agencies(fbs)
    ids = sorted(set(agencies) | {a for a, _, _ in counts})
    blocked_rules = [*BLOCK_RULES, *sorted({r for _, c, r in counts if c == BLOCKED} - set(BLOCK_RULES))]

    def n(agency: str | None, category: str, rule: str | None = None) -> int:
        return sum(v for (a, c, r), v in counts.items()
                   if (agency is None or a == agency) and c == category and (rule is None or r == rule))

    def other(agency: str | None) -> int:
        return n(agency, BLOCKED) - sum(n(agency, BLOCKED, r) for r in BLOCK_RULES)

    header = (f"{'agency':<8} {'vendor':<8} {'age':>3} {'eligible':>9} {'awaiting':>9} "
              + " ".join(f"{'blk ' + r:>7}" for r in BLOCK_RULES) + f" {'blk other':>9}"
              + f" {'accepted':>8} {'rejected':>8} {'unconf':>6} {'earlier':>8} "
              + " ".join(f"{r:>13}" for r in OUT_RULES))
    lines = [
        title or (f"fbs-debitor transfer run {run.run_id} ({run.kind}): {run.status}"
                  + (f" - {run.error}" if run.error else "")),
        "",
        header,
        "-" * len(header),
    ]
    for a in [*ids, None]:
        name, vendor, age = agencies.get(a, ("", "", "")) if a else ("", "", "")
        label = a or "total"
        lines.append(
            f"{label:<8} {vendor:<8} {age!s:>3} {n(a, ELIGIBLE):>9} {n(a, AWAITING):>9} "
            + " ".join(f"{n(a, BLOCKED, r):>7}" for r in BLOCK_RULES) + f" {other(a):>9}"
            + f" {n(a, ACCEPTED):>8} {n(a, REJECTED):>8} {n(a, UNCONFIRMED):>6} {n(a, ALREADY_SENT):>8} "
            + " ".join(f"{n(a, OUT_OF_SCOPE, r):>13}" for r in OUT_RULES))
    rejected_rules = sorted({r for _, c, r in counts if c == REJECTED})
    failed = {}
    for (a, c, r), v in counts.items():
        if c in ("failed", "failed_resend") and v:
            failed.setdefault(a, set()).add(r)
    sent = n(None, ACCEPTED) + n(None, REJECTED) + n(None, UNCONFIRMED)
    lines += [
        "",
        f"sent {sent}: accepted {n(None, ACCEPTED)}, rejected {n(None, REJECTED)}"
        + (f" ({', '.join(f'{r} {n(None, REJECTED, r)}' for r in rejected_rules)})" if rejected_rules else "")
        + f", unconfirmed {n(None, UNCONFIRMED)} (sent again next run)"
        + (f"; deferred {n(None, 'deferred')} (replacement CPR taken meanwhile)" if n(None, "deferred") else ""),
        "changes to claims already sent (U1-U4): recorded "
        + _by_rule(counts, "change_recorded") + f", accepted {n(None, 'changes_accepted')}, rejected "
        + _by_rule(counts, "changes_rejected") + f", unconfirmed {n(None, 'changes_unconfirmed')}",
        f"eligible {n(None, ELIGIBLE)}, blocked {n(None, BLOCKED)} "
        f"({', '.join(f'{r} {n(None, BLOCKED, r)}' for r in blocked_rules)}), "
        f"already sent in earlier runs {n(None, ALREADY_SENT)}, awaiting verification (T2) {n(None, AWAITING)}, "
        f"not for transfer {n(None, OUT_OF_SCOPE)}"
        + (f" (of which {n(None, OUT_OF_SCOPE, 'T3-backfill')} wait for debitor_backfill: the cut-off moved back)"
           if n(None, OUT_OF_SCOPE, "T3-backfill") else ""),
        "Delivery: accepted/rejected are the debtor system's receipts; a rejection (I3 replacement CPR at Prisme, "
        "M3 claim type not mapped, a call refused with HTTP 4xx, ...) becomes a staff task in FBS (M1) and goes "
        "again under its next FordringID once its data changes in FBS (change_recorded recreate) or an operator "
        "requeues it.",
        "Rules: C3 agency age limit outside the sane range (whole agency held); "
        "T2 compensation awaits verification; T4 liability on a patron group (never transferred); "
        "T5 company without valid CVR; T6 person (or a minor's guardian) without usable CPR; "
        "claims that cannot be built: F1 name or address the schema cannot carry or patron missing, F2 amount not "
        "positive, not exact to the øre or unreadable, or a date unreadable, F3 fee without its loan, F6 material "
        "text the schema cannot carry, I1 replacement CPR impossible or malformed, I2 replacement CPR without "
        "name, C4 minor without name, M1 an unexpected error in that one liability; "
        "T1 created before the cut-off date; T3 closed or sent to collection; T3-backfill in a range a backfill sends.",
    ]
    if failed:
        lines.insert(1, "NEEDS ATTENTION: the work of " + "; ".join(
            f"agency {a} failed part-way ({', '.join(sorted(failed[a]))})" for a in sorted(failed))
            + "; every other agency's work was done")
    return "\n".join(lines)


def format_payments_run(run: RunInfo, counts: Counter, fbs: Engine) -> str:
    """A payments run: files, movements applied per kind and held per reason, per agency."""
    agencies = _agencies(fbs)

    def n(category: str, agency: str | None = None, rule: str | None = None) -> int:
        return sum(v for (a, c, r), v in counts.items()
                   if c == category and (agency is None or a == agency) and (rule is None or r == rule))

    def by_rule(category: str) -> str:
        rules = Counter()
        for (_a, c, r), v in counts.items():
            if c == category:
                rules[r] += v
        return f"{sum(rules.values())}" + (f" ({', '.join(f'{r} {v}' for r, v in sorted(rules.items()))})"
                                           if rules else "")

    lines = [f"fbs-debitor payments run {run.run_id} ({run.kind}): {run.status}" + (f" - {run.error}" if run.error
                                                                                   else ""), ""]
    header = f"{'agency':<8} {'vendor':<8} {'payment':>8} {'write_off':>9} {'reversal':>8} {'repaid':>6} {'held':>5}"
    lines += [header, "-" * len(header)]
    ids = sorted({a for a, _, _ in counts if a != "-"} | set(agencies))
    for a in [*ids, "-", None]:
        if a == "-" and not (n("movements_applied", "-") or n("movements_held", "-")):
            continue
        label = "total" if a is None else ("unknown" if a == "-" else a)
        vendor = agencies.get(a, ("", "", ""))[1] if a else ""
        lines.append(f"{label:<8} {vendor:<8} {n('movements_applied', a, 'payment'):>8} "
                     f"{n('movements_applied', a, 'write_off'):>9} {n('movements_applied', a, 'reversal'):>8} "
                     f"{n('movements_applied', a, 'repayment'):>6} {n('movements_held', a):>5}")
    lines += [
        "",
        f"files: applied {n('files_applied')}, quarantined {by_rule('files_quarantined')}"
        + (f"; not payment files, left in the inbox untouched {by_rule('files_ignored')}"
           if n('files_ignored') else ""),
        f"movements: applied {by_rule('movements_applied')}, held for review {by_rule('movements_held')}, released "
        f"after an earlier hold {n('movements_released')}, delivered again and skipped {n('movements_again')}",
        "Held movements are not booked in FBS; each is a staff task (P_UNKNOWN_CLAIM claim not known, P_OVERPAYMENT "
        "more than the balance, P_CLAIM_CANCELLED, P_REVERSAL_* a reversal that does not match, ...). A quarantined "
        "file (not well-formed, not the schema, DTD/entities, a movement delivered before with other content) "
        "is a staff task too; nothing in it is booked.",
    ]
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple], right: set[int]) -> list[str]:
    """Plain-text columns, each as wide as its widest cell; ``right`` columns right-aligned."""
    cells = [header, *[tuple(str(c) for c in r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    return [line(header), "-" * len(line(header)), *[line(r) for r in cells[1:]]]


def _answers(b: dict) -> tuple:
    return ("-", "-", "-") if b["dry_run"] else (b["accepted"], b["rejected"], b["unconfirmed"])


def format_backfills(backfills: list[dict]) -> str:
    """The list of backfills (``backfill.months.status``) as one table, their notes under it."""
    if not backfills:
        return "no backfill recorded in the ledger"
    rows = [(b["backfill_id"], b["agency"], f"{b['from']} - {b['to']}", "dry run" if b["dry_run"] else "real",
             b["requested_by"], b["status"], f"{b['done']}/{b['chunks']}", b["in_range"], b["claims"], *_answers(b),
             "-" if b["seconds"] is None else f"{b['seconds']:.0f}") for b in backfills]
    lines = _table(("backfill", "agency", "range", "run", "by", "status", "months", "in range", "claims",
                    "accepted", "rejected", "unconf", "seconds"), rows, right={6, 7, 8, 9, 10, 11, 12})
    lines += ["", "months: done/total; in range: liabilities created in the range; claims: sent (a dry run: written); "
              "accepted/rejected/unconf: the debtor system's answers; seconds: from the first month's start to the "
              "last month's end"]
    lines += [f"{b['backfill_id']}: {b['note']}" for b in backfills if b["note"]]
    return "\n".join(lines)


def format_backfill(backfill: dict, months: list[dict], counts: Counter, fbs: Engine) -> str:
    """One whole backfill: what it is, each of its months, and the counts of all its months' runs
    added up, per agency (``months``: ``backfill.months.months_of``; ``counts``: the sum of the
    months' ``run_counts``)."""
    b = backfill
    title = (f"fbs-debitor backfill {b['backfill_id']} of agency {b['agency']} ({b['requested_by']}, "
             f"{'dry run' if b['dry_run'] else 'real'}): {b['status']}")
    head = [title,
            f"range {b['from']} - {b['to']}: {b['done']} of {b['chunks']} month(s) done, {b['in_range']} liabilities "
            f"in range, {b['claims']} claim(s) {'written' if b['dry_run'] else 'sent'}"
            + (f", months run over {b['seconds']:.0f} s" if b["seconds"] is not None else ""),
            *([f"note: {b['note']}"] if b["note"] else []), ""]
    rows = [(m["from"][:7], m["status"], m["in_range"], m["claims"],
             *(("-", "-", "-") if b["dry_run"] else (m["accepted"], m["rejected"], m["unconfirmed"])),
             m["note"] or "") for m in months]
    head += _table(("month", "status", "in range", "claims", "accepted", "rejected", "unconf", "note"), rows,
                   right={2, 3, 4, 5, 6})
    head.append("")
    body = format_run(RunInfo("", "backfill", b["status"], None, None, None, None), counts, fbs,
                      title="All its months' runs together, per agency:")
    return "\n".join([*head, body])
