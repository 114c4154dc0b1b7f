"""Issue 19: a payment file's claims are written with ONE update of each claim's row (the new sums
and the balance and settlement of ``claim_settlement.sql`` read from them, ``_Book.save_claims``),
and its movements are read by their place in the schema's sequence (``files.parse``). Both must
give exactly what the earlier code gave: the sums updated, then the one settlement definition run
over the claims (P2); each movement's values as ``findtext`` read them (P1)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import text

from fbs_debitor.core import db, ledger
from fbs_debitor.payments import apply as payments
from fbs_debitor.payments.files import BadFile, Movement, parse, to_xml

AT = dt.datetime(2026, 11, 20, 2, 0)
D = Decimal

# (debtor_amount, debtor_status, paid, written off, repaid): every settlement the definition knows
CASES = [
    (D("100.00"), "live", D("0"), D("0"), D("0")),              # unpaid
    (D("100.00"), "live", D("40.10"), D("0"), D("0")),          # partly_paid
    (D("100.00"), "live", D("100.00"), D("0"), D("0")),         # paid
    (D("100.00"), "live", D("60.00"), D("40.00"), D("0")),      # written_off
    (D("100.00"), "live", D("100.00"), D("0"), D("12.34")),     # repaid
    (D("100.00"), "cancelled", D("25.00"), D("0"), D("0")),     # cancelled after a payment
    (D("100.00"), "cancelled", D("0"), D("0"), D("0")),         # cancelled, nothing paid: unpaid
    (D("80.00"), "live", D("90.00"), D("0"), D("0")),           # overpaid (a write-down after payments)
    (None, None, D("5.00"), D("0"), D("0")),                    # nothing told yet
    (D("0.03"), "live", D("0.01"), D("0.02"), D("0")),          # øre
    (D("9999999999.99"), "live", D("9999999999.98"), D("0"), D("0")),
]


def _claims(conn, first: int) -> list[int]:
    ids = []
    for n, (amount, status, *_sums) in enumerate(CASES):
        lid = first + n
        conn.execute(text("INSERT INTO claim (liability_id, agency_id, fordring_id, state, current_version, created_at, "
                          "updated_at, debtor_amount, debtor_status) VALUES (:l, '715100', :f, 'accepted', 1, :t, :t, "
                          ":a, :s)"), {"l": lid, "f": f"FBS-715100-{lid}", "t": AT, "a": amount, "s": status})
        ids.append(lid)
    return ids


def _rows(conn, ids: list[int]) -> list[tuple]:
    rows = conn.execute(text("SELECT liability_id, paid_amount, written_off_amount, repaid_amount, balance, settlement, "
                             "settled_on FROM claim WHERE liability_id >= :lo AND liability_id <= :hi "
                             "ORDER BY liability_id"), {"lo": min(ids), "hi": max(ids)}).all()
    return [(ledger_amount(r[1]), ledger_amount(r[2]), ledger_amount(r[3]), ledger_amount(r[4]), r[5], str(r[6]))
            for r in rows]


def ledger_amount(value):
    return None if value is None else D(str(value)).quantize(D("0.01"))


def test_one_update_per_claim_gives_what_the_sums_then_claim_settlement_gave_P2(stores):
    booked = dt.date(2026, 11, 19)
    with stores.ledger.begin() as conn:
        old, new = _claims(conn, 1000), _claims(conn, 2000)
        # before: the sums, then the one definition over the claims
        for lid, (_a, _s, paid, off, repaid) in zip(old, CASES, strict=True):
            conn.execute(text("UPDATE claim SET paid_amount = :p, written_off_amount = :w, repaid_amount = :r, "
                              "settled_on = :d WHERE liability_id = :l"),
                         {"p": paid, "w": off, "r": repaid, "d": booked, "l": lid})
        ledger.update_settlement(conn, old)
        # now: one update per claim, as a file's book writes it
        book = payments._Book(conn, [])
        for lid, (amount, status, paid, off, repaid) in zip(new, CASES, strict=True):
            book.claims[f"FBS-715100-{lid}"] = payments._Claim(
                lid, "715100", f"FBS-715100-{lid}", "accepted", amount or D(0), status or "live", paid, off, repaid,
                last_booked=booked, touched=True)
        assert book.save_claims() == new
        before, after = _rows(conn, old), _rows(conn, new)
    assert after == before
    assert [r[4] for r in after] == ["unpaid", "partly_paid", "paid", "written_off", "repaid", "cancelled", "unpaid",
                                     "overpaid", "overpaid", "written_off", "partly_paid"]


def test_the_one_update_is_made_of_claim_settlement_sql_and_refuses_another_shape_P2():
    sql = payments._SUMS_AND_SETTLEMENT
    assert "paid_amount = s.p" in sql and "FROM payment_claim_stage s" in sql
    assert "WHEN s.r > 0 THEN 'repaid'" in sql and "IN :ids" not in sql
    with pytest.raises(RuntimeError, match="one 'UPDATE claim SET"):
        payments._sums_and_settlement("UPDATE claim SET balance = 0 WHERE liability_id = :id")
    with pytest.raises(RuntimeError, match="no longer reads repaid_amount"):
        payments._sums_and_settlement("UPDATE claim SET balance = paid_amount - written_off_amount "
                                      "WHERE liability_id IN :ids")


def _file(extra: bytes = b"") -> bytes:
    movements = [Movement("M1", "FBS-715100-1", "payment", D("10.50"), dt.date(2026, 11, 19)),
                 Movement("M2", "FBS-715100-1", "reversal", D("10.50"), dt.date(2026, 11, 19), "M1"),
                 Movement("M3", "FBS-715100-2", "write_off", D("0.01"), dt.date(2026, 11, 18))]
    return to_xml(movements, AT)


def test_movements_are_read_by_their_place_comments_and_instructions_passed_over_P1():
    data = _file()
    plain = parse(data).movements
    assert [(m.movement_id, m.fordring_id, m.kind, m.amount, m.booked_on, m.reference_id) for m in plain] == [
        ("M1", "FBS-715100-1", "payment", D("10.50"), dt.date(2026, 11, 19), None),
        ("M2", "FBS-715100-1", "reversal", D("10.50"), dt.date(2026, 11, 19), "M1"),
        ("M3", "FBS-715100-2", "write_off", D("0.01"), dt.date(2026, 11, 18), None)]
    assert plain[0] == Movement("M1", "FBS-715100-1", "payment", D("10.50"), dt.date(2026, 11, 19))
    assert hash(plain[0]) == hash(Movement("M1", "FBS-715100-1", "payment", D("10.50"), dt.date(2026, 11, 19)))
    with pytest.raises(AttributeError):
        plain[0].amount = D(0)                  # still frozen
    noisy = data.replace(b"<da:FordringID>", b"<!-- a comment --><?an instruction?><da:FordringID>")
    noisy = noisy.replace(b"<da:BogfoeringsDato>", b"<!--x--><da:BogfoeringsDato>")
    assert noisy != data and parse(noisy).movements == plain
    empty_reference = data.replace(b"<da:ReferenceBevaegelseID>M1</da:ReferenceBevaegelseID>",
                                   b"<da:ReferenceBevaegelseID></da:ReferenceBevaegelseID>")
    assert empty_reference != data
    try:
        got = parse(empty_reference).movements[1].reference_id
    except BadFile as exc:                      # the schema may refuse an empty key: then as before
        assert exc.code == "P_SCHEMA_INVALID"
    else:
        assert got == ""                        # present but empty: "", as findtext read it


def test_a_repeated_movement_id_and_a_bad_amount_are_refused_as_before_P1():
    data = _file()
    with pytest.raises(BadFile) as exc:
        parse(data.replace(b">M3<", b">M1<"))
    assert exc.value.code == "P_DUPLICATE_IN_FILE" and "movement number 3" in exc.value.reason
    with pytest.raises(BadFile) as exc:
        parse(data.replace(b"2026-11-18", b"2026-11-18Z"))
    assert exc.value.code == "P_SCHEMA_INVALID" and "movement number 3" in exc.value.reason


def test_the_one_claim_update_finds_each_staged_claim_by_its_key_never_scans_the_claims_P2(stores):
    """Without naming its claims by ``IN (SELECT l ...)`` too, SQLite's planner scanned every claim of
    the ledger for each file (a third of a million rows per file at a million movements)."""
    with stores.ledger.begin() as conn:
        conn.exec_driver_sql(payments._CLAIM_STAGE_CREATE)
        if db.embedded(conn):
            plan = " | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + payments._SUMS_AND_SETTLEMENT))
            assert "SCAN claim" not in plan and "SEARCH claim USING INDEX" in plan, plan
        conn.exec_driver_sql(payments._SUMS_AND_SETTLEMENT)     # (nothing staged: nothing changed)
