-- Public read interface (documented in docs/sql-views.md). Boards, BI tools and
-- `mesflow report` read these views, never the tables behind them.

CREATE VIEW v_machine_status AS
SELECT m.machine,
       m.line,
       l.area,
       m.name_en,
       m.name_zh,
       COALESCE(s.state, 'offline')                       AS state,
       s.since,
       s.reason,
       r.name_en                                          AS reason_en,
       r.name_zh                                          AS reason_zh,
       s.work_order,
       s.last_event_ts,
       EXTRACT(EPOCH FROM (now() - s.since))::double precision AS state_seconds,
       s.good_total,
       s.scrap_total,
       s.updated_at,
       m.position AS machine_position,
       l.position AS line_position
FROM plant_machine m
JOIN plant_line l USING (line)
LEFT JOIN machine_status s USING (machine)
LEFT JOIN reason_code r ON r.code = s.reason;

-- duration_s of the open interval runs to the machine's latest event (event time, so a
-- replay gives the same figure); the andon board shows time since `since` instead.
CREATE VIEW v_state_intervals AS
SELECT i.machine, m.line, i.start_ts, i.end_ts, i.state, i.reason, i.work_order,
       CASE WHEN i.end_ts IS NULL
            THEN GREATEST(EXTRACT(EPOCH FROM (s.last_event_ts - i.start_ts))::double precision, 0)
            ELSE i.duration_s END AS duration_s,
       i.end_ts IS NULL AS is_open
FROM machine_state_interval i
LEFT JOIN plant_machine m USING (machine)
LEFT JOIN machine_status s USING (machine);

CREATE VIEW v_machine_hour AS
SELECT h.machine, m.line, h.hour_start,
       h.running_s, h.idle_s, h.down_s, h.setup_s, h.planned_stop_s, h.offline_s,
       h.good, h.scrap, h.good + h.scrap AS total
FROM machine_hour h
LEFT JOIN plant_machine m USING (machine);

CREATE VIEW v_dead_letter_summary AS
SELECT reason, count(*) AS events, min(received_at) AS first_seen, max(received_at) AS last_seen
FROM dead_letter
GROUP BY reason;
