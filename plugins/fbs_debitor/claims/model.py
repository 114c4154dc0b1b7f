"""What one FBS liability becomes on the debtor side: a debtor account (Debitorkonto) and a claim
(Fordring), as plain values independent of any XML schema (``claims.sf1590`` turns them into the
schema's elements).

Identifier fields never appear in ``repr``: a claim that ends up in a log line or an exception
shows CPR numbers masked (``DDMMYY-****``) and nothing else of them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from fbs_debitor.core.identity import mask_cpr

# C1: debtor-account types
ACCOUNT_ADULT = "GEBYR_ERSTATNING"
ACCOUNT_MINOR_WITH_GUARDIAN = "GEBYR_ERSTATNING_UNDER_GRAENSE_MED_OEA"
ACCOUNT_MINOR_WITHOUT_GUARDIAN = "GEBYR_ERSTATNING_UNDER_GRAENSE_UDEN_OEA"
# C2: claim types
CLAIM_FEE = "BIBLIOTEKSGEBYR_OVERSKREDET_LAANETID"
CLAIM_COMPENSATION_ACKNOWLEDGED = "ERSTATNING_MED_ANERKENDELSE"
CLAIM_COMPENSATION_NOT_ACKNOWLEDGED = "ERSTATNING_UDEN_ANERKENDELSE"

CPR = "CPR"
REPLACEMENT_CPR = "ERSTATNING_CPR"
CVR = "CVR"


@dataclass(frozen=True)
class Address:
    street: str
    postal_code: str | None
    city: str | None


@dataclass(frozen=True)
class Party:
    """A debtor account's identification or its legally responsible party (F1)."""

    id_kind: str                      # CPR | ERSTATNING_CPR | CVR
    number: str = field(repr=False)
    patron_id: int
    name: str | None = None           # sent with a replacement CPR (I2)
    address: Address | None = None

    @property
    def masked(self) -> str:
        return self.number if self.id_kind == CVR else mask_cpr(self.number)

    def __repr__(self) -> str:
        return f"Party({self.id_kind} {self.masked}, patron {self.patron_id})"


@dataclass(frozen=True)
class Minor:
    """The child whose claim a guardian is responsible for (C4); travels with the claim."""

    id_kind: str                      # CPR | ERSTATNING_CPR
    number: str = field(repr=False)
    name: str
    birth_date: dt.date

    def __repr__(self) -> str:
        return f"Minor({self.id_kind} {mask_cpr(self.number)})"


@dataclass(frozen=True)
class PSRM:
    """C6/F4: PSRM claim type and the claim's period."""

    claim_type: str
    period_from: dt.date
    period_to: dt.date


@dataclass(frozen=True)
class Claim:
    liability_id: int
    agency_id: str
    fordring_id: str
    claim_type: str
    amount: Decimal
    created_on: dt.date               # OprettelsesDato
    due_date: dt.date                 # ForfaldsDato (F2)
    founding_date: dt.date            # StiftelsesDato (F3)
    psrm: PSRM | None                 # None only for minors without guardian (C6)
    specification: str = field(repr=False)       # F5
    text_lines: tuple[str, ...] = field(repr=False)  # F6 (may hold a minor's CPR)
    minor: Minor | None = None


@dataclass(frozen=True)
class Account:
    """One debtor account with its claims (a batch groups claims of the same account)."""

    account_type: str
    identification: Party
    responsible: Party
    p_number: str | None
    ean: str | None
    claims: tuple[Claim, ...]

    @property
    def key(self) -> tuple:
        return (self.account_type, self.identification.id_kind, self.identification.number,
                self.responsible.id_kind, self.responsible.number, self.p_number, self.ean)


# U1-U4: changes to a sent claim
CANCEL = "cancel"               # Annullering (U1, U4: a cancelled compensation is a negative posting)
WRITE_DOWN = "write_down"       # Nedskrivning to a lower amount (U1)
IDENTITY = "identity"           # Identifikationsaendring: CPR/CVR of the account's parties (U2)
REPAYMENT = "repayment"         # Tilbagebetaling of a compensation marked for repayment (U3)
CHANGE_KINDS = (CANCEL, WRITE_DOWN, IDENTITY, REPAYMENT)


@dataclass(frozen=True)
class Change:
    """One change to a claim the debtor system already holds; ``key`` (AendringID) is the
    idempotency key ``<liability>:<version>``."""

    key: str
    liability_id: int
    fordring_id: str
    kind: str                                  # one of CHANGE_KINDS
    amount: Decimal | None = None              # write-down: the new amount; repayment: the amount
    reason: str | None = None                  # cancellation: why (no identifiers)
    identification: Party | None = None        # identity change: the parties as FBS has them now
    responsible: Party | None = None


@dataclass(frozen=True)
class StaffTask:
    """A task for library staff in FBS (M1), e.g. a minor's claim sent without guardian (C5)."""

    task_id: str
    agency_id: str
    branch_id: str | None
    patron_id: int | None
    liability_id: int | None
    kind: str
    message: str                      # Danish / English, CPR masked


@dataclass(frozen=True)
class Problem:
    """A liability whose claim cannot be built: the rule and a plain reason (CPR masked)."""

    liability_id: int
    agency_id: str
    patron_id: int | None
    rule: str
    message: str
    code: str | None = None     # the catalog code where the rule has several (else the rule's one)


@dataclass
class Built:
    """The result of building one liability."""

    account: Account | None = None                 # one account holding exactly this claim
    problem: Problem | None = None
    tasks: list[StaffTask] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    new_replacement_cprs: dict[int, str] = field(default_factory=dict, repr=False)  # patron_id -> number
