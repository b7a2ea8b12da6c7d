-- Traceability (docs/traceability.md) and the customer's read-only order link (docs/crm.md).
--
-- Lot reports come through the ingest log like every input; the dataflow stores each one
-- here keyed by its ingest_log seq (ON CONFLICT DO NOTHING), so a replay adds nothing.
-- Lot ids are opaque text: the event contract bounds them (1 to 200 characters, no NUL).

-- A material lot consumed by a work order at a machine (report kind `material_lot`).
CREATE TABLE material_lot_use (
    seq          bigint      PRIMARY KEY,              -- ingest_log seq of the report
    event_id     text,
    machine      text        NOT NULL,
    ts           timestamptz NOT NULL,
    work_order   text        NOT NULL,
    lot          text        NOT NULL,
    material     text        NOT NULL,
    qty          integer     CHECK (qty > 0),
    operator     text,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX material_lot_use_lot ON material_lot_use (lot);
CREATE INDEX material_lot_use_wo ON material_lot_use (work_order);

-- A production lot made for a work order at a machine (report kind `production_lot`).
CREATE TABLE production_lot (
    seq          bigint      PRIMARY KEY,
    event_id     text,
    machine      text        NOT NULL,
    ts           timestamptz NOT NULL,
    work_order   text        NOT NULL,
    lot          text        NOT NULL,
    qty          integer     NOT NULL CHECK (qty > 0),
    operator     text,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX production_lot_lot ON production_lot (lot);
CREATE INDEX production_lot_wo ON production_lot (work_order);

-- Every report that names an operator (downtime_reason, scrap, wo_start, wo_end, lots):
-- who did what, where and when.
CREATE TABLE operator_activity (
    seq          bigint      PRIMARY KEY,
    machine      text        NOT NULL,
    ts           timestamptz NOT NULL,
    kind         text        NOT NULL,
    operator     text        NOT NULL,
    work_order   text
);
CREATE INDEX operator_activity_machine_ts ON operator_activity (machine, ts);
CREATE INDEX operator_activity_wo ON operator_activity (work_order);

-- Public: every lot report with its work order, order and customer (both directions:
-- filter on lot, or on order_no). A work order the intake does not know yet has a NULL
-- order (it still shows, so a report is never invisible).
CREATE VIEW v_lot_trace AS
SELECT l.lot_kind, l.lot, l.material, l.qty, l.machine, l.ts, l.work_order,
       COALESCE(w.order_no, p.order_no) AS order_no,
       o.customer, COALESCE(o.product, w.product, p.product) AS product,
       l.operator, l.seq
FROM (
    SELECT 'material'::text AS lot_kind, lot, material, qty, machine, ts, work_order,
           operator, seq
    FROM material_lot_use
    UNION ALL
    SELECT 'production', lot, NULL, qty, machine, ts, work_order, operator, seq
    FROM production_lot
) l
LEFT JOIN work_order w ON w.work_order = l.work_order
LEFT JOIN work_order_progress p ON p.work_order = l.work_order
LEFT JOIN crm_order o ON o.order_no = COALESCE(w.order_no, p.order_no);

-- Public: the people of an order: reports naming one of its work orders, and reports
-- without a work order (stop reasons, scrap) on one of its machines while it ran there
-- (the window of v_order_machine, sql/017).
CREATE VIEW v_order_operators AS
SELECT COALESCE(w.order_no, p.order_no) AS order_no, a.operator, a.kind, a.machine, a.ts,
       a.work_order, a.seq
FROM operator_activity a
LEFT JOIN work_order w ON w.work_order = a.work_order
LEFT JOIN work_order_progress p ON p.work_order = a.work_order
WHERE a.work_order IS NOT NULL AND COALESCE(w.order_no, p.order_no) IS NOT NULL
UNION ALL
SELECT om.order_no, a.operator, a.kind, a.machine, a.ts, a.work_order, a.seq
FROM operator_activity a
JOIN v_order_machine om ON om.machine = a.machine
                       AND a.ts >= om.from_ts AND a.ts <= om.to_ts
WHERE a.work_order IS NULL;

-- Public: the stops of an order's machines while it ran on them, clipped to that window
-- (micro-stops and offline time left out, as on the order page's losses).
CREATE VIEW v_order_stops AS
SELECT om.order_no, s.machine, s.state, s.reason, s.category,
       GREATEST(s.start_ts, om.from_ts) AS start_ts,
       LEAST(s.start_ts + make_interval(secs => s.duration_s), om.to_ts) AS end_ts,
       GREATEST(EXTRACT(EPOCH FROM (
           LEAST(s.start_ts + make_interval(secs => s.duration_s), om.to_ts)
           - GREATEST(s.start_ts, om.from_ts)))::double precision, 0) AS seconds,
       s.is_open
FROM v_order_machine om
JOIN v_stops s ON s.machine = om.machine
              AND s.start_ts < om.to_ts
              AND s.start_ts + make_interval(secs => s.duration_s) > om.from_ts
WHERE NOT s.is_microstop AND s.state <> 'offline';

-- A customer's read-only link to one order (/c/<token>). Only a SHA-256 of the token is
-- kept: a copy of this table does not open any link. Revoked or expired: the page says so
-- (410) and shows nothing of the order.
CREATE TABLE customer_link (
    id          bigserial   PRIMARY KEY,
    order_no    text        NOT NULL REFERENCES crm_order (order_no),
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text,
    language    text        NOT NULL CHECK (language IN ('zh', 'en'))
);
CREATE INDEX customer_link_order ON customer_link (order_no, id);
