"""The synthetic FBS population: reproducible, complete (every SF1590 case present) and consistent.

Every test runs on SQLite and on PostgreSQL. Feature tests share one generated population per
database (module-scoped, built like the ``stores`` fixture); the reproducibility and wipe tests use
``stores`` itself. CPR numbers never appear in assertion output: failures list masked values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal

import pytest
from database_urls import make_urls
from sqlalchemy import text
from stdnum import ean as stdnum_ean
from stdnum.dk import cpr as stdnum_cpr
from stdnum.dk import cvr as stdnum_cvr

from fbs_debitor.core.db import as_amount, as_bool, as_date, as_datetime, make_engine
from fbs_debitor.core.settings import FBS_SCHEMA
from fbs_debitor.core.stores import FBS_TABLES, create_fbs_schema, init_stores, open_stores
from fbs_debitor.sandbox.generator import MIN_PATRONS, generate

AS_OF = dt.date(2025, 6, 1)
AS_OF_START = dt.datetime(2025, 6, 1)
BACKLOG_START = dt.date(2019, 6, 1)
FEE_TABLE = {Decimal(v) for v in (10, 20, 30, 50, 75, 120, 200)}

PRIMARY_KEYS = {
    "agency": ("agency_id",), "branch": ("branch_id",), "patron": ("patron_id",),
    "guardianship": ("child_patron_id", "valid_from"), "material": ("item_number",), "loan": ("loan_id",),
    "liability": ("liability_id",), "task": ("task_id",), "payment": ("payment_id",),
}
DATE_COLUMNS = {"cut_off_date", "birth_date", "valid_from", "valid_to", "loan_date", "due_date", "reloan_date",
                "booked_on"}
TIMESTAMP_COLUMNS = {"returned_at", "created_at", "verified_at", "refund_requested_at", "updated_at", "resolved_at"}
AMOUNT_COLUMNS = {"amount"}
BOOL_COLUMNS = {"replacement_cpr_enabled", "verify_compensations", "auto_compensation_acknowledged", "acknowledged",
                "auto_created"}


# --- helpers -----------------------------------------------------------------------------------

def normalise(column: str, value):
    """One Python value for SQLite and PostgreSQL alike (CHAR padding on PostgreSQL stripped)."""
    if value is None:
        return None
    if column in DATE_COLUMNS:
        return as_date(value)
    if column in TIMESTAMP_COLUMNS:
        return as_datetime(value)
    if column in AMOUNT_COLUMNS:
        return as_amount(value)
    if column in BOOL_COLUMNS:
        return as_bool(value)
    if isinstance(value, str):
        return value.rstrip(" ")
    return value


def load_tables(engine) -> dict[str, list[dict]]:
    """Every FBS table as normalised dicts, sorted by primary key."""
    tables = {}
    with engine.connect() as conn:
        for table in FBS_TABLES:
            result = conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed table names
            columns = list(result.keys())
            rows = [{c: normalise(c, v) for c, v in zip(columns, row, strict=True)} for row in result]
            rows.sort(key=lambda r, t=table: tuple(r[k] for k in PRIMARY_KEYS[t]))
            tables[table] = rows
    return tables


def digests(engine) -> dict[str, str]:
    """sha256 per FBS table over its normalised rows in primary-key order."""
    return {table: hashlib.sha256(repr([tuple(r.items()) for r in rows]).encode()).hexdigest()
            for table, rows in load_tables(engine).items()}


def mask(cpr: str | None) -> str:
    return "None" if cpr is None else f"{cpr[:6]}-****"


def mod11_ok(cpr: str) -> bool:
    return sum(w * int(d) for w, d in zip((4, 3, 2, 7, 6, 5, 4, 3, 2, 1), cpr, strict=True)) % 11 == 0


def cpr_birth_date(cpr: str) -> dt.date | None:
    """The birth date a 10-digit CPR encodes (century from the 7th digit), None if impossible."""
    if not re.fullmatch(r"\d{10}", cpr):
        return None
    try:
        return stdnum_cpr.get_birth_date(cpr)
    except Exception:  # stdnum raises InvalidComponent for impossible dates
        return None


def plus_years(d: dt.date, years: int) -> dt.date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:
        return d.replace(year=d.year + years, day=28)


@dataclass(repr=False)
class Population:
    dialect: str
    engine: object
    summary: object
    t: dict[str, list[dict]]

    def __post_init__(self):
        self.agency = {a["agency_id"]: a for a in self.t["agency"]}
        self.patron = {p["patron_id"]: p for p in self.t["patron"]}
        self.loan = {x["loan_id"]: x for x in self.t["loan"]}
        self.material = {m["item_number"]: m for m in self.t["material"]}
        self.persons = [p for p in self.t["patron"] if p["kind"] == "person"]
        self.companies = [p for p in self.t["patron"] if p["kind"] == "company"]
        self.groups = [p for p in self.t["patron"] if p["kind"] == "group"]
        self.guardianships = defaultdict(list)
        for g in self.t["guardianship"]:
            self.guardianships[g["child_patron_id"]].append(g)
        self.liabilities_of = defaultdict(list)
        for x in self.t["liability"]:
            self.liabilities_of[x["patron_id"]].append(x)
        self.fees = [x for x in self.t["liability"] if x["kind"] == "fee"]
        self.compensations = [x for x in self.t["liability"] if x["kind"] == "compensation"]

    def __repr__(self) -> str:  # never the rows: they hold CPR numbers
        return f"<Population {self.dialect}: {len(self.t['patron'])} patrons, {len(self.t['liability'])} liabilities>"

    def created_before_loan(self, liability: dict) -> bool:
        """The deliberate data-quality case: created_at before its loan's loan_date."""
        loan = self.loan.get(liability["loan_id"])
        return loan is not None and liability["created_at"].date() < loan["loan_date"]

    def adult_at(self, patron: dict, day: dt.date) -> bool:
        return plus_years(patron["birth_date"], 18) <= day

    def cut_off(self, liability: dict) -> dt.date:
        return self.agency[liability["agency_id"]]["cut_off_date"]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def population(request, tmp_path_factory):
    """One generated population per database, shared by the read-only feature tests below."""
    urls = make_urls(request.param, tmp_path_factory.mktemp("population"),
                     lambda: request.getfixturevalue("pg_admin_url"))
    stores = open_stores(urls)
    init_stores(stores)
    summary = generate(stores.fbs, patrons=1500, seed=7, as_of=AS_OF)
    yield Population(request.param, stores.fbs, summary, load_tables(stores.fbs))
    stores.dispose()


# --- reproducibility and wiping ----------------------------------------------------------------

def test_same_seed_and_as_of_give_identical_tables(stores):
    generate(stores.fbs, patrons=400, seed=11, as_of=AS_OF)
    first = digests(stores.fbs)
    generate(stores.fbs, patrons=400, seed=11, as_of=AS_OF)
    assert digests(stores.fbs) == first
    assert len(set(first.values())) > 5  # the tables really hold different content


def test_same_content_on_this_database_and_a_fresh_sqlite_file(stores, tmp_path):
    """Byte-identical content across databases: PostgreSQL (or SQLite) vs. a separate SQLite file."""
    other = make_engine(f"sqlite:///{tmp_path / 'other-fbs.sqlite'}", FBS_SCHEMA)
    create_fbs_schema(other)
    generate(stores.fbs, patrons=400, seed=12, as_of=AS_OF)
    generate(other, patrons=400, seed=12, as_of=AS_OF)
    try:
        assert digests(stores.fbs) == digests(other)
    finally:
        other.dispose()


def test_different_seed_or_as_of_gives_different_content(stores):
    generate(stores.fbs, patrons=400, seed=13, as_of=AS_OF)
    first = digests(stores.fbs)
    generate(stores.fbs, patrons=400, seed=14, as_of=AS_OF)
    second = digests(stores.fbs)
    generate(stores.fbs, patrons=400, seed=13, as_of=AS_OF + dt.timedelta(days=1))
    third = digests(stores.fbs)
    for table in ("agency", "patron", "guardianship", "material", "loan", "liability"):
        assert first[table] != second[table], table
    for table in ("agency", "loan", "liability"):
        assert first[table] != third[table], table


def test_regenerate_wipes_previous_population_including_write_back_rows(stores):
    """Running twice leaves one population; task (M1) and payment (P1) rows pointing into it go too."""
    generate(stores.fbs, patrons=600, seed=21, as_of=AS_OF)
    with stores.fbs.begin() as conn:
        conn.execute(text("INSERT INTO task (task_id, agency_id, patron_id, liability_id, kind, message, created_at) "
                          "VALUES ('t1', '715100', 1, 1, 'test', 'x', :ts)"), {"ts": AS_OF_START})
        conn.execute(text("INSERT INTO payment (payment_id, liability_id, kind, amount, booked_on) "
                          "VALUES ('p1', 1, 'payment', 10, :d)"), {"d": AS_OF})
    summary = generate(stores.fbs, patrons=300, seed=22, as_of=AS_OF)
    after = digests(stores.fbs)
    with stores.fbs.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in FBS_TABLES}  # noqa: S608
    assert counts == {t: getattr(summary, t) for t in FBS_TABLES}
    assert counts["patron"] == 300 and counts["task"] == 0 and counts["payment"] == 0
    assert max(p["patron_id"] for p in load_tables(stores.fbs)["patron"]) == 300
    generate(stores.fbs, patrons=300, seed=22, as_of=AS_OF)
    assert digests(stores.fbs) == after


def test_smallest_population_is_consistent_and_too_small_is_refused(stores):
    summary = generate(stores.fbs, patrons=MIN_PATRONS, seed=5, as_of=AS_OF, liabilities_per_patron=2.0)
    assert summary.patron == MIN_PATRONS and summary.liability >= MIN_PATRONS
    tables = load_tables(stores.fbs)
    patrons = {p["patron_id"] for p in tables["patron"]}
    assert all(x["patron_id"] in patrons for x in tables["liability"])
    with pytest.raises(ValueError):
        generate(stores.fbs, patrons=MIN_PATRONS - 1, seed=5, as_of=AS_OF)


# --- referential integrity ---------------------------------------------------------------------

def test_every_liability_references_existing_patron_loan_and_item(population):
    p = population
    problems = []
    for x in p.t["liability"]:
        patron = p.patron.get(x["patron_id"])
        if patron is None or patron["agency_id"] != x["agency_id"]:
            problems.append(("patron", x["liability_id"]))
        if x["item_number"] not in p.material:
            problems.append(("item", x["liability_id"]))
        if x["loan_id"] is not None:
            loan = p.loan.get(x["loan_id"])
            if loan is None or loan["patron_id"] != x["patron_id"] or loan["item_number"] != x["item_number"]:
                problems.append(("loan", x["liability_id"]))
    assert problems == []
    used = Counter(x["loan_id"] for x in p.t["liability"] if x["loan_id"] is not None)
    assert set(used) == set(p.loan) and max(used.values()) == 1  # one loan per liability, no orphan loans


def test_database_agrees_there_are_no_dangling_references(population):
    with population.engine.connect() as conn:
        dangling = conn.execute(text(
            "SELECT COUNT(*) FROM liability l LEFT JOIN loan o ON o.loan_id = l.loan_id "
            "LEFT JOIN patron p ON p.patron_id = l.patron_id "
            "WHERE p.patron_id IS NULL OR (l.loan_id IS NOT NULL AND (o.loan_id IS NULL OR o.patron_id <> l.patron_id))"
        )).scalar()
        branches = conn.execute(text(
            "SELECT COUNT(*) FROM patron p JOIN branch b ON b.branch_id = p.branch_id WHERE b.agency_id <> p.agency_id"
        )).scalar()
    assert dangling == 0 and branches == 0


def test_ids_are_dense_and_numbers_unique_per_kind(population):
    p = population
    assert [x["liability_id"] for x in p.t["liability"]] == list(range(1, len(p.t["liability"]) + 1))
    assert sorted(p.patron) == list(range(1, 1501))
    assert sorted(p.loan) == list(range(1, len(p.loan) + 1))
    fee_numbers = [x["number"] for x in p.fees]
    comp_numbers = [x["number"] for x in p.compensations]
    assert len(set(fee_numbers)) == len(fee_numbers) and all(n.startswith("G") for n in fee_numbers)
    assert len(set(comp_numbers)) == len(comp_numbers) and all(n.startswith("E") for n in comp_numbers)
    assert all(re.fullmatch(r"5\d{9}", m) for m in p.material) and len(p.material) == 500
    assert all(re.fullmatch(r"\d{8}", m["faust"]) for m in p.t["material"])


def test_summary_matches_the_tables(population):
    p = population
    for table in FBS_TABLES:
        assert getattr(p.summary, table) == len(p.t[table]), table
    d = p.summary.as_dict()
    assert d["as_of"] == AS_OF.isoformat() and d["rows"] == sum(len(v) for v in p.t.values())
    assert d["population"]["fees"] == len(p.fees) and d["population"]["compensations"] == len(p.compensations)


# --- agencies ----------------------------------------------------------------------------------

def test_one_healthy_agency_per_debtor_vendor_with_its_settings_I3_T2_C2(population):
    healthy = {a["debtor_vendor"]: a for a in population.t["agency"] if a["age_limit"] == 18}
    assert set(healthy) == {"KMD_OPUS", "PRISME", "EG"}
    settings = {v: (a["replacement_cpr_enabled"], a["verify_compensations"], a["auto_compensation_acknowledged"])
                for v, a in healthy.items()}
    assert settings == {"KMD_OPUS": (True, True, False), "PRISME": (False, False, True), "EG": (True, False, False)}


def test_misconfigured_agencies_with_age_limit_0_and_100_C3(population):
    broken = {a["age_limit"]: a["debtor_vendor"] for a in population.t["agency"] if a["age_limit"] != 18}
    assert broken == {0: "KMD_OPUS", 100: "EG"}
    patrons_per_agency = Counter(p["agency_id"] for p in population.t["patron"])
    assert all(patrons_per_agency[a["agency_id"]] >= 50 for a in population.t["agency"])


def test_agency_identifiers_cut_off_and_branches_T1(population):
    agencies = population.t["agency"]
    assert len(agencies) == 5
    for a in agencies:
        assert re.fullmatch(r"\d{6}", a["agency_id"])
        assert stdnum_cvr.is_valid(a["municipality_cvr"]) and a["municipality_cvr"][0] != "0"
        assert str(uuid.UUID(a["org_unit_uuid"])) == a["org_unit_uuid"]
        assert str(uuid.UUID(a["sender_system_uuid"])) == a["sender_system_uuid"]
        assert dt.timedelta(days=300) <= AS_OF - a["cut_off_date"] <= dt.timedelta(days=430)
    assert len({a["cut_off_date"] for a in agencies}) > 1
    branches = Counter(b["agency_id"] for b in population.t["branch"])
    assert all(2 <= branches[a["agency_id"]] <= 4 for a in agencies)
    for b in population.t["branch"]:
        assert b["branch_id"].startswith(b["agency_id"] + "-")
        assert re.fullmatch(r"[a-z-]+@[a-z]+\.kommune\.example", b["staff_email"])


def test_patrons_split_across_agencies_roughly_as_specified(population):
    counts = Counter(p["agency_id"] for p in population.t["patron"])
    shares = sorted((c / 1500 for c in counts.values()), reverse=True)
    assert shares == pytest.approx([0.35, 0.25, 0.25, 0.075, 0.075], abs=0.01)


# --- persons, CPR and replacement CPR ----------------------------------------------------------

def test_patron_kind_mix(population):
    p = population
    assert len(p.persons) / 1500 == pytest.approx(0.93, abs=0.01)
    assert len(p.companies) / 1500 == pytest.approx(0.04, abs=0.01)
    assert len(p.groups) / 1500 == pytest.approx(0.03, abs=0.01)
    assert all(x["name"] and x["street"] and x["postal_code"] and x["city"] for x in p.persons)
    assert all(x["cvr"] is None and x["p_number"] is None and x["ean"] is None for x in p.persons)
    assert all(x["cpr"] is None and x["replacement_cpr"] is None for x in p.companies + p.groups)


def test_well_formed_cprs_are_unique_encode_the_birth_date_and_mostly_pass_mod11_I4(population):
    with_cpr = [x for x in population.persons if x["cpr"] is not None]
    assert len(with_cpr) / len(population.persons) == pytest.approx(0.85, abs=0.02)
    assert len({x["cpr"] for x in with_cpr}) == len(with_cpr)
    well_formed = [x for x in with_cpr if cpr_birth_date(x["cpr"]) is not None]
    wrong_birth = [mask(x["cpr"]) for x in well_formed if cpr_birth_date(x["cpr"]) != x["birth_date"]]
    assert wrong_birth == []
    failing = [x for x in well_formed if not mod11_ok(x["cpr"])]
    assert 1 <= len(failing) <= 0.03 * len(well_formed)  # I4: allowed since 2007, a warning only


def test_malformed_cprs_present_but_rare_I4(population):
    malformed = [x for x in population.persons if x["cpr"] is not None and cpr_birth_date(x["cpr"]) is None]
    assert 1 <= len(malformed) <= 0.01 * len(population.persons)
    assert any(len(x["cpr"]) == 9 for x in malformed)  # a digit missing
    assert any(len(x["cpr"]) == 10 for x in malformed)  # an impossible date
    assert all(x["birth_date"] is not None for x in malformed)


def test_persons_without_cpr_with_and_without_birth_date_T6_M4(population):
    without = [x for x in population.persons if x["cpr"] is None]
    with_birth = [x for x in without if x["birth_date"] is not None]
    assert len(without) / len(population.persons) == pytest.approx(0.15, abs=0.02)
    assert len(with_birth) / len(without) == pytest.approx(0.60, abs=0.05)
    assert all(x["birth_date"] is not None for x in population.persons if x["cpr"] is not None)


def test_existing_replacement_cprs_follow_the_day_plus_60_convention_I1_I3(population):
    p = population
    holders = [x for x in p.persons if x["replacement_cpr"] is not None]
    assert holders and all(x["cpr"] is None for x in holders)
    bad = []
    for x in holders:
        r, b = x["replacement_cpr"], x["birth_date"]
        if not (re.fullmatch(r"[6-9]\d{9}", r) and int(r[:2]) == b.day + 60 and r[2:6] == b.strftime("%m%y")):
            bad.append(mask(r))
    assert bad == []
    vendors = {p.agency[x["agency_id"]]["debtor_vendor"] for x in holders}
    enabled = {p.agency[x["agency_id"]]["replacement_cpr_enabled"] for x in holders}
    assert "PRISME" in vendors and enabled == {True, False}


def test_age_mix_children_young_adults_and_near_18_C3(population):
    p = population
    dated = [x for x in p.persons if x["birth_date"] is not None]
    children = [x for x in dated if not p.adult_at(x, AS_OF)]
    young = [x for x in dated if p.adult_at(x, AS_OF) and not p.adult_at(x, AS_OF - dt.timedelta(days=4 * 365))]
    near18 = [x for x in children if plus_years(x["birth_date"], 18) <= AS_OF + dt.timedelta(days=42)]
    assert len(children) / len(dated) == pytest.approx(0.22, abs=0.03)
    assert len(young) / len(dated) >= 0.06
    assert len(near18) >= 3
    assert min(AS_OF.year - x["birth_date"].year for x in dated) >= 3
    assert max(AS_OF.year - x["birth_date"].year for x in dated) <= 94


# --- guardianship ------------------------------------------------------------------------------

def guardian_at(population: Population, child_id: int, day: dt.date) -> int | None:
    for g in population.guardianships.get(child_id, ()):
        if g["valid_from"] <= day and (g["valid_to"] is None or day < g["valid_to"]):
            return g["guardian_patron_id"]
    return None


def test_children_with_and_without_guardian_C4(population):
    p = population
    children = [x for x in p.persons if x["birth_date"] is not None and not p.adult_at(x, AS_OF)]
    guarded = [x for x in children if guardian_at(p, x["patron_id"], AS_OF - dt.timedelta(days=1))]
    unguarded = [x for x in children if x["patron_id"] not in p.guardianships]
    assert guarded and unguarded
    assert len(guarded) / len(children) == pytest.approx(0.70, abs=0.08)
    assert any(p.liabilities_of[x["patron_id"]] for x in unguarded)


def test_guardians_are_adults_with_cpr_of_the_same_agency_and_rows_do_not_overlap_C4(population):
    p = population
    problems = []
    for child_id, rows in p.guardianships.items():
        child = p.patron[child_id]
        rows = sorted(rows, key=lambda g: g["valid_from"])
        for g in rows:
            guardian = p.patron[g["guardian_patron_id"]]
            if (child["kind"] != "person" or guardian["kind"] != "person" or guardian["cpr"] is None
                    or cpr_birth_date(guardian["cpr"]) is None or guardian["agency_id"] != child["agency_id"]
                    or not p.adult_at(guardian, g["valid_from"])
                    or (g["valid_to"] is not None and g["valid_to"] <= g["valid_from"])):
                problems.append((child_id, g["valid_from"]))
        for a, b in zip(rows, rows[1:], strict=False):
            if a["valid_to"] is None or a["valid_to"] > b["valid_from"]:
                problems.append((child_id, "overlap"))
    assert problems == []


def test_guardian_change_inside_liability_period_with_liabilities_on_both_sides_C5(population):
    p = population
    found = []
    for child_id, rows in p.guardianships.items():
        rows = sorted(rows, key=lambda g: g["valid_from"])
        for a, b in zip(rows, rows[1:], strict=False):
            change = b["valid_from"]
            if a["valid_to"] == change and a["guardian_patron_id"] != b["guardian_patron_id"] \
                    and BACKLOG_START <= change < AS_OF:
                created = [x["created_at"].date() for x in p.liabilities_of[child_id]]
                if any(c < change for c in created) and any(c >= change for c in created):
                    found.append(child_id)
    assert found
    changes = sum(1 for rows in p.guardianships.values() if len(rows) > 1)
    assert changes / len(p.guardianships) == pytest.approx(0.10, abs=0.05)


def test_child_turned_adult_with_liabilities_before_and_after_18th_birthday_C5(population):
    p = population
    turned = [x for x in p.persons if x["birth_date"] is not None and p.adult_at(x, AS_OF)
              and not p.adult_at(x, BACKLOG_START)]
    straddling = []
    for x in turned:
        birthday = plus_years(x["birth_date"], 18)
        created = [y["created_at"].date() for y in p.liabilities_of[x["patron_id"]]]
        if any(c < birthday for c in created) and any(c >= birthday for c in created):
            straddling.append(x)
    assert straddling
    assert any(guardian_at(p, x["patron_id"], plus_years(x["birth_date"], 18) - dt.timedelta(days=1))
               for x in straddling)
    # Their guardianship rows stay: some ended at the 18th birthday, some left open.
    ends = {g["valid_to"] == plus_years(x["birth_date"], 18)
            for x in turned for g in p.guardianships.get(x["patron_id"], ())}
    assert ends == {True, False}


# --- companies and groups ----------------------------------------------------------------------

def test_companies_with_valid_missing_and_invalid_cvr_T5_I4(population):
    companies = population.companies
    valid = [c for c in companies if c["cvr"] is not None and stdnum_cvr.is_valid(c["cvr"])]
    missing = [c for c in companies if c["cvr"] is None]
    invalid = [c for c in companies if c["cvr"] is not None and not stdnum_cvr.is_valid(c["cvr"])]
    assert valid and missing and invalid
    assert len(valid) / len(companies) == pytest.approx(0.80, abs=0.05)
    assert all(re.fullmatch(r"[1-9]\d{7}", c["cvr"]) for c in invalid)  # well-formed, fails mod-11 only


def test_companies_with_p_number_and_ean_T5_F1(population):
    companies = population.companies
    p_numbers = [c["p_number"] for c in companies if c["p_number"] is not None]
    eans = [c["ean"] for c in companies if c["ean"] is not None]
    assert len(p_numbers) / len(companies) == pytest.approx(0.50, abs=0.05)
    assert len(eans) / len(companies) == pytest.approx(0.40, abs=0.05)
    assert all(re.fullmatch(r"\d{10}", n) for n in p_numbers)
    assert all(re.fullmatch(r"\d{13}", e) and stdnum_ean.is_valid(e) for e in eans)
    assert any(c["p_number"] is None and c["ean"] is None for c in companies)


def test_groups_with_and_without_responsible_patron_T4(population):
    p = population
    with_responsible = [g for g in p.groups if g["responsible_patron_id"] is not None]
    without = [g for g in p.groups if g["responsible_patron_id"] is None]
    assert with_responsible and without
    assert len(with_responsible) / len(p.groups) == pytest.approx(0.70, abs=0.1)
    for g in with_responsible:
        r = p.patron[g["responsible_patron_id"]]
        assert r["kind"] == "person" and r["agency_id"] == g["agency_id"] and p.adult_at(r, AS_OF)
        assert r["cpr"] is not None and cpr_birth_date(r["cpr"]) is not None


def test_group_liabilities_are_owned_by_the_group_T4(population):
    p = population
    group_ids = {g["patron_id"] for g in p.groups}
    on_groups = [x for x in p.t["liability"] if x["patron_id"] in group_ids]
    assert on_groups
    assert all(p.loan[x["loan_id"]]["patron_id"] == x["patron_id"] for x in on_groups if x["loan_id"])
    assert any(p.patron[x["patron_id"]]["responsible_patron_id"] is None for x in on_groups)
    assert any(p.patron[x["patron_id"]]["responsible_patron_id"] is not None for x in on_groups)


# --- liabilities -------------------------------------------------------------------------------

def test_liability_volume_kinds_and_skew(population):
    p = population
    assert len(p.t["liability"]) == pytest.approx(15000, rel=0.02)
    assert len(p.fees) / len(p.t["liability"]) == pytest.approx(0.75, abs=0.02)
    per_patron = Counter({pid: len(v) for pid, v in p.liabilities_of.items()})
    counts = [per_patron.get(pid, 0) for pid in p.patron]
    assert sum(1 for c in counts if c <= 3) / len(counts) >= 0.25
    assert max(counts) >= 36  # some with dozens


def test_created_at_spread_over_backlog_denser_recently_T1(population):
    created = [x["created_at"] for x in population.t["liability"]]
    inside = [c for c in created if dt.datetime(2019, 6, 1) <= c < AS_OF_START]
    assert len(created) - len(inside) <= 0.005 * len(created)  # only data-quality cases stray
    first_year = sum(1 for c in inside if c < dt.datetime(2020, 6, 1))
    last_year = sum(1 for c in inside if c >= dt.datetime(2024, 6, 1))
    assert last_year > 1.5 * first_year > 0


def last_sunday_of_march(year: int) -> dt.date:
    d = dt.date(year, 3, 31)
    return d - dt.timedelta(days=(d.weekday() + 1) % 7)


def test_timestamps_whole_seconds_ordered_and_nothing_on_or_after_as_of(population):
    """FBS local time without zone: whole seconds, before as_of, never in the skipped DST hour."""
    p = population
    spring_forward = {last_sunday_of_march(y) for y in range(2018, 2026)}
    for table in ("liability", "loan"):
        for row in p.t[table]:
            for column, value in row.items():
                if column in TIMESTAMP_COLUMNS and value is not None:
                    assert value.microsecond == 0 and value.tzinfo is None and value < AS_OF_START, (table, column)
                    assert not (value.date() in spring_forward and value.hour == 2), (table, column)
                if column in DATE_COLUMNS and value is not None:
                    assert value < AS_OF, (table, column)
    for x in p.t["liability"]:
        assert x["updated_at"] >= x["created_at"]
        for column in ("verified_at", "refund_requested_at"):
            assert x[column] is None or x["created_at"] <= x[column] <= x["updated_at"], column


def test_fees_are_overdue_fees_from_the_fee_table_C2_F3(population):
    p = population
    assert all(x["loan_id"] is not None for x in p.fees)
    assert not any(x["acknowledged"] or x["auto_created"] or x["verified_at"] or x["refund_requested_at"]
                   for x in p.fees)
    day_after_due = [x for x in p.fees if x["created_at"].date() == p.loan[x["loan_id"]]["due_date"]
                     + dt.timedelta(days=1)]
    assert len(day_after_due) >= 0.99 * len(p.fees)
    positive = [x["amount"] for x in p.fees if x["amount"] > 0]
    assert set(positive) <= FEE_TABLE and len(set(positive)) >= 5
    assert all(x["amount"] == x["amount"].quantize(Decimal("0.01")) for x in p.t["liability"])
    returned = [p.loan[x["loan_id"]]["returned_at"] for x in p.fees]
    assert all(r.date() > p.loan[x["loan_id"]]["due_date"] for x, r in zip(p.fees, returned, strict=True) if r)


def test_compensations_acknowledged_auto_created_or_not_C2(population):
    comps = population.compensations
    assert len([x for x in comps if x["acknowledged"]]) / len(comps) == pytest.approx(0.40, abs=0.02)
    assert len([x for x in comps if x["auto_created"]]) / len(comps) == pytest.approx(0.50, abs=0.02)
    combos = {(x["acknowledged"], x["auto_created"]) for x in comps}
    assert combos == {(True, True), (True, False), (False, True), (False, False)}
    positive = [x["amount"] for x in comps if x["amount"] > 0]
    assert min(positive) >= 49 and max(positive) <= 1500


def test_compensations_verified_or_not_T2(population):
    comps = population.compensations
    verified = [x for x in comps if x["verified_at"] is not None]
    assert len(verified) / len(comps) == pytest.approx(0.70, abs=0.05)
    assert all(x["verified_at"] - x["created_at"] <= dt.timedelta(days=10)
               for x in verified if not population.created_before_loan(x))
    recent_unverified = [x for x in comps if x["verified_at"] is None
                         and x["created_at"] >= AS_OF_START - dt.timedelta(days=14)]
    assert recent_unverified


def test_compensation_loans_lost_or_damaged_and_some_without_loan_F2(population):
    p = population
    without = [x for x in p.compensations if x["loan_id"] is None]
    assert len(without) / len(p.compensations) == pytest.approx(0.10, abs=0.02)
    assert all(x["item_number"] in p.material for x in without)
    with_loan = [x for x in p.compensations if x["loan_id"] is not None]
    gaps = [(x["created_at"].date() - p.loan[x["loan_id"]]["due_date"]).days for x in with_loan]
    assert sum(1 for g in gaps if 30 <= g <= 60) >= 0.99 * len(gaps)
    returned = [p.loan[x["loan_id"]]["returned_at"] for x in with_loan]
    assert any(r is None for r in returned) and any(r is not None for r in returned)
    assert all(r <= x["created_at"] for x, r in zip(with_loan, returned, strict=True)
               if r is not None and not p.created_before_loan(x))


def test_reloans_renewed_within_the_first_period_F3(population):
    loans = population.t["loan"]
    reloaned = [x for x in loans if x["reloan_date"] is not None]
    assert len(reloaned) / len(loans) == pytest.approx(0.15, abs=0.02)
    for x in loans:
        start = x["reloan_date"] or x["loan_date"]
        assert (x["due_date"] - start).days in (28, 30)
    assert all(1 <= (x["reloan_date"] - x["loan_date"]).days <= 30 for x in reloaned)


def test_liabilities_before_and_after_cut_off_in_every_status_T1_T3(population):
    p = population
    seen = Counter((x["status"], x["created_at"].date() < p.cut_off(x)) for x in p.t["liability"])
    statuses = ("open", "closed", "sent_to_collection", "cancelled")
    assert all(seen[(s, before)] > 0 for s in statuses for before in (True, False)), seen
    before = sum(v for (_, b), v in seen.items() if b)
    assert before / len(p.t["liability"]) >= 0.4  # the pre-cut-off backlog
    old_open = seen[("open", True)] / before
    new_open = seen[("open", False)] / (len(p.t["liability"]) - before)
    assert old_open == pytest.approx(0.40, abs=0.05) and new_open == pytest.approx(0.80, abs=0.05)


def test_refund_requested_only_on_closed_compensations_U3(population):
    refunds = [x for x in population.t["liability"] if x["refund_requested_at"] is not None]
    assert refunds and len(refunds) <= 0.02 * len(population.compensations)
    assert all(x["kind"] == "compensation" and x["status"] == "closed" for x in refunds)


def test_rare_data_quality_problems_present(population):
    p = population
    zero = [x for x in p.t["liability"] if x["amount"] == 0]
    negative = [x for x in p.t["liability"] if x["amount"] < 0]
    early = [x for x in p.t["liability"] if p.created_before_loan(x)]
    for case in (zero, negative, early):
        assert 1 <= len(case) <= 0.005 * len(p.t["liability"])


def test_large_pre_cut_off_backlog_in_every_status_for_a_backfill_T3(stores):
    """--backlog-years / --cut-off-days: the older the data and the nearer the cut-off, the larger
    the backlog before it (T1), in every status (T3), with children who have since come of age (C5)."""
    summary = generate(stores.fbs, patrons=600, seed=5, as_of=AS_OF, backlog_years=10, cut_off_days=200)
    with stores.fbs.connect() as conn:
        cut_offs = {r.agency_id: str(r.cut_off_date)[:10] for r in conn.execute(text(
            "SELECT agency_id, cut_off_date FROM agency"))}
        rows = conn.execute(text(
            "SELECT l.status, COUNT(*) AS n FROM liability l JOIN agency a ON a.agency_id = l.agency_id "
            "WHERE l.created_at < a.cut_off_date GROUP BY l.status")).all()
    assert all(155 <= (AS_OF - dt.date.fromisoformat(d)).days <= 245 for d in cut_offs.values())
    before = {r.status: int(r.n) for r in rows}
    assert set(before) == {"open", "closed", "sent_to_collection", "cancelled"}
    assert sum(before.values()) == summary.population["before_cut_off"] > 0.75 * summary.liability
    with pytest.raises(ValueError, match="cut_off_days"):
        generate(stores.fbs, patrons=600, seed=5, as_of=AS_OF, backlog_years=2, cut_off_days=800)


# --- national scale (issue 18): N municipalities of skewed sizes --------------------------------

def test_size_spread_puts_the_largest_at_ten_times_the_median():
    from fbs_debitor.sandbox.generator import LARGEST_TO_MEDIAN, size_spread

    sizes = size_spread(98)
    assert len(sizes) == 98 and abs(sizes.sum() - 1) < 1e-9 and list(sizes) == sorted(sizes)
    median = (sizes[48] + sizes[49]) / 2
    assert abs(sizes[-1] / median - LARGEST_TO_MEDIAN) < 0.05
    assert sizes[-1] / sizes[0] > 50           # a skewed spread, not a uniform one
    assert list(size_spread(1)) == [1.0]


def test_national_population_98_municipalities_all_vendors_own_cvrs_skewed_sizes(stores):
    from fbs_debitor.core.identity import check_cvr
    from fbs_debitor.transfer.units import units

    summary = generate(stores.fbs, patrons=4000, seed=3, as_of=AS_OF, municipalities=98)
    t = load_tables(stores.fbs)
    agencies = t["agency"]
    by_cvr = defaultdict(list)
    for a in agencies:
        by_cvr[a["municipality_cvr"]].append(a)
    assert len(by_cvr) == 98 == summary.population["municipalities"]
    assert all(check_cvr(cvr).ok and stdnum_cvr.is_valid(cvr) for cvr in by_cvr)
    assert all(1 <= len(group) <= 3 for group in by_cvr.values())
    assert len({a["agency_id"] for a in agencies}) == len(agencies) == summary.agency
    assert all(re.fullmatch(r"7\d{5}", a["agency_id"]) for a in agencies)
    # one vendor per municipality, all three present, about a third each
    vendor_of = {cvr: {a["debtor_vendor"] for a in group} for cvr, group in by_cvr.items()}
    assert all(len(v) == 1 for v in vendor_of.values())
    per_vendor = Counter(next(iter(v)) for v in vendor_of.values())
    assert set(per_vendor) == {"KMD_OPUS", "PRISME", "EG"} and min(per_vendor.values()) >= 30
    # each municipality's agencies carry its name; its vendor's settings (I3, T2, C2)
    for group in by_cvr.values():
        assert len({a["name"].split(" ")[0] for a in group}) == 1
    settings_of = {"KMD_OPUS": (True, True, False), "PRISME": (False, False, True), "EG": (True, False, False)}
    assert all((a["replacement_cpr_enabled"], a["verify_compensations"], a["auto_compensation_acknowledged"])
               == settings_of[a["debtor_vendor"]] for a in agencies)
    # the C3 pair, on agencies that are not their municipality's first
    broken = sorted((a["age_limit"], a["agency_id"][-2:]) for a in agencies if a["age_limit"] != 18)
    assert [limit for limit, _ in broken] == [0, 100] and all(suffix != "00" for _, suffix in broken)
    # sizes: patrons per municipality, the largest about ten times the median
    agency_cvr = {a["agency_id"]: a["municipality_cvr"] for a in agencies}
    patrons = Counter(agency_cvr[p["agency_id"]] for p in t["patron"])
    sizes = sorted(patrons[cvr] for cvr in by_cvr)
    median = (sizes[48] + sizes[49]) / 2
    assert sizes[0] >= 1 and 8 <= sizes[-1] / median <= 12, (sizes[0], median, sizes[-1])
    assert sum(sizes) == 4000
    # every patron lives in a postal district of its own municipality
    districts = defaultdict(set)
    for p in t["patron"]:
        if p["postal_code"]:
            districts[p["postal_code"]].add(agency_cvr[p["agency_id"]])
    assert districts and all(len(cvrs) == 1 for cvrs in districts.values())
    # the same data-quality mix as the default population
    pop = summary.population
    for key in ("malformed_cprs", "mod11_failing_cprs", "persons_without_cpr_or_birth_date", "replacement_cprs",
                "companies_without_cvr", "companies_invalid_cvr", "groups_without_responsible", "guardian_changes",
                "zero_or_negative_amounts", "created_before_loan", "compensations_without_loan", "reloans"):
        assert pop[key] > 0, key
    assert {u.cvr for u in units(stores.fbs)} == set(by_cvr)


def test_national_population_is_reproducible_and_leaves_the_default_alone(stores):
    from fbs_debitor.sandbox.generator import AGENCIES

    generate(stores.fbs, patrons=1000, seed=4, as_of=AS_OF, municipalities=12)
    first = digests(stores.fbs)
    generate(stores.fbs, patrons=1000, seed=4, as_of=AS_OF, municipalities=12)
    assert digests(stores.fbs) == first
    generate(stores.fbs, patrons=1000, seed=5, as_of=AS_OF, municipalities=12)
    assert digests(stores.fbs)["agency"] != first["agency"]
    default = generate(stores.fbs, patrons=1000, seed=4, as_of=AS_OF)
    assert "municipalities" not in default.population
    none = generate(stores.fbs, patrons=1000, seed=4, as_of=AS_OF, municipalities=None)
    assert none.as_dict() == default.as_dict()
    assert sorted(a["agency_id"] for a in load_tables(stores.fbs)["agency"]) == sorted(a.agency_id for a in AGENCIES)


@pytest.mark.parametrize("municipalities, patrons", [(0, 5000), (99, 5000), (98, 98 * 20 - 1)])
def test_national_population_out_of_range_is_refused(stores, municipalities, patrons):
    with pytest.raises(ValueError, match="municipalit"):
        generate(stores.fbs, patrons=patrons, seed=1, as_of=AS_OF, municipalities=municipalities)


def test_generate_command_takes_municipalities_1_to_98(capsys):
    from fbs_debitor.sandbox import cli as sandbox_cli

    parser = sandbox_cli.build_parser()
    assert parser.parse_args(["generate", "--municipalities", "98"]).municipalities == 98
    assert parser.parse_args(["generate"]).municipalities is None
    for wrong in ("0", "99", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", "--municipalities", wrong])
        assert "allowed is a whole number from 1 to 98" in capsys.readouterr().err


def test_new_fees_arrive_open_with_their_late_loan(stores):
    from fbs_debitor.sandbox.change_simulator import new_fees

    generate(stores.fbs, patrons=500, seed=6, as_of=AS_OF, municipalities=5)
    before = load_tables(stores.fbs)
    at = AS_OF_START + dt.timedelta(hours=9)
    added = new_fees(stores, 40, at, seed=2)
    after = load_tables(stores.fbs)
    new = after["liability"][len(before["liability"]):]
    assert sum(added.values()) == len(new) == 40 and len(after["loan"]) == len(before["loan"]) + 40
    loans = {x["loan_id"]: x for x in after["loan"]}
    patrons = {p["patron_id"]: p for p in after["patron"]}
    numbers = [x["number"] for x in after["liability"] if x["kind"] == "fee"]
    assert len(numbers) == len(set(numbers))
    for x in new:
        assert (x["kind"], x["status"], x["created_at"], x["updated_at"]) == ("fee", "open", at, at)
        assert x["amount"] > 0 and patrons[x["patron_id"]]["agency_id"] == x["agency_id"]
        loan = loans[x["loan_id"]]
        assert loan["patron_id"] == x["patron_id"] and loan["due_date"] < at.date() and loan["returned_at"] < at
    assert Counter(x["agency_id"] for x in new) == added
