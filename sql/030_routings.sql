-- Routings (docs/routings.md): a work order's operations in order, each with what went in,
-- came out good and was scrapped, and the parts waiting before it (WIP). Written whole per
-- work order by the order step (streams/order_progress.py, streams/routing_store.py):
-- absolute event-time figures, so a replay writes the same rows. Only work orders that have
-- a routing (from their work_order event, else their product's in the plant file) have rows.
CREATE TABLE work_order_operation (
    work_order          text             NOT NULL,
    op                  text             NOT NULL,
    position            integer          NOT NULL,  -- 1 = the first operation
    order_no            text             NOT NULL,
    product             text,
    wo_qty              integer,                    -- the work order's quantity
    name                text,
    machines            text[]           NOT NULL,  -- where it ran, else where it may run
    ideal_cycle_seconds double precision,
    qty_in              bigint           NOT NULL,  -- step 1: made there; step k: good of k-1
    good                bigint           NOT NULL,
    scrap               bigint           NOT NULL,
    wip_before          bigint           NOT NULL,  -- good of the previous step not yet here
    status              text             NOT NULL
                        CHECK (status IN ('not_started', 'running', 'done')),
    first_at            timestamptz,
    last_at             timestamptz,
    last_event_ts       timestamptz      NOT NULL,
    updated_at          timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (work_order, op)
);
CREATE INDEX work_order_operation_order_no ON work_order_operation (order_no);

-- Public: one row per operation of every routed work order, in routing order (read it
-- with ORDER BY work_order, position).
CREATE VIEW v_work_order_operations AS
SELECT o.work_order,
       o.order_no,
       o.product,
       o.wo_qty,
       o.position,
       o.op,
       o.name,
       o.machines,
       o.ideal_cycle_seconds,
       o.qty_in,
       o.good,
       o.scrap,
       o.wip_before,
       CASE WHEN o.qty_in > 0 THEN o.good::double precision / o.qty_in END AS yield,
       o.status,
       o.position = max(o.position) OVER (PARTITION BY o.work_order) AS is_last,
       o.first_at,
       o.last_at,
       o.last_event_ts
FROM work_order_operation o;

-- Public: work in progress between operations: the good parts of one operation that the
-- next has not yet taken in, per work order (one row per operation with parts waiting
-- before it). Sum by product for the WIP of a product.
CREATE VIEW v_wip AS
SELECT o.work_order,
       o.order_no,
       o.product,
       p.op          AS from_op,
       p.name        AS from_name,
       o.op          AS to_op,
       o.name        AS to_name,
       o.position    AS to_position,
       o.wip_before  AS wip,
       o.last_event_ts
FROM work_order_operation o
JOIN work_order_operation p
  ON p.work_order = o.work_order AND p.position = o.position - 1
WHERE o.wip_before > 0;

-- A work order's own routing as the CRM/ERP sent it (collectors/crm_api.py): stored so that
-- a changed routing is a change (history, a new work_order event) and an equal one is not.
ALTER TABLE work_order ADD COLUMN routing jsonb;
