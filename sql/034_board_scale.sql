-- Boards at scale (issue 14, docs/performance.md "Boards at scale"): every board query within
-- 100 ms on 500 machines x 30 days of history (bench/board_queries_bench.py). Indexes and
-- statistics for the boards' reads, and v_order_losses computed for the one order asked
-- instead of for every order. No figure changes: the views return the same rows.

-- An order's page: the machines its work orders ran on (v_order_machine) are found from the
-- intervals naming the work order; without this index every interval of the history was read.
-- (work_order) alone: with the machine in it, PostgreSQL 18 skip-scans it to find a machine's
-- intervals instead of using the primary key.
CREATE INDEX machine_state_interval_by_work_order ON machine_state_interval (work_order);

-- The same view with the hourly losses aggregated once: the old one read its `hours` CTE twice
-- (speed and scrap), which made PostgreSQL materialise it for every order of the history
-- (4.7 s at 500 machines x 30 days) before filtering on the one order the page asks for.
CREATE OR REPLACE VIEW v_order_losses AS
WITH stops AS (
    SELECT om.order_no, om.machine, s.state, s.reason, s.category,
           GREATEST(EXTRACT(EPOCH FROM (
               LEAST(s.start_ts + make_interval(secs => s.duration_s), om.to_ts)
               - GREATEST(s.start_ts, om.from_ts)))::double precision, 0) AS seconds
    FROM v_order_machine om
    -- Each machine's stops by its primary key (machine, start_ts). OFFSET 0 keeps the
    -- subquery a per-machine lookup: PostgreSQL cannot tell that an order runs on a machine
    -- or two (it guesses a hundred) and would otherwise read every stop of every machine.
    CROSS JOIN LATERAL (
        SELECT s.* FROM v_stops s
        WHERE s.machine = om.machine
          AND s.start_ts < om.to_ts
          AND s.start_ts + make_interval(secs => s.duration_s) > om.from_ts
          AND NOT s.is_microstop
        OFFSET 0
    ) s
), hours AS (
    SELECT om.order_no, om.machine,
           sum(GREATEST(k.running_s + k.microstop_s - k.ideal_s, 0) * h.share)::double precision
               AS speed_s,
           sum(CASE WHEN k.good + k.scrap > 0
                    THEN k.ideal_s * k.scrap / (k.good + k.scrap) ELSE 0 END
               * h.share)::double precision AS scrap_s,
           sum(k.scrap)::integer AS scrap
    FROM v_order_machine om
    JOIN machine_status ms USING (machine)
    -- The machine's hours by primary key, as the stops above.
    CROSS JOIN LATERAL (
        SELECT k.* FROM machine_kpi k
        WHERE k.machine = om.machine AND k.bucket = 'hour'
          AND k.bucket_start < om.to_ts AND k.bucket_end > om.from_ts
        OFFSET 0
    ) k
    CROSS JOIN LATERAL (
        SELECT GREATEST(EXTRACT(EPOCH FROM (LEAST(k.bucket_end, om.to_ts)
                                            - GREATEST(k.bucket_start, om.from_ts))), 0)
               / NULLIF(EXTRACT(EPOCH FROM (LEAST(k.bucket_end, ms.last_event_ts)
                                            - k.bucket_start)), 0) AS share
    ) h
    GROUP BY om.order_no, om.machine
)
SELECT l.*, r.name_en AS reason_en, r.name_zh AS reason_zh
FROM (
SELECT order_no, machine, 'stop'::text AS kind, state, reason, category,
       sum(seconds) AS seconds, count(*)::integer AS stops
FROM stops
GROUP BY order_no, machine, state, reason, category
HAVING sum(seconds) > 0
UNION ALL
SELECT h.order_no, h.machine, x.kind, NULL, NULL, x.category, x.seconds, x.stops
FROM hours h
CROSS JOIN LATERAL (VALUES ('speed'::text, 'speed_loss'::text, h.speed_s, 0),
                           ('scrap', 'scrap', h.scrap_s, h.scrap)) x (kind, category, seconds, stops)
WHERE x.seconds > 0
) l
LEFT JOIN reason_code r ON r.code = l.reason;

-- The longest stops of a date range (the analytics page's drill-down, 2,000 rows): v_stops
-- computes an open stop's duration from the machine's latest event, which no index can order,
-- so a range's stops were all read and sorted (0.6 s for a plant's month, 2.6 s for one
-- shift name). The stops that have ended keep their stored duration: this view is v_stops
-- without the open ones (same columns, is_open false), and the index below reads them
-- longest first. v_stops = v_stops_closed + the open stops (v_stops WHERE is_open).
CREATE VIEW v_stops_closed AS
SELECT i.machine, m.line, i.start_ts, i.end_ts, i.state, i.duration_s,
       COALESCE(i.reason, CASE WHEN i.state = 'offline' THEN 'no_data' ELSE 'unassigned' END)
           AS reason,
       COALESCE(r.category, CASE WHEN i.reason IS NULL AND i.state = 'offline' THEN 'no_data'
                                 WHEN i.reason IS NULL THEN 'unassigned' ELSE 'other' END)
           AS category,
       COALESCE(i.is_microstop, false) AS is_microstop,
       i.work_order,
       false AS is_open
FROM machine_state_interval i
LEFT JOIN plant_machine m USING (machine)
LEFT JOIN reason_code r ON r.code = i.reason
WHERE i.state IN ('idle', 'down', 'setup', 'offline') AND i.end_ts IS NOT NULL;

-- Longest first; micro-stops (never listed) left out. Not by machine: a line or a machine
-- reads its own stops by the primary key (with the machine in this index, PostgreSQL 18
-- would skip-scan all of it for one machine).
CREATE INDEX machine_state_interval_longest_stops
    ON machine_state_interval (duration_s DESC, start_ts)
    WHERE state IN ('idle', 'down', 'setup', 'offline') AND end_ts IS NOT NULL
      AND NOT COALESCE(is_microstop, false);

-- An order's page: its row of the order board (sql/009) without the rank, so that a filter on
-- order_no finds the one row by its key. v_order_board numbers every order with a window
-- function, which no filter passes: reading one order from it computed every order's row and
-- work-order count first (0.2 s with 18,000 orders). The page adds the rank itself.
CREATE VIEW v_order_progress AS
SELECT o.order_no,
       o.customer,
       o.priority,
       o.product,
       o.qty,
       o.good,
       o.scrap,
       GREATEST(o.qty - o.good, 0)                       AS remaining,
       o.progress,
       o.eta,
       o.due,
       GREATEST(EXTRACT(EPOCH FROM (o.eta - o.due))::double precision, 0) AS late_by_s,
       o.at_risk,
       o.status,
       o.version,
       (SELECT count(*) FROM work_order_progress w WHERE w.order_no = o.order_no) AS work_orders,
       o.last_event_ts,
       o.updated_at
FROM order_progress o;

-- Statistics: shift_date is set on shift rows only (one KPI row in 13). Taken as independent,
-- bucket = 'shift' and a range of shift dates were each counted as that 1 in 13, so the
-- planner expected 13 times fewer rows than it read: it chose nested loops and sorts that
-- spilled to disk (the Pareto). Their combinations, counted by ANALYZE, give the real share.
CREATE STATISTICS machine_kpi_shift_dates (mcv) ON bucket, shift_date, shift_name
    FROM machine_kpi;
-- And how many groups v_kpi_plant makes of them (a shift per date and name, an hour per hour):
-- with the share right but the groups guessed (21,000 for 60), the plant's KPI rows were
-- sorted, spilling to disk, instead of hashed (115 ms -> 15 ms).
CREATE STATISTICS machine_kpi_groups (ndistinct)
    ON bucket, shift_date, shift_name, (CASE WHEN bucket = 'hour' THEN bucket_start END)
    FROM machine_kpi;
-- So that the statistics exist at once on an existing database (autovacuum would take its time).
ANALYZE machine_kpi;

-- The order board's rank order (v_order_board's window, and the page's filtered board): read
-- in order instead of sorting every order by text under the database's collation each time
-- (18,000 orders: 60 ms of sorting for a board of 500 open orders).
CREATE INDEX order_progress_board_rank
    ON order_progress (at_risk DESC, priority ASC NULLS LAST, due ASC NULLS LAST, order_no);
