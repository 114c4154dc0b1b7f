"""Identifiers of debtors: CPR, replacement CPR, CVR, P-number, EAN (rules I1–I4, T5, T6).

Checks come from python-stdnum, not hand-written arithmetic. What is an error and what is only a
warning follows the rules: a CPR number that fails modulus-11 is a warning (I4: real numbers
issued since 2007 do), a CVR number that fails it is an error (T5), P-numbers have no reliable
check (one series was issued with wrong weights), EAN numbers carry a GS1 check digit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from stdnum import ean as std_ean
from stdnum.dk import cpr as std_cpr
from stdnum.dk import cvr as std_cvr
from stdnum.exceptions import ValidationError


@dataclass(frozen=True)
class Check:
    ok: bool                 # usable for a transfer
    warning: str | None = None
    error: str | None = None


def mask_cpr(value: str | None) -> str:
    """``DDMMYY-****``: the only form in which a CPR number may be printed, logged or reported."""
    if not value:
        return ""
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    return f"{digits[:6]}-****" if len(digits) >= 6 else "******-****"


def check_cpr(value: str | None, today: dt.date | None = None) -> Check:
    """A real CPR number: 10 digits with a real birth date (error otherwise); modulus-11 is a warning (I4)."""
    if not value:
        return Check(False, error="CPR mangler / no CPR number")
    try:
        number = std_cpr.compact(value)
        if not number.isdigit() or len(number) != 10:
            raise ValidationError()
        birth = std_cpr.get_birth_date(number)
    except ValidationError:
        return Check(False, error=f"CPR {mask_cpr(value)} er ugyldigt (format eller dato) / malformed CPR number")
    if birth > (today or dt.date.today()):
        return Check(False, error=f"CPR {mask_cpr(value)} har en fødselsdato i fremtiden / birth date in the future")
    if std_cpr.checksum(number) != 0:
        return Check(True, warning=f"CPR {mask_cpr(value)} fejler modulus-11 (tilladt siden 2007) / fails modulus-11 (I4)")
    return Check(True)


def is_replacement_cpr(value: str | None) -> bool:
    """A replacement CPR (I1): 10 digits whose day field is 60–91 (first digit 6–9)."""
    return bool(value) and len(value) == 10 and value.isdigit() and 60 <= int(value[:2]) <= 91


def check_cvr(value: str | None) -> Check:
    """CVR (T5): 8 digits, first not 0, strict modulus-11."""
    if not value:
        return Check(False, error="CVR mangler / no CVR number")
    try:
        std_cvr.validate(value)
    except ValidationError:
        return Check(False, error=f"CVR {value} er ugyldigt (modulus-11) / invalid CVR number")
    return Check(True)


def check_p_number(value: str | None) -> Check:
    """P-number: 10 digits; no checksum is enforced (I4: one series was issued with wrong weights)."""
    if not value:
        return Check(True)
    if not (value.isdigit() and len(value) == 10):
        return Check(True, warning=f"P-nummer {value} har ikke 10 cifre / P-number is not 10 digits")
    return Check(True)


def check_ean(value: str | None) -> Check:
    """EAN/GLN: 13 digits with a GS1 mod-10 check digit. An invalid one is left out, with a warning."""
    if not value:
        return Check(True)
    if len(value) != 13 or not std_ean.is_valid(value):
        return Check(True, warning=f"EAN {value} er ugyldigt / invalid EAN number")
    return Check(True)
