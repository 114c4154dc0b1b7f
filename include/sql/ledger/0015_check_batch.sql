-- Ledger 0015: the batch the run's checks look at, as the sending steps found it (issue 19).
--
-- Eligibility is read once per run: each municipality's `build_and_send` decides, page by page,
-- which liabilities the run looks at (eligibility.iter_verdicts through claims.stream) and reads
-- their claim rows; for the liabilities not already sent it derives there, before anything of the
-- page is sent or written to FBS, the frame the GX checks validate (quality.checks: verdicts and
-- facts, never an identifier; the finding details carry a masked CPR only) and keeps it here. The
-- run's data_quality step, after the sending, validates these frames instead of reading
-- eligibility and the claim rows a second time, and deletes the run's rows once its findings are
-- recorded (a failed data_quality keeps them, so clearing the task checks the same batch).
--
-- check_batch   run_id; page_id (time-ordered: a retried step's later page of the same
--               liability wins); row_count; frame (the page's frame and details, JSON, zlib, base64);
--               error: why a page could not be prepared (its sending went on; data_quality fails
--               naming it, so the gap in the checks is never silent).
CREATE TABLE check_batch (
    run_id   VARCHAR(64) NOT NULL,
    page_id  VARCHAR(36) NOT NULL,
    row_count INTEGER    NOT NULL,
    frame    TEXT        NOT NULL,
    error    TEXT,
    PRIMARY KEY (run_id, page_id)
);
