-- Process values (event type `process_value`, docs/events.md): raw time series and a
-- per-minute rollup, both written by the dataflow's sink (streams/process_values.py).
--
-- Raw values: one row per machine, name and event time. The key makes a replay, a resumed
-- dataflow or a resent message store nothing twice (the first value stored wins).
CREATE TABLE process_value (
    machine text NOT NULL,
    ts      timestamptz NOT NULL,
    name    text NOT NULL,
    value   double precision NOT NULL,
    PRIMARY KEY (machine, name, ts)
);

-- Per-minute rollup, merged by the sink from the raw rows it actually inserted (never from
-- a duplicate), so it equals an aggregate over the raw rows while they exist, and outlives
-- them (retention keeps it longer). `sum` is numeric: exact whatever the order the values
-- arrive in (a replay gives the same figures as the live run) and no overflow near 1e308.
CREATE TABLE process_value_minute (
    machine text NOT NULL,
    name    text NOT NULL,
    minute  timestamptz NOT NULL,  -- start of the minute (UTC-aligned)
    n       bigint NOT NULL,
    sum     numeric NOT NULL,
    min     double precision NOT NULL,
    max     double precision NOT NULL,
    PRIMARY KEY (machine, name, minute)
);
-- Retention of the rollup goes by time over all machines.
CREATE INDEX process_value_minute_by_minute ON process_value_minute (minute);
CREATE INDEX process_value_by_ts ON process_value (ts);

-- How far raw values have been pruned by retention. The sink does not store a value older
-- than this: its raw row may have been deleted, so storing it again would count it twice
-- in the rollup. One row; retention raises it in the transaction that deletes.
CREATE TABLE process_value_horizon (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    pruned_before timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO process_value_horizon DEFAULT VALUES;

CREATE VIEW v_process_values AS
SELECT machine, ts, name, value FROM process_value;

CREATE VIEW v_process_values_minute AS
SELECT machine, name, minute, n,
       min,
       (sum / n)::double precision AS avg,
       max
FROM process_value_minute;
