-- Priority dispatch (mesflow/dispatch.py, docs/dispatch.md): the inputs of the dispatch lists.
-- The lists themselves are not stored: their projected starts and finishes are relative to
-- "now" and must move with the clock, so dashboards/dispatch_queries.py computes them on
-- every read from these views (a stored list would be stale a minute later).

-- Released work orders per machine: planned on a machine (or, without a plan, where they
-- last ran), of an open CRM order, not completed and not yet made. The CRM fields come from
-- crm_order (current at once, before the dataflow has seen the change); progress and the
-- at-risk flag from the dataflow's tables (no row yet: nothing made, not at risk).
CREATE VIEW v_dispatch_input AS
SELECT COALESCE(w.machine, p.machine)                   AS machine,
       w.work_order,
       w.order_no,
       o.customer,
       o.priority,
       o.due,
       COALESCE(op.at_risk, false)                      AS at_risk,
       w.product,
       w.qty,
       COALESCE(p.good, 0)::bigint                      AS good,
       GREATEST(w.qty - COALESCE(p.good, 0), 0)::bigint AS remaining,
       p.started_at,
       p.rate_per_h,
       p.eta
FROM work_order w
JOIN crm_order o ON o.order_no = w.order_no
LEFT JOIN work_order_progress p ON p.work_order = w.work_order
LEFT JOIN order_progress op ON op.order_no = w.order_no
WHERE o.status = 'open'
  AND p.completed_at IS NULL
  AND COALESCE(w.machine, p.machine) IS NOT NULL
  AND w.qty > COALESCE(p.good, 0);

-- What each machine achieved per product: one row per work order that made good parts,
-- from its first start to its completion (or, while unfinished, its latest event). The
-- scheduler turns these into good parts per *planned* hour over the last 7 days
-- (mesflow/dispatch.py measured_rates); read with WHERE end_ts >= <now - 7 days>.
CREATE VIEW v_dispatch_rate_spans AS
SELECT p.machine,
       p.product,
       p.good,
       p.started_at                                     AS start_ts,
       COALESCE(p.completed_at, p.last_event_ts)        AS end_ts
FROM work_order_progress p
WHERE p.started_at IS NOT NULL
  AND p.machine IS NOT NULL
  AND p.product IS NOT NULL
  AND p.good > 0
  AND COALESCE(p.completed_at, p.last_event_ts) > p.started_at;
