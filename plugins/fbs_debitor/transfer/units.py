"""The unit of isolation: one municipality at its debtor system.

One deployment serves many municipalities, each with its own debtor system (KMD OPUS, Fujitsu
Prisme or EG), agreements and payment rhythm. Whatever talks to a debtor system or writes a
municipality's files runs once per municipality (a mapped task in Airflow, one loop turn in the
CLI): one municipality's hold, outage, rejection storm or crash stays in its own unit, and each
debtor system (``VENDORS``) gets its own Airflow pool (``pool_for``), so a slow vendor does not
starve the others.

A unit is the agencies of one municipality (FBS's ``agency.municipality_cvr``) at one debtor
system (``agency.debtor_vendor``; a municipality has one, but should FBS ever say two, each half is
its own unit). Units are passed to tasks as small dicts (XCom: keys, never data) and back with
``Unit.of``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core.db import sql_file

# The debtor systems FBS knows (agency.debtor_vendor's CHECK), each with its own pool.
VENDORS = ("KMD_OPUS", "PRISME", "EG")


def pool_for(vendor: str) -> str:
    """The Airflow pool of one debtor system's calls (``debitor_kmd_opus``, ...)."""
    if vendor not in VENDORS:
        raise ValueError(f"unknown debtor system {vendor!r}: allowed are {', '.join(VENDORS)}")
    return f"debitor_{vendor.lower()}"


@dataclass(frozen=True)
class Unit:
    cvr: str                         # the municipality (as FBS has it; access checks it)
    vendor: str                      # its debtor system
    agencies: tuple[str, ...]        # its agencies at that debtor system, sorted
    name: str = ""                   # the municipality's name as FBS has it, if any

    @property
    def label(self) -> str:
        """How the grid names this unit's mapped task: ``60104190 Søvang (PRISME)``."""
        return f"{self.cvr} {self.name} ({self.vendor})" if self.name else f"{self.cvr} ({self.vendor})"

    @property
    def lock(self) -> str:
        """The part of the ``sending`` lock that is this unit's (``db.exclusive(..., part=)``)."""
        return f"{self.cvr}/{self.vendor}"

    def as_dict(self) -> dict:
        return {"cvr": self.cvr, "vendor": self.vendor, "agencies": list(self.agencies), "name": self.name,
                "label": self.label}

    @classmethod
    def of(cls, raw: dict | Unit) -> Unit:
        if isinstance(raw, Unit):
            return raw
        return cls(cvr=str(raw["cvr"]), vendor=str(raw["vendor"]), agencies=tuple(sorted(map(str, raw["agencies"]))),
                   name=str(raw.get("name") or ""))


def units(fbs: Engine) -> list[Unit]:
    """Every municipality of FBS at its debtor system, by CVR (one query)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    names: dict[tuple[str, str], str] = {}
    with fbs.connect() as conn:
        for r in conn.execute(text(sql_file("queries/municipality_units.sql"))):
            key = ((r.municipality_cvr or "").strip() or "-", r.debtor_vendor)
            grouped.setdefault(key, []).append(str(r.agency_id))
            names.setdefault(key, _municipality_name(r.name))
    return [Unit(cvr, vendor, tuple(sorted(agencies)), names[(cvr, vendor)])
            for (cvr, vendor), agencies in sorted(grouped.items())]


def _municipality_name(agency_name: str | None) -> str:
    """The first word of its first agency's name (``Søvang Bibliotek`` -> ``Søvang``): a label only."""
    return (agency_name or "").split(" ")[0][:40]


def by_vendor(all_units: list[Unit]) -> dict[str, list[dict]]:
    """The units as mapped tasks take them: per debtor system (every vendor present, maybe empty)."""
    out: dict[str, list[dict]] = {v: [] for v in VENDORS}
    for u in all_units:
        out.setdefault(u.vendor, []).append(u.as_dict())
    return out


def agency_unit(fbs: Engine, agency_id: str) -> Unit | None:
    """The unit an agency belongs to (a backfill chunk takes that unit's lock)."""
    for u in units(fbs):
        if agency_id in u.agencies:
            return u
    return None
