-- Public KPI views (docs/sql-views.md): per machine, line and plant, per hour and shift.
-- Line and plant figures add up times and parts first, then divide: time-weighted,
-- never an average of ratios.

CREATE VIEW v_stops AS
SELECT i.machine, m.line, i.start_ts, i.end_ts, i.state,
       CASE WHEN i.end_ts IS NULL
            THEN GREATEST(EXTRACT(EPOCH FROM (s.last_event_ts - i.start_ts))::double precision, 0)
            ELSE i.duration_s END AS duration_s,
       COALESCE(i.reason, CASE WHEN i.state = 'offline' THEN 'no_data' ELSE 'unassigned' END)
           AS reason,
       COALESCE(r.category, CASE WHEN i.reason IS NULL AND i.state = 'offline' THEN 'no_data'
                                 WHEN i.reason IS NULL THEN 'unassigned' ELSE 'other' END)
           AS category,
       COALESCE(i.is_microstop, false) AS is_microstop,
       i.work_order,
       i.end_ts IS NULL AS is_open
FROM machine_state_interval i
LEFT JOIN plant_machine m USING (machine)
LEFT JOIN machine_status s USING (machine)
LEFT JOIN reason_code r ON r.code = i.reason
WHERE i.state IN ('idle', 'down', 'setup', 'offline');

CREATE VIEW v_kpi_machine AS
SELECT k.machine, m.line, k.bucket, k.bucket_start, k.bucket_end, k.shift_date, k.shift_name,
       k.planned_s, k.running_s + k.microstop_s AS apt_s, k.running_s, k.microstop_s,
       k.microstop_count, k.idle_s + k.down_s + k.setup_s + k.offline_s AS downtime_s,
       k.idle_s, k.down_s, k.setup_s, k.offline_s, k.planned_stop_s,
       k.good, k.scrap, k.good + k.scrap AS total, k.ideal_s, k.failures, k.failure_s,
       k.all_good, k.all_scrap,
       kpi_availability(k.planned_s, k.running_s + k.microstop_s) AS availability,
       kpi_performance(k.planned_s, k.running_s + k.microstop_s, k.ideal_s) AS performance,
       kpi_quality(k.planned_s, k.good, k.scrap) AS quality,
       kpi_oee(k.planned_s, k.running_s + k.microstop_s, k.ideal_s, k.good, k.scrap) AS oee,
       CASE WHEN k.failures > 0 THEN k.failure_s / k.failures END AS mttr_s,
       CASE WHEN k.failures > 0 THEN (k.running_s + k.microstop_s) / k.failures END AS mtbf_s
FROM machine_kpi k
LEFT JOIN plant_machine m USING (machine);

CREATE VIEW v_kpi_machine_hour AS SELECT * FROM v_kpi_machine WHERE bucket = 'hour';
CREATE VIEW v_kpi_machine_shift AS SELECT * FROM v_kpi_machine WHERE bucket = 'shift';

-- Line level. Shift instances of one line share their boundaries (one calendar per line).
CREATE VIEW v_kpi_line AS
WITH s AS (
    SELECT m.line, k.bucket, k.bucket_start, max(k.bucket_end) AS bucket_end,
           k.shift_date, k.shift_name,
           sum(k.planned_s) AS planned_s, sum(k.running_s + k.microstop_s) AS apt_s,
           sum(k.running_s) AS running_s, sum(k.microstop_s) AS microstop_s,
           sum(k.microstop_count)::int AS microstop_count,
           sum(k.idle_s + k.down_s + k.setup_s + k.offline_s) AS downtime_s,
           sum(k.planned_stop_s) AS planned_stop_s,
           sum(k.good) AS good, sum(k.scrap) AS scrap, sum(k.ideal_s) AS ideal_s,
           sum(k.failures)::int AS failures, sum(k.failure_s) AS failure_s
    FROM machine_kpi k JOIN plant_machine m USING (machine)
    GROUP BY m.line, k.bucket, k.bucket_start, k.shift_date, k.shift_name)
SELECT s.*, s.good + s.scrap AS total,
       kpi_availability(planned_s, apt_s) AS availability,
       kpi_performance(planned_s, apt_s, ideal_s) AS performance,
       kpi_quality(planned_s, good, scrap) AS quality,
       kpi_oee(planned_s, apt_s, ideal_s, good, scrap) AS oee,
       CASE WHEN failures > 0 THEN failure_s / failures END AS mttr_s,
       CASE WHEN failures > 0 THEN apt_s / failures END AS mtbf_s
FROM s;

CREATE VIEW v_kpi_line_hour AS SELECT * FROM v_kpi_line WHERE bucket = 'hour';
CREATE VIEW v_kpi_line_shift AS SELECT * FROM v_kpi_line WHERE bucket = 'shift';

-- Plant level: hours are the same for every machine; shifts are grouped by date and
-- name (lines with their own calendar may start a same-named shift at another time).
CREATE VIEW v_kpi_plant AS
WITH s AS (
    SELECT k.bucket,
           min(k.bucket_start) AS bucket_start, max(k.bucket_end) AS bucket_end,
           k.shift_date, k.shift_name,
           sum(k.planned_s) AS planned_s, sum(k.running_s + k.microstop_s) AS apt_s,
           sum(k.running_s) AS running_s, sum(k.microstop_s) AS microstop_s,
           sum(k.microstop_count)::int AS microstop_count,
           sum(k.idle_s + k.down_s + k.setup_s + k.offline_s) AS downtime_s,
           sum(k.planned_stop_s) AS planned_stop_s,
           sum(k.good) AS good, sum(k.scrap) AS scrap, sum(k.ideal_s) AS ideal_s,
           sum(k.failures)::int AS failures, sum(k.failure_s) AS failure_s
    FROM machine_kpi k
    GROUP BY k.bucket, CASE WHEN k.bucket = 'hour' THEN k.bucket_start END,
             k.shift_date, k.shift_name)
SELECT s.*, s.good + s.scrap AS total,
       kpi_availability(planned_s, apt_s) AS availability,
       kpi_performance(planned_s, apt_s, ideal_s) AS performance,
       kpi_quality(planned_s, good, scrap) AS quality,
       kpi_oee(planned_s, apt_s, ideal_s, good, scrap) AS oee,
       CASE WHEN failures > 0 THEN failure_s / failures END AS mttr_s,
       CASE WHEN failures > 0 THEN apt_s / failures END AS mtbf_s
FROM s;

CREATE VIEW v_kpi_plant_hour AS SELECT * FROM v_kpi_plant WHERE bucket = 'hour';
CREATE VIEW v_kpi_plant_shift AS SELECT * FROM v_kpi_plant WHERE bucket = 'shift';

CREATE VIEW v_downtime_by_reason AS
SELECT r.machine, m.line, r.bucket, r.bucket_start, k.shift_date, k.shift_name,
       r.reason, COALESCE(c.category, r.reason) AS category,
       c.name_en AS reason_en, c.name_zh AS reason_zh, r.seconds, r.stops
FROM machine_kpi_reason r
LEFT JOIN machine_kpi k USING (machine, bucket, bucket_start)
LEFT JOIN plant_machine m USING (machine)
LEFT JOIN reason_code c ON c.code = r.reason;
