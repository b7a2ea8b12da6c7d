-- Manager analytics (dashboards/pages/analytics.py, docs/analytics.md): indexes for its reads of
-- v_stops and v_state_intervals by time. The primary key (machine, start_ts) serves one
-- machine; a plant or a line over a few days needs the intervals by time whatever the machine
-- (bench/analytics_bench.py: 30 days of 50 machines).

-- Stops of a date range (the Pareto's drill-down).
CREATE INDEX machine_state_interval_by_start ON machine_state_interval (start_ts);

-- The state timeline: intervals still running at the window's start, i.e. ending after it
-- (or open: end_ts IS NULL, which a btree index also finds).
CREATE INDEX machine_state_interval_by_end ON machine_state_interval (end_ts);
