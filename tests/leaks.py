"""Finding full CPR numbers in output: ten digits shaped like a CPR or replacement CPR (a day and
month up front), once UUIDs and hex digests are removed (a UUID's hex groups, a payment file's
SHA-256 prefix in a staff task's id or a debtor system's hex movement id can hold ten digits in a
row: an id, not a number about a person)."""

from __future__ import annotations

import re

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
# A digest: 16 or more hex characters standing alone, at least one of them a letter a-f (so a long
# run of digits alone is still looked at).
_HEX_DIGEST = re.compile(r"(?<![0-9A-Za-z])(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,}(?![0-9A-Za-z])")
# DDMMYY(-)SSSS with a real day (01-31) or a replacement CPR's day (61-91) and a real month.
_TEN_DIGITS = re.compile(r"(?<!\d)(?:0[1-9]|[12]\d|3[01]|6[1-9]|[78]\d|9[01])(?:0[1-9]|1[0-2])\d{2}-?\d{4}(?!\d)")


def full_cpr_numbers(text: str) -> list[str]:
    """Ten-digit numbers (also written DDMMYY-SSSS) in ``text``, UUIDs and hex digests excepted;
    masked for display."""
    return [m[:6] + "-****" for m in _TEN_DIGITS.findall(_HEX_DIGEST.sub(" ", _UUID.sub(" ", text)))]

