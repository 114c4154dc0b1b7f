"""The data-quality checks staff can act on: code, rule, severity, and what to tell library staff.

One catalog for the checks (``quality.checks``), the eligibility and claim-building rules that record
findings with the same codes (so one problem is one finding), and the staff report (``quality.report``),
which shows the Danish title and the one-sentence reason.

Severities: ``blocks_liability`` (held until fixed, then sent automatically), ``blocks_agency``
(the agency's whole run is held), ``warning`` (sent, but worth fixing).
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCKS_LIABILITY = "blocks_liability"
BLOCKS_AGENCY = "blocks_agency"
WARNING = "warning"


@dataclass(frozen=True)
class Check:
    code: str
    rule: str
    severity: str
    title: str          # Danish, for staff
    why: str            # Danish, one plain sentence: why it matters


_CHECKS = [
    Check("C3_agency_age_limit_out_of_range", "C3", BLOCKS_AGENCY, "Myndighedsalderen er ikke mellem 15 og 21",
          "Med en forkert aldersgrænse bliver alle lånere regnet som børn eller voksne forkert, så intet sendes "
          "for biblioteket, før den er rettet."),
    # The code keeps its first name so findings already in ledgers stay the same finding (T4 was
    # first read as "a group with a named responsible patron may go"; corrected 2026-11-30).
    Check("T4_group_without_responsible_patron", "T4", BLOCKS_LIABILITY, "Mellemværende på en lånergruppe",
          "Et mellemværende på en lånergruppe kan ikke overføres, fordi der ikke er nogen ansvarlig; opret "
          "mellemværendet på en navngiven låner i gruppen."),
    Check("T5_company_without_valid_cvr", "T5", BLOCKS_LIABILITY, "Virksomhed uden gyldigt CVR-nummer",
          "Debitorsystemet kan kun opkræve virksomheder og institutioner med et gyldigt CVR-nummer."),
    Check("T5_company_without_ean_or_p_number", "T5", WARNING, "Virksomhed uden EAN- eller P-nummer",
          "Uden EAN-nummer kan offentlige kunder ikke få elektronisk faktura, og uden P-nummer kan regningen "
          "ramme den forkerte afdeling."),
    Check("C5_minor_without_guardian", "C5", WARNING, "Mindreårig uden økonomisk ansvarlig",
          "Barnet bliver selv skyldner, og kravet kan ikke sendes til inddrivelse; en økonomisk ansvarlig, der "
          "sættes på nu, gælder kun mellemværender, der opstår derefter."),
    Check("I1_person_without_cpr_or_birth_date", "I1", WARNING, "Låner uden CPR-nummer og fødselsdato",
          "Låneren får et erstatnings-CPR som voksen; er det et barn, bliver barnet opkrævet som en voksen."),
    Check("T6_person_without_usable_cpr", "T6", BLOCKS_LIABILITY, "Låner uden brugbart CPR-nummer",
          "Uden et gyldigt CPR-nummer (eller erstatnings-CPR, hvor det er slået til) kan mellemværendet "
          "ikke sendes."),
    Check("I4_cpr_fails_modulus_11", "I4", WARNING, "CPR-nummeret fejler modulus-11-kontrollen",
          "Nummeret er tilladt (nogle CPR-numre siden 2007 gør det), men det bør tjekkes for tastefejl."),
    Check("I3_replacement_cpr_at_prisme", "I3", WARNING, "Erstatnings-CPR hos et Fujitsu Prisme-bibliotek",
          "Prisme afviser krav på erstatnings-CPR, medmindre kommunen har en manuel proces for dem."),
    Check("F2_amount_not_positive", "F2", BLOCKS_LIABILITY, "Beløbet er nul eller negativt",
          "Et krav til debitorsystemet skal have et positivt beløb."),
    Check("F3_dates_out_of_order", "F3", WARNING, "Datoer i forkert rækkefølge",
          "Stiftelsesdato efter forfaldsdato eller oprettelse før udlånet giver forkerte datoer på regningen."),
    Check("F3_fee_without_loan", "F3", BLOCKS_LIABILITY, "Gebyr uden lån",
          "Et gebyr beregnes ud fra lånets afleveringsfrist; uden lånet kan kravets datoer ikke sættes."),
    Check("I1_replacement_cpr_not_possible", "I1", BLOCKS_LIABILITY, "Erstatnings-CPR kan ikke dannes",
          "Fødselsdatoen eller det gemte erstatnings-CPR er ugyldigt, så låneren kan ikke identificeres."),
    Check("I2_replacement_cpr_without_name", "I2", BLOCKS_LIABILITY, "Erstatnings-CPR uden navn",
          "Med et erstatnings-CPR skal navn og adresse med, ellers ved debitorsystemet ikke, hvem der skylder."),
    Check("C4_minor_without_name", "C4", BLOCKS_LIABILITY, "Mindreårig uden navn",
          "Barnets navn skal stå på kravet til den økonomisk ansvarlige."),
    Check("F1_text_cannot_be_sent", "F1", BLOCKS_LIABILITY, "Navn eller adresse kan ikke sendes",
          "Navnet eller adressen indeholder tegn, der ikke kan sendes (fx styretegn), eller er for lang; "
          "teksten ændres aldrig af integrationen, så den skal rettes i FBS."),
    Check("F6_text_cannot_be_sent", "F6", BLOCKS_LIABILITY, "Materialets tekst kan ikke sendes",
          "Forfatter, titel, opstilling eller numre på materialet indeholder tegn, der ikke kan sendes "
          "(fx styretegn), eller er for lange; teksten ændres aldrig af integrationen."),
    Check("F2_amount_not_exact", "F2", BLOCKS_LIABILITY, "Beløbet kan ikke sendes præcist",
          "Beløbet har flere decimaler end øre, er for stort til debitorsystemet eller kan ikke læses; det "
          "rundes aldrig af, så det skal rettes i FBS."),
    Check("F2_date_unreadable", "F2", BLOCKS_LIABILITY, "En dato kan ikke læses",
          "Oprettelses-, udlåns- eller afleveringsdatoen kan ikke læses som en dato, så kravets datoer kan "
          "ikke sættes."),
    Check("F1_patron_missing", "F1", BLOCKS_LIABILITY, "Låneren findes ikke",
          "Mellemværendet peger på en låner, der ikke findes i FBS, så der er ingen at opkræve."),
    Check("M1_liability_not_processable", "M1", BLOCKS_LIABILITY, "Mellemværendet kunne ikke behandles",
          "Integrationen stødte på en uventet fejl i netop dette mellemværende; de andre er sendt som "
          "normalt. Fejlen er registreret, og driften er underrettet."),
]

CHECKS: dict[str, Check] = {c.code: c for c in _CHECKS}


def check(code: str) -> Check:
    """The catalog entry; an unknown code gets a plain entry instead of failing a report."""
    return CHECKS.get(code) or Check(code, code.split("_", 1)[0], WARNING, code, "")
