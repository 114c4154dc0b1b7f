"""What the SF1590 schema can carry, checked on a value exactly as it is: nothing here alters one.

A text travels only if XML 1.0 can carry each of its characters (``Char``: tab, line feed,
carriage return, U+0020-U+D7FF, U+E000-U+FFFD, U+10000-U+10FFFF) and it is no longer than its
place in the schema allows (``sf1590.TEXT_MAX``). So no NUL or other C0 control character, no
U+FFFE/U+FFFF, and no lone surrogate: a byte that was not UTF-8, read with
``errors='surrogateescape'``, arrives as one (U+DC80-U+DCFF) and is named as that byte. C1
controls (U+007F-U+009F) are characters XML 1.0 carries, and they travel as they are.

An amount travels only if it is a finite number exact to the øre (12.340 is, 12.345 is not) and
inside the schema's range (``sf1590.AMOUNT_*``: at most 10 digits before the decimal point, as
it is always written with two after it).

A check answers what is wrong in Danish and English (``Fault``), and never repeats the value: it
could be a CPR number typed into the wrong field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from fbs_debitor.claims import sf1590 as schema


@dataclass(frozen=True)
class Fault:
    """What is wrong with a value, Danish and English, without the value."""

    da: str
    en: str


class NotCarried(ValueError):
    """A value the schema cannot carry as it is (``fault`` says why)."""

    def __init__(self, fault: Fault):
        super().__init__(f"{fault.da} / {fault.en}")
        self.fault = fault


# Everything outside XML 1.0's Char production.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ID_PATTERNS = {kind: re.compile(pattern) for kind, pattern in schema.ID_PATTERNS.items()}


def _character(ch: str, position: int) -> Fault:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:      # surrogateescape: the byte that was not UTF-8
        return Fault(f"byte 0x{code - 0xDC00:02X}, som ikke er UTF-8, på plads {position}",
                     f"byte 0x{code - 0xDC00:02X} that is not UTF-8 at position {position}")
    if 0xD800 <= code <= 0xDFFF:
        return Fault(f"enligt surrogat U+{code:04X} på plads {position}",
                     f"lone surrogate U+{code:04X} at position {position}")
    if code in (0xFFFE, 0xFFFF):
        return Fault(f"ikke-tegnet U+{code:04X} på plads {position}",
                     f"non-character U+{code:04X} at position {position}")
    return Fault(f"styretegn U+{code:04X} på plads {position}", f"control character U+{code:04X} at position {position}")


def character_fault(value: str) -> Fault | None:
    """The first character XML 1.0 cannot carry (position counted from 1), or None."""
    found = _NOT_XML.search(value)
    return _character(found.group(), found.start() + 1) if found else None


def text_fault(value, place: str | None) -> Fault | None:
    """Why ``value`` cannot travel in ``place`` (a key of ``sf1590.TEXT_MAX``; None: only its
    characters, for a part of a longer text), or None."""
    if not isinstance(value, str):
        return Fault(f"er ikke tekst ({type(value).__name__})", f"is not text ({type(value).__name__})")
    fault = character_fault(value)
    if fault:
        return fault
    most = schema.TEXT_MAX[place] if place else None
    if most is not None and len(value) > most:
        return Fault(f"{len(value)} tegn, højst {most}", f"{len(value)} characters, at most {most}")
    return None


def identifier_fits(kind: str, value: str) -> bool:
    """An identifier (a key of ``sf1590.ID_PATTERNS``: CPR, replacement CPR, CVR, P-number, EAN)
    matches its schema pattern, ASCII digits only (``str.isdigit`` also takes e.g. '٣' and '²')."""
    return isinstance(value, str) and _ID_PATTERNS[kind].fullmatch(value) is not None


def foreign_digits(value: str) -> bool:
    """Holds a digit other than 0-9 ('٣', '３', '¹'): ``str.isdigit`` takes them, the schema does
    not, and ``int()`` fails on some."""
    return any(ch.isdigit() and not "0" <= ch <= "9" for ch in value)


_UNREADABLE = Fault("kan ikke læses som et tal", "cannot be read as a number")


def read_amount(value) -> Decimal:
    """An amount from FBS as the exact number it is, never rounded (a float, as SQLite returns a
    NUMERIC, by its shortest decimal form). Raises NotCarried when it is no finite number."""
    if isinstance(value, bool):
        raise NotCarried(_UNREADABLE)
    try:
        if isinstance(value, Decimal):
            amount = value
        elif isinstance(value, int | str):
            amount = Decimal(value)
        elif isinstance(value, float):
            amount = Decimal(repr(value))
        else:
            raise NotCarried(_UNREADABLE)
    except (InvalidOperation, ValueError, TypeError):
        raise NotCarried(_UNREADABLE) from None
    if not amount.is_finite():
        raise NotCarried(_UNREADABLE)
    return amount


def amount_fault(amount: Decimal) -> Fault | None:
    """Why a finite positive amount cannot travel exactly (more decimals than øre, too many digits
    before the decimal point), or None."""
    sign, digits, exponent = amount.as_tuple()
    significant = len(digits)
    while significant > 1 and digits[significant - 1] == 0:     # 12.340 is 12.34
        significant -= 1
        exponent += 1
    decimals = -exponent if exponent < 0 else 0
    if decimals > schema.AMOUNT_FRACTION_DIGITS:
        return Fault(f"{decimals} decimaler, højst {schema.AMOUNT_FRACTION_DIGITS} (øre); det rundes aldrig af",
                     f"{decimals} decimals, at most {schema.AMOUNT_FRACTION_DIGITS} (øre); never rounded")
    whole = max(amount.adjusted() + 1, 0)
    most = schema.AMOUNT_TOTAL_DIGITS - schema.AMOUNT_FRACTION_DIGITS
    if whole > most:
        return Fault(f"{whole} cifre før kommaet, højst {most}", f"{whole} digits before the decimal point, at most {most}")
    return None
