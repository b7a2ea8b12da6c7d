-- Retention and the dead-letter workflow (issue 8; mesflow/retention.py,
-- mesflow/dead_letters.py, docs/operations.md).

-- One copy of a dead letter's payload. While its ingest_log row exists, the payload is read
-- from there (dead_letter.payload is NULL); retention copies it into dead_letter just before
-- it prunes that log row, for dead letters that are not resolved yet. Writers need not
-- change: they may keep inserting the payload, the trigger below drops the duplicate.
ALTER TABLE dead_letter ALTER COLUMN payload DROP NOT NULL;
COMMENT ON COLUMN dead_letter.payload IS
    'NULL while ingest_log (seq = log_seq) holds the same bytes; read v_dead_letter.payload';

-- Resolution: an operator re-queued the input (requeued_seq = its new ingest_log row) or
-- discarded it. A resolved dead letter no longer keeps its payload once the log row goes.
ALTER TABLE dead_letter ADD COLUMN resolved_at timestamptz;
ALTER TABLE dead_letter ADD COLUMN resolution text;    -- requeued | discarded
ALTER TABLE dead_letter ADD COLUMN requeued_seq bigint;
CREATE INDEX dead_letter_resolved ON dead_letter (resolved_at) WHERE resolved_at IS NOT NULL;
CREATE INDEX dead_letter_recorded ON dead_letter (recorded_at) WHERE resolved_at IS NULL;

CREATE FUNCTION dead_letter_share_payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload IS NOT NULL AND EXISTS (
           SELECT 1 FROM ingest_log l WHERE l.seq = NEW.log_seq AND l.payload = NEW.payload) THEN
        NEW.payload := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER dead_letter_share_payload BEFORE INSERT ON dead_letter
    FOR EACH ROW EXECUTE FUNCTION dead_letter_share_payload();

-- The copies already stored.
UPDATE dead_letter d SET payload = NULL
FROM ingest_log l
WHERE l.seq = d.log_seq AND d.payload IS NOT NULL AND l.payload = d.payload;

-- Public: every dead letter with its payload, wherever the one copy is.
CREATE VIEW v_dead_letter AS
SELECT d.log_seq, d.received_at, d.source, d.reason, d.detail, d.recorded_at,
       CASE WHEN d.resolution IS NOT NULL THEN d.resolution ELSE 'open' END AS status,
       d.resolved_at, d.requeued_seq,
       COALESCE(d.payload, l.payload) AS payload
FROM dead_letter d
LEFT JOIN ingest_log l ON l.seq = d.log_seq;

-- Positions of the dataflow seen by retention runs. The log is pruned only up to a
-- position the dataflow had committed well before its latest commit: by then Bytewax has
-- snapshotted past it, so a resume from the newest snapshot never needs a pruned row.
CREATE TABLE retention_observation (
    flow         text        NOT NULL,
    last_seq     bigint      NOT NULL,
    observed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow, observed_at)
);

-- Find what retention removes without scanning whole tables.
CREATE INDEX outbox_delivered_at ON outbox (delivered_at) WHERE status = 'delivered';
CREATE INDEX intake_delivery_received_at ON intake_delivery (received_at);
CREATE INDEX order_history_accepted_at ON order_history (accepted_at);
