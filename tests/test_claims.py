"""Identity (I1–I4), classification (C1–C6) and claim fields (F1–F6) on hand-built rows.

Each test names the rule it checks; each would fail if its rule were broken.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from claim_rows import TODAY, child, row
from fbs_rows import ADULT2_CPR, ADULT_CPR, INVALID_CVR, MOD11_FAIL_CPR, VALID_CVR
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.dk import cpr as std_cpr

from fbs_debitor.claims import model as C
from fbs_debitor.claims.builder import build
from fbs_debitor.core.identity import (
    ReplacementCprRegistry,
    birth_date_from_cpr,
    century_digits,
    check_cpr,
    check_cvr,
    is_replacement_cpr,
    mask_cpr,
    random_adult_birth_date,
    replacement_cpr,
)
from fbs_debitor.eligibility.rules import CHECK_CODES

CHILD_CPR = "0303154124"       # born 3 Mar 2015, modulus-11 valid


def built(r, registry=None):
    return build(r, registry, TODAY)


def ok(r, registry=None):
    result = built(r, registry)
    assert result.problem is None, result.problem
    return result, result.account, result.account.claims[0]


# --- I1–I4: identity ---------------------------------------------------------------------------

def test_I1_replacement_cpr_is_built_from_the_birth_date():
    number = replacement_cpr(11, dt.date(1981, 7, 7))
    assert number[:6] == "670781"                 # the 7th becomes "67" (day + 60), month, year
    assert number[6] in "0123"                    # 1900s century digit
    assert is_replacement_cpr(number) and birth_date_from_cpr(number) == dt.date(1981, 7, 7)
    assert not check_cpr(number).ok               # never a real CPR: no such day


def test_I1_patron_without_cpr_gets_a_replacement_with_name_and_address_I2():
    result, account, _ = ok(row(d_cpr=None))
    ident = account.identification
    assert ident.id_kind == C.REPLACEMENT_CPR and ident.number.startswith("670781")
    assert ident.name == "Karen Jensen" and ident.address.street == "Bibliotekvej 1"   # I2
    assert result.new_replacement_cprs == {11: ident.number}


def test_I1_existing_replacement_cpr_is_kept_not_regenerated():
    result, account, _ = ok(row(d_cpr=None, d_replacement_cpr="6707811230"))
    assert account.identification.number == "6707811230"
    assert result.new_replacement_cprs == {}


def test_I1_no_birth_date_means_a_random_adult_birthday_and_an_adult_account():
    result, account, _ = ok(row(d_cpr=None, d_birth_date=None))
    born = birth_date_from_cpr(account.identification.number)
    assert born == random_adult_birth_date(11)
    assert 40 <= (dt.date(2026, 1, 1) - born).days // 365 <= 71
    assert account.account_type == C.ACCOUNT_ADULT
    assert any(w.startswith("I1") for w in result.warnings)
    # The same number whenever it is computed: the birthday does not drift with the calendar.
    later = build(row(d_cpr=None, d_birth_date=None), None, dt.date(2031, 1, 2)).account
    assert later.identification.number == account.identification.number


def test_I1_birth_date_a_cpr_cannot_express_is_a_problem_not_a_crash():
    for born in (dt.date(1850, 5, 1), dt.date(2060, 5, 1)):
        result = built(row(d_cpr=None, d_birth_date=born))
        assert result.account is None and result.problem.rule == "I1"


def test_I1_malformed_stored_replacement_cpr_blocks_and_is_never_replaced():
    result = built(row(d_cpr=None, d_replacement_cpr="12345"))
    assert result.problem.rule == "I1" and result.new_replacement_cprs == {}
    assert "12345" not in result.problem.message


def test_I2_replacement_cpr_without_a_name_is_a_problem():
    assert built(row(d_cpr=None, d_name="  ")).problem.rule == "I2"
    result, account, _ = ok(row(d_cpr=None, d_street=None))
    assert account.identification.address is None and any(w.startswith("I2") for w in result.warnings)


def test_identifiers_are_sent_in_compact_form():
    _, account, _ = ok(row(d_cpr="070781-1234"))
    assert account.identification.number == ADULT_CPR
    company = row(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr="13 58 56 28")
    assert ok(company)[1].identification.number == VALID_CVR


def test_I1_replacement_cpr_is_deterministic_and_avoids_numbers_in_use():
    first = replacement_cpr(11, dt.date(1981, 7, 7))
    assert replacement_cpr(11, dt.date(1981, 7, 7)) == first
    second = replacement_cpr(11, dt.date(1981, 7, 7), taken={first})
    assert second != first and second[:6] == "670781"


def test_I1_one_patron_gets_one_replacement_cpr_for_all_their_claims_in_a_run():
    registry = ReplacementCprRegistry(taken={"6707810005"})
    a = ok(row(liability_id=1, d_cpr=None), registry)[1].identification.number
    b = ok(row(liability_id=2, d_cpr=None, kind="compensation", number="E2"), registry)[1].identification.number
    other = ok(row(liability_id=3, d_cpr=None, d_patron_id=12, b_patron_id=12), registry)[1].identification.number
    assert a == b and other != a and "6707810005" not in (a, other)


@settings(max_examples=300, deadline=None)
@given(patron_id=st.integers(min_value=1, max_value=10**12),
       born=st.dates(min_value=dt.date(1858, 1, 1), max_value=dt.date(2057, 12, 31)))
def test_I1_property_replacement_cpr_shape_for_any_birth_date(patron_id, born):
    number = replacement_cpr(patron_id, born)
    assert re.fullmatch(r"(6[1-9]|[78]\d|9[01])(0[1-9]|1[0-2])\d{6}", number)
    assert int(number[:2]) == born.day + 60 and int(number[2:4]) == born.month
    assert number[6] in century_digits(born.year)
    assert birth_date_from_cpr(number) == born          # the century digit places the year right
    assert std_cpr.checksum(number) == 0
    assert replacement_cpr(patron_id, born) == number   # deterministic per patron


@settings(max_examples=100, deadline=None)
@given(patron_ids=st.lists(st.integers(min_value=1, max_value=10**9), min_size=2, max_size=40, unique=True))
def test_I1_property_replacement_cprs_never_collide_for_one_birth_date(patron_ids):
    taken: set[str] = set()
    for pid in patron_ids:
        taken.add(replacement_cpr(pid, dt.date(1990, 1, 1), taken))
    assert len(taken) == len(patron_ids)


def test_I2_real_cpr_travels_without_name_and_address():
    _, account, _ = ok(row())
    assert account.identification.id_kind == C.CPR and account.identification.name is None


def test_I3_prisme_with_replacement_cpr_is_flagged_not_silent():
    result, account, _ = ok(row(d_cpr=None, debtor_vendor="PRISME"))
    assert account.identification.id_kind == C.REPLACEMENT_CPR
    assert any(w.startswith("I3") for w in result.warnings)
    result_kmd, _, _ = ok(row(d_cpr=None, debtor_vendor="KMD_OPUS"))
    assert not any(w.startswith("I3") for w in result_kmd.warnings)


def test_I4_cpr_failing_modulus_11_is_a_warning_cvr_failing_it_is_an_error():
    result, account, _ = ok(row(d_cpr=MOD11_FAIL_CPR))
    assert account.identification.number == MOD11_FAIL_CPR
    assert any(w.startswith("I4") for w in result.warnings)
    assert check_cvr(INVALID_CVR).error and not check_cvr(VALID_CVR).error
    company = built(row(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=INVALID_CVR))
    assert company.problem.rule == "T5"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789-", min_size=0, max_size=12))
def test_I4_property_cpr_check_never_raises_and_masks(value):
    result = check_cpr(value, TODAY)
    text = (result.error or "") + (result.warning or "")
    digits = value.replace("-", "")
    if len(digits) == 10:
        assert digits not in text.replace("-", "")   # never the full number in a message
    assert mask_cpr(value) == "" or mask_cpr(value).endswith("-****")


# --- C1–C6: classification ---------------------------------------------------------------------

def test_C1_account_types_adult_replacement_company_minor_with_and_without_guardian():
    assert ok(row())[1].account_type == C.ACCOUNT_ADULT
    assert ok(row(d_cpr=None))[1].account_type == C.ACCOUNT_ADULT
    company = row(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR)
    assert ok(company)[1].identification.id_kind == C.CVR
    assert ok(company)[1].account_type == C.ACCOUNT_ADULT
    assert ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR))[1].account_type == C.ACCOUNT_MINOR_WITH_GUARDIAN
    assert ok(child(dt.date(2015, 3, 3), guardian=False, d_cpr=CHILD_CPR))[1].account_type == C.ACCOUNT_MINOR_WITHOUT_GUARDIAN


@pytest.mark.parametrize("kind, acknowledged, auto_created, auto_setting, expected", [
    ("fee", False, False, False, C.CLAIM_FEE),
    ("fee", True, True, True, C.CLAIM_FEE),                                 # a fee is always a fee
    ("compensation", True, False, False, C.CLAIM_COMPENSATION_ACKNOWLEDGED),
    ("compensation", False, False, True, C.CLAIM_COMPENSATION_NOT_ACKNOWLEDGED),
    ("compensation", False, True, True, C.CLAIM_COMPENSATION_ACKNOWLEDGED),  # automatic counts as acknowledged
    ("compensation", False, True, False, C.CLAIM_COMPENSATION_NOT_ACKNOWLEDGED),
])
def test_C2_claim_types(kind, acknowledged, auto_created, auto_setting, expected):
    r = row(kind=kind, number=("G" if kind == "fee" else "E") + "501", acknowledged=acknowledged,
            auto_created=auto_created, auto_compensation_acknowledged=auto_setting)
    assert ok(r)[2].claim_type == expected


@pytest.mark.parametrize("age_limit", [0, 100, 14, 22])
def test_C3_broken_age_limit_builds_nothing(age_limit):
    result = built(row(age_limit=age_limit))
    assert result.account is None and result.problem.rule == "C3"
    assert str(age_limit) in result.problem.message


def test_C3_the_agencys_age_limit_decides_minor_or_adult():
    seventeen = child(dt.date(2009, 1, 15))                           # 17 on 2026-04-01
    assert ok(seventeen)[1].account_type == C.ACCOUNT_MINOR_WITH_GUARDIAN
    assert ok(child(dt.date(2009, 1, 15), age_limit=16))[1].account_type == C.ACCOUNT_ADULT


def test_C4_minor_with_guardian_guardian_is_responsible_and_child_travels():
    _, account, claim = ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR))
    assert account.identification.number == CHILD_CPR                 # the borrower identifies the account
    assert account.responsible.number == ADULT2_CPR and account.responsible.patron_id == 22
    assert claim.minor.number == CHILD_CPR and claim.minor.name == "Emil Jensen"
    assert claim.minor.birth_date == dt.date(2015, 3, 3)


def test_C4_minor_without_a_name_is_a_problem_not_an_invalid_message():
    assert built(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, d_name="")).problem.rule == "C4"


def test_C4_minor_without_guardian_is_responsible_themself():
    _, account, claim = ok(child(dt.date(2015, 3, 3), guardian=False, d_cpr=CHILD_CPR))
    assert account.responsible == account.identification and claim.minor is None


def test_C5_fee_created_the_day_before_the_18th_birthday_stays_with_the_guardian():
    born = dt.date(2008, 4, 2)                          # 18 on 2026-04-02; fee created 2026-04-01
    _, account, claim = ok(child(born))
    assert account.account_type == C.ACCOUNT_MINOR_WITH_GUARDIAN and account.responsible.number == ADULT2_CPR
    on_birthday = child(born, created_at=dt.datetime(2026, 4, 2, 10, 0))
    assert ok(on_birthday)[1].account_type == C.ACCOUNT_ADULT


def test_C5_no_task_when_a_guardian_exists_at_sending_though_not_at_creation():
    late_guardian = child(dt.date(2015, 3, 3), guardian=False, d_cpr=CHILD_CPR, gnow_patron_id=22)
    result, account, _ = ok(late_guardian)
    assert account.account_type == C.ACCOUNT_MINOR_WITHOUT_GUARDIAN   # classified as at creation
    assert result.tasks == []                                          # but a guardian exists when sent


def test_C5_minor_without_guardian_raises_a_staff_task_with_masked_cpr():
    result, _, _ = ok(child(dt.date(2015, 3, 3), guardian=False, d_cpr=CHILD_CPR))
    assert [t.kind for t in result.tasks] == ["C5_minor_without_guardian"]
    task = result.tasks[0]
    assert task.task_id == "C5-501" and task.liability_id == 501 and task.branch_id == "715100-01"
    assert CHILD_CPR not in task.message and "030315-****" in task.message


def test_C5_guardian_without_cpr_gets_a_replacement_or_blocks_under_T6():
    r = child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, g_cpr=None, g_birth_date=dt.date(1980, 5, 17))
    result, account, _ = ok(r)
    assert account.responsible.id_kind == C.REPLACEMENT_CPR and account.responsible.name == "Mette Jensen"
    assert 22 in result.new_replacement_cprs
    blocked = built(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, g_cpr=None, replacement_cpr_enabled=False))
    assert blocked.problem.rule == "T6" and blocked.problem.patron_id == 22


def test_C6_psrm_data_on_every_claim_except_a_minor_without_guardian():
    assert ok(row())[2].psrm is not None
    assert ok(row(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR))[2].psrm
    assert ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR))[2].psrm is not None
    assert ok(child(dt.date(2015, 3, 3), guardian=False, d_cpr=CHILD_CPR))[2].psrm is None


# --- F1–F6: claim fields -----------------------------------------------------------------------

def test_F1_company_account_carries_cvr_p_number_and_valid_ean_only():
    company = dict(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR)
    _, account, claim = ok(row(**company, d_p_number="1003388394", d_ean="5790000123452"))
    assert (account.identification.number, account.p_number, account.ean) == (VALID_CVR, "1003388394", "5790000123452")
    result, account, _ = ok(row(**company, d_ean="5790000123457"))         # bad GS1 check digit
    assert account.ean is None and any("EAN" in w for w in result.warnings)


def test_F2_due_dates(monkeypatch):
    comp = ok(row(kind="compensation", number="E501"))[2]
    assert comp.due_date == dt.date(2026, 3, 31)                            # the loan's due date
    no_loan = ok(row(kind="compensation", number="E501", loan_date=None, due_date=None))[2]
    assert no_loan.due_date == dt.date(2026, 4, 1)                          # the creation date
    assert ok(row())[2].due_date == dt.date(2026, 3, 31) + dt.timedelta(days=1 + 30)  # default term
    monkeypatch.setenv("FBS_DEBITOR_FEE_PAYMENT_TERM_DAYS", "14")
    assert ok(row())[2].due_date == dt.date(2026, 4, 15)
    assert built(row(amount=Decimal("0"))).problem.rule == "F2"


def test_F3_founding_dates():
    assert ok(row())[2].founding_date == dt.date(2026, 4, 1)                # fee: day after the due date
    assert ok(row(kind="compensation", number="E501"))[2].founding_date == dt.date(2026, 3, 1)  # loan date
    reloaned = row(kind="compensation", number="E501", reloan_date=dt.date(2026, 3, 20), due_date=dt.date(2026, 4, 19))
    assert ok(reloaned)[2].founding_date == dt.date(2026, 3, 20)           # re-loan date
    assert built(row(loan_date=None, due_date=None)).problem.rule == "F3"   # a fee needs its loan


def test_F4_psrm_period_runs_from_founding_to_due_date():
    claim = ok(row())[2]
    assert (claim.psrm.period_from, claim.psrm.period_to) == (claim.founding_date, claim.due_date)
    assert claim.psrm.claim_type == "BIBLIOTEKSGEBYR"


def test_F5_specification_text():
    assert ok(row())[2].specification == "FBS-715100-501 Gebyr-nr. G501"
    claim = ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, kind="compensation", number="E77"))[2]
    assert claim.specification == "FBS-715100-501 Erstatnings-nr. E77 Emil Jensen f. 03.03.2015"


def test_F6_claim_text_lines():
    assert ok(row())[2].text_lines == (
        "Beregnet fra: 01.04.2026 99.4 Andersen Andersen, H.C. Eventyr og historier",
        "Lånt: 01.03.2026 Afl.frist: 31.03.2026",
        "Gebyr-nr. G501 Materiale-nr. 5000000017",
    )
    minor = ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR))[2]
    assert minor.text_lines[-1] == f"CPR (mindreårig): {CHILD_CPR}"
    company = row(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR,
                  d_p_number="1003388394", d_ean="5790000123452")
    assert ok(company)[2].text_lines[-1] == "P-nr.: 1003388394 EAN: 5790000123452"


def test_F_claim_repr_never_shows_a_full_cpr():
    result, account, claim = ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR))
    text = repr(result) + repr(account) + repr(claim)
    assert CHILD_CPR not in text and ADULT2_CPR not in text and ADULT_CPR not in text
    assert "030315-****" in text


# --- issue 16: a value the schema cannot carry stops its liability, and nothing is altered -------

def stopped(r, code: str, rule: str) -> C.Problem:
    result = built(r)
    assert result.account is None and result.problem is not None, result
    assert (result.problem.rule, result.problem.code) == (rule, code), result.problem
    assert result.tasks == [] and result.new_replacement_cprs == {}
    return result.problem


@pytest.mark.parametrize("over, field, fault", [
    (dict(d_name="Karen\x07Jensen"), "navnet", "styretegn U+0007 på plads 6"),
    (dict(d_street="Bibliotekvej\x0b1"), "adressen (vej og nr.)", "styretegn U+000B på plads 13"),
    (dict(d_city="\x1bAarhus C"), "byen", "styretegn U+001B på plads 1"),
    (dict(d_postal_code="80\x0000"), "postnummeret", "styretegn U+0000 på plads 3"),
    (dict(d_name="Karen J\udce6nsen"), "navnet", "byte 0xE6, som ikke er UTF-8, på plads 8"),   # surrogateescape
    (dict(d_name="Karen \ud800"), "navnet", "enligt surrogat U+D800 på plads 7"),
    (dict(d_street="Vej \ufffe"), "adressen (vej og nr.)", "ikke-tegnet U+FFFE på plads 5"),
])
def test_item1_control_character_in_a_travelling_name_or_address_blocks_that_liability_F1(over, field, fault):
    """Issue 16 item 1: with a replacement CPR the name and address travel (I2); a character XML
    1.0 cannot carry is the liability's F1 finding naming the patron, the field and what is wrong,
    never the value (the old builder left it to lxml, which raised ValueError for the whole run)."""
    problem = stopped(row(d_cpr=None, **over), "F1_text_cannot_be_sent", "F1")
    assert problem.patron_id == 11 and problem.liability_id == 501
    assert problem.message.startswith(f"Låner (låner 11): {field} kan ikke sendes: {fault} / patron 11: ")
    value = next(iter(over.values()))
    assert value not in problem.message


def test_item1_guardians_and_minors_names_are_checked_where_they_travel_F1():
    """Issue 16 item 1: the guardian's name travels with a replacement CPR (C4/I2) and the child's
    name travels with a guardian's claim (F5): each blocks with F1 naming its patron."""
    guardian = child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, g_cpr=None, g_birth_date=dt.date(1980, 5, 17),
                     g_name="Mette\x1bJensen")
    problem = stopped(guardian, "F1_text_cannot_be_sent", "F1")
    assert problem.patron_id == 22 and "Økonomisk ansvarlig (låner 22): navnet" in problem.message
    problem = stopped(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, d_name="Emil\x07"), "F1_text_cannot_be_sent", "F1")
    assert problem.patron_id == 21 and "barnets navn kan ikke sendes: styretegn U+0007 på plads 5" in problem.message


def test_item1_a_name_that_does_not_travel_does_not_block_F1():
    """With a real CPR neither name nor address travel (I2): they are not the schema's business."""
    ok(row(d_name="Karen\x07Jensen", d_street="Vej\x0b1"))


@pytest.mark.parametrize("field, value, name_da, fault", [
    ("author", "Ander\x00sen, H.C.", "forfatteren", "styretegn U+0000 på plads 6"),
    ("title", "Eventyr\x0bog historier", "titlen", "styretegn U+000B på plads 8"),
    ("classification", "99.4\x1c", "opstillingen", "styretegn U+001C på plads 5"),
    ("number", "G\x07501", "mellemværende-nummeret", "styretegn U+0007 på plads 2"),
    ("item_number", "5000\udcff", "materialenummeret", "byte 0xFF, som ikke er UTF-8, på plads 5"),
])
def test_item1_control_character_in_a_claim_text_blocks_that_liability_F6(field, value, name_da, fault):
    """Issue 16 item 1: a NUL in a material's author (and the like in title, classification and
    the numbers) is the liability's F6 finding; before, str.split() silently turned U+000B/U+001C
    into a space and lxml raised on the rest."""
    problem = stopped(row(**{field: value}), "F6_text_cannot_be_sent", "F6")
    assert problem.message.startswith(f"Mellemværende 501: {name_da} kan ikke sendes: {fault} / liability 501: ")
    assert value not in problem.message


def test_item1_every_faulty_field_is_named_at_once_F6():
    problem = stopped(row(author="A\x00", title="T\x07"), "F6_text_cannot_be_sent", "F6")
    assert "forfatteren kan ikke sendes: styretegn U+0000" in problem.message
    assert "titlen kan ikke sendes: styretegn U+0007" in problem.message


def test_item2_too_long_name_is_a_finding_never_cut_F1():
    """Issue 16 'never altered to fit': sf1590 cut names to 200 characters ([:200])."""
    problem = stopped(row(d_cpr=None, d_name="K" * 412), "F1_text_cannot_be_sent", "F1")
    assert "navnet kan ikke sendes: 412 tegn, højst 200" in problem.message
    ok(row(d_cpr=None, d_name="K" * 200))


def test_item2_too_long_title_is_a_finding_never_cut_F6():
    """Issue 16 'never altered to fit': the F6 line was cut to 199 characters plus '…'."""
    problem = stopped(row(title="x" * 400), "F6_text_cannot_be_sent", "F6")
    assert ("linje 1 ('Beregnet fra': opstilling 13 tegn, forfatter 14 tegn, titel 400 tegn) kan ikke sendes: "
            "454 tegn, højst 200") in problem.message


def test_item2_too_long_specification_is_a_finding_never_cut_F5_F6():
    """The specification was cut to 500 characters: a long liability number now blocks (F6 code),
    and every text it is too long for is named (its line too)."""
    problem = stopped(row(number="G" * 480), "F6_text_cannot_be_sent", "F6")
    assert "specifikationsteksten (F5) kan ikke sendes: 505 tegn, højst 500" in problem.message
    assert "linje 3 ('Gebyr-nr.': mellemværende-nr. 480 tegn, materiale-nr. 10 tegn)" in problem.message


def test_item2_names_and_streets_travel_as_they_are_whitespace_only_is_missing_I2():
    """Decision: schema-legal whitespace travels as it is (the builder stripped names and
    streets); a name of only whitespace still counts as missing (I2), a street of only whitespace
    as no address."""
    _, account, claim = ok(row(d_cpr=None, d_name=" Karen Jensen ", d_street="Bibliotekvej 1 "))
    assert account.identification.name == " Karen Jensen "
    assert account.identification.address.street == "Bibliotekvej 1 "
    assert stopped(row(d_cpr=None, d_name=" \t "), "I2_replacement_cpr_without_name", "I2")
    result, account, _ = ok(row(d_cpr=None, d_street="  "))
    assert account.identification.address is None
    _, _, claim = ok(child(dt.date(2015, 3, 3), d_cpr=CHILD_CPR, d_name="Emil Jensen "))
    assert claim.minor.name == "Emil Jensen "


@pytest.mark.parametrize("amount, decimals", [("12.345", 3), ("0.001", 3), ("60.0000001", 7)])
def test_item9_amount_with_more_decimals_than_oere_is_a_finding_never_rounded_F2(amount, decimals):
    """Issue 16 item 9: 12.345 went as 12.34 with no finding (as_amount quantized it)."""
    problem = stopped(row(amount=Decimal(amount)), "F2_amount_not_exact", "F2")
    assert f"Beløbet {amount} kr. kan ikke sendes præcist: {decimals} decimaler, højst 2 (øre)" in problem.message


@pytest.mark.parametrize("amount", [Decimal("12.340"), 12.34, "12.34", Decimal("12.3400000")])
def test_item9_trailing_zeros_are_exact_and_travel_as_oere_F2(amount):
    """12.340 is 12.34 exactly (a float from SQLite's NUMERIC by its shortest form)."""
    claim = ok(row(amount=amount))[2]
    assert claim.amount == Decimal("12.34") and str(claim.amount) == "12.34"


@pytest.mark.parametrize("amount, digits", [(Decimal("1234567890123"), 13), (Decimal("1234567890123.00"), 13),
                                            (Decimal("10000000000"), 11), (Decimal("1E+30"), 31)])
def test_item9_amount_outside_the_schemas_range_is_a_finding_F2(amount, digits):
    """Issue 16 item 9: a 13-digit amount was blocked as 'XSD' by validation with a log line only."""
    problem = stopped(row(amount=amount), "F2_amount_not_exact", "F2")
    assert f"{digits} cifre før kommaet, højst 10" in problem.message


def test_item9_largest_amount_the_schema_carries_travels_exactly_F2():
    claim = ok(row(amount=Decimal("9999999999.99")))[2]
    assert claim.amount == Decimal("9999999999.99")


@pytest.mark.parametrize("amount", ["tolv", "NaN", Decimal("Infinity"), Decimal("sNaN"), object(), True])
def test_item9_amount_that_is_no_number_is_a_finding_not_a_crash_F2(amount):
    problem = stopped(row(amount=amount), "F2_amount_not_exact", "F2")
    assert "Beløbet kan ikke læses som et tal" in problem.message


def test_item4_unexpected_error_is_that_liabilitys_M1_finding_with_masked_text(monkeypatch, caplog):
    """Issue 16 item 4 ('per-record isolation'): build() let anything but its own _Stop escape, so
    one row's TypeError crashed the page. Now it is that row's M1 finding, logged at ERROR; the
    exception's text shows CPR numbers masked only; the next row builds."""
    from fbs_debitor.claims import builder

    real = builder.fields.text_lines

    def broken(*args, **kwargs):
        if args[1] == "G2":
            raise TypeError(f"cannot join {ADULT_CPR}\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(builder.fields, "text_lines", broken)
    with caplog.at_level("ERROR", logger="fbs_debitor.claims.builder"):
        results = [built(row(liability_id=i, number=f"G{i}")) for i in (1, 2, 3)]
    assert [r.problem is None for r in results] == [True, False, True]
    problem = results[1].problem
    assert (problem.rule, problem.code, problem.liability_id) == ("M1", "M1_liability_not_processable", 2)
    assert problem.message.endswith("TypeError: cannot join 070781-**** second line")
    assert ADULT_CPR not in caplog.text and "070781-****" in caplog.text
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "liability 2 " in caplog.text


def test_item4_a_value_of_an_unforeseen_type_is_an_M1_finding_not_a_crash():
    """A replacement CPR delivered as a number (a reader's mistake): AttributeError -> M1."""
    problem = stopped(row(d_cpr=None, d_replacement_cpr=6707811230), "M1_liability_not_processable", "M1")
    assert "AttributeError" in problem.message and "6707811230" not in problem.message


def test_item4_due_date_after_the_year_9999_is_a_finding_F2():
    """Issue 16 item 4: a fee's due date (overdue date + the payment term) past 9999-12-31 raised
    OverflowError."""
    problem = stopped(row(due_date=dt.date(9999, 12, 1)), "F2_date_unreadable", "F2")
    assert "forfaldsdatoen kan ikke beregnes: afleveringsfristen 01.12.9999 + 31 dage" in problem.message
    problem = stopped(row(due_date=dt.date(9999, 12, 31)), "F2_date_unreadable", "F2")
    assert "stiftelsesdatoen kan ikke beregnes" in problem.message


def test_item4_dates_far_out_that_can_be_written_travel_F2_F3():
    """Year 1 and 9999 are dates xs:date carries; the texts write the year with four digits
    (strftime wrote year 1 as '1')."""
    claim = ok(row(kind="compensation", number="E1", loan_date=dt.date(1, 1, 1), due_date=dt.date(1, 1, 31)))[2]
    assert claim.founding_date == dt.date(1, 1, 1) and claim.text_lines[0].startswith("Beregnet fra: 01.01.0001 ")
    claim = ok(row(kind="compensation", number="E1", loan_date=None, due_date=None,
                   created_at=dt.datetime(9999, 12, 31, 23, 59)))[2]
    assert claim.due_date == dt.date(9999, 12, 31)


@pytest.mark.parametrize("field, what", [("created_at", "Oprettelsesdatoen"), ("loan_date", "Udlånsdatoen"),
                                         ("due_date", "Afleveringsfristen"), ("d_birth_date", "Fødselsdatoen")])
def test_item4_unreadable_date_is_a_finding_naming_the_field_F2(field, what):
    problem = stopped(row(**{field: "2026-13-45"}), "F2_date_unreadable", "F2")
    assert problem.message.startswith(what) and "2026-13-45" not in problem.message


@pytest.mark.parametrize("over, rule", [
    (dict(d_cpr="٠٧٠٧٨١١٢٣٤"), "T6"),                         # Arabic-Indic digits pass str.isdigit()
    (dict(d_cpr=None, d_replacement_cpr="６７０７８１１２３０"), "I1"),   # full-width digits
])
def test_item4_identifier_in_non_ascii_digits_is_a_finding_not_an_invalid_message(over, rule):
    """check_cpr and is_replacement_cpr accept any Unicode digit; the schema takes 0-9 only."""
    problem = stopped(row(**over), CHECK_CODES[rule], rule)
    assert all(v not in problem.message for v in over.values() if v)


def test_item4_p_number_in_non_ascii_digits_is_left_out_with_a_warning_T5():
    company = row(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR,
                  d_p_number="¹⁰⁰³³⁸⁸³⁹⁴")
    result, account, claim = ok(company)
    assert account.p_number is None and any(w.startswith("T5 P-nummeret") for w in result.warnings)
    assert not any("P-nr." in line for line in claim.text_lines)


def test_every_problem_carries_its_catalog_code():
    """transfer.run records p.code or the rule's code; the builder now always sets it."""
    assert built(row(amount=Decimal("0"))).problem.code == "F2_amount_not_positive"
    assert built(row(loan_date=None, due_date=None)).problem.code == "F3_fee_without_loan"
