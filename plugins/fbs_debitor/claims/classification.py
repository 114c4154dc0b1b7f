"""Classification of a liability (C1–C6): minor or adult, account type, claim type, PSRM.

Everything is decided at the liability's creation (C5): the debtor's age on the creation date
against the agency's age limit (C3), and the guardian valid on that date (selected in SQL,
``claim_rows.sql``). A child who has since come of age keeps old liabilities with the guardian of
the time; a guardian set or changed later does not take over older liabilities.
"""

from __future__ import annotations

import datetime as dt

from fbs_debitor.claims.model import (
    ACCOUNT_ADULT,
    ACCOUNT_MINOR_WITH_GUARDIAN,
    ACCOUNT_MINOR_WITHOUT_GUARDIAN,
    CLAIM_COMPENSATION_ACKNOWLEDGED,
    CLAIM_COMPENSATION_NOT_ACKNOWLEDGED,
    CLAIM_FEE,
)
from fbs_debitor.core.settings import age_limit_range

# F4/C6: the PSRM claim type sent with each claim type. The official codes come with the
# municipality's mapping (M3); these are the modelled defaults, kept in this one table.
PSRM_CLAIM_TYPES = {
    CLAIM_FEE: "BIBLIOTEKSGEBYR",
    CLAIM_COMPENSATION_ACKNOWLEDGED: "BIBLIOTEKSERSTATNING_ANERKENDT",
    CLAIM_COMPENSATION_NOT_ACKNOWLEDGED: "BIBLIOTEKSERSTATNING_IKKE_ANERKENDT",
}


class AgeLimitError(ValueError):
    """C3: an agency's age limit that would misclassify everyone (0 and 100 are seen in practice)."""


def check_age_limit(agency_id: str, age_limit: int, limits: tuple[int, int] | None = None) -> None:
    """C3. ``limits``: the allowed range as the run read it once (default: the setting now)."""
    low, high = age_limit_range() if limits is None else limits
    try:
        limit = int(age_limit)
    except (TypeError, ValueError, OverflowError):
        raise AgeLimitError(f"agency {agency_id}: the age limit is not a number (rule C3); every patron would be "
                            "misclassified, so nothing is built for the agency") from None
    if not low <= limit <= high:
        raise AgeLimitError(f"agency {agency_id}: age limit {age_limit} is outside {low}-{high} (rule C3); "
                            "every patron would be misclassified, so nothing is built for the agency")


def age_on(birth_date: dt.date, day: dt.date) -> int:
    """Whole years of age on ``day`` (a 29 February birthday counts from 1 March in other years)."""
    years = day.year - birth_date.year
    if (day.month, day.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def is_minor(birth_date: dt.date, created_on: dt.date, age_limit: int) -> bool:
    """C3/C5: under the agency's age limit on the day the liability was created."""
    return age_on(birth_date, created_on) < age_limit


def account_type(minor: bool, has_guardian: bool) -> str:
    """C1."""
    if not minor:
        return ACCOUNT_ADULT
    return ACCOUNT_MINOR_WITH_GUARDIAN if has_guardian else ACCOUNT_MINOR_WITHOUT_GUARDIAN


def claim_type(kind: str, acknowledged: bool, auto_created: bool, auto_acknowledged_setting: bool) -> str:
    """C2: fees and compensations always travel as different claim types; a compensation is
    'with acknowledgement or receipt' when acknowledged, or when FBS created it automatically and
    the agency counts automatic compensations as acknowledged."""
    if kind == "fee":
        return CLAIM_FEE
    if acknowledged or (auto_created and auto_acknowledged_setting):
        return CLAIM_COMPENSATION_ACKNOWLEDGED
    return CLAIM_COMPENSATION_NOT_ACKNOWLEDGED


def carries_psrm(account: str) -> bool:
    """C6: every claim except a minor's without guardian carries PSRM data."""
    return account != ACCOUNT_MINOR_WITHOUT_GUARDIAN
