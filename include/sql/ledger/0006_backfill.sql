-- Ledger 0006: moving the cut-off date back (T3) and the backfill of the older range.
--
-- cut_off         per agency, the cut-off date as the integration last saw it in FBS
--                 (seen_cut_off) and the date from which the hourly run transfers (hourly_from).
--                 While hourly_from is later than FBS's cut-off date, the range in between waits
--                 for debitor_backfill; the hourly run leaves it alone. When a backfill completes,
--                 hourly_from comes down to its start, so from then on the hourly run also
--                 picks up what the backfill could not send yet (verified later, data fixed).
-- cut_off_change  every change of an agency's cut-off date the integration noticed, back or
--                 forward, with what it did about it (note).
-- backfill        one requested backfill of an agency's range [from_date, to_date): by the
--                 transfer run's detection or by hand; a dry run sends nothing.
-- backfill_chunk  the range cut into chunks (calendar months), each done once: a rerun or resume
--                 after a failure skips the chunks already done.
CREATE TABLE cut_off (
    agency_id    VARCHAR(20) NOT NULL PRIMARY KEY,
    seen_cut_off DATE        NOT NULL,
    hourly_from  DATE        NOT NULL,
    updated_at   TIMESTAMP   NOT NULL
);

CREATE TABLE cut_off_change (
    change_id   VARCHAR(36) NOT NULL PRIMARY KEY,
    agency_id   VARCHAR(20) NOT NULL,
    old_cut_off DATE        NOT NULL,
    new_cut_off DATE        NOT NULL,
    direction   VARCHAR(8)  NOT NULL CHECK (direction IN ('back', 'forward')),
    detected_at TIMESTAMP   NOT NULL,
    run_id      VARCHAR(64),
    backfill_id VARCHAR(36),
    note        TEXT
);
CREATE INDEX ix_cut_off_change_agency ON cut_off_change (agency_id, detected_at);

CREATE TABLE backfill (
    backfill_id    VARCHAR(36)  NOT NULL PRIMARY KEY,
    agency_id      VARCHAR(20)  NOT NULL,
    from_date      DATE         NOT NULL,
    to_date        DATE         NOT NULL,
    dry_run        BOOLEAN      NOT NULL,
    batch_size     INTEGER      NOT NULL,
    requested_by   VARCHAR(10)  NOT NULL CHECK (requested_by IN ('detected', 'manual')),
    status         VARCHAR(12)  NOT NULL
        CHECK (status IN ('planned', 'running', 'complete', 'failed', 'stopped', 'superseded')),
    airflow_run_id VARCHAR(250),
    out_dir        TEXT,
    created_at     TIMESTAMP    NOT NULL,
    finished_at    TIMESTAMP,
    note           TEXT
);
CREATE INDEX ix_backfill_agency ON backfill (agency_id, status);

CREATE TABLE backfill_chunk (
    backfill_id VARCHAR(36) NOT NULL REFERENCES backfill (backfill_id),
    chunk_from  DATE        NOT NULL,
    chunk_to    DATE        NOT NULL,
    status      VARCHAR(10) NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'stopped')),
    run_id      VARCHAR(64),
    in_range    BIGINT,      -- liabilities created in the chunk (every status)
    claims      BIGINT,      -- claims built and recorded (sent) or, in a dry run, written
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    note        TEXT,
    PRIMARY KEY (backfill_id, chunk_from)
);
