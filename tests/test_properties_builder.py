"""Property (issue 16, 'one bad record never stops the rest, and nothing is changed silently'):
whatever an FBS row holds, the pure builder never raises, and each liability ends in exactly one
of a claim whose message is schema-valid, or a Problem whose catalog code names its rule.

The rows are ``claim_rows.row`` with any Unicode text (control characters, NUL, lone surrogates
as from ``errors='surrogateescape'``, U+FFFE/U+FFFF, texts longer than the schema takes) in every
text field, amounts as Decimals of any exponent and size (and floats, integers and strings as a
reader may give them), dates from the year 1 to 9999, identifiers (CPR, replacement CPR, CVR,
P-number, EAN) as arbitrary strings or in non-ASCII digits, and a guardian present or not.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from claim_rows import AGENCY, AT, TODAY, row
from fbs_rows import ADULT2_CPR, ADULT_CPR, VALID_CVR
from hypothesis import event, given, settings
from hypothesis import strategies as st
from leaks import full_cpr_numbers
from lxml import etree

from fbs_debitor.claims import messages
from fbs_debitor.claims.builder import build
from fbs_debitor.core.identity import ReplacementCprRegistry
from fbs_debitor.quality.catalog import CHECKS

# Any code point, surrogates included (hypothesis leaves category Cs out unless told).
ANY_CHAR = st.characters(exclude_categories=())
UNSENDABLE = st.sampled_from(["\x00", "\x07", "\x0b", "\x0c", "\x1b", "\x1f", "\ud800", "\udce6", "\udfff",
                              "\ufffe", "\uffff"])
SENDABLE_ODD = st.sampled_from(["\t", "\n", "\r", "\x7f", "\x85", "\xa0", "\u2028", "\ufeff", "😀", " "])
REALISTIC = st.sampled_from(["Karen Jensen", "Bibliotekvej 1", "Aarhus C", "8000", "Andersen, H.C.",
                             "Eventyr og historier", "99.4 Andersen", "G501", "5000000017", "Søren Ærø Åse"])


def spliced(base: str, insert: str, at: int) -> str:
    at = at % (len(base) + 1)
    return base[:at] + insert + base[at:]


TEXT = st.one_of(
    st.none(),
    REALISTIC,
    st.text(ANY_CHAR, max_size=30),
    st.builds(spliced, REALISTIC, st.one_of(UNSENDABLE, SENDABLE_ODD), st.integers(0, 40)),
    st.text(ANY_CHAR, min_size=190, max_size=520),                # around the schema's 200 and 500
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "Æ", " "]), st.integers(150, 520)),
)
DIGITS_ANY_SCRIPT = st.text(st.sampled_from("0123456789٠١٢٣٤٥٦٧٨٩０１２３４５６７８９¹²³⁴⁵"), min_size=8, max_size=13)
IDENTIFIER = st.one_of(st.none(), st.text(ANY_CHAR, max_size=14), DIGITS_ANY_SCRIPT,
                       st.sampled_from([ADULT_CPR, ADULT2_CPR, "0303154124", "6707811230", "070781-1234",
                                        VALID_CVR, "1003388394", "5790000123452", ""]))
DECIMAL = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(lambda sign, digits, exp: Decimal((sign, tuple(digits), exp)),
              st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=20), st.integers(-12, 15)),
    st.sampled_from([Decimal("12.345"), Decimal("12.340"), Decimal("9999999999.99"), Decimal("10000000000"),
                     Decimal("1234567890123"), Decimal("0.01"), Decimal("-0"), Decimal("sNaN")]),
)
AMOUNT = st.one_of(DECIMAL, st.floats(), st.integers(), st.text(max_size=12), st.none())
DATE = st.one_of(st.none(), st.dates(), st.sampled_from([dt.date(1, 1, 1), dt.date(9999, 12, 31),
                                                         dt.date(9999, 11, 30), dt.date(2026, 3, 31)]))


TEXT_FIELDS = ("d_name", "d_street", "d_postal_code", "d_city", "g_name", "g_street", "g_postal_code", "g_city",
               "classification", "author", "title", "number", "item_number")
DATE_FIELDS = ("loan_date", "due_date", "reloan_date", "d_birth_date", "g_birth_date")
ID_FIELDS = ("d_cpr", "d_replacement_cpr", "g_cpr", "g_replacement_cpr", "d_cvr", "d_p_number", "d_ean")
WEIRD = {**dict.fromkeys(TEXT_FIELDS, TEXT), **dict.fromkeys(DATE_FIELDS, DATE), **dict.fromkeys(ID_FIELDS, IDENTIFIER),
         "amount": AMOUNT, "created_at": st.one_of(st.datetimes(), st.dates(), st.just(dt.datetime(9999, 12, 31)))}
HEALTHY_AMOUNT = st.one_of(st.just(Decimal("60.00")),
                           st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999999.99"), places=2))


@st.composite
def fbs_rows(draw):
    """A liability whose debtor is an adult with a CPR, an adult on a replacement CPR (name and
    address travel, I2), a company (CVR, P-number, EAN) or a child with or without a guardian
    (whose name and, on a replacement CPR, address travel too); then up to four of its fields,
    any of them, replaced by anything."""
    debtor = draw(st.sampled_from(["cpr", "replacement", "company", "child", "child_without_guardian"]))
    over = dict(kind=draw(st.sampled_from(["fee", "compensation"])), amount=draw(HEALTHY_AMOUNT),
                acknowledged=draw(st.booleans()), debtor_vendor=draw(st.sampled_from(["KMD_OPUS", "PRISME", "EG"])))
    if debtor == "replacement":
        over.update(d_cpr=None)
    elif debtor == "company":
        over.update(d_kind="company", b_kind="company", d_cpr=None, d_birth_date=None, d_cvr=VALID_CVR,
                    d_p_number="1003388394", d_ean="5790000123452")
    elif debtor.startswith("child"):
        over.update(d_patron_id=21, b_patron_id=21, d_cpr=None, d_birth_date=dt.date(2015, 3, 3),
                    d_name="Emil Jensen")
        if debtor == "child":
            over.update(g_patron_id=22, gnow_patron_id=22, g_cpr=draw(st.sampled_from([ADULT2_CPR, None])),
                        g_birth_date=dt.date(1972, 8, 12), g_name="Mette Jensen", g_street="Skolevej 2",
                        g_postal_code="8000", g_city="Aarhus C")
    for name in draw(st.sets(st.sampled_from(sorted(WEIRD)), max_size=4)):
        over[name] = draw(WEIRD[name])
    event(f"debtor {debtor}")
    return row(**over)


@pytest.mark.slow   # about 40 s: 4,000 examples
@settings(max_examples=4000, deadline=None)
@given(fbs_rows())
def test_property_every_liability_ends_in_a_valid_claim_or_a_catalogued_problem_F1_F2_F6_M1(r):
    """Issue 16 items 1, 4, 9: build() never raises; an account's message validates against the
    XSD (as it would be sent: serialised and parsed again); a Problem's code is in the catalog
    under its rule, and its message holds no full CPR number. No row here is of an unforeseen
    shape, so none may end as M1 (an unexpected error, a bug)."""
    result = build(r, ReplacementCprRegistry(), TODAY)
    assert (result.account is None) != (result.problem is None)
    if result.problem:
        problem = result.problem
        event(f"problem {problem.code}")
        assert problem.code in CHECKS and CHECKS[problem.code].rule == problem.rule, problem
        assert problem.code != "M1_liability_not_processable", problem.message
        assert problem.liability_id == r.liability_id and full_cpr_numbers(problem.message) == []
        assert result.tasks == [] and result.new_replacement_cprs == {}
        return
    event("claim")
    (batch,) = messages.build_batches([result.account], AGENCY, batch_size=1, at=AT)    # validates
    messages.validate(etree.fromstring(batch.to_bytes()))
    claim = result.account.claims[0]
    assert claim.amount == Decimal(str(claim.amount)) and claim.amount.as_tuple().exponent == -2
    assert Decimal(str(r.amount) if isinstance(r.amount, float) else r.amount) == claim.amount   # never rounded
