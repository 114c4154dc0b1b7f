"""A synthetic, reproducible FBS extract: agencies, patrons, guardians, loans and liabilities.

``generate(fbs_engine, patrons, seed, as_of)`` empties every FBS table and fills it with a
population made to exercise the SF1590 rules (see /work/shared/domain/SF1590.md): minors with and
without a guardian (C4), a guardian change and 18th birthdays inside the liability period (C5),
companies with and without CVR (T5), groups with and without a responsible patron (T4), persons
without CPR, with mod-11-failing or malformed CPR, or with an existing replacement CPR (T6, I1, I4),
verified and unverified compensations (T2), liabilities on both sides of the cut-off date in every
status (T1, T3), re-loans (F3), compensations without a loan (F2), refunds (U3), two misconfigured
agencies (age limit 0 and 100, C3) and one healthy agency per debtor vendor (I3).

National scale (``generate(..., municipalities=N)``, ``generate --municipalities N``): instead of
the five fixed agencies, N (1-98) synthetic municipalities sharing the patrons, sized by a lognormal
spread whose largest is about ten times the median (``size_spread``), each with its own valid CVR,
1-3 agencies and one of the three debtor vendors (``national_agencies``), with the same mix of
data-quality problems. Without the option the population is exactly what it was before it existed.

Reproducible: the same (patrons, seed, as_of, liabilities_per_patron, backlog_years) gives the same
table contents on SQLite and on PostgreSQL (for a given numpy and Python version). Nothing reads
the clock: every date is relative to ``as_of``. ``as_of`` is the day the extract is taken, at its
start: no date is on or after ``as_of`` except agency settings, and no timestamp is at or after
``as_of`` 00:00:00. Timestamps are FBS local time without zone and in whole seconds.

Built for volume: liabilities and loans are numpy arrays, turned into row tuples one chunk at a
time while they stream into ``bulk_insert`` (COPY on PostgreSQL): 100 000 patrons and a million
liabilities take about 35 s into SQLite and 50 s into PostgreSQL on two cores, with a peak RSS
under 600 MB (benchmarks/bench_generate.py).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal

import numpy as np
from sqlalchemy.engine import Connection, Engine

from fbs_debitor.core.db import bulk_insert, bulk_load, empty_tables
from fbs_debitor.sandbox import names as words

MIN_PATRONS = 50
ROW_CHUNK = 50_000

# Patron kinds, CPR classes and liability statuses as small integer codes inside the arrays.
PERSON, COMPANY, GROUP = 0, 1, 2
KIND_NAMES = ("person", "company", "group")
CPR_NONE, CPR_VALID, CPR_MOD11_FAIL, CPR_MALFORMED = 0, 1, 2, 3
STATUSES = ("open", "closed", "sent_to_collection", "cancelled")
OPEN, CLOSED, SENT, CANCELLED = 0, 1, 2, 3
# Status mix for liabilities created before / on or after the agency's cut-off date.
STATUS_MIX_BEFORE = (0.40, 0.45, 0.08, 0.07)
STATUS_MIX_AFTER = (0.80, 0.12, 0.01, 0.07)

DAY = np.timedelta64(1, "D")
SECOND = np.timedelta64(1, "s")


@dataclass(frozen=True)
class AgencySpec:
    agency_id: str
    municipality: str
    slug: str
    share: float
    debtor_vendor: str
    age_limit: int
    replacement_cpr_enabled: bool
    verify_compensations: bool
    auto_compensation_acknowledged: bool
    cvr: str | None = None           # the municipality's CVR (national mode: shared by its agencies)
    name: str = ""                   # the agency's name (default "<municipality> Bibliotekerne")
    districts: tuple = ()            # (postal code, city) pairs (default names.MUNICIPALITIES[municipality])


# Three healthy agencies, one per debtor vendor, and two misconfigured ones (C3).
AGENCIES = (
    AgencySpec("715100", "Nordstrand", "nordstrand", 0.35, "KMD_OPUS", 18, True, True, False),
    AgencySpec("726300", "Søvang", "soevang", 0.25, "PRISME", 18, False, False, True),
    AgencySpec("737500", "Egeby", "egeby", 0.25, "EG", 18, True, False, False),
    AgencySpec("748700", "Lyngmose", "lyngmose", 0.075, "KMD_OPUS", 0, True, True, False),
    AgencySpec("759900", "Havrevig", "havrevig", 0.075, "EG", 100, True, False, False),
)

# National mode (``generate(..., municipalities=N)``): N municipalities of skewed sizes, each with 1-3
# agencies, all three debtor vendors, the vendor's usual agency settings, two misconfigured agencies (C3).
MAX_MUNICIPALITIES = 98
LARGEST_TO_MEDIAN = 10.0          # the largest municipality is this many times the median one
MIN_PATRONS_PER_MUNICIPALITY = 20
VENDORS = ("KMD_OPUS", "PRISME", "EG")
# (replacement_cpr_enabled, verify_compensations, auto_compensation_acknowledged) as in AGENCIES
VENDOR_SETTINGS = {"KMD_OPUS": (True, True, False), "PRISME": (False, False, True), "EG": (True, False, False)}
AGENCY_SPLITS = {1: (1.0,), 2: (0.75, 0.25), 3: (0.6, 0.25, 0.15)}
AGENCY_KINDS = ("Bibliotekerne", "Skolebibliotekerne", "Bogbusserne")
# Fictional municipality names: a head and a tail (Lyngvig, Egeholm, ...), never a real municipality's.
NAME_HEADS = ("Nord", "Syd", "Øster", "Vester", "Lyng", "Ege", "Bøge", "Havre", "Sø", "Mose", "Strand", "Skov",
              "Bakke", "Hede", "Fjord", "Kilde", "Kær", "Mølle", "Sten", "Birke", "Ask", "Ravn", "Hjorte", "Tjørne")
NAME_TAILS = ("vang", "by", "mose", "vig", "lund", "holm", "rup", "sted", "løse", "bjerg", "havn", "strup", "købing",
              "næs")


def size_spread(count: int) -> np.ndarray:
    """Relative sizes of ``count`` municipalities, summing to 1, smallest first: the quantiles of a
    lognormal whose spread puts the largest at LARGEST_TO_MEDIAN times the median (as Denmark's
    98 municipalities spread around a median of some 45 000 inhabitants). Deterministic."""
    if count == 1:
        return np.ones(1)
    normal = statistics.NormalDist()
    z = np.array([normal.inv_cdf((i + 0.5) / count) for i in range(count)])
    sizes = np.exp(math.log(LARGEST_TO_MEDIAN) / z[-1] * z)
    return sizes / sizes.sum()


def _slug(name: str) -> str:
    return name.lower().replace("æ", "ae").replace("ø", "oe").replace("å", "aa")


def national_agencies(count: int, seed: int) -> tuple[AgencySpec, ...]:
    """The agencies of ``count`` synthetic municipalities (seeded; its own random stream, part 6).

    Sizes from ``size_spread`` in a seeded order; vendors a third each (all three from 3 on), in a
    seeded order; each municipality a valid, unique CVR (modulus 11), 1-3 agencies sharing it
    (agency ids 7<code>00, 7<code>10, 7<code>20) and its vendor's agency settings; two agencies that
    are not their municipality's first get the broken age limits 0 and 100 (C3)."""
    if not 1 <= count <= MAX_MUNICIPALITIES:
        raise ValueError(f"municipalities must be from 1 to {MAX_MUNICIPALITIES}")
    rng = _rng(seed, 6)
    pyr = _pyrandom(rng)
    combos = [h + t for h in NAME_HEADS for t in NAME_TAILS]
    names = [combos[i] for i in rng.permutation(len(combos))[:count]]
    weights = size_spread(count)[rng.permutation(count)]
    vendors = [VENDORS[i] for i in rng.permutation(np.arange(count) % len(VENDORS))]
    cvrs: list[str] = []
    while len(cvrs) < count:
        cvr = _cvr(pyr)
        if cvr not in cvrs:
            cvrs.append(cvr)
    sizes = rng.integers(1, 4, count)
    specs: list[AgencySpec] = []
    for m in range(count):
        name, vendor, code = names[m], vendors[m], 101 + 7 * m
        settings_ = VENDOR_SETTINGS[vendor]
        base = 1000 + 90 * m
        districts = ((f"{base}", name), (f"{base + 1}", f"{name} Nord"), (f"{base + 5}", f"{name} Syd"))
        for j, part in enumerate(AGENCY_SPLITS[int(sizes[m])]):
            specs.append(AgencySpec(f"7{code:03d}{j}0", name, f"{_slug(name)}{j or ''}", float(weights[m] * part),
                                    vendor, 18, *settings_, cvr=cvrs[m], name=f"{name} {AGENCY_KINDS[j]}",
                                    districts=districts))
    secondary = [i for i, s in enumerate(specs) if not s.agency_id.endswith("00")]
    for i, limit in zip(sorted(pyr.sample(secondary, min(2, len(secondary)))), (0, 100), strict=False):
        specs[i] = AgencySpec(**{**asdict(specs[i]), "age_limit": limit})
    return tuple(specs)

AGENCY_COLUMNS = ("agency_id", "name", "municipality_cvr", "age_limit", "cut_off_date", "replacement_cpr_enabled",
                  "verify_compensations", "auto_compensation_acknowledged", "debtor_vendor", "org_unit_uuid",
                  "sender_system_uuid")
BRANCH_COLUMNS = ("branch_id", "agency_id", "name", "staff_email")
PATRON_COLUMNS = ("patron_id", "agency_id", "branch_id", "kind", "cpr", "replacement_cpr", "birth_date", "name",
                  "street", "postal_code", "city", "cvr", "p_number", "ean", "responsible_patron_id")
GUARDIANSHIP_COLUMNS = ("child_patron_id", "guardian_patron_id", "valid_from", "valid_to")
MATERIAL_COLUMNS = ("item_number", "faust", "classification", "author", "title")
LOAN_COLUMNS = ("loan_id", "patron_id", "item_number", "loan_date", "due_date", "reloan_date", "returned_at")
LIABILITY_COLUMNS = ("liability_id", "agency_id", "patron_id", "kind", "number", "loan_id", "item_number", "amount",
                     "created_at", "acknowledged", "auto_created", "verified_at", "status", "refund_requested_at",
                     "updated_at")

# Children of a table first, so every DELETE finds nothing left that points at the row it removes.
WIPE_ORDER = ("payment", "task", "liability", "loan", "guardianship", "material", "patron", "branch", "agency")


@dataclass
class GenerationSummary:
    """What ``generate`` wrote: rows per FBS table and a few population counts."""

    seed: int
    as_of: dt.date
    liabilities_per_patron: float
    backlog_years: int
    agency: int = 0
    branch: int = 0
    patron: int = 0
    guardianship: int = 0
    material: int = 0
    loan: int = 0
    liability: int = 0
    task: int = 0
    payment: int = 0
    population: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(getattr(self, t) for t in WIPE_ORDER)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["as_of"] = self.as_of.isoformat()
        d["rows"] = self.rows
        return d


# --- small helpers -----------------------------------------------------------------------------

def _rng(seed: int, part: int) -> np.random.Generator:
    """An independent stream per part, so changing one part does not reshuffle the others."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(part,)))


def _pyrandom(rng: np.random.Generator) -> random.Random:
    return random.Random(int(rng.integers(0, 2**63)))


def _pick(rng: np.random.Generator, candidates: np.ndarray, fraction: float, minimum: int = 1) -> np.ndarray:
    """Exactly round(fraction * n) (at least ``minimum``, at most n) of the candidate indices, sorted.

    Exact counts instead of coin flips, so rare features are present even in small populations.
    """
    candidates = np.asarray(candidates)
    n = len(candidates)
    k = min(n, max(minimum, int(round(fraction * n))))
    if k == 0:
        return candidates[:0]
    return np.sort(rng.choice(candidates, size=k, replace=False))


def _mask(size: int, idx: np.ndarray) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[idx] = True
    return m


def _add_years(d: np.ndarray, years: int) -> np.ndarray:
    """Calendar ``d + years`` for a datetime64[D] array; 29 February becomes 28 February."""
    y = d.astype("datetime64[Y]")
    m = d.astype("datetime64[M]")
    month_of_year = (m - y.astype("datetime64[M]")).astype(np.int64)
    day = (d - m.astype("datetime64[D]")).astype(np.int64)
    new_m = (y + years).astype("datetime64[M]") + month_of_year
    res = new_m.astype("datetime64[D]") + day
    overflow = res.astype("datetime64[M]") != new_m
    res[overflow] = (new_m[overflow] + 1).astype("datetime64[D]") - 1
    return res


def _add_years_date(d: dt.date, years: int) -> dt.date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def _spring_forward_days(first_year: int, last_year: int) -> np.ndarray:
    """The last Sunday of March of each year: Danish clocks jump from 02:00 to 03:00."""
    days = []
    for year in range(first_year, last_year + 1):
        d = dt.date(year, 3, 31)
        days.append(d - dt.timedelta(days=(d.weekday() + 1) % 7))
    return np.array(days, dtype="datetime64[D]")


def _skip_spring_gap(ts: np.ndarray, gap_days: np.ndarray) -> np.ndarray:
    """Timestamps inside the non-existent local hour moved one hour on (NaT stays NaT)."""
    day = ts.astype("datetime64[D]")
    in_gap = np.isin(day, gap_days) & ((ts - day).astype(np.int64) // 3600 == 2)
    return np.where(in_gap, ts + np.timedelta64(1, "h"), ts)


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _century_digits(year: int) -> tuple[int, ...]:
    """CPR 7th digits that, with the two-digit year, give ``year`` (CPR-kontoret's table)."""
    if 1900 <= year <= 1999:
        return (0, 1, 2, 3)
    if 2000 <= year <= 2036:
        return (4, 5, 6, 7, 8, 9)
    if 2037 <= year <= 2057 or 1858 <= year <= 1899:
        return (5, 6, 7, 8)
    raise ValueError(f"no CPR century digit for year {year}")


CPR_WEIGHTS = (4, 3, 2, 7, 6, 5, 4, 3, 2)


def _cpr(pyr: random.Random, birth: dt.date, male: bool, mod11: bool, used: set[str]) -> str:
    """A unique CPR for ``birth``; mod-11 valid or (I4) deliberately not; odd last digit = male."""
    ddmmyy = f"{birth.day:02d}{birth.month:02d}{birth.year % 100:02d}"
    prefix = sum(w * int(c) for w, c in zip(CPR_WEIGHTS, ddmmyy, strict=False))
    centuries = _century_digits(birth.year)
    while True:
        c7 = pyr.choice(centuries)
        s8, s9 = pyr.randrange(10), pyr.randrange(10)
        check = (-(prefix + 4 * c7 + 3 * s8 + 2 * s9)) % 11
        if mod11:
            if check == 10 or (check % 2 == 1) != male:
                continue
            last = check
        else:
            options = [d for d in range(10) if d != check and (d % 2 == 1) == male]
            last = pyr.choice(options)
        cpr = f"{ddmmyy}{c7}{s8}{s9}{last}"
        if cpr not in used:
            used.add(cpr)
            return cpr


IMPOSSIBLE_DAY_MONTH = ("3102", "3002", "3104", "3106", "3109", "3111", "1513", "3201", "0005")


def _malformed_cpr(pyr: random.Random, birth: dt.date, male: bool, short: bool, used: set[str]) -> str:
    """A CPR as typed wrong at the counter: a digit missing (9 digits) or an impossible date."""
    while True:
        if short:
            full = _cpr(pyr, birth, male, True, set())
            drop = pyr.randrange(6, 10)
            cpr = full[:drop] + full[drop + 1:]
        else:
            cpr = f"{pyr.choice(IMPOSSIBLE_DAY_MONTH)}{birth.year % 100:02d}{pyr.randrange(10000):04d}"
        if cpr not in used:
            used.add(cpr)
            return cpr


def _replacement_cpr(pyr: random.Random, birth: dt.date, used: set[str]) -> str:
    """I1: day + 60 (first digit 6-9), month, year, century digit and three digits."""
    while True:
        c7 = pyr.choice(_century_digits(birth.year))
        cpr = f"{birth.day + 60:02d}{birth.month:02d}{birth.year % 100:02d}{c7}{pyr.randrange(1000):03d}"
        if cpr not in used:
            used.add(cpr)
            return cpr


def _cvr(pyr: random.Random, valid: bool = True) -> str:
    """CVR: 8 digits, first not 0, weights 2,7,6,5,4,3,2,1, sum divisible by 11 (or, if not valid, not)."""
    while True:
        digits = [pyr.randrange(1, 10)] + [pyr.randrange(10) for _ in range(6)]
        check = (-sum(w * d for w, d in zip((2, 7, 6, 5, 4, 3, 2), digits, strict=True))) % 11
        if valid:
            if check == 10:
                continue
            last = check
        else:
            last = pyr.choice([d for d in range(10) if d != check])
        return "".join(map(str, digits)) + str(last)


def _ean(pyr: random.Random) -> str:
    """A Danish GLN/EAN location number: 5798 + 8 digits + GS1 mod-10 check digit."""
    body = "5798" + "".join(str(pyr.randrange(10)) for _ in range(8))
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def _person_name(pyr: random.Random, male: bool) -> str:
    first = pyr.choice(words.MALE_FIRST_NAMES if male else words.FEMALE_FIRST_NAMES)
    middles = words.MIDDLE_NAMES if male else words.MIDDLE_NAMES + words.FEMALE_MIDDLE_NAMES
    middle = f" {pyr.choice(middles)}" if pyr.random() < 0.3 else ""
    return f"{first}{middle} {pyr.choice(words.SURNAMES)}"


def _address(pyr: random.Random, districts: tuple) -> tuple[str, str, str]:
    floor = pyr.choice(words.FLOORS)
    street = f"{pyr.choice(words.STREET_NAMES)} {pyr.randrange(1, 120)}" + (f", {floor}" if floor else "")
    postal_code, city = pyr.choice(districts)
    return street, postal_code, city


def _fill(template: str, pyr: random.Random, municipality: str) -> str:
    return template.format(s=pyr.choice(words.SURNAMES), f=pyr.choice(words.FLOWERS), m=municipality,
                           c=pyr.choice(words.CLASS_NAMES))


# --- the population ----------------------------------------------------------------------------

@dataclass
class _Agencies:
    rows: list[tuple]
    cut_off: np.ndarray          # datetime64[D] per agency
    branch_rows: list[tuple]
    branch_ids: list[str]
    branch_start: np.ndarray     # first global branch index per agency
    branch_count: np.ndarray


def _agencies(seed: int, as_of: dt.date, cut_off_days: int = 365,
              specs: tuple[AgencySpec, ...] = AGENCIES) -> _Agencies:
    rng = _rng(seed, 1)
    pyr = _pyrandom(rng)
    rows, cut_offs, branch_rows, branch_ids, starts, counts = [], [], [], [], [], []
    for spec in specs:
        cut_off = as_of - dt.timedelta(days=cut_off_days + int(rng.integers(-45, 46)))
        cut_offs.append(cut_off)
        rows.append((spec.agency_id, spec.name or f"{spec.municipality} Bibliotekerne", spec.cvr or _cvr(pyr),
                     spec.age_limit, cut_off,
                     spec.replacement_cpr_enabled, spec.verify_compensations, spec.auto_compensation_acknowledged,
                     spec.debtor_vendor, _uuid(rng), _uuid(rng)))
        n = int(rng.integers(2, 5))
        starts.append(len(branch_ids))
        counts.append(n)
        for j, (name, slug) in enumerate(words.BRANCH_NAMES[:n], start=1):
            branch_id = f"{spec.agency_id}-{j:02d}"
            branch_ids.append(branch_id)
            branch_rows.append((branch_id, spec.agency_id, f"{spec.municipality} {name}" if j > 1 else name,
                                f"{slug}@{spec.slug}.kommune.example"))
    return _Agencies(rows, np.array(cut_offs, dtype="datetime64[D]"), branch_rows, branch_ids,
                     np.array(starts), np.array(counts))


@dataclass
class _Patrons:
    n: int
    kind: np.ndarray             # int8 codes
    agency: np.ndarray           # agency index
    branch: np.ndarray           # global branch index
    birth: np.ndarray            # datetime64[D], true birth date of persons (NaT for others)
    adult18: np.ndarray          # datetime64[D], 18th birthday (NaT for others)
    cpr_class: np.ndarray
    has_birth_date: np.ndarray   # birth_date column filled
    cpr: list
    replacement_cpr: list
    name: list
    street: list
    postal_code: list
    city: list
    cvr: list
    p_number: list
    ean: list
    responsible: list
    eligible_by_agency: list     # per agency: adults with a well-formed CPR, sorted by birth date
    population: dict[str, int]


def _patrons(seed: int, n: int, as_of: dt.date, period_start: dt.date, agencies: _Agencies,
             specs: tuple[AgencySpec, ...] = AGENCIES) -> _Patrons:
    rng = _rng(seed, 2)
    pyr = _pyrandom(rng)
    as_of_d = np.datetime64(as_of, "D")

    shares = np.array([a.share for a in specs])
    per_agency = np.floor(shares * n).astype(np.int64)
    if specs is AGENCIES:
        per_agency[0] += n - per_agency.sum()
    else:   # every agency a patron; the rest by largest remainder, so rounding bends no municipality's size
        per_agency = np.maximum(per_agency, 1)
        short = int(n - per_agency.sum())
        if short >= 0:
            per_agency[np.argsort(np.floor(shares * n) - shares * n, kind="stable")[:short]] += 1
        else:
            per_agency[np.argmax(per_agency)] += short
    agency = rng.permutation(np.repeat(np.arange(len(specs)), per_agency))
    branch = agencies.branch_start[agency] + rng.integers(0, agencies.branch_count[agency])

    n_company = max(5, round(0.04 * n))
    n_group = max(5, round(0.03 * n))
    kind = rng.permutation(np.repeat(np.array([PERSON, COMPANY, GROUP], dtype=np.int8),
                                     [n - n_company - n_group, n_company, n_group]))
    persons = np.flatnonzero(kind == PERSON)
    p = len(persons)

    # Ages: children (a few within weeks of their 18th birthday), 18-21-year-olds who were minors
    # during the liability period, and adults.
    n_near18 = max(3, round(0.012 * p))
    n_child = max(10, round(0.22 * p)) - n_near18
    n_young = max(10, round(0.08 * p))
    band = rng.permutation(np.repeat(np.arange(4), [n_near18, n_child, n_young, p - n_near18 - n_child - n_young]))
    age_days = np.empty(p, dtype=np.int64)
    m = band == 1
    age_days[m] = rng.integers(3 * 365 + 1, 17 * 365 + 250, m.sum())
    m = band == 2
    age_days[m] = rng.integers(18 * 365 + 10, 22 * 365, m.sum())
    m = band == 3
    lows = np.array([22, 30, 45, 60, 75])
    highs = np.array([30, 45, 60, 75, 93])
    sub = rng.choice(5, size=m.sum(), p=[0.15, 0.26, 0.26, 0.21, 0.12])
    age_days[m] = (rng.uniform(lows[sub], highs[sub]) * 365.2425).astype(np.int64)
    birth_p = as_of_d - age_days
    m = band == 0  # 18th birthday 1-42 days after as_of
    birth_p[m] = _add_years(as_of_d + rng.integers(1, 43, m.sum()), -18)

    birth = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    birth[persons] = birth_p
    adult18 = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    adult18[persons] = _add_years(birth_p, 18)

    # CPR classes (T6, I4) and recorded birth dates.
    n_malformed = max(3, round(0.003 * p))
    n_mod11 = max(3, round(0.01 * p))
    n_none = max(10, round(0.15 * p))
    cls_p = rng.permutation(np.repeat(np.array([CPR_MALFORMED, CPR_MOD11_FAIL, CPR_NONE, CPR_VALID]),
                                      [n_malformed, n_mod11, n_none, p - n_malformed - n_mod11 - n_none]))
    cpr_class = np.full(n, CPR_NONE, dtype=np.int8)
    cpr_class[persons] = cls_p
    has_birth_date = np.zeros(n, dtype=bool)
    has_birth_date[persons] = True
    no_cpr = persons[cls_p == CPR_NONE]
    no_birth = np.setdiff1d(no_cpr, _pick(rng, no_cpr, 0.60))
    has_birth_date[no_birth] = False

    # Existing replacement CPRs (I1): a few at agencies that use them, a handful at Prisme (I3).
    candidates = no_cpr[has_birth_date[no_cpr]]
    enabled = np.array([a.replacement_cpr_enabled for a in specs])
    prisme = np.array([a.debtor_vendor == "PRISME" for a in specs])
    with_replacement = np.concatenate([
        _pick(rng, candidates[enabled[agency[candidates]]], 0.02, minimum=2),
        _pick(rng, candidates[prisme[agency[candidates]]], 0.01, minimum=2),
    ])
    has_replacement = _mask(n, with_replacement)

    male = rng.random(n) < 0.49
    cpr: list = [None] * n
    replacement: list = [None] * n
    name: list = [None] * n
    street: list = [None] * n
    postal: list = [None] * n
    city: list = [None] * n
    cvr: list = [None] * n
    p_number: list = [None] * n
    ean: list = [None] * n
    responsible: list = [None] * n
    used: set[str] = set()
    used_replacement: set[str] = set()
    birth_list = birth.tolist()
    municipality = [a.municipality for a in specs]
    districts = [a.districts or words.MUNICIPALITIES[a.municipality] for a in specs]
    agency_l = agency.tolist()
    malformed_seen = 0
    for i in persons.tolist():
        b = birth_list[i]
        is_male = bool(male[i])
        c = cpr_class[i]
        if c == CPR_VALID:
            cpr[i] = _cpr(pyr, b, is_male, True, used)
        elif c == CPR_MOD11_FAIL:
            cpr[i] = _cpr(pyr, b, is_male, False, used)
        elif c == CPR_MALFORMED:  # alternately too short and an impossible date
            malformed_seen += 1
            cpr[i] = _malformed_cpr(pyr, b, is_male, malformed_seen % 2 == 0, used)
        elif has_replacement[i]:
            replacement[i] = _replacement_cpr(pyr, b, used_replacement)
        name[i] = _person_name(pyr, is_male)
        street[i], postal[i], city[i] = _address(pyr, districts[agency_l[i]])

    # Companies and institutions (T5): CVR valid / missing / failing mod-11; P-number; EAN.
    companies = np.flatnonzero(kind == COMPANY)
    no_cvr = _pick(rng, companies, 0.12)
    bad_cvr = _pick(rng, np.setdiff1d(companies, no_cvr), 0.08 / 0.88)
    with_p = set(_pick(rng, companies, 0.50).tolist())
    with_ean = set(_pick(rng, companies, 0.40).tolist())
    no_cvr_s, bad_cvr_s = set(no_cvr.tolist()), set(bad_cvr.tolist())
    municipality_cvr = [row[2] for row in agencies.rows]
    for i in companies.tolist():
        a = agency_l[i]
        r = pyr.random()
        if r < 0.15:
            template = pyr.choice(words.MUNICIPAL_TEMPLATES)
        elif r < 0.50:
            template = pyr.choice(words.INSTITUTION_TEMPLATES)
        else:
            template = pyr.choice(words.FIRM_TEMPLATES)
        name[i] = _fill(template, pyr, municipality[a])
        street[i], postal[i], city[i] = _address(pyr, districts[a])
        if i in no_cvr_s:
            cvr[i] = None
        elif i in bad_cvr_s:
            cvr[i] = _cvr(pyr, valid=False)
        elif template in words.MUNICIPAL_TEMPLATES:
            cvr[i] = municipality_cvr[a]  # internal municipal borrower: the municipality's own CVR
        else:
            cvr[i] = _cvr(pyr)
        if i in with_p:
            p_number[i] = f"10{pyr.randrange(10**8):08d}"
        if i in with_ean:
            ean[i] = _ean(pyr)

    # Adults with a well-formed CPR, per agency: guardians and responsible patrons come from here.
    adult_now = np.zeros(n, dtype=bool)
    adult_now[persons] = adult18[persons] <= as_of_d - 4 * 365 * DAY  # at least ~22
    well_formed = (cpr_class == CPR_VALID) | (cpr_class == CPR_MOD11_FAIL)
    eligible = adult_now & well_formed
    eligible_by_agency = []
    for a in range(len(specs)):
        idx = np.flatnonzero(eligible & (agency == a))
        idx = idx[np.argsort(birth[idx], kind="stable")]
        eligible_by_agency.append(idx)

    # Groups (T4): ~70 % with a responsible adult of the same agency.
    groups = np.flatnonzero(kind == GROUP)
    with_responsible = set(_pick(rng, groups, 0.70).tolist())
    for i in groups.tolist():
        a = agency_l[i]
        name[i] = _fill(pyr.choice(words.GROUP_TEMPLATES), pyr, municipality[a])
        if pyr.random() < 0.5:
            street[i], postal[i], city[i] = _address(pyr, districts[a])
        pool = eligible_by_agency[a]
        if i in with_responsible and len(pool):
            responsible[i] = int(pool[pyr.randrange(len(pool))]) + 1

    population = {
        "persons": int(p), "companies": int(len(companies)), "groups": int(len(groups)),
        "children": int(np.sum(adult18[persons] > as_of_d)),
        "turned_adult_in_period": int(np.sum((adult18[persons] <= as_of_d)
                                             & (adult18[persons] > np.datetime64(period_start, "D")))),
        "persons_without_cpr": int(len(no_cpr)),
        "persons_without_cpr_or_birth_date": int(len(no_birth)),
        "mod11_failing_cprs": int(n_mod11),
        "malformed_cprs": int(n_malformed),
        "replacement_cprs": int(len(with_replacement)),
        "companies_without_cvr": int(len(no_cvr)),
        "companies_invalid_cvr": int(len(bad_cvr)),
        "groups_without_responsible": int(sum(1 for i in groups.tolist() if responsible[i] is None)),
    }
    return _Patrons(n, kind, agency, branch, birth, adult18, cpr_class, has_birth_date, cpr, replacement, name,
                    street, postal, city, cvr, p_number, ean, responsible, eligible_by_agency, population)


@dataclass
class _Guardians:
    rows: list[tuple]
    guarded: np.ndarray          # child patron indices with a guardian
    changed: np.ndarray          # child patron indices with a guardian change
    change_date: np.ndarray      # datetime64[D], per changed child


def _guardians(seed: int, pat: _Patrons, as_of: dt.date, period_start: dt.date) -> _Guardians:
    """C4/C5: ~70 % of (former) minors get an adult guardian of the same agency; ~10 % change guardian.

    A guardian is an adult with a well-formed CPR, preferably 18-50 years older than the child, and
    always of age on the day the guardianship starts.
    """
    rng = _rng(seed, 3)
    pyr = _pyrandom(rng)
    as_of_d = np.datetime64(as_of, "D")
    start_d = np.datetime64(period_start, "D")
    pools = pat.eligible_by_agency
    pool_birth = [pat.birth[pool] for pool in pools]

    def choose(i: int, from_day: np.datetime64, exclude: int = -1) -> int | None:
        pool, pb = pools[pat.agency[i]], pool_birth[pat.agency[i]]
        lo = np.searchsorted(pb, _add_years(pat.birth[i:i + 1], -50)[0])
        hi = np.searchsorted(pb, _add_years(pat.birth[i:i + 1], -18)[0], side="right")
        if hi - lo < 2:  # nobody of parent age: any adult who is of age on from_day
            lo, hi = 0, np.searchsorted(pb, _add_years(np.array([from_day]), -18)[0], side="right")
        if hi - lo < (2 if exclude >= 0 else 1):
            return None
        while True:
            guardian = int(pool[lo + pyr.randrange(hi - lo)])
            if guardian != exclude:
                return guardian

    minors = np.flatnonzero((pat.kind == PERSON) & (pat.adult18 > start_d))
    guarded: list[int] = []
    first_guardian: dict[int, int] = {}
    valid_from: dict[int, np.datetime64] = {}
    ended_at_18: set[int] = set()
    for i in _pick(rng, minors, 0.70).tolist():
        b = pat.birth[i]
        span = int((min(pat.adult18[i], as_of_d) - b) / DAY)
        start = b + int(span * pyr.random() ** 2) * DAY  # mostly early in childhood
        guardian = choose(i, start)
        if guardian is None:
            continue
        guarded.append(i)
        first_guardian[i] = guardian
        valid_from[i] = start
        if pat.adult18[i] <= as_of_d and pyr.random() < 0.5:
            ended_at_18.add(i)

    # Guardian changes inside the liability period, at least 60 days after the start of both and
    # 60 days before the 18th birthday (or as_of).
    change_lo = {i: max(valid_from[i], start_d) + 60 * DAY for i in guarded}
    change_hi = {i: min(pat.adult18[i], as_of_d) - 60 * DAY for i in guarded}
    can_change = np.array([i for i in guarded if change_hi[i] > change_lo[i]], dtype=np.int64)
    second_guardian: dict[int, int] = {}
    change_date: dict[int, np.datetime64] = {}
    for i in _pick(rng, can_change, 0.10 * len(guarded) / max(1, len(can_change))).tolist():
        day = change_lo[i] + pyr.randrange(int((change_hi[i] - change_lo[i]) / DAY)) * DAY
        second = choose(i, day, exclude=first_guardian[i])
        if second is not None:
            change_date[i], second_guardian[i] = day, second

    rows = []
    for i in guarded:
        end18 = pat.adult18[i].item() if i in ended_at_18 else None
        if i in change_date:
            cd = change_date[i].item()
            rows.append((i + 1, first_guardian[i] + 1, valid_from[i].item(), cd))
            rows.append((i + 1, second_guardian[i] + 1, cd, end18))
        else:
            rows.append((i + 1, first_guardian[i] + 1, valid_from[i].item(), end18))
    changed = np.array(sorted(change_date), dtype=np.int64)
    return _Guardians(rows, np.array(guarded, dtype=np.int64), changed,
                      np.array([change_date[i] for i in changed.tolist()], dtype="datetime64[D]"))


@dataclass
class _Materials:
    rows: list[tuple]
    item_numbers: np.ndarray     # object array of str


def _materials(seed: int, count: int) -> _Materials:
    rng = _rng(seed, 4)
    pyr = _pyrandom(rng)
    numbers = rng.choice(10**9, size=count, replace=False)
    fausts = 10_000_000 + rng.choice(90_000_000, size=count, replace=False)
    rows, items = [], []
    for k in range(count):
        item = f"5{int(numbers[k]):09d}"
        cls = pyr.choice(words.DK5_CLASSIFICATIONS)
        if cls == "99.4":
            subject = pyr.choice(words.BIOGRAPHY_SUBJECTS)
            cls = f"99.4 {subject}"
            title = f"{subject} - et liv"
            author = pyr.choice(words.AUTHORS)
        elif cls in ("sk", "83.8", "85", "86-096"):
            title = f"{pyr.choice(words.TITLE_FIRST)} {pyr.choice(words.TITLE_SECOND)}"
            author = pyr.choice(words.AUTHORS)
        else:
            title = pyr.choice(words.NONFICTION_TITLES)
            author = pyr.choice(words.AUTHORS) if pyr.random() < 0.8 else None
        rows.append((item, str(int(fausts[k])), cls, author, title))
        items.append(item)
    return _Materials(rows, np.array(items, dtype=object))


@dataclass
class _Liabilities:
    n: int
    patron: np.ndarray
    agency: np.ndarray
    compensation: np.ndarray
    number: np.ndarray           # sequence number within its kind
    loan_id: np.ndarray          # 0 = no loan
    item: np.ndarray
    amount_cents: np.ndarray
    created_at: np.ndarray       # datetime64[s]
    acknowledged: np.ndarray
    auto_created: np.ndarray
    verified_at: np.ndarray
    status: np.ndarray
    refund_at: np.ndarray
    updated_at: np.ndarray
    # loans, in loan_id order
    loan_patron: np.ndarray
    loan_item: np.ndarray
    loan_date: np.ndarray
    due_date: np.ndarray
    reloan_date: np.ndarray
    returned_at: np.ndarray
    population: dict[str, int]


def _liabilities(seed: int, pat: _Patrons, guard: _Guardians, agencies: _Agencies, materials: int,
                 as_of: dt.date, period_start: dt.date, per_patron: float) -> _Liabilities:
    rng = _rng(seed, 5)
    as_of_d = np.datetime64(as_of, "D")
    start_d = np.datetime64(period_start, "D")
    end_s = as_of_d.astype("datetime64[s]")  # exclusive upper bound of every timestamp
    period_days = int((as_of_d - start_d) / DAY)
    n = pat.n

    # How far back each patron can have liabilities: persons from about their 3rd birthday.
    max_days = np.full(n, period_days, dtype=np.int64)
    persons = pat.kind == PERSON
    since3 = ((as_of_d - _add_years(pat.birth[persons], 3)) / DAY).astype(np.int64)
    max_days[persons] = np.clip(since3, 30, period_days)

    # Scenario patrons (C5) whose liabilities straddle a key date: a guardian change, an 18th birthday.
    turned = np.flatnonzero(persons & (pat.adult18 > start_d + 60 * DAY) & (pat.adult18 <= as_of_d - 30 * DAY))
    turned_guarded = np.intersect1d(turned, guard.guarded)
    turned_unguarded = np.setdiff1d(turned, guard.guarded)
    forced_turned = np.concatenate([_pick(rng, turned_guarded, 0.10, 2), _pick(rng, turned_unguarded, 0.05, 1)])
    forced = np.concatenate([guard.changed, forced_turned])
    key_date = np.concatenate([guard.change_date, pat.adult18[forced_turned]])
    forced, first = np.unique(forced, return_index=True)
    key_date = key_date[first]

    # Skewed counts per patron: gamma weights (many with 0-3, some with dozens), exact total.
    weight = rng.gamma(0.6, 1.0, n) * (max_days / period_days)
    weight[pat.kind == COMPANY] *= 0.6
    weight[pat.kind == GROUP] *= 1.3
    counts = rng.multinomial(int(round(per_patron * n)), weight / weight.sum())
    counts[forced] = np.maximum(counts[forced], 2)
    total = int(counts.sum())
    patron = np.repeat(np.arange(n), counts)
    offsets = np.cumsum(counts) - counts

    compensation = rng.random(total) < 0.25
    comp_idx = np.flatnonzero(compensation)
    auto_created = _mask(total, _pick(rng, comp_idx, 0.50))
    acknowledged = _mask(total, _pick(rng, comp_idx, 0.40))

    # Creation day: denser towards as_of; then the two straddling liabilities of scenario patrons.
    days_ago = (max_days[patron] * rng.random(total) ** 1.6).astype(np.int64)
    created_day = as_of_d - 1 - days_ago
    pyr = _pyrandom(rng)
    lower = np.maximum(start_d, _add_years(pat.birth[forced], 3))
    lower = np.where(np.isnat(lower), start_d, lower)
    for j, i in enumerate(forced.tolist()):
        k = key_date[j]
        before = int((k - lower[j]) / DAY)
        after = int((as_of_d - 1 - k) / DAY)
        created_day[offsets[i]] = k - (1 + pyr.randrange(max(1, min(300, before - 1)))) * DAY
        created_day[offsets[i] + 1] = k + (1 + pyr.randrange(max(1, min(300, after - 1)))) * DAY
    forced_rows = np.concatenate([offsets[forced], offsets[forced] + 1])

    # Time of day: nightly batch for fees and automatic compensations, opening hours otherwise.
    night = rng.integers(3600, 6 * 3600, total)
    day_fee = rng.integers(8 * 3600, 20 * 3600, total)
    day_staff = rng.integers(9 * 3600, 19 * 3600, total)
    tod = np.where(compensation, np.where(auto_created, night, day_staff),
                   np.where(rng.random(total) < 0.7, night, day_fee))
    created_at = created_day.astype("datetime64[s]") + tod * SECOND

    # Loans: every fee; ~90 % of compensations (the rest: damaged in-house, no loan).
    no_loan = _mask(total, _pick(rng, comp_idx, 0.10))
    has_loan = ~no_loan
    period1 = np.where(rng.random(total) < 0.7, 28, 30)
    period2 = np.where(rng.random(total) < 0.7, 28, 30)
    due = np.where(compensation, created_day - rng.integers(30, 61, total) * DAY, created_day - DAY)
    reloaned = _mask(total, _pick(rng, np.flatnonzero(has_loan), 0.15))
    reloan = np.where(reloaned, due - period2 * DAY, np.datetime64("NaT", "D"))
    loan_date = np.where(reloaned, reloan - rng.integers(1, period1 + 1) * DAY, due - period1 * DAY)
    returned_day = due + (1 + rng.exponential(8.0, total).astype(np.int64)) * DAY
    returned_at = returned_day.astype("datetime64[s]") + rng.integers(9 * 3600, 20 * 3600, total) * SECOND
    returned_at[returned_day >= as_of_d] = np.datetime64("NaT")
    damaged = compensation & (rng.random(total) < 0.30)
    back = rng.integers(0, 15 * 86400, total) * SECOND
    returned_damaged = np.maximum(created_at - back, loan_date.astype("datetime64[s]") + DAY)
    returned_at = np.where(compensation, np.datetime64("NaT", "s"), returned_at)
    returned_at = np.where(damaged, np.minimum(returned_damaged, created_at), returned_at)

    # Items: a popular head and a long tail.
    item = (materials * rng.random(total) ** 1.5).astype(np.int64)

    # Amounts in øre: a fee table; compensations 49-1500 kr, a quarter priced x.95.
    fee_cents = rng.choice(np.array(words.FEE_AMOUNTS_DKK) * 100, size=total, p=words.FEE_WEIGHTS)
    comp_kr = np.rint(np.exp(rng.uniform(np.log(49), np.log(1500), total))).astype(np.int64)
    comp_cents = comp_kr * 100 - np.where((comp_kr >= 50) & (rng.random(total) < 0.25), 5, 0)
    amount = np.where(compensation, comp_cents, fee_cents)

    # T2: ~70 % of compensations verified within 10 days; recent ones mostly not yet.
    delay = rng.integers(0, 10 * 86400 - 3600, total) * SECOND
    verified_at = created_at + delay
    recent = created_at >= end_s - 14 * 86400 * SECOND
    unverified = rng.random(total) < np.where(recent, 0.7, 0.27)
    verified_at[~compensation | unverified | (verified_at >= end_s)] = np.datetime64("NaT")

    # Status by the agency's cut-off date (T1, T3).
    agency = pat.agency[patron]
    before_cut = created_day < agencies.cut_off[agency]
    u = rng.random(total)
    status = np.where(before_cut, np.searchsorted(np.cumsum(STATUS_MIX_BEFORE), u, side="right"),
                      np.searchsorted(np.cumsum(STATUS_MIX_AFTER), u, side="right"))
    status = np.minimum(status, CANCELLED).astype(np.int8)
    later = np.select([status == CLOSED, status == SENT, status == CANCELLED],
                      [rng.integers(86400, 120 * 86400, total), rng.integers(90 * 86400, 400 * 86400, total),
                       rng.integers(3600, 60 * 86400, total)], 0) * SECOND
    updated_at = np.minimum(created_at + later, end_s - SECOND)
    updated_at = np.maximum(updated_at, created_at)
    updated_at = np.where(np.isnat(verified_at), updated_at, np.maximum(updated_at, verified_at))

    # U3: ~1 % of compensations closed and marked for repayment.
    refund = _pick(rng, np.flatnonzero(compensation & (status == CLOSED)), 0.01)
    refund_at = np.full(total, np.datetime64("NaT"), dtype="datetime64[s]")
    refund_at[refund] = np.minimum(updated_at[refund] + rng.integers(86400, 30 * 86400, len(refund)) * SECOND,
                                   end_s - SECOND)
    refund_at[refund] = np.maximum(refund_at[refund], updated_at[refund])
    updated_at[refund] = refund_at[refund]

    # Data-quality problems as found in real extracts: amount 0 or negative; created before the loan.
    ordinary = np.setdiff1d(np.arange(total), forced_rows)
    bad_amount = _pick(rng, ordinary, 0.002, 2)
    amount[bad_amount[::2]] = 0
    amount[bad_amount[1::2]] = -amount[bad_amount[1::2]]
    early = _pick(rng, np.setdiff1d(np.flatnonzero(has_loan), forced_rows), 0.002, 2)
    created_at[early] = (loan_date[early] - rng.integers(1, 15, len(early)) * DAY).astype("datetime64[s]") \
        + tod[early] * SECOND

    # FBS local time has no 02:00-02:59 on the last Sunday of March (DST): move such times an hour on,
    # then restore the orderings the shift may have broken.
    gaps = _spring_forward_days(period_start.year - 1, as_of.year)
    created_at, verified_at, refund_at, updated_at, returned_at = (
        _skip_spring_gap(a, gaps) for a in (created_at, verified_at, refund_at, updated_at, returned_at))
    verified_at = np.where(np.isnat(verified_at), verified_at, np.maximum(verified_at, created_at))
    refund_at = np.where(np.isnat(refund_at), refund_at, np.maximum(refund_at, created_at))
    updated_at = np.maximum(updated_at, created_at)
    for later_ts in (verified_at, refund_at):
        updated_at = np.where(np.isnat(later_ts), updated_at, np.maximum(updated_at, later_ts))
    returned_at = np.where(damaged & ~np.isnat(returned_at), np.minimum(returned_at, created_at), returned_at)

    # Liability ids in creation order; numbers per kind in the same order.
    order = np.argsort(created_at, kind="stable")

    def by_order(a: np.ndarray) -> np.ndarray:
        return a[order]

    patron, agency, compensation, has_loan, item, amount, created_at = map(
        by_order, (patron, agency, compensation, has_loan, item, amount, created_at))
    acknowledged, auto_created, verified_at, status, refund_at, updated_at = map(
        by_order, (acknowledged, auto_created, verified_at, status, refund_at, updated_at))
    loan_date, due, reloan, returned_at = map(by_order, (loan_date, due, reloan, returned_at))
    before_cut = before_cut[order]
    number = np.empty(total, dtype=np.int64)
    number[compensation] = np.arange(1, compensation.sum() + 1)
    number[~compensation] = np.arange(1, (~compensation).sum() + 1)

    # Loan ids in loan-date order.
    with_loan = np.flatnonzero(has_loan)
    loan_order = with_loan[np.argsort(loan_date[with_loan], kind="stable")]
    loan_id = np.zeros(total, dtype=np.int64)
    loan_id[loan_order] = np.arange(1, len(loan_order) + 1)

    population = {
        "fees": int((~compensation).sum()),
        "compensations": int(compensation.sum()),
        "compensations_without_loan": int(no_loan.sum()),
        "reloans": int(reloaned.sum()),
        "before_cut_off": int(before_cut.sum()),
        "guardian_changes": int(len(guard.changed)),
        "guarded_children": int(len(guard.guarded)),
        "zero_or_negative_amounts": int(len(bad_amount)),
        "created_before_loan": int(len(early)),
    }
    return _Liabilities(total, patron, agency, compensation, number, loan_id, item, amount, created_at, acknowledged,
                        auto_created, verified_at, status, refund_at, updated_at, patron[loan_order],
                        item[loan_order], loan_date[loan_order], due[loan_order], reloan[loan_order],
                        returned_at[loan_order], population)


# --- rows --------------------------------------------------------------------------------------

class _Amounts(dict):
    """øre -> Decimal with two places, cached (there are few distinct amounts)."""

    def __missing__(self, cents: int) -> Decimal:
        value = Decimal(cents).scaleb(-2)
        self[cents] = value
        return value


def _patron_rows(pat: _Patrons, agencies: _Agencies, groups_last: bool,
                 specs: tuple[AgencySpec, ...] = AGENCIES) -> Iterator[tuple]:
    """Patron rows; groups last, so a group's responsible patron exists before it (SQLite checks at once)."""
    agency_ids = [a.agency_id for a in specs]
    kinds = pat.kind.tolist()
    agency = pat.agency.tolist()
    branch = pat.branch.tolist()
    birth = pat.birth.tolist()
    has_birth = pat.has_birth_date.tolist()
    for wanted in ((PERSON, COMPANY), (GROUP,)) if groups_last else ((PERSON, COMPANY, GROUP),):
        for i in range(pat.n):
            if kinds[i] in wanted:
                yield (i + 1, agency_ids[agency[i]], agencies.branch_ids[branch[i]], KIND_NAMES[kinds[i]], pat.cpr[i],
                       pat.replacement_cpr[i], birth[i] if has_birth[i] else None, pat.name[i], pat.street[i],
                       pat.postal_code[i], pat.city[i], pat.cvr[i], pat.p_number[i], pat.ean[i], pat.responsible[i])


def _loan_rows(lia: _Liabilities, items: np.ndarray) -> Iterator[tuple]:
    count = len(lia.loan_patron)
    for s in range(0, count, ROW_CHUNK):
        e = min(count, s + ROW_CHUNK)
        yield from zip(range(s + 1, e + 1), (lia.loan_patron[s:e] + 1).tolist(), items[lia.loan_item[s:e]].tolist(),
                       lia.loan_date[s:e].tolist(), lia.due_date[s:e].tolist(), lia.reloan_date[s:e].tolist(),
                       lia.returned_at[s:e].tolist(), strict=True)


def _liability_rows(lia: _Liabilities, items: np.ndarray,
                    specs: tuple[AgencySpec, ...] = AGENCIES) -> Iterator[tuple]:
    agency_ids = np.array([a.agency_id for a in specs], dtype=object)
    kinds = np.array(["fee", "compensation"], dtype=object)
    statuses = np.array(STATUSES, dtype=object)
    amounts = _Amounts()
    for s in range(0, lia.n, ROW_CHUNK):
        e = min(lia.n, s + ROW_CHUNK)
        comp = lia.compensation[s:e]
        numbers = [f"E{k:08d}" if c else f"G{k:08d}" for c, k in zip(comp.tolist(), lia.number[s:e].tolist(),
                                                                      strict=True)]
        loan_ids = [k or None for k in lia.loan_id[s:e].tolist()]
        yield from zip(range(s + 1, e + 1), agency_ids[lia.agency[s:e]].tolist(), (lia.patron[s:e] + 1).tolist(),
                       kinds[comp.astype(np.int64)].tolist(), numbers, loan_ids, items[lia.item[s:e]].tolist(),
                       [amounts[c] for c in lia.amount_cents[s:e].tolist()], lia.created_at[s:e].tolist(),
                       lia.acknowledged[s:e].tolist(), lia.auto_created[s:e].tolist(), lia.verified_at[s:e].tolist(),
                       statuses[lia.status[s:e]].tolist(), lia.refund_at[s:e].tolist(), lia.updated_at[s:e].tolist(),
                       strict=True)


def _marked(rows, marked: dt.datetime) -> Iterator[tuple]:
    """The rows with FBS's change marker appended."""
    return (tuple(row) + (marked,) for row in rows)


def wipe(conn: Connection) -> None:
    """Delete every row of the FBS tables, children first (``db.empty_tables``)."""
    empty_tables(conn, WIPE_ORDER, self_references={"patron": "responsible_patron_id"})


def generate(fbs_engine: Engine, patrons: int, seed: int, as_of: dt.date, liabilities_per_patron: float = 10.0,
             backlog_years: int = 6, cut_off_days: int = 365, municipalities: int | None = None) -> GenerationSummary:
    """Empty the FBS tables and fill them with a reproducible synthetic population (one transaction).

    ``patrons`` patrons (at least MIN_PATRONS) and about ``patrons * liabilities_per_patron``
    liabilities created over the ``backlog_years`` before ``as_of``; each agency's cut-off date
    lies about ``cut_off_days`` (+-45) before ``as_of``. Everything older is the pre-cut-off
    backlog, in every status (T1, T3): a large one (for a backfill when the cut-off moves back)
    is e.g. 100 000 patrons over 10 years, about 760 000 liabilities before the cut-off.

    ``municipalities`` (1..MAX_MUNICIPALITIES): instead of the five fixed agencies (``AGENCIES``),
    that many synthetic municipalities of skewed sizes sharing the ``patrons`` (``national_agencies``:
    the largest about LARGEST_TO_MEDIAN times the median, all three vendors), with the same
    data-quality mix; at least MIN_PATRONS_PER_MUNICIPALITY patrons per municipality. None (the
    default) gives exactly the population it gave before the option existed.
    """
    if municipalities is not None and not 1 <= municipalities <= MAX_MUNICIPALITIES:
        raise ValueError(f"municipalities must be from 1 to {MAX_MUNICIPALITIES} (Denmark has 98)")
    if patrons < MIN_PATRONS:
        raise ValueError(f"patrons must be at least {MIN_PATRONS}")
    if municipalities is not None and patrons < MIN_PATRONS_PER_MUNICIPALITY * municipalities:
        raise ValueError(f"patrons must be at least {MIN_PATRONS_PER_MUNICIPALITY} per municipality "
                         f"({MIN_PATRONS_PER_MUNICIPALITY * municipalities} for {municipalities})")
    if seed < 0:
        raise ValueError("seed must not be negative")
    if liabilities_per_patron <= 0 or backlog_years < 2:
        raise ValueError("liabilities_per_patron must be positive and backlog_years at least 2")
    if not 46 <= cut_off_days <= backlog_years * 365 - 46:
        raise ValueError("cut_off_days must put the cut-off inside the liability period (46 .. backlog_years*365-46)")
    if isinstance(as_of, dt.datetime):
        as_of = as_of.date()
    period_start = _add_years_date(as_of, -backlog_years)

    specs = AGENCIES if municipalities is None else national_agencies(municipalities, seed)
    agencies = _agencies(seed, as_of, cut_off_days, specs)
    pat = _patrons(seed, patrons, as_of, period_start, agencies, specs)
    guard = _guardians(seed, pat, as_of, period_start)
    mat = _materials(seed, max(500, patrons // 4))
    lia = _liabilities(seed, pat, guard, agencies, len(mat.rows), as_of, period_start, liabilities_per_patron)

    summary = GenerationSummary(seed=seed, as_of=as_of, liabilities_per_patron=liabilities_per_patron,
                                backlog_years=backlog_years)
    # FBS's change marker (updated_at, issue 19) of the agencies, patrons and guardianships: the
    # extract's last second, the latest any liability of it can carry. (Liabilities carry their own.)
    marked = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(seconds=1)
    with fbs_engine.begin() as conn, bulk_load(conn, WIPE_ORDER):
        wipe(conn)
        summary.agency = bulk_insert(conn, "agency", (*AGENCY_COLUMNS, "updated_at"), _marked(agencies.rows, marked))
        summary.branch = bulk_insert(conn, "branch", BRANCH_COLUMNS, agencies.branch_rows)
        summary.patron = bulk_insert(conn, "patron", (*PATRON_COLUMNS, "updated_at"),
                                     _marked(_patron_rows(pat, agencies, True, specs), marked))
        summary.guardianship = bulk_insert(conn, "guardianship", (*GUARDIANSHIP_COLUMNS, "updated_at"),
                                           _marked(guard.rows, marked))
        summary.material = bulk_insert(conn, "material", MATERIAL_COLUMNS, mat.rows)
        summary.loan = bulk_insert(conn, "loan", LOAN_COLUMNS, _loan_rows(lia, mat.item_numbers))
        summary.liability = bulk_insert(conn, "liability", LIABILITY_COLUMNS, _liability_rows(lia, mat.item_numbers, specs))
    summary.population = {**pat.population, **lia.population}
    if municipalities is not None:
        summary.population["municipalities"] = len({s.cvr for s in specs})
    return summary
