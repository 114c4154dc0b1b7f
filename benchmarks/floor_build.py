"""The bare floor of building SF1590 claims: what ``transfer --dry-run`` cannot go below.

    python benchmarks/floor_build.py --fbs-url sqlite:///.../fbs.sqlite --out DIR [--json] [--in-memory]

ONE SELECT reads the rows the project's claims are built from (the columns of
``include/sql/queries/claim_rows.sql`` over ``claim_source.sql``, restricted as
``eligibility_candidates.sql`` restricts them: open, on or after the cut-off date, an age limit
in 15-21, a borrower that is a person or a company, compensations verified where the agency
verifies them), streamed in pages of 20,000 rows. Plain Python and bare lxml then build the same
OpretDebitorkonto messages the project builds for those claims (same elements, same values; the
claims of one debtor account merged per page and agency, batches of 500 claims), validate each
message once against the same XSD (``include/xsd``) and write it pretty-printed to
``<out>/<agency>/batch-NNNNN.xml``. The identifier checks are python-stdnum's, as in the project.

It is a floor, not a second implementation: it knows only what the synthetic municipality of the
benchmarks needs (no findings, no staff tasks, no text checks beyond skipping what the project
stops on with that data: non-positive amounts, fees without a loan, unusable CPR/CVR numbers, a
replacement CPR without a name, a minor without a name) and ignores the ledger (the benchmarks'
ledger is empty). Batch boundaries can differ from the project's (its pages count every candidate,
not only the eligible), the claims and their elements do not.

``--in-memory``: the rows are read into memory before the clock starts (the second floor: building,
validating and writing only). ``--json`` prints one line: {"claims", "wall_s", "cpu_s",
"peak_rss_mib"}; otherwise a line of text. Not a test: figures, never assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from lxml import etree
from sqlalchemy import create_engine, text
from stdnum.dk import cpr as std_cpr
from stdnum.dk import cvr as std_cvr
from stdnum.ean import is_valid as ean_valid
from stdnum.exceptions import ValidationError

HOME = Path(os.environ.get("FBS_DEBITOR_HOME") or Path(__file__).resolve().parents[1])
XSD = HOME / "include" / "xsd" / "DebitorRegistreringAfsend.xsd"
sys.path.insert(0, str(HOME / "plugins"))
# The two deterministic number generators of rule I1 (a replacement CPR from a patron id and a
# birth date, a random adult birthday): pure arithmetic, taken as they are so the numbers agree.
from fbs_debitor.core.identity import random_adult_birth_date, replacement_cpr  # noqa: E402

NS_F = "urn:fbs-debitor:modelled:sf1590:faelles:1"
NS_DR = "urn:fbs-debitor:modelled:sf1590:DebitorRegistreringAfsend:1"
BATCH_NAMESPACE = uuid.UUID("0f1f6d0c-6a52-4d57-9d0e-5a3f2f3c1590")
FAGSYSTEM_UUID = "91aa26ad-cab7-4e83-8230-9bf35a076a55"
PAGE = 20_000
BATCH = 500
FEE_TERM_DAYS = 30
ADULT, WITH_G, WITHOUT_G = ("GEBYR_ERSTATNING", "GEBYR_ERSTATNING_UNDER_GRAENSE_MED_OEA",
                            "GEBYR_ERSTATNING_UNDER_GRAENSE_UDEN_OEA")
FEE, COMP_ACK, COMP_NOT = ("BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID", "ERSTATNING_MED_ANERKENDELSE",
                           "ERSTATNING_UDEN_ANERKENDELSE")
PSRM = {FEE: "BIBLIOTEKSGEBYR", COMP_ACK: "BIBLIOTEKSERSTATNING_ANERKENDT", COMP_NOT: "BIBLIOTEKSERSTATNING_IKKE_ANERKENDT"}
ID_TAG = {"CPR": "CPRNummer", "ERSTATNING_CPR": "ErstatningCPRNummer", "CVR": "CVRNummer"}

SELECT = """
SELECT l.liability_id, l.agency_id, l.kind, l.number, l.amount, l.status, l.created_at, l.acknowledged,
       l.auto_created, l.verified_at, COALESCE(o.item_number, l.item_number) AS item_number,
       a.age_limit, a.replacement_cpr_enabled, a.auto_compensation_acknowledged, a.debtor_vendor,
       a.org_unit_uuid, a.sender_system_uuid,
       b.patron_id AS b_patron_id, b.kind AS b_kind, b.branch_id AS b_branch_id,
       d.patron_id AS d_patron_id, d.kind AS d_kind, d.cpr AS d_cpr, d.replacement_cpr AS d_replacement_cpr,
       d.birth_date AS d_birth_date, d.name AS d_name, d.street AS d_street, d.postal_code AS d_postal_code,
       d.city AS d_city, d.cvr AS d_cvr, d.p_number AS d_p_number, d.ean AS d_ean,
       gp.patron_id AS g_patron_id, gp.cpr AS g_cpr, gp.replacement_cpr AS g_replacement_cpr,
       gp.birth_date AS g_birth_date, gp.name AS g_name, gp.street AS g_street,
       gp.postal_code AS g_postal_code, gp.city AS g_city,
       (SELECT MAX(gn.guardian_patron_id) FROM guardianship gn
         WHERE gn.child_patron_id = d.patron_id AND gn.valid_from <= :today
           AND (gn.valid_to IS NULL OR gn.valid_to > :today)) AS gnow_patron_id,
       o.loan_date, o.due_date, o.reloan_date,
       m.classification, m.author, m.title
FROM liability l
JOIN agency a ON a.agency_id = l.agency_id
JOIN patron b ON b.patron_id = l.patron_id
LEFT JOIN patron d
       ON d.patron_id = CASE WHEN b.kind = 'group' THEN b.responsible_patron_id ELSE b.patron_id END
LEFT JOIN guardianship g
       ON g.child_patron_id = d.patron_id
      AND g.valid_from = (SELECT MAX(g2.valid_from) FROM guardianship g2
                          WHERE g2.child_patron_id = d.patron_id
                            AND g2.valid_from <= l.created_at
                            AND (g2.valid_to IS NULL OR g2.valid_to > l.created_at))
LEFT JOIN patron gp ON gp.patron_id = g.guardian_patron_id
LEFT JOIN loan o ON o.loan_id = l.loan_id
LEFT JOIN material m ON m.item_number = COALESCE(o.item_number, l.item_number)
WHERE l.status = 'open'
  AND l.created_at >= a.cut_off_date
  AND a.age_limit BETWEEN 15 AND 21
  AND b.kind <> 'group'
  AND NOT (l.kind = 'compensation' AND a.verify_compensations AND l.verified_at IS NULL)
ORDER BY l.liability_id
"""


def day(value) -> dt.date | None:
    if value is None or type(value) is dt.date:
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    return dt.date.fromisoformat(value[:10])


def amount_of(value) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(value) if isinstance(value, float) else value)


def ddmmyyyy(d: dt.date) -> str:
    return f"{d.day:02d}.{d.month:02d}.{d.year:04d}"


def cpr_number(value, today: dt.date) -> str | None:
    try:
        number = std_cpr.compact(value)
        if not (number.isascii() and number.isdigit() and len(number) == 10):
            return None
        return number if std_cpr.get_birth_date(number) <= today else None
    except ValidationError:
        return None


def cpr_birth(number: str) -> dt.date | None:
    d = int(number[:2])
    try:
        return std_cpr.get_birth_date(f"{d - 60:02d}{number[2:]}" if d > 60 else number)
    except ValidationError:
        return None


class Floor:
    def __init__(self, out: Path, today: dt.date, taken: set[str]):
        self.out, self.today, self.taken = out, today, taken
        self.assigned: dict[int, str] = {}
        self.schema = etree.XMLSchema(etree.parse(str(XSD)))
        self.at = dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
        self.next_batch: dict[str, int] = {}
        self.claims = 0

    def party(self, pid, cpr, repl, birth, name, street, postal, city, enabled):
        """(id kind, number, name, address) or None when the project stops the liability."""
        if cpr:
            number = cpr_number(cpr, self.today)
            return ("CPR", number, None, None) if number else None
        if not enabled:
            return None
        if repl and repl.strip():
            number = repl.strip()
        else:
            if pid not in self.assigned:
                born = day(birth) or random_adult_birth_date(pid)
                self.assigned[pid] = replacement_cpr(pid, born, self.taken)
                self.taken.add(self.assigned[pid])
            number = self.assigned[pid]
        if not (name and name.strip()):
            return None
        return "ERSTATNING_CPR", number, name, ((street, postal, city) if street and street.strip() else None)

    def account(self, r):
        """(account key, account parts, claim parts) of one row, or None."""
        amount = amount_of(r.amount)
        if amount <= 0:
            return None
        created = day(r.created_at)
        loan_date, loan_due, reloan = day(r.loan_date), day(r.due_date), day(r.reloan_date)
        if r.kind == "fee" and loan_due is None:
            return None
        minor = None
        p_number = ean = None
        if r.d_kind == "company":
            try:
                cvr = std_cvr.validate(r.d_cvr)
            except ValidationError:
                return None
            ident = resp = ("CVR", cvr, None, None)
            account = ADULT
            if r.d_p_number and r.d_p_number.isascii() and r.d_p_number.isdigit() and len(r.d_p_number) == 10:
                p_number = r.d_p_number
            if r.d_ean and len(r.d_ean) == 13 and ean_valid(r.d_ean):
                ean = r.d_ean
        else:
            enabled = bool(r.replacement_cpr_enabled)
            ident = self.party(r.d_patron_id, r.d_cpr, r.d_replacement_cpr, r.d_birth_date, r.d_name, r.d_street,
                               r.d_postal_code, r.d_city, enabled)
            if ident is None:
                return None
            born = (day(r.d_birth_date) or (cpr_birth(r.d_cpr) if r.d_cpr else None)
                    or (cpr_birth(ident[1]) if ident[0] == "ERSTATNING_CPR" else None)
                    or random_adult_birth_date(r.d_patron_id))
            age = created.year - born.year - ((created.month, created.day) < (born.month, born.day))
            account = ADULT if age >= int(r.age_limit) else (WITH_G if r.g_patron_id is not None else WITHOUT_G)
            if account != ADULT and not (r.d_name and r.d_name.strip()):
                return None
            if account == WITH_G:
                resp = self.party(r.g_patron_id, r.g_cpr, r.g_replacement_cpr, r.g_birth_date, r.g_name, r.g_street,
                                  r.g_postal_code, r.g_city, enabled)
                if resp is None:
                    return None
                minor = (ident[0], ident[1], r.d_name, born)
            else:
                resp = ident
        if r.kind == "fee":
            claim_type = FEE
            founding = loan_due + dt.timedelta(days=1)
            due = loan_due + dt.timedelta(days=1 + FEE_TERM_DAYS)
        else:
            claim_type = COMP_ACK if (r.acknowledged or (r.auto_created and r.auto_compensation_acknowledged)) \
                else COMP_NOT
            founding = created if loan_date is None else (reloan or loan_date)
            due = loan_due or created
        fordring = f"FBS-{r.agency_id}-{r.liability_id}"
        label = "Gebyr-nr." if r.kind == "fee" else "Erstatnings-nr."
        spec = f"{fordring} {label} {r.number}"
        if minor:
            spec += f" {minor[2]} f. {ddmmyyyy(minor[3])}"
        material = " ".join(p for p in (r.classification, r.author, r.title) if p)
        lines = [" ".join(f"Beregnet fra: {ddmmyyyy(founding)} {material}".split())]
        if loan_date and loan_due:
            lines.append(f"Lånt: {ddmmyyyy(loan_date)} Afl.frist: {ddmmyyyy(loan_due)}")
        lines.append(" ".join((f"{label} {r.number}" + (f" Materiale-nr. {r.item_number}" if r.item_number
                                                         else "")).split()))
        extra = []
        if minor:
            extra.append(f"CPR (mindreårig): {minor[1]}")
        if p_number:
            extra.append(f"P-nr.: {p_number}")
        if ean:
            extra.append(f"EAN: {ean}")
        if extra:
            lines.append(" ".join(" ".join(extra).split()))
        psrm = (PSRM[claim_type], founding, max(founding, due)) if account != WITHOUT_G else None
        claim = (fordring, claim_type, f"{amount:.2f}", created, due, founding, psrm, spec, lines, minor)
        key = (account, ident[0], ident[1], resp[0], resp[1], p_number, ean)
        return key, (account, ident, resp, p_number, ean), claim

    def page(self, rows) -> None:
        """One page: accounts merged per agency, batches of 500 claims, validated, written."""
        agencies: dict[str, tuple] = {}
        merged: dict[str, dict] = {}
        for r in rows:
            built = self.account(r)
            if built is None:
                continue
            key, account, claim = built
            per = merged.setdefault(r.agency_id, {})
            if key in per:
                per[key][1].append(claim)
            else:
                per[key] = (account, [claim])
            agencies[r.agency_id] = (r.sender_system_uuid, r.org_unit_uuid)
        for agency_id, per in merged.items():
            pending: list = []
            count = 0
            for account, claims in per.values():
                while claims:
                    room = BATCH - count
                    if room <= 0:
                        self.write(agency_id, agencies[agency_id], pending)
                        pending, count, room = [], 0, BATCH
                    part, claims = claims[:room], claims[room:]
                    pending.append((account, part))
                    count += len(part)
            if pending:
                self.write(agency_id, agencies[agency_id], pending)

    def write(self, agency_id: str, agency: tuple, accounts: list) -> None:
        sub = etree.SubElement
        f, d = f"{{{NS_F}}}", f"{{{NS_DR}}}"

        def party(parent, tag, p):
            el = sub(parent, tag)
            sub(el, f + ID_TAG[p[0]]).text = p[1]
            if p[2]:
                sub(el, f + "Navn").text = p[2]
            if p[3]:
                adr = sub(el, f + "Adresse")
                sub(adr, f + "AdresseTekst").text = p[3][0]
                if p[3][1]:
                    sub(adr, f + "Postnummer").text = p[3][1]
                if p[3][2]:
                    sub(adr, f + "By").text = p[3][2]

        ids = sorted(c[0] for _, claims in accounts for c in claims)
        root = etree.Element(d + "OpretDebitorkontoAnmodning", nsmap={None: NS_DR, "f": NS_F})
        head = sub(root, d + "Hovedoplysninger")
        sub(head, f + "TransaktionsId").text = str(uuid.uuid5(BATCH_NAMESPACE, "|".join(ids)))
        sub(head, f + "TransaktionsTid").text = self.at
        sender = sub(root, d + "Afsender")
        sub(sender, f + "FagsystemUUID").text = FAGSYSTEM_UUID
        sub(sender, f + "ItSystemInstansUUID").text = agency[0].lower()
        sub(sender, f + "OrganisatoriskEnhedUUID").text = agency[1].lower()
        for (account_type, ident, resp, p_number, ean), claims in accounts:
            el = sub(root, d + "Debitorkonto")
            sub(el, d + "DebitorkontoType").text = account_type
            party(el, d + "DebitorkontoIdentifikation", ident)
            party(el, d + "JuridiskAnsvarlig", resp)
            if p_number:
                sub(el, d + "PNummer").text = p_number
            if ean:
                sub(el, d + "EANNummer").text = ean
            for fordring, claim_type, amount, created, due, founding, psrm, spec, lines, minor in claims:
                c = sub(el, d + "Fordring")
                sub(c, d + "FordringID").text = fordring
                sub(c, d + "FordringKravtype").text = claim_type
                sub(c, d + "Beloeb").text = amount
                sub(c, d + "OprettelsesDato").text = created.isoformat()
                sub(c, d + "ForfaldsDato").text = due.isoformat()
                sub(c, d + "StiftelsesDato").text = founding.isoformat()
                if psrm:
                    p = sub(c, d + "PSRM")
                    sub(p, d + "PSRMFordringstype").text = psrm[0]
                    sub(p, d + "PeriodeFraDato").text = psrm[1].isoformat()
                    sub(p, d + "PeriodeTilDato").text = psrm[2].isoformat()
                sub(c, d + "SpecifikationTekst").text = spec
                t = sub(c, d + "FordringTekst")
                for line in lines:
                    sub(t, d + "Linje").text = line
                if minor:
                    m = sub(c, d + "Mindreaarig")
                    sub(m, d + ID_TAG[minor[0]]).text = minor[1]
                    sub(m, d + "Navn").text = minor[2]
                    sub(m, d + "Foedselsdato").text = minor[3].isoformat()
        if not self.schema.validate(root):
            raise SystemExit(f"floor: invalid message for agency {agency_id}: {self.schema.error_log.last_error}")
        number = self.next_batch.get(agency_id, 1)
        self.next_batch[agency_id] = number + 1
        folder = self.out / agency_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"batch-{number:05d}.xml").write_bytes(
            etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
        self.claims += len(ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fbs-url", required=True, help="the FBS database (SQLAlchemy URL)")
    parser.add_argument("--out", required=True, help="folder for the messages")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--in-memory", action="store_true", help="read every row before the clock starts")
    parser.add_argument("--today", default="2026-11-20", help="the day of sending (YYYY-MM-DD)")
    args = parser.parse_args()
    today = dt.date.fromisoformat(args.today)
    engine = create_engine(args.fbs_url)
    with engine.connect() as conn:
        taken = {r[0] for r in conn.execute(text("SELECT replacement_cpr FROM patron "
                                                 "WHERE replacement_cpr IS NOT NULL"))}
    floor = Floor(Path(args.out), today, taken)
    query = text(SELECT)
    if args.in_memory:
        with engine.connect() as conn:
            rows = conn.execute(query, {"today": today}).all()
    wall, cpu = time.perf_counter(), time.process_time()
    if args.in_memory:
        for start in range(0, len(rows), PAGE):
            floor.page(rows[start:start + PAGE])
    else:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(query, {"today": today})
            for rows in result.partitions(PAGE):
                floor.page(rows)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"claims": floor.claims, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                          "peak_rss_mib": round(peak, 1)}))
    else:
        print(f"floor: {floor.claims} claims in {wall:.2f} s ({cpu:.2f} s CPU), {floor.claims / wall:,.0f} claims/s, "
              f"peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
