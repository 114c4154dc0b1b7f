-- Ledger 0004: keeping sent claims true (U1-U4) and the audit trail's order (M2).
--
-- claim: what the debtor system was last told about the liability (by the newest RECORDED
-- message, answered or not), so each run compares FBS's current state with it and records only
-- what changed:
--   generation           0 for the first claim; +1 for each new claim of the same liability (an
--                        increase is a cancellation plus a new claim with a new FordringID, U1);
--                        fordring_id is the current generation's
--   debtor_amount        the amount the debtor system holds (creation, then write-downs)
--   debtor_status        live | cancelled
--   refund_requested_at  the FBS repayment mark last sent (U3); a new mark is a new repayment
--   identity_print       keyed hash (HMAC, key outside the ledger) of the account's identification
--                        and responsible party as last sent (U2); never a CPR number
--   source_print         keyed hash of the FBS fields those parties are built from: when it is
--                        unchanged nothing needs rebuilding
--   fbs_status           FBS's status when last compared (closed / sent to collection are told
--                        to staff once, not to the debtor system)
--   checked_at           when the comparison last changed the row
--   notice               what staff were last told about a change that is not sent on (a negative
--                        amount, parties that do not build, ...): told once, not every hour
-- outbox: change_kind (create, cancel, write_down, increase_cancel, increase_create, identity,
-- repayment), the amount the message sets or pays back, and depends_on: the message that must be
-- accepted first (the cancellation of an increase's original claim).
-- event.seq: order of events within a second (history command).
-- secret_check: a check value of the fingerprint key, so a changed key stops the change
-- detection instead of making every identity look changed.
ALTER TABLE claim ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE claim ADD COLUMN debtor_amount NUMERIC(12,2);
ALTER TABLE claim ADD COLUMN debtor_status VARCHAR(12);
ALTER TABLE claim ADD COLUMN refund_requested_at TIMESTAMP;
ALTER TABLE claim ADD COLUMN identity_print CHAR(64);
ALTER TABLE claim ADD COLUMN source_print CHAR(64);
ALTER TABLE claim ADD COLUMN fbs_status VARCHAR(20);
ALTER TABLE claim ADD COLUMN checked_at TIMESTAMP;
ALTER TABLE claim ADD COLUMN notice VARCHAR(120);
ALTER TABLE outbox ADD COLUMN change_kind VARCHAR(20);
ALTER TABLE outbox ADD COLUMN amount NUMERIC(12,2);
ALTER TABLE outbox ADD COLUMN depends_on VARCHAR(100);
ALTER TABLE event ADD COLUMN seq BIGINT;
CREATE INDEX ix_outbox_liability_state ON outbox (liability_id, state);
CREATE INDEX ix_outbox_open ON outbox (state, liability_id);
CREATE TABLE secret_check (
    name        VARCHAR(40) NOT NULL PRIMARY KEY,
    check_value CHAR(64)    NOT NULL,
    created_at  TIMESTAMP   NOT NULL
);
