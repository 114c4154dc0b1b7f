"""One FBS liability (a row of ``claim_rows.sql``) to a debtor account and claim, or to a Problem
naming the rule that stops it. Pure: no database access, so it is fast and testable on hand-built
rows; replacement CPR numbers it had to create are returned for the caller to persist.

One record never stops another: whatever goes wrong while building one row is that row's
Problem, with the rule, the catalog code and the record's id (an unexpected error too: rule M1,
logged at ERROR with its CPR numbers masked). A value is never altered to make it fit: every text
that travels is checked as it is against what the schema can carry (``claims.carriage``), and one
that cannot travel stops its liability naming the field. Names and streets travel as they are in
FBS, surrounding spaces included (a name of only whitespace counts as missing); a claim line's
words are joined by single spaces (``claims.fields``). The amount must be exact to the øre and
inside the schema's range; it is never rounded. A date that cannot be read or computed (e.g. a
due date after the year 9999) stops the liability too.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import traceback
from decimal import Decimal
from operator import attrgetter

from fbs_debitor.claims import carriage, fields, sf1590
from fbs_debitor.claims import classification as cls
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
from fbs_debitor.core.db import as_bool, as_date, as_datetime
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
    mask_cprs_in,
    random_adult_birth_date,
)
from fbs_debitor.core.settings import BuildSettings, build_settings
from fbs_debitor.eligibility.rules import CHECK_CODES

log = logging.getLogger(__name__)

# The catalog codes (``quality.catalog``) of the rules that have several; the others take the
# rule's own (``eligibility.rules.CHECK_CODES``).
F1_TEXT = "F1_text_cannot_be_sent"
F6_TEXT = "F6_text_cannot_be_sent"
F2_AMOUNT = "F2_amount_not_exact"
F2_DATE = "F2_date_unreadable"
M1_UNEXPECTED = "M1_liability_not_processable"
CENT = Decimal("0.01")
_NOT_XML = carriage._NOT_XML                        # what XML 1.0 cannot carry (``carriage``)
_MAX_SPECIFICATION = sf1590.TEXT_MAX["specification"]
_MAX_LINE = sf1590.TEXT_MAX["line"]


class _Stop(Exception):
    def __init__(self, rule: str, message: str, patron_id: int | None = None, code: str | None = None):
        super().__init__(message)
        self.rule, self.message, self.patron_id, self.code = rule, message, patron_id, code


def _cannot_be_sent(who_da: str, who_en: str, faults: list[tuple[str, str, carriage.Fault]]) -> str:
    """'<who>: <field> kan ikke sendes: <what> / <who>: <field> cannot be sent: <what>'."""
    return (f"{who_da}: " + "; ".join(f"{da} kan ikke sendes: {f.da}" for da, _, f in faults) + " / "
            f"{who_en}: " + "; ".join(f"{en} cannot be sent: {f.en}" for _, en, f in faults))


def _read_date(value, what_da: str, what_en: str, patron_id: int | None = None, moment: bool = False) -> dt.date | None:
    """A date from FBS; one that cannot be read stops the liability (F2), naming the field only."""
    try:
        return as_date(as_datetime(value)) if moment else as_date(value)
    except (ValueError, TypeError, OverflowError):
        raise _Stop("F2", f"{what_da} kan ikke læses som en dato / {what_en} cannot be read as a date", patron_id,
                    F2_DATE) from None


def _address(street, postal_code, city) -> Address | None:
    return Address(street, postal_code, city) if street and street.strip() else None


def _check_party_texts(role: str, patron_id: int, name: str, address: Address | None) -> None:
    """F1: the name and the address parts that travel, as they are."""
    values = [("navnet", "the name", "name", name)]
    if address is not None:
        values.append(("adressen (vej og nr.)", "the street", "street", address.street))
        if address.postal_code:
            values.append(("postnummeret", "the postal code", "postal_code", address.postal_code))
        if address.city:
            values.append(("byen", "the city", "city", address.city))
    faults = [(da, en, f) for da, en, place, value in values if (f := carriage.text_fault(value, place))]
    if faults:
        raise _Stop("F1", _cannot_be_sent(f"{role} (låner {patron_id})", f"patron {patron_id}", faults), patron_id,
                    F1_TEXT)


class _PersonResolver:
    """Identifies persons: a real CPR, else a replacement CPR (existing, or new where enabled)."""

    def __init__(self, built: Built, registry: ReplacementCprRegistry, replacement_enabled: bool, today: dt.date):
        self.built, self.registry, self.enabled, self.today = built, registry, replacement_enabled, today

    def birth_date(self, patron_id: int, cpr: str | None, replacement: str | None, birth) -> tuple[dt.date, bool]:
        """(birth date, known). Unknown: I1's random adult birthday (the patron is treated as adult)."""
        if birth:
            return _read_date(birth, f"Fødselsdatoen for låner {patron_id}", f"the birth date of patron {patron_id}",
                              patron_id), True
        for number in (cpr, replacement):
            found = birth_date_from_cpr(number) if number else None
            if found:
                return found, True
        return random_adult_birth_date(patron_id), False

    def party(self, role: str, patron_id: int, cpr, replacement, birth, name, street, postal_code, city) -> Party:
        if cpr:
            check = None if _foreign_digits(cpr) else check_cpr(cpr, self.today)
            if check is None or check.ok and not carriage.identifier_fits(CPR, check.value):
                raise _Stop("T6", f"{role}: CPR {mask_cpr(cpr)} har andre cifre end 0-9 / the CPR number holds "
                                  "digits other than 0-9", patron_id)
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
            if _foreign_digits(number) or not (is_replacement_cpr(number)
                                               and carriage.identifier_fits(REPLACEMENT_CPR, number)):
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
        _check_party_texts(role, patron_id, name, address)
        if address is None:
            self.built.warnings.append(f"I2 {role} (låner {patron_id}): ingen adresse til erstatnings-CPR / "
                                       "no address to send with the replacement CPR")
        return Party(REPLACEMENT_CPR, number, patron_id, name=name, address=address)


def build(row, registry: ReplacementCprRegistry | None = None, today: dt.date | None = None,
          generation: int = 0, *, settings: BuildSettings | None = None, values: dict | None = None) -> Built:
    """Build the claim of one eligible liability. ``registry`` holds the run's replacement CPRs
    (those in FBS and those assigned in this run); numbers this claim needs that FBS does not
    have yet are returned in ``Built.new_replacement_cprs`` for the caller to persist.
    ``generation`` > 0 builds a later claim of the same liability (its own FordringID, U1).

    ``settings``: the run's snapshot of the settings (``core.settings.build_settings``), read once
    per run by the caller that builds many rows; without it they are read for this call.
    ``values``: the row's dates as ``claims.stream.read_values`` already read them (all readable),
    so they are not parsed twice; without it the row's own values are read here."""
    built = Built()
    today = today or dt.date.today()
    registry = registry if registry is not None else ReplacementCprRegistry()
    try:
        _build(row, built, registry, today, generation, settings or build_settings(), values)
    except _Stop as stop:
        _stopped(built, row, stop)
    except MemoryError:         # the process's, not the record's
        raise
    except Exception as exc:    # a bug or a value of a shape nobody foresaw: this row's Problem only (M1)
        what = _one_line(f"{type(exc).__name__}: {_exception_text(exc)}")
        log.error("liability %s (agency %s) could not be processed (M1): %s\n%s", getattr(row, "liability_id", None),
                  getattr(row, "agency_id", None), what,
                  _printable(mask_cprs_in("".join(traceback.format_exception(exc)))))
        _stopped(built, row, _Stop("M1", f"Mellemværendet kunne ikke behandles (uventet fejl) / the liability could "
                                         f"not be processed (unexpected error): {what}", code=M1_UNEXPECTED))
    return built


def _stopped(built: Built, row, stop: _Stop) -> None:
    built.problem = Problem(getattr(row, "liability_id", None), getattr(row, "agency_id", None),
                            stop.patron_id or getattr(row, "d_patron_id", None), stop.rule, stop.message,
                            stop.code or CHECK_CODES.get(stop.rule))
    built.account = None
    built.tasks.clear()
    built.new_replacement_cprs.clear()


_UNPRINTABLE = re.compile("[^\t\n\u0020-\u007e\u00a0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _printable(text: str) -> str:
    """An error text a log, a finding or a database can hold: other characters escaped (\\xNN)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


def _exception_text(exc: Exception) -> str:
    try:
        return str(exc)
    except Exception:    # an exception whose text itself fails
        return "(no text)"


def _one_line(text: str, most: int = 300) -> str:
    """One line, CPR numbers masked, at most ``most`` characters (an error text, never a value sent)."""
    text = _printable(" ".join(mask_cprs_in(text).split()))
    return text if len(text) <= most else text[:most - 1] + "…"


def _build(row, built: Built, registry: ReplacementCprRegistry, today: dt.date, generation: int,
           settings: BuildSettings, values: dict | None) -> None:
    try:
        cls.check_age_limit(row.agency_id, row.age_limit, settings.age_limit_range)
    except cls.AgeLimitError as exc:
        raise _Stop("C3", str(exc)) from None
    if row.d_patron_id is None:
        raise _Stop("T4", "Lånergruppe uden navngiven ansvarlig låner / patron group without responsible patron",
                    row.b_patron_id)
    amount = values and values["amount"]
    if not (amount and amount > 0):     # read already and positive, else read here (and refused)
        amount = _amount(row.amount)
    if values is None:
        created_on = _read_date(row.created_at, "Oprettelsesdatoen", "the creation date", moment=True)
        loan_date = _read_date(row.loan_date, "Udlånsdatoen", "the loan date")
        loan_due = _read_date(row.due_date, "Afleveringsfristen", "the loan's due date")
        reloan = _read_date(row.reloan_date, "Genudlånsdatoen", "the re-loan date")
        d_birth, g_birth = row.d_birth_date, row.g_birth_date
    else:   # read already (``read_values``): the same values, parsed once
        created = values["created_at"]
        created_on = None if created is None else created.date()
        loan_date, loan_due, reloan = values["loan_date"], values["due_date"], values["reloan_date"]
        d_birth, g_birth = values["d_birth_date"], values["g_birth_date"]
    if created_on is None:
        raise _Stop("F2", "Oprettelsesdatoen mangler / the creation date is missing", code=F2_DATE)
    if row.kind == "fee" and loan_due is None:
        raise _Stop("F3", "Gebyr uden lån: stiftelses- og forfaldsdato kan ikke beregnes / fee without its loan")
    people = _PersonResolver(built, registry, as_bool(row.replacement_cpr_enabled), today)

    minor = None
    if row.d_kind == "company":
        cvr = check_cvr(row.d_cvr)
        if not cvr.ok:
            raise _Stop("T5", f"Virksomhed: {cvr.error}")
        if not carriage.identifier_fits(CVR, cvr.value):
            raise _Stop("T5", "Virksomhed: CVR-nummeret har andre tegn end cifrene 0-9 / the CVR number holds "
                              "characters other than the digits 0-9")
        identification = responsible = Party(CVR, cvr.value, row.d_patron_id)
        account = cls.account_type(minor=False, has_guardian=False)
    elif row.d_kind == "person":
        identification = people.party("Låner", row.d_patron_id, row.d_cpr, row.d_replacement_cpr, d_birth,
                                      row.d_name, row.d_street, row.d_postal_code, row.d_city)
        born, _known = people.birth_date(row.d_patron_id, row.d_cpr, identification.number
                                         if identification.id_kind == REPLACEMENT_CPR else None, d_birth)
        has_guardian = row.g_patron_id is not None
        account = cls.account_type(cls.is_minor(born, created_on, int(row.age_limit)), has_guardian)
        if account != ACCOUNT_ADULT and not (row.d_name and row.d_name.strip()):
            raise _Stop("C4", f"Mindreårig låner {row.d_patron_id} har intet navn; navnet skal med fordringen / "
                              "a minor's claim must carry the child's name (F5)")
        if account == ACCOUNT_MINOR_WITH_GUARDIAN:
            # C4: the guardian of the time is legally responsible; the child's details travel too.
            responsible = people.party("Økonomisk ansvarlig", row.g_patron_id, row.g_cpr, row.g_replacement_cpr,
                                       g_birth, row.g_name, row.g_street, row.g_postal_code, row.g_city)
            fault = carriage.text_fault(row.d_name, "name")
            if fault:
                raise _Stop("F1", _cannot_be_sent(f"Mindreårig låner {row.d_patron_id}", f"patron {row.d_patron_id}",
                                                  [("barnets navn", "the child's name", fault)]), row.d_patron_id,
                            F1_TEXT)
            minor = Minor(identification.id_kind, identification.number, row.d_name, born)
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
            warning = check.warning or (None if carriage.identifier_fits("p_number", row.d_p_number) else
                                        "P-nummeret har andre tegn end cifrene 0-9 og sendes ikke / P-number holds "
                                        "characters other than the digits 0-9, left out")
            p_number = row.d_p_number if not warning else None
            if warning:
                built.warnings.append(f"T5 {warning}")
        if row.d_ean:
            check = check_ean(row.d_ean)
            warning = check.warning or (None if carriage.identifier_fits("ean", row.d_ean) else
                                        "EAN-nummeret er ugyldigt og sendes ikke / invalid EAN number, left out")
            ean = row.d_ean if not warning else None
            if warning:
                built.warnings.append(f"T5 {warning}")

    kind = row.kind
    claim_kind = cls.claim_type(kind, as_bool(row.acknowledged), as_bool(row.auto_created),
                                as_bool(row.auto_compensation_acknowledged))
    try:
        founding = fields.founding_date(kind, created_on, loan_date, loan_due, reloan)
        due = fields.claim_due_date(kind, created_on, loan_due, settings.fee_payment_term_days)
    except fields.DateOutOfRange as exc:
        raise _Stop("F2", f"Mellemværende {row.liability_id}: {exc}", code=F2_DATE) from None
    fordring = fields.fordring_id(row.agency_id, row.liability_id, generation)
    psrm = (PSRM(cls.PSRM_CLAIM_TYPES[claim_kind], founding, max(founding, due))
            if cls.carries_psrm(account) else None)
    _check_material_texts(row)
    specification = fields.specification(fordring, kind, row.number, minor.name if minor else None,
                                         minor.birth_date if minor else None)
    text_lines = fields.text_lines(kind, row.number, row.item_number, founding, row.classification, row.author,
                                   row.title, loan_date, loan_due, minor.number if minor else None, p_number, ean)
    _check_claim_texts(row, specification, text_lines)
    claim = Claim(
        liability_id=row.liability_id, agency_id=row.agency_id, fordring_id=fordring, claim_type=claim_kind,
        amount=amount, created_on=created_on, due_date=due, founding_date=founding, psrm=psrm,
        specification=specification, text_lines=text_lines, minor=minor,
    )
    if row.debtor_vendor == "PRISME" and REPLACEMENT_CPR in (identification.id_kind, responsible.id_kind):
        built.warnings.append("I3 Fujitsu Prisme afviser fordringer på erstatnings-CPR uden manuel proces / "
                              "Prisme rejects claims on a replacement CPR unless handled manually")
    built.account = Account(account, identification, responsible, p_number, ean, (claim,))


def _amount(value) -> Decimal:
    """F2: positive, exact to the øre and inside the schema's range; never rounded. Returned with
    its two decimals (12.3 -> 12.30: the same number)."""
    if value is None:
        raise _Stop("F2", "Beløbet mangler; en fordring skal have et positivt beløb / the amount is missing")
    try:
        amount = carriage.read_amount(value)
    except carriage.NotCarried as exc:
        raise _Stop("F2", f"Beløbet {exc.fault.da} / the amount {exc.fault.en}", code=F2_AMOUNT) from None
    if amount <= 0:
        shown = f"{amount:.2f}" if amount.as_tuple().exponent >= -2 else str(amount)
        raise _Stop("F2", mask_cprs_in(f"Beløbet er {shown} kr.; en fordring skal være positiv / "
                                       "the amount must be positive"))
    fault = carriage.amount_fault(amount)
    if fault:
        raise _Stop("F2", mask_cprs_in(f"Beløbet {amount} kr. kan ikke sendes præcist: {fault.da} / the amount "
                                       f"cannot be sent exactly: {fault.en}"), code=F2_AMOUNT)
    return amount.quantize(CENT)


# The material's and the liability's texts that go into the claim's lines (F6) and specification (F5).
_MATERIAL = (("opstillingen", "the classification", "classification"), ("forfatteren", "the author", "author"),
             ("titlen", "the title", "title"), ("mellemværende-nummeret", "the liability number", "number"),
             ("materialenummeret", "the item number", "item_number"))


_MATERIAL_TEXTS = attrgetter(*(name for _, _, name in _MATERIAL))


def _foreign_digits(value) -> bool:
    """``carriage.foreign_digits``; an ASCII text has no digits but 0-9, so it is answered at once."""
    return not (type(value) is str and value.isascii()) and carriage.foreign_digits(value)


def _all_carried(texts) -> bool:
    """True when the texts among ``texts`` (None and empty ones skipped) together hold no
    character XML cannot carry: then none has a fault of its characters (one check over all of
    them). False when one is not text at all, or a character is not carried: then the texts are
    checked one by one, to name the field."""
    try:
        joined = "".join(filter(None, texts))
    except TypeError:       # a value that is not text
        return False
    return _NOT_XML.search(joined) is None


def _check_material_texts(row) -> None:
    """F6: each text from FBS that goes into the lines, checked as it is (the lines' lengths after)."""
    texts = _MATERIAL_TEXTS(row)
    if texts[3] is not None and _all_carried(texts):     # a number, and every character carried
        return
    faults = []
    for da, en, name in _MATERIAL:
        value = getattr(row, name)
        if value is None and name == "number":
            faults.append((da, en, carriage.Fault("mangler", "is missing")))
        elif value:
            fault = carriage.text_fault(value, None)
            if fault:
                faults.append((da, en, fault))
    if faults:
        raise _Stop("F6", _cannot_be_sent(f"Mellemværende {row.liability_id}", f"liability {row.liability_id}",
                                          faults), code=F6_TEXT)


def _check_claim_texts(row, specification: str, lines: tuple[str, ...]) -> None:
    """F5/F6: the specification and every line as composed, against the schema's lengths."""
    if (len(specification) <= _MAX_SPECIFICATION and all(len(line) <= _MAX_LINE for line in lines)
            and _all_carried((specification, *lines))):
        return
    faults = []
    fault = carriage.text_fault(specification, "specification")
    if fault:
        faults.append(("specifikationsteksten (F5)", "the specification text (F5)", fault))
    for i, line in enumerate(lines, start=1):
        fault = carriage.text_fault(line, "line")
        if fault:
            label = line.split(":", 1)[0] if line.startswith(("Beregnet fra:", "Lånt:")) else line.split(" ", 1)[0]
            parts = _line_parts(row, label)
            faults.append((f"linje {i} ('{label}'{parts[0]})", f"line {i} ('{label}'{parts[1]})", fault))
    if faults:
        raise _Stop("F6", _cannot_be_sent(f"Mellemværende {row.liability_id}", f"liability {row.liability_id}",
                                          faults), code=F6_TEXT)


def _line_parts(row, label: str) -> tuple[str, str]:
    """The lengths of the FBS fields a too-long line is made of, so staff see which to shorten."""
    if label == "Beregnet fra":
        names = (("opstilling", "classification", row.classification), ("forfatter", "author", row.author),
                 ("titel", "title", row.title))
    elif label in ("Gebyr-nr.", "Erstatnings-nr."):
        names = (("mellemværende-nr.", "liability number", row.number),
                 ("materiale-nr.", "item number", row.item_number))
    else:
        return "", ""
    present = [(da, en, len(value)) for da, en, value in names if value]
    return (": " + ", ".join(f"{da} {n} tegn" for da, _, n in present),
            ": " + ", ".join(f"{en} {n} characters" for _, en, n in present))
