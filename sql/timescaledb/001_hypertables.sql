-- TimescaleDB layer: applied by `mesflow db migrate` only where the extension is available
-- (the docker-compose stack). Application code is the same with or without it.
CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable('machine_state_interval', by_range('start_ts', INTERVAL '7 days'),
                         migrate_data => true, if_not_exists => true);
SELECT create_hypertable('machine_hour', by_range('hour_start', INTERVAL '30 days'),
                         migrate_data => true, if_not_exists => true);

ALTER TABLE machine_state_interval SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'machine',
    timescaledb.compress_orderby = 'start_ts'
);
ALTER TABLE machine_hour SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'machine',
    timescaledb.compress_orderby = 'hour_start'
);
-- Compress what can no longer change: older than the allowed lateness plus a safe margin.
SELECT add_compression_policy('machine_state_interval', INTERVAL '14 days', if_not_exists => true);
SELECT add_compression_policy('machine_hour', INTERVAL '60 days', if_not_exists => true);
-- Keep raw state intervals for two years, hourly figures for five.
SELECT add_retention_policy('machine_state_interval', INTERVAL '730 days', if_not_exists => true);
SELECT add_retention_policy('machine_hour', INTERVAL '1825 days', if_not_exists => true);
