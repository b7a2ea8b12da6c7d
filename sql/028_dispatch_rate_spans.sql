-- A machine runs one work order at a time: a work order's span for the measured rate ends
-- when the next work order starts on that machine, if that comes before its completion or
-- its latest event. Without this, work orders left open (the simulator's, or a floor that
-- never reports wo_end) all stretched to "now" and the measured rate fell to a few parts
-- an hour, pushing every projection days late (docs/dispatch.md, "Rates").
CREATE OR REPLACE VIEW v_dispatch_rate_spans AS
WITH spans AS (
    SELECT p.machine,
           p.product,
           p.good,
           p.started_at                                     AS start_ts,
           LEAST(COALESCE(p.completed_at, p.last_event_ts),
                 COALESCE(LEAD(p.started_at) OVER (PARTITION BY p.machine
                                                   ORDER BY p.started_at, p.work_order),
                          'infinity'::timestamptz))         AS end_ts
    FROM work_order_progress p
    WHERE p.started_at IS NOT NULL
      AND p.machine IS NOT NULL
)
SELECT machine, product, good, start_ts, end_ts
FROM spans
WHERE product IS NOT NULL
  AND good > 0
  AND end_ts > start_ts;
