"""Identifiers of debtors: CPR, replacement CPR, CVR, P-number, EAN (rules I1–I4, T5, T6).

Checks come from python-stdnum, not hand-written arithmetic. What is an error and what is only a
warning follows the rules: a CPR number that fails modulus-11 is a warning (I4: real numbers
issued since 2007 do), a CVR number that fails it is an error (T5), P-numbers have no reliable
check (one series was issued with wrong weights), EAN numbers carry a GS1 check digit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from stdnum import ean as std_ean
from stdnum.dk import cpr as std_cpr
from stdnum.dk import cvr as std_cvr
from stdnum.exceptions import ValidationError


@dataclass(frozen=True)
class Check:
    ok: bool                 # usable for a transfer
    warning: str | None = None
    error: str | None = None
    value: str | None = None  # the number in compact form (digits only), when usable


def _ascii_digits(value: str) -> bool:
    """0-9 only: ``str.isdigit`` also takes other scripts' digits ('٣', '３', '¹'), which no CPR,
    CVR or P-number has and the schema refuses."""
    return value.isascii() and value.isdigit()


def mask_cpr(value: str | None) -> str:
    """``DDMMYY-****``: the only form in which a CPR number may be printed, logged or reported."""
    if not value:
        return ""
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    return f"{digits[:6]}-****" if len(digits) >= 6 else "******-****"


def mask_cprs_in(text: str | None) -> str:
    """Free text (a debtor system's error text, a payload) with every run of exactly ten digits,
    or ``DDMMYY-SSSS``, cut to ``DDMMYY-****``."""
    if not text:
        return ""
    return re.sub(r"(?<!\d)(\d{6})-?\d{4}(?!\d)", lambda m: f"{m.group(1)}-****", text)


# The checks are pure functions of their input and a patron's number recurs on every one of their
# liabilities, so results are memoised (bounded): a million-liability batch checks each number once.
_MEMO = 1 << 18


def check_cpr(value: str | None, today: dt.date | None = None) -> Check:
    """A real CPR number: 10 digits with a real birth date (error otherwise); modulus-11 is a warning (I4)."""
    return _check_cpr(value, today or dt.date.today())


@lru_cache(maxsize=_MEMO)
def _check_cpr(value: str | None, today: dt.date) -> Check:
    if not value:
        return Check(False, error="CPR mangler / no CPR number")
    try:
        number = std_cpr.compact(value)   # (it also folds other scripts' digits to 0-9: not that)
        if not _ascii_digits(number) or len(number) != 10 or any(ch.isdigit() and not ch.isascii() for ch in value):
            raise ValidationError()
        birth = std_cpr.get_birth_date(number)
    except ValidationError:
        return Check(False, error=f"CPR {mask_cpr(value)} er ugyldigt (format eller dato) / malformed CPR number")
    if birth > today:
        return Check(False, error=f"CPR {mask_cpr(value)} har en fødselsdato i fremtiden / birth date in the future")
    if std_cpr.checksum(number) != 0:
        return Check(True, warning=f"CPR {mask_cpr(value)} fejler modulus-11 (tilladt siden 2007) / fails modulus-11 (I4)",
                     value=number)
    return Check(True, value=number)


def is_replacement_cpr(value: str | None) -> bool:
    """A replacement CPR (I1): 10 digits whose day field is 60–91 (first digit 6–9)."""
    return bool(value) and len(value) == 10 and _ascii_digits(value) and 60 <= int(value[:2]) <= 91


# Messages about CVR, P-number and EAN never repeat the value: a CPR number typed into the wrong
# field must not reach a finding, a report or a log.

@lru_cache(maxsize=_MEMO)
def check_cvr(value: str | None) -> Check:
    """CVR (T5): 8 digits, first not 0, strict modulus-11."""
    if not value or not value.strip():
        return Check(False, error="CVR mangler / no CVR number")
    try:
        number = std_cvr.validate(value)
    except ValidationError:
        return Check(False, error="CVR-nummeret er ugyldigt (8 cifre, modulus-11) / invalid CVR number")
    return Check(True, value=number)


def check_p_number(value: str | None) -> Check:
    """P-number: 10 digits; no checksum is enforced (I4: one series was issued with wrong weights)."""
    if not value:
        return Check(True)
    if not (_ascii_digits(value) and len(value) == 10):
        return Check(True, warning="P-nummeret har ikke 10 cifre og sendes ikke / P-number is not 10 digits, left out")
    return Check(True, value=value)


def check_ean(value: str | None) -> Check:
    """EAN/GLN: 13 digits with a GS1 mod-10 check digit. An invalid one is left out, with a warning."""
    if not value:
        return Check(True)
    if len(value) != 13 or not std_ean.is_valid(value):
        return Check(True, warning="EAN-nummeret er ugyldigt og sendes ikke / invalid EAN number, left out")
    return Check(True, value=value)


# --- birth dates and replacement CPR numbers (I1) -------------------------------------------------

class NoReplacementCpr(ValueError):
    """The birth date cannot be written as a CPR number (years 1858-2057 only)."""


def century_digits(year: int) -> str:
    """The 7th-digit values that place a birth year in its century (CPR-kontoret's table)."""
    if 1900 <= year <= 1999:
        return "0123"
    if 2000 <= year <= 2036:
        return "49"
    if 2037 <= year <= 2057 or 1858 <= year <= 1899:
        return "5678"
    raise NoReplacementCpr(f"birth year {year} cannot be expressed in a CPR number (1858-2057)")


@lru_cache(maxsize=_MEMO)
def birth_date_from_cpr(value: str) -> dt.date | None:
    """The birth date a real or replacement CPR encodes (a replacement's day field minus 60)."""
    if not value or len(value) != 10 or not _ascii_digits(value):
        return None
    day = int(value[:2])
    if day > 60:
        value = f"{day - 60:02d}{value[2:]}"
    try:
        return std_cpr.get_birth_date(value)
    except ValidationError:
        return None


def _stream(*parts) -> int:
    """A deterministic pseudo-random integer from the parts (stable across runs and machines)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


ADULT_BIRTHDAY_REFERENCE = dt.date(2026, 1, 1)


def random_adult_birth_date(patron_id: int) -> dt.date:
    """I1: with no birth date, a birthday that makes the person an adult: 40-70 years before a
    FIXED reference (1 January 2026), chosen from the patron id. Fixed, so the birthday (and the
    replacement CPR built from it) is the same whenever it is computed, and the person is an adult
    for any liability created after 2004."""
    n = _stream("adult-birthday", patron_id)
    years = 40 + n % 31
    day_of_year = (n // 31) % 365
    return dt.date(ADULT_BIRTHDAY_REFERENCE.year - years, 1, 1) + dt.timedelta(days=day_of_year)


def replacement_cpr(patron_id: int, birth_date: dt.date, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A replacement CPR for a patron (I1): the birth date with 60 added to the day (so the first
    digit is 6-9 and it can never be a real CPR), a 7th digit that gives the right century, and a
    serial chosen deterministically from the patron id, modulus-11 valid and not in ``taken``."""
    day = f"{birth_date.day + 60:02d}{birth_date.month:02d}{birth_date.year % 100:02d}"
    centuries = century_digits(birth_date.year)
    for attempt in range(100_000):
        n = _stream("replacement-cpr", patron_id, attempt)
        stem = day + centuries[n % len(centuries)] + f"{(n // 7) % 100:02d}"
        weighted = sum(int(d) * w for d, w in zip(stem, (4, 3, 2, 7, 6, 5, 4, 3, 2), strict=True))
        check = (11 - weighted % 11) % 11
        if check == 10:
            continue
        candidate = stem + str(check)
        if candidate not in taken:
            return candidate
    raise RuntimeError(f"no free replacement CPR for the birth date of patron {patron_id}")  # pragma: no cover


class ReplacementCprRegistry:
    """The replacement CPR numbers of one run: those already in FBS (``taken``) and those assigned
    now, so a patron gets ONE number however many of their liabilities are built (I1), and no two
    patrons share one."""

    def __init__(self, taken: set[str] | frozenset[str] = frozenset()):
        self.taken: set[str] = set(taken)
        self.assigned: dict[int, str] = {}

    def number_for(self, patron_id: int, birth_date: dt.date) -> str:
        if patron_id not in self.assigned:
            number = replacement_cpr(patron_id, birth_date, self.taken)
            self.taken.add(number)
            self.assigned[patron_id] = number
        return self.assigned[patron_id]
