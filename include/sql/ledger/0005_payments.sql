-- Ledger 0005: payments and write-offs coming back from the debtor system (P1, P2).
--
-- payment_file  one row per delivered file (DaekningAfskrivningRegistreringAfsend), keyed by the
--               SHA-256 of its bytes, so a file delivered again is recognised whatever its name:
--                 applied      every movement in it was applied, held for review or recognised as
--                              delivered before, in ONE ledger transaction with this row
--                 quarantined  malformed, schema-invalid, unsafe (DTD/entities) or too large: nothing
--                              in it was applied; reason says why; a staff task names the file
-- movement      one row per movement (Bevaegelse), keyed by the debtor system's BevaegelseID, so a
--               movement delivered again (in the same or another file) is applied at most once:
--                 applied      counted in the claim's sums below
--                 held         not applied: unknown or cancelled claim, would overpay, a reversal of
--                              something unknown, ...; hold_reason says which; a staff task; held
--                              movements are looked at again each run (the claim may arrive later)
--                 dismissed    reviewed by staff and not to be applied (CLI payments dismiss)
--               written_back_at: when it (or its hold task) was written to FBS (fbs.payment /
--               fbs.task): the write-back is keyed, so a crash between the ledger and FBS is
--               finished by the next run, never doubled.
--               reversed_by: the reversal that undid this movement.
-- claim         the sums of the applied movements of its current claim, the balance the debtor
--               system still holds (debtor_amount - paid - written off, reversals netted; NULL
--               until the first movement or change: then it is debtor_amount), its settlement
--               (unpaid, partly_paid, paid, written_off, repaid, cancelled, overpaid),
--               the last booking date, and whether fbs-debitor closed the liability in FBS because
--               it was settled (so a later reversal may open it again, and nothing else).
CREATE TABLE payment_file (
    sha256       CHAR(64)     NOT NULL PRIMARY KEY,
    name         VARCHAR(255) NOT NULL,
    state        VARCHAR(12)  NOT NULL CHECK (state IN ('applied', 'quarantined')),
    reason       TEXT,
    transaction_id VARCHAR(64),
    movements    INTEGER      NOT NULL DEFAULT 0,
    applied      INTEGER      NOT NULL DEFAULT 0,
    held         INTEGER      NOT NULL DEFAULT 0,
    duplicates   INTEGER      NOT NULL DEFAULT 0,
    conflicts    INTEGER      NOT NULL DEFAULT 0,
    run_id       VARCHAR(64),
    received_at  TIMESTAMP    NOT NULL
);
CREATE INDEX ix_payment_file_run ON payment_file (run_id);

CREATE TABLE movement (
    movement_id     VARCHAR(100)  NOT NULL PRIMARY KEY,
    file_sha256     CHAR(64)      NOT NULL REFERENCES payment_file (sha256),
    fordring_id     VARCHAR(64)   NOT NULL,
    liability_id    BIGINT,
    agency_id       VARCHAR(20),
    kind            VARCHAR(20)   NOT NULL CHECK (kind IN ('payment', 'write_off', 'repayment', 'reversal')),
    amount          NUMERIC(12,2) NOT NULL,
    booked_on       DATE          NOT NULL,
    reference_id    VARCHAR(100),
    state           VARCHAR(12)   NOT NULL CHECK (state IN ('applied', 'held', 'dismissed')),
    hold_reason     VARCHAR(40),
    reversed_by     VARCHAR(100),
    run_id          VARCHAR(64),
    received_at     TIMESTAMP     NOT NULL,
    decided_at      TIMESTAMP     NOT NULL,
    written_back_at TIMESTAMP
);
CREATE INDEX ix_movement_liability ON movement (liability_id);
CREATE INDEX ix_movement_state ON movement (state, written_back_at);
CREATE INDEX ix_movement_file ON movement (file_sha256);

ALTER TABLE claim ADD COLUMN paid_amount NUMERIC(12,2) NOT NULL DEFAULT 0;
ALTER TABLE claim ADD COLUMN written_off_amount NUMERIC(12,2) NOT NULL DEFAULT 0;
ALTER TABLE claim ADD COLUMN repaid_amount NUMERIC(12,2) NOT NULL DEFAULT 0;
ALTER TABLE claim ADD COLUMN balance NUMERIC(12,2);
ALTER TABLE claim ADD COLUMN settlement VARCHAR(12) NOT NULL DEFAULT 'unpaid';
ALTER TABLE claim ADD COLUMN settled_on DATE;
ALTER TABLE claim ADD COLUMN fbs_closed_by_payment BOOLEAN NOT NULL DEFAULT FALSE;
