-- The andon wall screen (dashboards/pages/andon.py, docs/dashboards.md): one row per machine
-- with everything its tile shows, and one row per line for the line header.
--
-- Time in state is measured against the machine's own clock as well as the database's:
-- ref_ts = the later of now() and the machine's last event. A simulator running ahead of the
-- wall clock (--speed 30) still shows how long the state lasted in its events instead of a
-- clamped 0:00:00, and a live machine's time keeps counting with the wall clock between
-- events. Never negative.

CREATE VIEW v_andon_tile AS
SELECT m.machine,
       m.line,
       m.name_en,
       m.name_zh,
       COALESCE(s.state, 'offline')                                   AS state,
       s.since,
       s.reason,
       r.name_en                                                      AS reason_en,
       r.name_zh                                                      AS reason_zh,
       s.work_order,
       w.product,
       w.qty                                                          AS wo_qty,
       w.good                                                         AS wo_good,
       s.last_event_ts,
       now()                                                          AS db_now,
       GREATEST(now(), s.last_event_ts)                               AS ref_ts,
       -- GREATEST skips NULLs: the CASE keeps a never-seen machine's figures NULL.
       CASE WHEN s.since IS NOT NULL THEN GREATEST(
           EXTRACT(EPOCH FROM (GREATEST(now(), s.last_event_ts) - s.since)), 0)::double precision
       END                                                            AS state_seconds,
       -- Seconds since the machine last said anything (0 when its clock is ahead).
       CASE WHEN s.last_event_ts IS NOT NULL THEN GREATEST(
           EXTRACT(EPOCH FROM (now() - s.last_event_ts)), 0)::double precision
       END                                                            AS silent_seconds,
       k.bucket_start                                                 AS shift_start,
       k.bucket_end                                                   AS shift_end,
       k.shift_name,
       k.good                                                         AS shift_good,
       k.scrap                                                        AS shift_scrap,
       k.planned_s                                                    AS shift_planned_s,
       k.running_s + k.microstop_s                                    AS shift_apt_s,
       k.ideal_s                                                      AS shift_ideal_s,
       kpi_oee(k.planned_s, k.running_s + k.microstop_s, k.ideal_s, k.good, k.scrap)
                                                                      AS shift_oee,
       m.ideal_cycle_seconds                                          AS ideal_cycle_s,
       m.position                                                     AS machine_position,
       l.position                                                     AS line_position
FROM plant_machine m
JOIN plant_line l USING (line)
LEFT JOIN machine_status s USING (machine)
LEFT JOIN reason_code r ON r.code = s.reason
LEFT JOIN work_order_progress w ON w.work_order = s.work_order
-- The shift instance that holds ref_ts: one primary-key probe per machine, whatever the
-- length of the history.
LEFT JOIN LATERAL (
    SELECT *
    FROM machine_kpi k
    WHERE k.machine = m.machine
      AND k.bucket = 'shift'
      AND k.bucket_start <= GREATEST(now(), s.last_event_ts)
    ORDER BY k.bucket_start DESC
    LIMIT 1
) k ON k.bucket_end > GREATEST(now(), s.last_event_ts);

-- The line header: machines per state and the line's OEE over its machines' current shift
-- instances (the stored figures added up, then the one formula of sql/005_metrics.sql).
CREATE VIEW v_andon_line AS
SELECT t.line,
       min(t.line_position)                                              AS line_position,
       count(*)                                                          AS machines,
       count(*) FILTER (WHERE t.state = 'running')                       AS running,
       count(*) FILTER (WHERE t.state = 'idle')                          AS idle,
       count(*) FILTER (WHERE t.state = 'down')                          AS down,
       count(*) FILTER (WHERE t.state = 'setup')                         AS setup,
       count(*) FILTER (WHERE t.state = 'planned_stop')                  AS planned_stop,
       count(*) FILTER (WHERE t.state = 'offline')                       AS offline,
       COALESCE(sum(t.shift_good), 0)::bigint                            AS shift_good,
       kpi_oee(sum(t.shift_planned_s), sum(t.shift_apt_s), sum(t.shift_ideal_s),
               sum(t.shift_good), sum(t.shift_scrap))                    AS shift_oee
FROM v_andon_tile t
GROUP BY t.line;
