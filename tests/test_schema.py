"""The FBS extract DDL and the ledger migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import shutil
from decimal import Decimal

import fbs_rows as fr
import pytest
import sqlalchemy.exc
from sqlalchemy import inspect, text

from fbs_debitor.core import migrations
from fbs_debitor.core.db import as_amount, as_bool, as_date, as_datetime, bulk_insert, split_statements
from fbs_debitor.core.stores import FBS_TABLES, create_fbs_schema

# The column contract of the issue: other tools rely on these names.
CONTRACT = {
    "agency": "agency_id name municipality_cvr age_limit cut_off_date replacement_cpr_enabled verify_compensations "
              "auto_compensation_acknowledged debtor_vendor org_unit_uuid sender_system_uuid",
    "branch": "branch_id agency_id name staff_email",
    "patron": "patron_id agency_id branch_id kind cpr replacement_cpr birth_date name street postal_code city cvr "
              "p_number ean responsible_patron_id",
    "guardianship": "child_patron_id guardian_patron_id valid_from valid_to",
    "material": "item_number faust classification author title",
    "loan": "loan_id patron_id item_number loan_date due_date reloan_date returned_at",
    "liability": "liability_id agency_id patron_id kind number loan_id item_number amount created_at acknowledged "
                 "verified_at status refund_requested_at updated_at",
    "task": "task_id agency_id branch_id patron_id liability_id kind message created_at resolved_at",
    "payment": "payment_id liability_id kind amount booked_on source_ref",
}


def columns(engine, table):
    schema = "fbs" if engine.dialect.name == "postgresql" else None
    return {c["name"] for c in inspect(engine).get_columns(table, schema=schema)}


def test_fbs_ddl_creates_the_contract_tables_and_is_idempotent(stores):
    create_fbs_schema(stores.fbs)  # second time: no error, nothing changes
    assert set(FBS_TABLES) == set(CONTRACT)
    for table, cols in CONTRACT.items():
        assert set(cols.split()) <= columns(stores.fbs, table), table


def test_fbs_and_ledger_are_separate_stores(stores):
    """FBS tables in schema/file `fbs`, the ledger's in `ledger`; neither sees the other's tables."""
    pg = stores.fbs.dialect.name == "postgresql"
    fbs_tables = set(inspect(stores.fbs).get_table_names(schema="fbs" if pg else None))
    ledger_tables = set(inspect(stores.ledger).get_table_names(schema="ledger" if pg else None))
    assert set(FBS_TABLES) <= fbs_tables and "claim" not in fbs_tables
    assert {"claim", "outbox", "finding"} <= ledger_tables and "liability" not in ledger_tables


@pytest.mark.parametrize("table, bad", [
    ("agency", {"debtor_vendor": "SAP"}),
    ("patron", {"kind": "robot"}),
    ("liability", {"status": "paid"}),
    ("liability", {"kind": "fine"}),
])
def test_fbs_ddl_rejects_values_outside_the_contract(stores, table, bad):
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        p = fr.patron(conn)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            if table == "agency":
                fr.agency(conn, agency_id="799999", **bad)
            elif table == "patron":
                fr.patron(conn, **bad)
            else:
                fr.liability(conn, p["patron_id"], **bad)
        conn.rollback()


def test_fbs_ddl_enforces_references(stores):
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            fr.liability(conn, 987654321, with_loan=False)  # no such patron
        conn.rollback()


def test_values_round_trip_the_same_on_both_databases(stores):
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        p = fr.patron(conn)
        fr.liability(conn, p["patron_id"], liability_id=1, amount=Decimal("1234.50"), acknowledged=True,
                     created_at=dt.datetime(2026, 2, 3, 4, 5, 6))
        conn.commit()
        row = conn.execute(text("SELECT amount, created_at, acknowledged FROM liability WHERE liability_id = 1")).one()
        cut = conn.execute(text("SELECT cut_off_date FROM agency")).scalar()
    assert as_amount(row.amount) == Decimal("1234.50")
    assert as_datetime(row.created_at) == dt.datetime(2026, 2, 3, 4, 5, 6)
    assert as_bool(row.acknowledged) is True and as_date(cut) == fr.CUT_OFF


def test_bulk_insert_streams_rows_on_both_databases(stores):
    rows = ((f"5{i:09d}", "12345678", "99.4", "Forfatter", f"Titel {i}") for i in range(2500))
    with stores.fbs.begin() as conn:
        n = bulk_insert(conn, "material", ["item_number", "faust", "classification", "author", "title"], rows,
                        chunk_size=1000)
    with stores.fbs.connect() as conn:
        assert n == 2500 == conn.execute(text("SELECT COUNT(*) FROM material")).scalar()


def test_ledger_migrations_are_recorded_and_not_reapplied(stores):
    versions = migrations.applied(stores.ledger)
    assert sorted(versions) == [m.version for m in migrations.available()]
    assert migrations.migrate(stores.ledger) == []
    for table in ("run", "run_count", "claim", "outbox", "event", "finding"):
        assert inspect(stores.ledger).has_table(table, schema="ledger" if stores.ledger.dialect.name == "postgresql" else None)


def test_ledger_migration_changed_after_applying_is_refused(stores, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited later\n")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.migrate(stores.ledger, folder)


def test_ledger_new_migration_is_applied_incrementally(stores, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, folder)
    (folder / "9000_probe.sql").write_text("CREATE TABLE probe_table (probe_id INTEGER NOT NULL PRIMARY KEY);\n")
    assert migrations.migrate(stores.ledger, folder) == [9000]
    assert migrations.migrate(stores.ledger, folder) == []
    assert 9000 in migrations.applied(stores.ledger)


def test_split_statements_ignores_comments_with_semicolons_and_parameters():
    script = "-- a comment; with :param\nCREATE TABLE a (x INTEGER); -- trailing ;\nCREATE TABLE b (y INTEGER);\n"
    assert split_statements(script) == ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)"]


def test_a_replacement_cpr_belongs_to_one_patron_I1(stores):
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.patron(conn, cpr=None, replacement_cpr="6707811230")
        fr.patron(conn, cpr=None, replacement_cpr=None)
        fr.patron(conn, cpr=None, replacement_cpr=None)       # many patrons without one: fine
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            fr.patron(conn, cpr=None, replacement_cpr="6707811230")
        conn.rollback()


def test_database_errors_never_show_the_cpr_numbers_they_were_writing(stores):
    """Persisting a replacement CPR that collides (I1): the error and its whole traceback hold the
    number masked only (PostgreSQL's own message quotes the value; SQLAlchemy hides parameters)."""
    import traceback

    from leaks import full_cpr_numbers

    from fbs_debitor.claims.writeback import ReplacementCprConflict, persist_replacement_cprs

    with stores.fbs.connect() as conn:
        fr.agency(conn)
        fr.patron(conn, cpr=None, replacement_cpr="6707811230")
        other = fr.patron(conn, cpr=None, birth_date=dt.date(1981, 7, 7))
        conn.commit()
        with pytest.raises(ReplacementCprConflict) as info:
            persist_replacement_cprs(conn, {other["patron_id"]: "6707811230"})
        conn.rollback()
    # The message, and no chained database error (whose text quotes the number) behind it.
    text_shown = "".join(traceback.format_exception_only(info.value))
    assert full_cpr_numbers(text_shown) == [] and "670781-****" in text_shown
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_item1_item9_text_the_schema_cannot_carry_and_inexact_amounts_from_fbs_become_findings(stores):
    """Issue 16 items 1 and 9 on the real databases: a control character in a patron's name and
    street (PostgreSQL stores them; a NUL only SQLite can hold, PostgreSQL's text refuses it) and
    in a material's author, read through claim_rows.sql, stops only that liability with its F1/F6
    finding; an amount of 12.345 (SQLite's NUMERIC keeps it; PostgreSQL's NUMERIC(12,2) rounds it
    on insert, before fbs-debitor sees it) is an F2 finding, never sent as 12.34."""
    from fbs_debitor.claims import stream as claim_stream
    from fbs_debitor.claims.builder import build
    from fbs_debitor.core.identity import ReplacementCprRegistry

    sqlite = stores.fbs.dialect.name == "sqlite"
    with stores.fbs.connect() as conn:
        fr.agency(conn)
        named = fr.patron(conn, cpr=None, name="Karen\x07Jensen", street="Bibliotekvej\x0b1")
        healthy = fr.patron(conn)["patron_id"]
        by_name = fr.liability(conn, named["patron_id"])["liability_id"]
        by_author = fr.liability(conn, healthy)
        conn.execute(text("UPDATE material SET author = :a WHERE item_number = :i"),
                     {"a": "Ander\x00sen" if sqlite else "Ander\x1bsen", "i": by_author["item_number"]})
        inexact = fr.liability(conn, healthy, amount=Decimal("12.345"))["liability_id"]
        fine = fr.liability(conn, healthy)["liability_id"]
        conn.commit()
    rows = claim_stream.claim_rows(stores.fbs, [by_name, by_author["liability_id"], inexact, fine], fr.TODAY)
    registry = ReplacementCprRegistry()
    results = {r.liability_id: build(r, registry, fr.TODAY) for r in rows}
    assert results[by_name].problem.code == "F1_text_cannot_be_sent"
    assert "navnet kan ikke sendes: styretegn U+0007 på plads 6" in results[by_name].problem.message
    assert "adressen (vej og nr.) kan ikke sendes: styretegn U+000B på plads 13" in results[by_name].problem.message
    author = results[by_author["liability_id"]].problem
    assert author.code == "F6_text_cannot_be_sent"
    assert f"forfatteren kan ikke sendes: styretegn U+00{'00' if sqlite else '1B'} på plads 6" in author.message
    if sqlite:
        assert results[inexact].problem.code == "F2_amount_not_exact"
    else:
        assert results[inexact].account.claims[0].amount == Decimal("12.35")     # rounded by PostgreSQL itself
    assert results[fine].problem is None and results[fine].account.claims[0].amount == Decimal("60.00")


def test_as_amount_of_values_read_back_is_the_same_memoised_and_keeps_zeros_sign_and_refuses_a_bool():
    """``as_amount`` remembers what it made of a number read back (issue 19: a payments run reads
    millions): the same Decimal as ``Decimal(str(value)).quantize(CENT)``, for ints, floats, text
    and Decimals, asked once or again; 0.0 and -0.0 are not taken for each other; a bool is no
    amount (as before: an error, not 1.00)."""
    import decimal

    values = [1, 1.0, 3, 3.5, 12.25, -4.1, 10**16, 1e16, 0, 0.0, -0.0, "7.5", "-0", Decimal("2.345"), Decimal("-0")]
    for _ in range(2):
        for v in values:
            got, want = as_amount(v), Decimal(str(v)).quantize(Decimal("0.01"))
            assert (got, str(got)) == (want, str(want)), v
    assert str(as_amount(-0.0)) == "-0.00" and str(as_amount(0.0)) == "0.00"
    assert as_amount(None) is None
    with pytest.raises(decimal.InvalidOperation):
        as_amount(True)
