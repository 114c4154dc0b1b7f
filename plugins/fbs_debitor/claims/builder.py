"""One FBS liability (a row of ``claim_rows.sql``) to a debtor account and claim, or to a Problem
naming the rule that stops it. Pure: no database access, so it is fast and testable on hand-built
rows; replacement CPR numbers it had to create are returned for the caller to persist.
"""

from __future__ import annotations

import datetime as dt

from fbs_debitor.claims import classification as cls
from fbs_debitor.claims import fields
from fbs_debitor.claims.model import (
    ACCOUNT_ADULT,
    ACCOUNT_MINOR_WITH_GUARDIAN,
    ACCOUNT_MINOR_WITHOUT_GUARDIAN,
    CPR,
    CVR,
    PSRM,
    REPLACEMENT_CPR,
    Account,
    Address,
    Built,
    Claim,
    Minor,
    Party,
    Problem,
    StaffTask,
)
from fbs_debitor.core.db import as_amount, as_bool, as_date, as_datetime
from fbs_debitor.core.identity import (
    NoReplacementCpr,
    ReplacementCprRegistry,
    birth_date_from_cpr,
    check_cpr,
    check_cvr,
    check_ean,
    check_p_number,
    is_replacement_cpr,
    mask_cpr,
    random_adult_birth_date,
)


class _Stop(Exception):
    def __init__(self, rule: str, message: str, patron_id: int | None = None):
        super().__init__(message)
        self.rule, self.message, self.patron_id = rule, message, patron_id


def _address(street, postal_code, city) -> Address | None:
    return Address(street.strip(), postal_code, city) if street and street.strip() else None


class _PersonResolver:
    """Identifies persons: a real CPR, else a replacement CPR (existing, or new where enabled)."""

    def __init__(self, built: Built, registry: ReplacementCprRegistry, replacement_enabled: bool, today: dt.date):
        self.built, self.registry, self.enabled, self.today = built, registry, replacement_enabled, today

    def birth_date(self, patron_id: int, cpr: str | None, replacement: str | None, birth) -> tuple[dt.date, bool]:
        """(birth date, known). Unknown: I1's random adult birthday (the patron is treated as adult)."""
        if birth:
            return as_date(birth), True
        for number in (cpr, replacement):
            found = birth_date_from_cpr(number) if number else None
            if found:
                return found, True
        return random_adult_birth_date(patron_id), False

    def party(self, role: str, patron_id: int, cpr, replacement, birth, name, street, postal_code, city) -> Party:
        if cpr:
            check = check_cpr(cpr, self.today)
            if not check.ok:
                raise _Stop("T6", f"{role}: {check.error}", patron_id)
            if check.warning:
                self.built.warnings.append(f"I4 {role}: {check.warning}")
            return Party(CPR, check.value, patron_id)
        if not self.enabled:
            raise _Stop("T6", f"{role} (låner {patron_id}) har intet CPR-nummer, og erstatnings-CPR er slået fra / "
                              "no CPR number and replacement CPR is disabled", patron_id)
        if replacement and replacement.strip():
            # A stored number is kept whatever happens (I1): a malformed one is for staff to fix,
            # never silently replaced by a new one that FBS would not know.
            number = replacement.strip()
            if not is_replacement_cpr(number):
                raise _Stop("I1", f"{role} (låner {patron_id}): erstatnings-CPR i FBS er ugyldigt "
                                  f"({mask_cpr(number)}) / the replacement CPR stored in FBS is malformed", patron_id)
        else:
            born, known = self.birth_date(patron_id, None, None, birth)
            if not known:
                self.built.warnings.append(
                    f"I1 {role} (låner {patron_id}): ingen fødselsdato, erstatnings-CPR dannet med tilfældig "
                    "voksen fødselsdag / no birth date: replacement CPR from a random adult birthday")
            try:
                number = self.registry.number_for(patron_id, born)
            except NoReplacementCpr as exc:
                raise _Stop("I1", f"{role} (låner {patron_id}): fødselsdatoen {born} kan ikke skrives som "
                                  f"erstatnings-CPR / {exc}", patron_id) from None
            self.built.new_replacement_cprs[patron_id] = number
        # I2: name and address travel with a replacement CPR.
        if not (name and name.strip()):
            raise _Stop("I2", f"{role} (låner {patron_id}) har erstatnings-CPR men intet navn / "
                              "a replacement CPR must travel with the name", patron_id)
        address = _address(street, postal_code, city)
        if address is None:
            self.built.warnings.append(f"I2 {role} (låner {patron_id}): ingen adresse til erstatnings-CPR / "
                                       "no address to send with the replacement CPR")
        return Party(REPLACEMENT_CPR, number, patron_id, name=name.strip(), address=address)


def build(row, registry: ReplacementCprRegistry | None = None, today: dt.date | None = None,
          generation: int = 0) -> Built:
    """Build the claim of one eligible liability. ``registry`` holds the run's replacement CPRs
    (those in FBS and those assigned in this run); numbers this claim needs that FBS does not
    have yet are returned in ``Built.new_replacement_cprs`` for the caller to persist.
    ``generation`` > 0 builds a later claim of the same liability (its own FordringID, U1)."""
    built = Built()
    today = today or dt.date.today()
    registry = registry if registry is not None else ReplacementCprRegistry()
    try:
        _build(row, built, registry, today, generation)
    except _Stop as stop:
        built.problem = Problem(row.liability_id, row.agency_id, stop.patron_id or row.d_patron_id, stop.rule,
                                stop.message)
        built.account = None
        built.tasks.clear()
        built.new_replacement_cprs.clear()
    return built


def _build(row, built: Built, registry: ReplacementCprRegistry, today: dt.date, generation: int) -> None:
    try:
        cls.check_age_limit(row.agency_id, row.age_limit)
    except cls.AgeLimitError as exc:
        raise _Stop("C3", str(exc)) from None
    if row.d_patron_id is None:
        raise _Stop("T4", "Lånergruppe uden navngiven ansvarlig låner / patron group without responsible patron",
                    row.b_patron_id)
    amount = as_amount(row.amount)
    if amount is None or amount <= 0:
        raise _Stop("F2", f"Beløbet er {amount} kr.; en fordring skal være positiv / the amount must be positive")
    created_on = as_date(as_datetime(row.created_at))
    loan_date, loan_due, reloan = as_date(row.loan_date), as_date(row.due_date), as_date(row.reloan_date)
    if row.kind == "fee" and loan_due is None:
        raise _Stop("F3", "Gebyr uden lån: stiftelses- og forfaldsdato kan ikke beregnes / fee without its loan")
    people = _PersonResolver(built, registry, as_bool(row.replacement_cpr_enabled), today)

    minor = None
    if row.d_kind == "company":
        cvr = check_cvr(row.d_cvr)
        if not cvr.ok:
            raise _Stop("T5", f"Virksomhed: {cvr.error}")
        identification = responsible = Party(CVR, cvr.value, row.d_patron_id)
        account = cls.account_type(minor=False, has_guardian=False)
    elif row.d_kind == "person":
        identification = people.party("Låner", row.d_patron_id, row.d_cpr, row.d_replacement_cpr, row.d_birth_date,
                                      row.d_name, row.d_street, row.d_postal_code, row.d_city)
        born, _known = people.birth_date(row.d_patron_id, row.d_cpr, identification.number
                                         if identification.id_kind == REPLACEMENT_CPR else None, row.d_birth_date)
        has_guardian = row.g_patron_id is not None
        account = cls.account_type(cls.is_minor(born, created_on, int(row.age_limit)), has_guardian)
        if account != ACCOUNT_ADULT and not (row.d_name and row.d_name.strip()):
            raise _Stop("C4", f"Mindreårig låner {row.d_patron_id} har intet navn; navnet skal med fordringen / "
                              "a minor's claim must carry the child's name (F5)")
        if account == ACCOUNT_MINOR_WITH_GUARDIAN:
            # C4: the guardian of the time is legally responsible; the child's details travel too.
            responsible = people.party("Økonomisk ansvarlig", row.g_patron_id, row.g_cpr, row.g_replacement_cpr,
                                       row.g_birth_date, row.g_name, row.g_street, row.g_postal_code, row.g_city)
            minor = Minor(identification.id_kind, identification.number, row.d_name.strip(), born)
        else:
            responsible = identification
        if account == ACCOUNT_MINOR_WITHOUT_GUARDIAN and row.gnow_patron_id is None:
            # C5: the task is for a minor's claim sent while FBS has no guardian for the child; a
            # guardian registered since creation does not take the claim over, but means no task.
            built.tasks.append(StaffTask(
                task_id=f"C5-{row.liability_id}", agency_id=row.agency_id, branch_id=row.b_branch_id,
                patron_id=row.d_patron_id, liability_id=row.liability_id, kind="C5_minor_without_guardian",
                message=(f"Mellemværende {row.number} for mindreårig låner {row.d_patron_id} "
                         f"({mask_cpr(identification.number)}) er sendt uden økonomisk ansvarlig; det kan ikke "
                         "sendes til inddrivelse. / A minor's liability was sent without a financially "
                         "responsible guardian (C5); it cannot go to collection.")))
    else:
        raise _Stop("T4", f"Låner {row.d_patron_id} af typen {row.d_kind!r} kan ikke være debitor")

    p_number = ean = None
    if row.d_kind == "company":
        if row.d_p_number:
            check = check_p_number(row.d_p_number)
            p_number = row.d_p_number if not check.warning else None
            if check.warning:
                built.warnings.append(f"T5 {check.warning}")
        if row.d_ean:
            check = check_ean(row.d_ean)
            ean = row.d_ean if not check.warning else None
            if check.warning:
                built.warnings.append(f"T5 {check.warning}")

    kind = row.kind
    claim_kind = cls.claim_type(kind, as_bool(row.acknowledged), as_bool(row.auto_created),
                                as_bool(row.auto_compensation_acknowledged))
    founding = fields.founding_date(kind, created_on, loan_date, loan_due, reloan)
    due = fields.claim_due_date(kind, created_on, loan_due)
    fordring = fields.fordring_id(row.agency_id, row.liability_id, generation)
    psrm = (PSRM(cls.PSRM_CLAIM_TYPES[claim_kind], founding, max(founding, due))
            if cls.carries_psrm(account) else None)
    claim = Claim(
        liability_id=row.liability_id, agency_id=row.agency_id, fordring_id=fordring, claim_type=claim_kind,
        amount=amount, created_on=created_on, due_date=due, founding_date=founding, psrm=psrm,
        specification=fields.specification(fordring, kind, row.number, minor.name if minor else None,
                                           minor.birth_date if minor else None),
        text_lines=fields.text_lines(kind, row.number, row.item_number, founding, row.classification, row.author,
                                     row.title, loan_date, loan_due, minor.number if minor else None, p_number, ean),
        minor=minor,
    )
    if row.debtor_vendor == "PRISME" and REPLACEMENT_CPR in (identification.id_kind, responsible.id_kind):
        built.warnings.append("I3 Fujitsu Prisme afviser fordringer på erstatnings-CPR uden manuel proces / "
                              "Prisme rejects claims on a replacement CPR unless handled manually")
    built.account = Account(account, identification, responsible, p_number, ean, (claim,))
