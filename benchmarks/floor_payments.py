"""The floor for ``bench_payments_million.py``: what reading the same payment files costs with no
rules at all. Every ``*.xml`` file of a folder parsed with bare lxml (no schema, no safety checks),
its movements taken out, and all of them inserted with ONE executemany INSERT into a plain SQLite
table (no index but the primary key, one transaction) in a temporary file.

    python benchmarks/floor_payments.py FOLDER [--quiet]

Prints seconds and movements/s (``--quiet``: the seconds only, for the benchmark to read) and the
peak RSS. Not a test.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb


def rows(folder: Path):
    for path in sorted(folder.glob("*.xml")):
        root = etree.fromstring(path.read_bytes())
        ns = etree.QName(root).namespace
        for el in root.iterfind(f"{{{ns}}}Bevaegelse"):
            yield (el.findtext(f"{{{ns}}}BevaegelseID"), el.findtext(f"{{{ns}}}FordringID"),
                   el.findtext(f"{{{ns}}}BevaegelseType"), el.findtext(f"{{{ns}}}Beloeb"),
                   el.findtext(f"{{{ns}}}BogfoeringsDato"), el.findtext(f"{{{ns}}}ReferenceBevaegelseID"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.sqlite")
        db.execute("CREATE TABLE movement (movement_id TEXT PRIMARY KEY, fordring_id TEXT, kind TEXT, amount TEXT, "
                   "booked_on TEXT, reference_id TEXT)")
        t = time.perf_counter()
        with db:
            db.executemany("INSERT INTO movement VALUES (?, ?, ?, ?, ?, ?)", rows(args.folder))
        seconds = time.perf_counter() - t
        n = db.execute("SELECT COUNT(*) FROM movement").fetchone()[0]
        db.close()
    if args.quiet:
        print(f"{seconds:.3f} {n}")
    else:
        print(f"floor: {n:,} movements parsed and inserted in {seconds:.1f} s = {n / seconds:,.0f} movements/s; "
              f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
