-- Why an order is late (docs/orders.md, "Why it is late"): the time lost on its machines
-- since it started, by stop reason, speed loss and scrap. Read-only views over the stored
-- intervals (v_stops) and the hourly KPI rows (machine_kpi); every time is event time, so a
-- replay gives the same figures.

-- Each machine an order ran on (its work orders' machines, planned or where they ran) and
-- the window it is judged over: from the order's first work-order start to the last
-- completion when every work order is done, else to the latest event of the order or of the
-- machine (a machine that stopped sending counts while down still accrues its stop).
CREATE VIEW v_order_machine AS
WITH wo AS (
    SELECT order_no,
           min(started_at)                         AS started_at,
           bool_and(completed_at IS NOT NULL)      AS done,
           max(completed_at)                       AS done_at
    FROM work_order_progress
    GROUP BY order_no
), m AS (
    SELECT order_no, machine FROM work_order_progress
    WHERE machine IS NOT NULL AND started_at IS NOT NULL
    UNION
    SELECT w.order_no, i.machine
    FROM machine_state_interval i JOIN work_order_progress w USING (work_order)
)
SELECT m.order_no,
       m.machine,
       wo.started_at                                          AS from_ts,
       CASE WHEN wo.done THEN wo.done_at
            ELSE GREATEST(o.last_event_ts, s.last_event_ts) END AS to_ts
FROM m
JOIN wo USING (order_no)
LEFT JOIN order_progress o USING (order_no)
LEFT JOIN machine_status s USING (machine)
WHERE wo.started_at IS NOT NULL;

-- One row per (order, machine, loss): kind 'stop' per stop reason (idle, down, setup,
-- offline; planned stops and micro-stops excluded, each stop clipped to the window),
-- 'speed' (running time plus micro-stops minus the ideal time of the parts made) and
-- 'scrap' (the ideal time of the scrapped parts), with the reason's names. Speed and scrap come from hourly KPI rows,
-- counted in proportion to the part of each hour inside the window (the hour in progress
-- ends at the machine's latest event); they cover planned time only, as OEE does
-- (docs/metrics.md).
CREATE VIEW v_order_losses AS
WITH stops AS (
    SELECT om.order_no, om.machine, s.state, s.reason, s.category,
           GREATEST(EXTRACT(EPOCH FROM (
               LEAST(s.start_ts + make_interval(secs => s.duration_s), om.to_ts)
               - GREATEST(s.start_ts, om.from_ts)))::double precision, 0) AS seconds
    FROM v_order_machine om
    JOIN v_stops s ON s.machine = om.machine
                  AND s.start_ts < om.to_ts
                  AND s.start_ts + make_interval(secs => s.duration_s) > om.from_ts
    WHERE NOT s.is_microstop
), hours AS (
    SELECT om.order_no, om.machine, k.running_s + k.microstop_s AS apt_s, k.ideal_s,
           k.good, k.scrap,
           GREATEST(EXTRACT(EPOCH FROM (LEAST(k.bucket_end, om.to_ts)
                                        - GREATEST(k.bucket_start, om.from_ts))), 0)
           / NULLIF(EXTRACT(EPOCH FROM (LEAST(k.bucket_end, ms.last_event_ts)
                                        - k.bucket_start)), 0) AS share
    FROM v_order_machine om
    JOIN machine_status ms USING (machine)
    JOIN machine_kpi k ON k.machine = om.machine AND k.bucket = 'hour'
                      AND k.bucket_start < om.to_ts AND k.bucket_end > om.from_ts
)
SELECT l.*, r.name_en AS reason_en, r.name_zh AS reason_zh
FROM (
SELECT order_no, machine, 'stop'::text AS kind, state, reason, category,
       sum(seconds) AS seconds, count(*)::integer AS stops
FROM stops
GROUP BY order_no, machine, state, reason, category
HAVING sum(seconds) > 0
UNION ALL
SELECT order_no, machine, 'speed', NULL, NULL, 'speed_loss',
       sum(GREATEST(apt_s - ideal_s, 0) * share)::double precision, 0
FROM hours
GROUP BY order_no, machine
HAVING sum(GREATEST(apt_s - ideal_s, 0) * share) > 0
UNION ALL
SELECT order_no, machine, 'scrap', NULL, NULL, 'scrap',
       sum(CASE WHEN good + scrap > 0 THEN ideal_s * scrap / (good + scrap) ELSE 0 END
           * share)::double precision,
       sum(scrap)::integer
FROM hours
GROUP BY order_no, machine
HAVING sum(CASE WHEN good + scrap > 0 THEN ideal_s * scrap / (good + scrap) ELSE 0 END
           * share) > 0
) l
LEFT JOIN reason_code r ON r.code = l.reason;
