"""The fields of a claim (F2–F6): dates, the claim's identification and its texts.

F2 due date     compensation: the loan's due date, or the creation date when there is no loan;
                fee: the overdue date (the day after the loan's due date) plus the fee payment
                term, a setting (FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS, default 30 days).
F3 founding     fee: the day after the loan's due date; compensation: the re-loan date when the
                item was re-loaned, else the loan date; no loan: the creation date.
F4 PSRM period  from the founding date to the due date.
F5 specification  "<FordringID> Gebyr-nr. <no>" / "... Erstatnings-nr. <no>", plus the minor's name and
                birth date when a guardian is responsible.
F6 text lines   "Beregnet fra: <founding date> <classification> <author> <title>",
                "Lånt: <loan date> Afl.frist: <due date>",
                "Gebyr-nr. <no> Materiale-nr. <item>" (or Erstatnings-nr.),
                and, where any is relevant, "CPR (mindreårig): <cpr> P-nr.: <p> EAN: <ean>".
Dates in texts are written dd.mm.yyyy. A line is one line: the whitespace between its words,
whatever it is in FBS, is written as one space (as every claim sent so far). Nothing else is
changed, and nothing is cut: a line or specification longer than the schema allows, or a value
it cannot carry, is for the builder to stop on (``claims.carriage``), never to shorten.
"""

from __future__ import annotations

import datetime as dt

from fbs_debitor.core import settings


class DateOutOfRange(ValueError):
    """A claim date that falls outside the calendar (years 1-9999): Danish / English."""


def fee_payment_term_days() -> int:
    """The setting, parsed and checked (``core.settings``); a run reads it once (``BuildSettings``)."""
    return settings.fee_payment_term_days()


def fordring_id(agency_id: str, liability_id: int, generation: int = 0) -> str:
    """Stable per liability across runs; a later generation (an increase sent as cancellation plus
    a new claim, U1) gets its own id."""
    base = f"FBS-{agency_id}-{liability_id}"
    return base if generation == 0 else f"{base}-{generation}"


def generation_of(fordring: str, agency_id: str, liability_id: int) -> int | None:
    """The generation a FordringID was made for, or None when it is not this liability's."""
    base = fordring_id(agency_id, liability_id)
    if fordring == base:
        return 0
    rest = fordring[len(base) + 1:] if fordring.startswith(base + "-") else ""
    return int(rest) if rest.isdigit() and int(rest) > 0 else None


def founding_date(kind: str, created_on: dt.date, loan_date: dt.date | None, due_date: dt.date | None,
                  reloan_date: dt.date | None) -> dt.date:
    """F3."""
    if kind == "fee":
        if due_date is None:
            raise ValueError("a fee needs its loan's due date (F3)")
        return _plus(due_date, 1, "stiftelsesdatoen", "the founding date")
    if loan_date is None:
        return created_on
    return reloan_date or loan_date


def claim_due_date(kind: str, created_on: dt.date, loan_due_date: dt.date | None,
                   term_days: int | None = None) -> dt.date:
    """F2. ``term_days``: the fee payment term as the run read it once (default: the setting now)."""
    if kind == "fee":
        if loan_due_date is None:
            raise ValueError("a fee needs its loan's due date (F2)")
        term = fee_payment_term_days() if term_days is None else term_days
        return _plus(loan_due_date, 1 + term, "forfaldsdatoen", "the due date")
    return loan_due_date or created_on


def _plus(day: dt.date, days: int, what_da: str, what_en: str) -> dt.date:
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        raise DateOutOfRange(f"{what_da} kan ikke beregnes: afleveringsfristen {ddmmyyyy(day)} + {days} dage ligger "
                             f"uden for kalenderen (år 1-9999) / {what_en} cannot be computed: the loan's due date "
                             f"plus {days} days is outside the calendar (years 1-9999)") from None


def ddmmyyyy(day: dt.date) -> str:
    """dd.mm.yyyy, the year always with four digits (``strftime`` writes the year 1 as "1")."""
    return f"{day.day:02d}.{day.month:02d}.{day.year:04d}"


def _line(text: str) -> str:
    return " ".join(text.split())


def _number_label(kind: str) -> str:
    return "Gebyr-nr." if kind == "fee" else "Erstatnings-nr."


def specification(fordring: str, kind: str, number: str, minor_name: str | None = None,
                  minor_birth_date: dt.date | None = None) -> str:
    """F5."""
    text = f"{fordring} {_number_label(kind)} {number}"
    if minor_name:
        text += f" {minor_name} f. {ddmmyyyy(minor_birth_date)}" if minor_birth_date else f" {minor_name}"
    return text


def text_lines(kind: str, number: str, item_number: str | None, founding: dt.date,
               classification: str | None, author: str | None, title: str | None,
               loan_date: dt.date | None, loan_due_date: dt.date | None,
               minor_cpr: str | None = None, p_number: str | None = None, ean: str | None = None) -> tuple[str, ...]:
    """F6, one line each."""
    material = " ".join(filter(None, (classification, author, title)))
    lines = [_line(f"Beregnet fra: {ddmmyyyy(founding)} {material}")]
    if loan_date and loan_due_date:     # two dates and single spaces: one line as it is
        lines.append(f"Lånt: {ddmmyyyy(loan_date)} Afl.frist: {ddmmyyyy(loan_due_date)}")
    lines.append(_line(f"{_number_label(kind)} {number}" + (f" Materiale-nr. {item_number}" if item_number else "")))
    extra = []
    if minor_cpr:
        extra.append(f"CPR (mindreårig): {minor_cpr}")
    if p_number:
        extra.append(f"P-nr.: {p_number}")
    if ean:
        extra.append(f"EAN: {ean}")
    if extra:
        lines.append(_line(" ".join(extra)))
    return tuple(lines)
