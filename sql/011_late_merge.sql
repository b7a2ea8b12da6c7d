-- Late data (issue 8): an event later than the allowed lateness is merged, not dropped.
-- A machine's tracker state is a function of the ingest-log prefix it has consumed, so the
-- dataflow keeps a few per-machine checkpoints of it; a late event makes the dataflow
-- reload the newest checkpoint that predates it and re-apply that machine's events from
-- the log in event-time order (streams/rebuild.py, docs/metrics.md "Late data").

-- A pickled MachineTracker after it consumed the log up to `seq` (its clock: `last_ts`).
-- Written at most once per event-hour and per few wall-clock minutes per machine; pruned
-- beyond the clock policy's horizon (plant.max_event_age_days).
CREATE TABLE machine_checkpoint (
    machine     text        NOT NULL,
    seq         bigint      NOT NULL,
    last_ts     timestamptz NOT NULL,
    state       bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (machine, seq)
);
COMMENT ON TABLE machine_checkpoint IS
    'Per-machine tracker checkpoints for merging late data (mesflow internal, not a public view).';

-- Each event that arrived later than the allowed lateness: when it was seen and when its
-- machine's figures were recomputed with it (merged_at NULL: the rebuild is still pending).
-- `mesflow replay` reports from here how many of its lines were merged late.
CREATE TABLE late_merge (
    log_seq     bigint      NOT NULL,
    machine     text        NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    merged_at   timestamptz,
    PRIMARY KEY (log_seq, machine)
);
CREATE INDEX late_merge_pending ON late_merge (machine) WHERE merged_at IS NULL;
COMMENT ON TABLE late_merge IS
    'Events later than the allowed lateness and when their machine''s figures were recomputed.';
