-- Ledger 0001: the integration's own state, kept apart from FBS.
--
-- Designed for exactly-once delivery and the audit trail (M2):
--   claim      one row per liability handed over: its stable FordringID and where it stands;
--   outbox     one row per message (creation, and later each change) with a deterministic key
--              recorded BEFORE sending, so a crash or timeout is resolved by asking again with
--              the same key, never by sending something new;
--   event      append-only history of a liability as the integration saw and did it;
--   finding    what stops or warns about a liability, patron or agency, with first/last seen and
--              resolved dates (eligibility rules now, data-quality checks later);
--   run        one row per job run, with its counts in run_count.
-- Same file for PostgreSQL and SQLite (unqualified names; the schema is the engine's default).

CREATE TABLE run (
    run_id              VARCHAR(64)  NOT NULL PRIMARY KEY,
    kind                VARCHAR(20)  NOT NULL CHECK (kind IN ('transfer', 'backfill', 'payments', 'dq_report', 'manual')),
    airflow_dag_id      VARCHAR(250),
    airflow_run_id      VARCHAR(250),
    data_interval_start TIMESTAMP,
    data_interval_end   TIMESTAMP,
    started_at          TIMESTAMP    NOT NULL,
    finished_at         TIMESTAMP,
    status              VARCHAR(10)  NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    error               TEXT
);
CREATE INDEX ix_run_started ON run (started_at);

CREATE TABLE run_count (
    run_id    VARCHAR(64) NOT NULL REFERENCES run (run_id),
    agency_id VARCHAR(20) NOT NULL,
    category  VARCHAR(30) NOT NULL,   -- eligible, awaiting_verification, blocked, already_sent, out_of_scope
    rule      VARCHAR(30) NOT NULL,   -- the rule behind the category (T1..T6) or '-'
    n         BIGINT      NOT NULL,
    PRIMARY KEY (run_id, agency_id, category, rule)
);

CREATE TABLE claim (
    liability_id    BIGINT      NOT NULL PRIMARY KEY,
    agency_id       VARCHAR(20) NOT NULL,
    fordring_id     VARCHAR(64) NOT NULL UNIQUE,
    state           VARCHAR(12) NOT NULL CHECK (state IN ('pending', 'sent', 'accepted', 'rejected', 'superseded')),
    current_version INTEGER     NOT NULL,
    first_run_id    VARCHAR(64) REFERENCES run (run_id),
    created_at      TIMESTAMP   NOT NULL,
    updated_at      TIMESTAMP   NOT NULL
);
CREATE INDEX ix_claim_agency ON claim (agency_id);

CREATE TABLE outbox (
    message_key   VARCHAR(100) NOT NULL PRIMARY KEY,  -- '<liability_id>:<version>'
    liability_id  BIGINT       NOT NULL REFERENCES claim (liability_id),
    version       INTEGER      NOT NULL,
    operation     VARCHAR(40)  NOT NULL,
    fordring_id   VARCHAR(64)  NOT NULL,
    fingerprint   CHAR(64)     NOT NULL,              -- hash of the FBS state the message was built from
    state         VARCHAR(12)  NOT NULL CHECK (state IN ('pending', 'sent', 'accepted', 'rejected')),
    attempts      INTEGER      NOT NULL DEFAULT 0,
    last_error    TEXT,
    debtor_ref    VARCHAR(100),
    run_id        VARCHAR(64)  REFERENCES run (run_id),
    created_at    TIMESTAMP    NOT NULL,
    sent_at       TIMESTAMP,
    answered_at   TIMESTAMP,
    UNIQUE (liability_id, version)
);
CREATE INDEX ix_outbox_state ON outbox (state);

CREATE TABLE event (
    event_id     VARCHAR(36)  NOT NULL PRIMARY KEY,
    liability_id BIGINT       NOT NULL,
    occurred_at  TIMESTAMP    NOT NULL,
    kind         VARCHAR(40)  NOT NULL,
    message_key  VARCHAR(100),
    run_id       VARCHAR(64),
    detail       TEXT                                  -- never a full CPR number
);
CREATE INDEX ix_event_liability ON event (liability_id, occurred_at);

CREATE TABLE finding (
    finding_key   VARCHAR(200) NOT NULL PRIMARY KEY,  -- '<check>:<subject>'
    check_code    VARCHAR(60)  NOT NULL,
    rule          VARCHAR(10)  NOT NULL,
    severity      VARCHAR(20)  NOT NULL CHECK (severity IN ('blocks_liability', 'blocks_agency', 'warning')),
    agency_id     VARCHAR(20)  NOT NULL,
    branch_id     VARCHAR(20),
    patron_id     BIGINT,
    liability_id  BIGINT,
    message       TEXT         NOT NULL,              -- never a full CPR number
    first_seen_at TIMESTAMP    NOT NULL,
    last_seen_at  TIMESTAMP    NOT NULL,
    resolved_at   TIMESTAMP,
    first_run_id  VARCHAR(64),
    last_run_id   VARCHAR(64)
);
CREATE INDEX ix_finding_open ON finding (agency_id, resolved_at);
CREATE INDEX ix_finding_liability ON finding (liability_id);
