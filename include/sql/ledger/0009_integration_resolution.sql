-- Ledger 0009: what the integration itself changed in FBS, so that a finding which went away
-- because of it is not shown to staff as fixed by them (issue 16 item 12).
--
-- replacement_cpr_assigned  one row per patron to whom the integration gave a replacement CPR (I1)
--                           and wrote it to FBS: when, in which run, with which liability's claim.
--                           Never the number itself. A patron given one again (FBS lost it) keeps
--                           one row, with the newest assignment.
--
-- finding.resolution gets a third value (the column is free text, no constraint to change):
--   fixed        the data was corrected in FBS (the liability still waits to go, or an agency check)
--   integration  the integration changed the data the check looks at itself: a patron without CPR
--                and birth date got a replacement CPR from a run (I1) and still has neither; staff
--                fixed nothing
--   left_batch   the liability no longer waits to go (sent, closed, cancelled, sent to collection,
--                before the cut-off): no longer in scope
CREATE TABLE replacement_cpr_assigned (
    patron_id    BIGINT      NOT NULL PRIMARY KEY,
    agency_id    VARCHAR(20) NOT NULL,
    liability_id BIGINT      NOT NULL,
    run_id       VARCHAR(64) NOT NULL,
    assigned_at  TIMESTAMP   NOT NULL
);
CREATE INDEX ix_replacement_cpr_assigned_run ON replacement_cpr_assigned (run_id);
