-- Defects, rework, first-pass and final yield (docs/quality.md, streams/quality.py).
--
-- Both tables are written by the dataflow with idempotent upserts: a record is keyed by the
-- ingest_log seq of its report (and the defect line of an inspection report), a yield row by
-- (work order, machine), holding absolute figures. A replay changes nothing.

-- One row per defect report, per defect line of an inspection report and per rework report.
--   kind         defect | inspection | rework
--   disposition  defect: scrap | rework; inspection: found (moves no part); rework: good | scrap
--   code_path    the code's chain in the defect tree, root first (the code alone when the
--                plant file has no tree)
--   day, shift_name  the plant-local date and name of the machine's shift at ts (shift_name
--                NULL between shifts: then the plant-local date of ts)
CREATE TABLE quality_record (
    seq          bigint      NOT NULL,
    line         integer     NOT NULL,
    ts           timestamptz NOT NULL,
    day          date        NOT NULL,
    shift_name   text,
    kind         text        NOT NULL CHECK (kind IN ('defect', 'inspection', 'rework')),
    code         text,
    code_path    text[]      NOT NULL,
    qty          bigint      NOT NULL CHECK (qty >= 0),
    disposition  text        NOT NULL,
    machine      text        NOT NULL,
    work_order   text        NOT NULL,
    operation    text,
    product      text,                                   -- as known when reported
    operator     text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seq, line)
);
CREATE INDEX quality_record_ts ON quality_record (ts);
CREATE INDEX quality_record_wo ON quality_record (work_order);

-- A work order's yield at the machine that made the parts (absolute, as of last_ts).
CREATE TABLE quality_yield (
    work_order       text        NOT NULL,
    machine          text        NOT NULL,
    operation        text,
    product          text,
    made             bigint      NOT NULL,   -- good + scrap the machine counted
    first_scrap      bigint      NOT NULL,   -- scrapped the first time (not after rework)
    sent_to_rework   bigint      NOT NULL,
    rework_good      bigint      NOT NULL,
    rework_scrap     bigint      NOT NULL,
    rework_pending   bigint      NOT NULL,
    first_pass_good  bigint      NOT NULL,   -- made - first_scrap - sent_to_rework
    final_good       bigint      NOT NULL,   -- first_pass_good + rework_good
    first_ts         timestamptz NOT NULL,
    last_ts          timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (work_order, machine)
);
CREATE INDEX quality_yield_last_ts ON quality_yield (last_ts);

-- Public: every defect found or disposed of, with its line, product and tree position.
-- `root` is the top of the code's branch (a Pareto by family), `parent` the code above it.
-- The product is the work order's as the intake or the dataflow knows it now, else as known
-- when reported, else 'unknown'.
CREATE VIEW v_defects AS
SELECT r.seq, r.line AS defect_line, r.ts, r.day, r.shift_name,
       r.kind, r.disposition, r.code,
       r.code_path[1]                                                  AS root,
       CASE WHEN cardinality(r.code_path) > 1
            THEN r.code_path[cardinality(r.code_path) - 1] END         AS parent,
       r.code_path, r.qty,
       r.machine, m.line, r.work_order, r.operation,
       COALESCE(w.product, p.product, r.product, 'unknown')            AS product,
       r.operator
FROM quality_record r
LEFT JOIN plant_machine m ON m.machine = r.machine
LEFT JOIN work_order w ON w.work_order = r.work_order
LEFT JOIN work_order_progress p ON p.work_order = r.work_order
WHERE r.kind IN ('defect', 'inspection');

-- Public: first-pass and final yield per work order and machine. Sum the counts before
-- dividing to get a product's or a machine's yield (sum(first_pass_good) / sum(made)).
CREATE VIEW v_yield AS
SELECT y.work_order, p.order_no, y.machine, m.line, y.operation,
       COALESCE(y.product, w.product, p.product, 'unknown')            AS product,
       y.made, y.first_scrap, y.sent_to_rework, y.rework_good, y.rework_scrap,
       y.rework_pending, y.first_pass_good, y.final_good,
       y.first_pass_good::double precision / NULLIF(y.made, 0)          AS first_pass_yield,
       y.final_good::double precision / NULLIF(y.made, 0)               AS final_yield,
       y.first_ts, y.last_ts
FROM quality_yield y
LEFT JOIN plant_machine m ON m.machine = y.machine
LEFT JOIN work_order w ON w.work_order = y.work_order
LEFT JOIN work_order_progress p ON p.work_order = y.work_order;

-- Public: rework still open (sent to rework, no outcome reported yet) per work order and
-- machine, oldest first when read with ORDER BY first_ts.
CREATE VIEW v_rework AS
SELECT work_order, order_no, machine, line, operation, product,
       sent_to_rework, rework_good, rework_scrap, rework_pending, first_ts, last_ts
FROM v_yield
WHERE rework_pending > 0;

-- Per CRM order: parts made and sent to rework by its work orders (every machine), with
-- the order's customer, product and month production started (v_order_delivery).
CREATE VIEW v_order_rework AS
SELECT d.order_no, d.customer, d.product, d.start_month,
       sum(y.made)::bigint            AS made,
       sum(y.sent_to_rework)::bigint  AS sent_to_rework
FROM quality_yield y
JOIN work_order_progress p ON p.work_order = y.work_order
JOIN v_order_delivery d ON d.order_no = p.order_no
WHERE d.started_at IS NOT NULL
GROUP BY d.order_no, d.customer, d.product, d.start_month;

-- Delivery KPI (docs/kpis.md): rework rate = parts sent to rework / parts made, of the
-- orders' work orders, parts added up first, per month production started (as v_kpi_scrap).
CREATE VIEW v_kpi_rework AS
SELECT start_month AS month, customer, product,
       sum(made)::bigint                                                AS made,
       sum(sent_to_rework)::bigint                                      AS sent_to_rework,
       sum(sent_to_rework)::double precision / NULLIF(sum(made), 0)     AS rework_rate
FROM v_order_rework
GROUP BY start_month, customer, product;

-- The delivery KPIs with the rework rate added at the end (the columns before are as in 025).
CREATE OR REPLACE VIEW v_delivery_kpis AS
WITH keys AS (
    SELECT month, customer, product FROM v_kpi_lead_time
    UNION SELECT month, customer, product FROM v_kpi_change_response
    UNION SELECT month, customer, product FROM v_kpi_on_time
    UNION SELECT month, customer, product FROM v_kpi_scrap
    UNION SELECT month, customer, product FROM v_kpi_rework
)
SELECT k.month, k.customer, k.product,
       l.orders AS orders_started, l.lead_time_avg_s, l.lead_time_median_s, l.lead_time_p90_s,
       c.changes, c.unacknowledged, c.response_median_s, c.response_p90_s,
       o.completed, o.on_time, o.on_time_rate,
       s.good, s.scrap, s.scrap_rate,
       r.made, r.sent_to_rework, r.rework_rate
FROM keys k
LEFT JOIN v_kpi_lead_time l USING (month, customer, product)
LEFT JOIN v_kpi_change_response c USING (month, customer, product)
LEFT JOIN v_kpi_on_time o USING (month, customer, product)
LEFT JOIN v_kpi_scrap s USING (month, customer, product)
LEFT JOIN v_kpi_rework r USING (month, customer, product);
