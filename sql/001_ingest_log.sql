-- The ingest log: every input, as received, before anything counts it.
-- Collectors append; the dataflow reads it in `seq` order and keeps its position in
-- Bytewax recovery snapshots. Writers serialise on an advisory lock so that `seq` order
-- is commit order and a reader never skips a row that commits late.
CREATE TABLE ingest_log (
    seq          bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    source       text        NOT NULL,          -- e.g. mqtt:<topic>, replay:<file>:<line>
    payload      bytea       NOT NULL,          -- canonical event JSON (or the raw input if unmappable)
    error        text,                          -- set by a collector that could not map the input
    dedupe_key   bytea                          -- 16-byte hash of the event id or replay line key;
                                                -- a repeated key is not stored again
);
CREATE UNIQUE INDEX ingest_log_dedupe_key ON ingest_log (dedupe_key) WHERE dedupe_key IS NOT NULL;
COMMENT ON TABLE ingest_log IS 'Durable, replayable log of every received input (mesflow).';

-- Inputs that failed validation: kept with the raw payload, where they came from and why.
CREATE TABLE dead_letter (
    log_seq      bigint      PRIMARY KEY,       -- the ingest_log row; dead-lettered at most once
    received_at  timestamptz NOT NULL,
    source       text        NOT NULL,
    payload      bytea       NOT NULL,
    reason       text        NOT NULL,          -- malformed, unknown_type, missing_field, bad_timestamp,
                                                -- negative_count, invalid_field, unknown_machine, late, ...
    detail       text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_reason ON dead_letter (reason, received_at);

-- How far each dataflow has written its results (observability; recovery uses snapshots).
CREATE TABLE dataflow_progress (
    flow        text PRIMARY KEY,
    last_seq    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
