-- FBS extract contract: the tables fbs-debitor reads from FBS (Cicero) and writes back to.
--
-- One file for PostgreSQL and SQLite. Table names are unqualified on purpose: the loader runs it
-- with the `fbs` schema as the default (PostgreSQL: search_path=fbs; SQLite: the fbs database file),
-- so the same statements create the same tables on both. Column names are a contract other tools
-- rely on: add columns, never rename or drop them.
--
-- Change markers (issue 19): `updated_at` on liability, patron, guardianship and agency is the time
-- FBS last inserted or changed the row (FBS's clock, local time). The hourly run looks only at what
-- changed since its last run (fbs_debitor.eligibility.delta); the nightly sweep looks at everything
-- and says what the markers missed. FBS must set it on every insert and update of those rows. A
-- NULL marker means "unknown": such a row counts as changed in every run (slower, never lost). The
-- integration's own writes (a replacement CPR it assigned, a status it settled) need not set it.
--
-- Conventions: timestamps are FBS local time (Europe/Copenhagen) without zone; dates are calendar
-- dates; amounts are DKK with two decimals; booleans are TRUE/FALSE. Keys written by fbs-debitor
-- (task_id, payment_id) are text made by the integration, so a write-back repeated after a crash
-- lands on the same row instead of creating a second one.

CREATE TABLE IF NOT EXISTS agency (
    agency_id                      VARCHAR(20)  NOT NULL PRIMARY KEY,  -- FBS agency (ISIL number without DK-)
    name                           VARCHAR(200) NOT NULL,
    municipality_cvr               CHAR(8)      NOT NULL,
    age_limit                      INTEGER      NOT NULL,              -- myndighedsalder (C3), usually 18
    cut_off_date                   DATE         NOT NULL,              -- skaeringsdato (T1, T3)
    replacement_cpr_enabled        BOOLEAN      NOT NULL DEFAULT FALSE, -- I1, T6
    verify_compensations           BOOLEAN      NOT NULL DEFAULT FALSE, -- T2
    auto_compensation_acknowledged BOOLEAN      NOT NULL DEFAULT FALSE, -- C2
    debtor_vendor                  VARCHAR(10)  NOT NULL
        CHECK (debtor_vendor IN ('KMD_OPUS', 'PRISME', 'EG')),
    org_unit_uuid                  CHAR(36)     NOT NULL,              -- debitorkonto organisatorisk reference
    sender_system_uuid             CHAR(36)     NOT NULL,              -- afsender IT-system instans
    updated_at                     TIMESTAMP                           -- change marker (see above)
);
CREATE INDEX IF NOT EXISTS ix_agency_updated ON agency (updated_at);

CREATE TABLE IF NOT EXISTS branch (
    branch_id   VARCHAR(20)  NOT NULL PRIMARY KEY,
    agency_id   VARCHAR(20)  NOT NULL REFERENCES agency (agency_id),
    name        VARCHAR(200) NOT NULL,
    staff_email VARCHAR(254)
);

CREATE TABLE IF NOT EXISTS patron (
    patron_id             BIGINT       NOT NULL PRIMARY KEY,
    agency_id             VARCHAR(20)  NOT NULL REFERENCES agency (agency_id),
    branch_id             VARCHAR(20)  REFERENCES branch (branch_id),
    kind                  VARCHAR(10)  NOT NULL CHECK (kind IN ('person', 'company', 'group')),
    cpr                   VARCHAR(10),         -- DDMMYYSSSS, digits only; NULL when unknown (VARCHAR: a
                                               -- malformed value must come back as FBS holds it)
    replacement_cpr       VARCHAR(10),         -- erstatningspersonnummer (I1), kept once assigned
    birth_date            DATE,
    name                  VARCHAR(200) NOT NULL,
    street                VARCHAR(200),
    postal_code           VARCHAR(10),
    city                  VARCHAR(100),
    cvr                   VARCHAR(8),          -- companies and institutions (T5)
    p_number              VARCHAR(10),
    ean                   VARCHAR(13),
    responsible_patron_id BIGINT REFERENCES patron (patron_id), -- groups: the named responsible patron (T4)
    updated_at            TIMESTAMP            -- change marker (see above)
);
CREATE INDEX IF NOT EXISTS ix_patron_updated ON patron (updated_at);
CREATE INDEX IF NOT EXISTS ix_patron_agency ON patron (agency_id);
CREATE INDEX IF NOT EXISTS ix_patron_responsible ON patron (responsible_patron_id);
-- A replacement CPR belongs to one patron (I1); NULLs (no number) are not compared.
CREATE UNIQUE INDEX IF NOT EXISTS ux_patron_replacement_cpr ON patron (replacement_cpr);

CREATE TABLE IF NOT EXISTS guardianship (
    child_patron_id    BIGINT NOT NULL REFERENCES patron (patron_id),
    guardian_patron_id BIGINT NOT NULL REFERENCES patron (patron_id),
    valid_from         DATE   NOT NULL,
    valid_to           DATE,                   -- exclusive; NULL = still valid
    updated_at         TIMESTAMP,              -- change marker (see above)
    PRIMARY KEY (child_patron_id, valid_from)
);
CREATE INDEX IF NOT EXISTS ix_guardianship_updated ON guardianship (updated_at);
CREATE INDEX IF NOT EXISTS ix_guardianship_guardian ON guardianship (guardian_patron_id);

CREATE TABLE IF NOT EXISTS material (
    item_number    VARCHAR(20)  NOT NULL PRIMARY KEY,  -- materialenummer (stregkode)
    faust          VARCHAR(12),
    classification VARCHAR(40),                        -- DK5
    author         VARCHAR(200),
    title          VARCHAR(400)
);

CREATE TABLE IF NOT EXISTS loan (
    loan_id     BIGINT      NOT NULL PRIMARY KEY,
    patron_id   BIGINT      NOT NULL REFERENCES patron (patron_id),
    item_number VARCHAR(20) NOT NULL REFERENCES material (item_number),
    loan_date   DATE        NOT NULL,
    due_date    DATE        NOT NULL,
    reloan_date DATE,                      -- genlaan: the date the loan was renewed (F3)
    returned_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS ix_loan_patron ON loan (patron_id);
CREATE INDEX IF NOT EXISTS ix_loan_item ON loan (item_number);

CREATE TABLE IF NOT EXISTS liability (
    liability_id        BIGINT        NOT NULL PRIMARY KEY,
    agency_id           VARCHAR(20)   NOT NULL REFERENCES agency (agency_id),
    patron_id           BIGINT        NOT NULL REFERENCES patron (patron_id),
    kind                VARCHAR(12)   NOT NULL CHECK (kind IN ('fee', 'compensation')),
    number              VARCHAR(20)   NOT NULL,   -- gebyr-nr. / erstatnings-nr.
    loan_id             BIGINT        REFERENCES loan (loan_id),
    item_number         VARCHAR(20)   REFERENCES material (item_number),
    amount              NUMERIC(12,2) NOT NULL,
    created_at          TIMESTAMP     NOT NULL,
    acknowledged        BOOLEAN       NOT NULL DEFAULT FALSE,  -- compensation with acknowledgement/receipt (C2)
    auto_created        BOOLEAN       NOT NULL DEFAULT FALSE,  -- compensation created automatically by FBS (C2)
    verified_at         TIMESTAMP,                             -- compensation verification (T2)
    status              VARCHAR(20)   NOT NULL
        CHECK (status IN ('open', 'closed', 'sent_to_collection', 'cancelled')),
    refund_requested_at TIMESTAMP,                             -- marked for repayment (U3)
    updated_at          TIMESTAMP     NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_liability_agency_created ON liability (agency_id, created_at);
CREATE INDEX IF NOT EXISTS ix_liability_patron ON liability (patron_id);
CREATE INDEX IF NOT EXISTS ix_liability_updated ON liability (updated_at);
CREATE INDEX IF NOT EXISTS ix_liability_loan ON liability (loan_id);

-- Write-back: staff tasks (M1). task_id is made by fbs-debitor from what the task is about.
CREATE TABLE IF NOT EXISTS task (
    task_id      VARCHAR(64)  NOT NULL PRIMARY KEY,
    agency_id    VARCHAR(20)  NOT NULL REFERENCES agency (agency_id),
    branch_id    VARCHAR(20)  REFERENCES branch (branch_id),
    patron_id    BIGINT       REFERENCES patron (patron_id),
    liability_id BIGINT       REFERENCES liability (liability_id),
    kind         VARCHAR(40)  NOT NULL,
    message      TEXT         NOT NULL,
    created_at   TIMESTAMP    NOT NULL,
    resolved_at  TIMESTAMP
);
CREATE INDEX IF NOT EXISTS ix_task_liability ON task (liability_id);

-- Write-back: payments and write-offs reported by the debtor system (P1, P2).
CREATE TABLE IF NOT EXISTS payment (
    payment_id   VARCHAR(64)   NOT NULL PRIMARY KEY,  -- from the debtor system's movement id
    liability_id BIGINT        NOT NULL REFERENCES liability (liability_id),
    kind         VARCHAR(20)   NOT NULL
        CHECK (kind IN ('payment', 'write_off', 'repayment', 'reversal')),
    amount       NUMERIC(12,2) NOT NULL,
    booked_on    DATE          NOT NULL,
    source_ref   VARCHAR(200)
);
CREATE INDEX IF NOT EXISTS ix_payment_liability ON payment (liability_id);
