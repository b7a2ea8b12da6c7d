-- Work orders joined with CRM orders (streams/order_progress.py, docs/orders.md).
-- The dataflow upserts one row per order and per work order whenever their figures change;
-- every time is event time ("now" is the latest event the order has seen), so a replay
-- writes the same figures. The callbacks the same changes cause go to `outbox` in the same
-- transaction.

-- The CRM fields are NULL while parts or work orders of an order arrived before its first
-- snapshot; never at risk then.
CREATE TABLE order_progress (
    order_no       text             PRIMARY KEY,
    customer       text,
    priority       integer,                        -- 1 is the most urgent
    product        text,
    qty            integer,
    due            timestamptz,
    status         text             CHECK (status IN ('open', 'on_hold', 'cancelled', 'closed')),
    version        bigint,
    good           bigint           NOT NULL,
    scrap          bigint           NOT NULL,
    progress       double precision,               -- good / qty (may pass 1)
    eta            timestamptz,                    -- when finished: the time it was finished
    at_risk        boolean          NOT NULL,
    last_event_ts  timestamptz      NOT NULL,      -- the event time the figures are as of
    updated_at     timestamptz      NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE work_order_progress (
    work_order     text             PRIMARY KEY,
    order_no       text             NOT NULL,
    product        text,                           -- NULL until the work_order event is seen
    qty            integer,
    machine        text,                           -- planned machine, else where it last ran
    good           bigint           NOT NULL,
    scrap          bigint           NOT NULL,
    progress       double precision,
    rate_per_h     double precision NOT NULL,      -- good parts/h over the last 30 min
    eta            timestamptz,
    started_at     timestamptz,
    completed_at   timestamptz,
    last_event_ts  timestamptz      NOT NULL,
    updated_at     timestamptz      NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX work_order_progress_order_no ON work_order_progress (order_no);

-- Public: the order board. A view has no meaningful ORDER BY: read it with ORDER BY rank
-- (at risk first, then priority 1 first, then the earliest due date).
CREATE VIEW v_order_board AS
SELECT row_number() OVER (ORDER BY o.at_risk DESC, o.priority ASC NULLS LAST,
                                   o.due ASC NULLS LAST, o.order_no) AS rank,
       o.order_no,
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

-- Public: one row per work order, with its order's customer, priority and due date.
CREATE VIEW v_work_order_progress AS
SELECT w.work_order,
       w.order_no,
       o.customer,
       o.priority,
       o.due                                             AS order_due,
       o.status                                          AS order_status,
       w.product,
       w.qty,
       w.machine,
       w.good,
       w.scrap,
       GREATEST(w.qty - w.good, 0)                       AS remaining,
       w.progress,
       w.rate_per_h,
       w.eta,
       w.started_at,
       w.completed_at,
       w.last_event_ts,
       w.updated_at
FROM work_order_progress w
LEFT JOIN order_progress o USING (order_no);
