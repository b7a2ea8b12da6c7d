-- Process values (sql/021_process_values.sql) on TimescaleDB: applied by `mesflow db migrate`
-- only where the extension is available, after every plain migration. The sink and the
-- public views are the same with or without it.

-- Raw values in one-day chunks: the sink's inserts stay in the newest chunk's index, and
-- retention (`mesflow retention`, which deletes by key, not by ctid) empties whole chunks.
-- Not compressed: raw values live days, and the sink inserts late values into old chunks.
SELECT create_hypertable('process_value', by_range('ts', INTERVAL '1 day'),
                         migrate_data => true, if_not_exists => true);

-- A continuous aggregate per machine, name and minute, for tools that read TimescaleDB
-- directly (real time: the newest minutes are computed from the raw rows on read).
-- v_process_values_minute keeps reading the sink's rollup, which outlives the raw rows
-- exactly; the aggregate is refreshed over the last 3 days only, so rows that retention
-- deletes at 7 days never leave it.
CREATE MATERIALIZED VIEW IF NOT EXISTS process_value_minute_cagg
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT machine, name, time_bucket(INTERVAL '1 minute', ts) AS minute,
       count(*) AS n, min(value) AS min, avg(value) AS avg, max(value) AS max
FROM process_value
GROUP BY machine, name, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('process_value_minute_cagg',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => true);
-- As long as the sink's rollup (MESFLOW_RETENTION_PROCESS_MINUTE_DAYS, default 180).
SELECT add_retention_policy('process_value_minute_cagg', INTERVAL '180 days',
                            if_not_exists => true);
