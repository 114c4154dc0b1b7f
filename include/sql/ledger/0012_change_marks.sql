-- Ledger 0012: change marks for the incremental hourly run (issue 19).
--
-- The hourly run looks only at what FBS marked changed (`updated_at` on liability, patron,
-- guardianship, agency) since the last run that finished its work for an agency; the nightly sweep
-- looks at everything. fbs_debitor.eligibility.delta reads and writes these.
--
-- change_mark   per agency: FBS's mark up to which every change has been looked at (marked_until,
--               FBS's own clock), the agency row's own marker then (agency_marker: the agency is
--               looked at whole when FBS's changes it), and the run that moved it there. Only moved
--               forward, and only when that agency's municipality finished its part of the run.
-- run_window    per run and agency: what that run looks at, fixed when the run opens so every task
--               of the run (and a retried one) sees the same window. since NULL: everything (the
--               agency's first run, a sweep, a changed agency setting); until: FBS's mark when the
--               run opened; previous_mark: the agency's mark then (a sweep compares what it found
--               with it); agency_marker: the agency row's marker when the run opened; mode
--               'incremental' or 'sweep'.
CREATE TABLE change_mark (
    agency_id     VARCHAR(20) NOT NULL PRIMARY KEY,
    marked_until  TIMESTAMP   NOT NULL,
    agency_marker TIMESTAMP,
    run_id        VARCHAR(64) NOT NULL,
    updated_at    TIMESTAMP   NOT NULL
);
CREATE TABLE run_window (
    run_id         VARCHAR(64) NOT NULL,
    agency_id      VARCHAR(20) NOT NULL,
    mode           VARCHAR(12) NOT NULL CHECK (mode IN ('incremental', 'sweep')),
    since          TIMESTAMP,
    until          TIMESTAMP   NOT NULL,
    previous_mark  TIMESTAMP,
    agency_marker  TIMESTAMP,
    opened_at      TIMESTAMP   NOT NULL,
    PRIMARY KEY (run_id, agency_id)
);
-- ix_outbox_run   the messages a run recorded (its change counts, a sweep's comparison with the
--                 marks), without walking every message ever recorded: an hourly run costs what it
--                 sent (the messages it last sent have ix_outbox_last_run, 0003)
CREATE INDEX ix_outbox_run ON outbox (run_id);
