-- An order is locked once one of ITS work orders has started. Which order a work order
-- belongs to is the intake's `work_order` table (the CRM's word), not work_order_progress's
-- order_no: a work order id that a second source also names for another order (the demo's
-- simulator makes for stock under the same ids) made that row's order_no flip, and the lock
-- vanished for a moment, letting a held change through.
CREATE OR REPLACE FUNCTION order_locked(p_order text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
               SELECT 1 FROM work_order_progress
               WHERE order_no = p_order AND started_at IS NOT NULL)
        OR EXISTS (
               SELECT 1
               FROM work_order w
               JOIN work_order_progress p ON p.work_order = w.work_order
               WHERE w.order_no = p_order AND p.started_at IS NOT NULL)
        OR EXISTS (
               SELECT 1
               FROM ingest_log l
               JOIN work_order w ON w.order_no = p_order
               WHERE l.seq > (SELECT COALESCE(min(last_seq), 0) FROM dataflow_progress)
                 AND l.error IS NULL
                 AND position('"wo_start"'::bytea IN l.payload) > 0
                 AND convert_from(l.payload, 'UTF8')::jsonb ->> 'kind' = 'wo_start'
                 AND convert_from(l.payload, 'UTF8')::jsonb ->> 'work_order' = w.work_order)
$$;
