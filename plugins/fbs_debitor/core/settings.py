"""Where things are and how they are reached, read from the environment with embedded defaults.

Nothing here imports Airflow. Inside Airflow the DAG tasks resolve the two databases from the
Connections ``fbs_db`` and ``debitor_ledger`` when they exist (see ``fbs_debitor.airflow.connections``) and
fall back to these settings, so the demo needs no Airflow configuration at all.

| variable                  | default                      | meaning                                  |
|---------------------------|------------------------------|------------------------------------------|
| FBS_DEBITOR_HOME          | the repository root          | where ``include/`` is found              |
| FBS_DEBITOR_VAR           | ``<home>/var``               | embedded databases, reports, outputs     |
| FBS_DEBITOR_FBS_URL       | ``sqlite:///<var>/fbs.sqlite``    | the FBS extract (schema ``fbs``)     |
| FBS_DEBITOR_LEDGER_URL    | ``sqlite:///<var>/ledger.sqlite`` | the ledger (schema ``ledger``)       |
| FBS_DEBITOR_CHUNK_SIZE    | 20000                        | rows per streamed chunk                  |
| FBS_DEBITOR_AGE_LIMIT_RANGE | 15-21                      | sane agency age limits (C3)              |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME = Path(os.environ.get("FBS_DEBITOR_HOME", Path(__file__).resolve().parents[3]))
SQL_DIR = HOME / "include" / "sql"
XSD_DIR = HOME / "include" / "xsd"

FBS_SCHEMA = "fbs"
LEDGER_SCHEMA = "ledger"
TIMEZONE = "Europe/Copenhagen"


def var_dir() -> Path:
    return Path(os.environ.get("FBS_DEBITOR_VAR", HOME / "var"))


@dataclass(frozen=True)
class DatabaseUrls:
    fbs: str
    ledger: str


def database_urls() -> DatabaseUrls:
    var = var_dir()
    return DatabaseUrls(
        fbs=os.environ.get("FBS_DEBITOR_FBS_URL") or f"sqlite:///{var / 'fbs.sqlite'}",
        ledger=os.environ.get("FBS_DEBITOR_LEDGER_URL") or f"sqlite:///{var / 'ledger.sqlite'}",
    )


def chunk_size() -> int:
    return int(os.environ.get("FBS_DEBITOR_CHUNK_SIZE", "20000"))


def age_limit_range() -> tuple[int, int]:
    """Agency age limits outside this range are misconfigurations (C3) that hold the agency."""
    low, high = os.environ.get("FBS_DEBITOR_AGE_LIMIT_RANGE", "15-21").split("-")
    return int(low), int(high)


def batch_size_default() -> int:
    return int(os.environ.get("FBS_DEBITOR_BATCH_SIZE", "500"))
