"""Danish formats for what library staff read (M4): amounts, dates, counts, and the Danish half of a
finding's message.

- Amounts: ``-30,00 kr.``, ``1.234,50 kr.`` from an exact ``Decimal`` (or ``int``); never a float,
  never rounded: an amount with more than two decimals is shown with all of them (``12,345 kr.``),
  one with fewer gets its øre (``12,5`` -> ``12,50``, the same number).
- Dates: ``30.11.2026`` (dd.mm.åååå), everywhere staff read one.
- Counts: ``12.345``.
- Messages: findings are written "Danish / English" (the English half is for the integration
  team's logs); staff get the Danish half, with its amounts and ISO dates in the formats above.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

_AMOUNT_IN_TEXT = re.compile(r"(?<![\d.,])(-?\d+(?:\.\d+)?) kr\.")
_ISO_DATE_IN_TEXT = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d:])")
LANGUAGE_SEPARATOR = " / "


def _exact(value: Decimal | int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"an amount must be a Decimal or int, not {type(value).__name__} (never a float)")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    return amount


def number(value: Decimal | int) -> str:
    """An exact amount the Danish way, without unit: ``-1.234,50``; two decimals at least, every
    decimal it has beyond that (never rounded)."""
    amount = _exact(value)
    if amount.as_tuple().exponent > -2:
        amount = amount.quantize(Decimal("0.01"))          # adds zeros only: exact
    sign, digits = ("-", f"{-amount:f}") if amount.is_signed() and amount != 0 else ("", f"{abs(amount):f}")
    whole, _, decimals = digits.partition(".")
    return f"{sign}{thousands(whole)},{decimals}"


def kroner(value: Decimal | int) -> str:
    """``-30,00 kr.``, ``1.234,50 kr.``."""
    return f"{number(value)} kr."


def csv_amount(value: Decimal | int) -> str:
    """An amount for Danish Excel: decimal comma, no thousands separator, no unit (``-1234,50``), so
    Excel reads it as a number that can be summed."""
    return number(value).replace(".", "")


def thousands(digits: str) -> str:
    """``1234567`` -> ``1.234.567`` (a string of digits)."""
    head = len(digits) % 3 or 3
    return ".".join([digits[:head], *(digits[i:i + 3] for i in range(head, len(digits), 3))])


def count(value: int) -> str:
    """A count: ``12.345``, ``-7``."""
    return ("-" if value < 0 else "") + thousands(str(abs(int(value))))


def date(value: dt.date | dt.datetime) -> str:
    """``30.11.2026``."""
    return f"{value.day:02d}.{value.month:02d}.{value.year:04d}"


def danish_part(message: str) -> str:
    """The Danish half of a finding's "Danish / English" message (the whole message when it has no
    English half), with amounts (``-30.00 kr.``) and ISO dates written the Danish way."""
    danish = message.split(LANGUAGE_SEPARATOR, 1)[0].strip()
    danish = _AMOUNT_IN_TEXT.sub(lambda m: kroner(Decimal(m.group(1))), danish)
    return _ISO_DATE_IN_TEXT.sub(lambda m: f"{m.group(3)}.{m.group(2)}.{m.group(1)}", danish)
