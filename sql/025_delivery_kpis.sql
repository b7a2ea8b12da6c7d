-- Delivery KPIs (docs/kpis.md): order lead time, change response time, on-time delivery
-- rate and, until the people-and-quality issue brings rework, the scrap rate of an order's
-- work orders. Read-only views over crm_order, order_history, order_progress,
-- work_order_progress and v_change_response.
--
-- Months are calendar months in the session's time zone (`SET TIME ZONE`): `mesflow report
-- --kpis` and the /kpis board set it to the plant's time zone, so a BI tool should too.
-- Each KPI counts in the month of the event that completes it: lead time in the month
-- production started, on-time in the month the order was completed, scrap in the month its
-- production started, change response in the month the change arrived.

-- One row per CRM order: the times and figures every order KPI is made of.
--   received_at   the first accepted change of the order (order_history, the order itself),
--                 else crm_order.created_at
--   started_at    the first work-order start (work_order_progress.started_at)
--   completed     good >= qty, or the CRM closed it; a cancelled order is never completed
--   completed_at  good >= qty: the time the last part was made (order_progress.eta is that
--                 time once finished), else the latest work-order completion, else the
--                 order's last event; closed short of qty: the order's last event
--   on_time       completed_at <= due (NULL while not completed)
CREATE VIEW v_order_delivery AS
WITH first_hist AS (
    SELECT order_no, min(accepted_at) AS accepted_at
    FROM order_history
    WHERE work_order IS NULL
    GROUP BY order_no
), wo AS (
    SELECT order_no,
           min(started_at)   AS started_at,
           max(completed_at) AS done_at,
           sum(good)         AS good,
           sum(scrap)        AS scrap
    FROM work_order_progress
    GROUP BY order_no
), base AS (
    SELECT c.order_no,
           COALESCE(p.customer, c.customer)           AS customer,
           COALESCE(p.product, c.product)             AS product,
           COALESCE(p.qty, c.qty)                     AS qty,
           COALESCE(p.due, c.due)                     AS due,
           COALESCE(p.status, c.status)               AS status,
           COALESCE(p.good, wo.good, 0)::bigint       AS good,
           COALESCE(p.scrap, wo.scrap, 0)::bigint     AS scrap,
           COALESCE(h.accepted_at, c.created_at)      AS received_at,
           wo.started_at,
           wo.done_at,
           p.eta,
           p.last_event_ts
    FROM crm_order c
    LEFT JOIN order_progress p USING (order_no)
    LEFT JOIN first_hist h USING (order_no)
    LEFT JOIN wo USING (order_no)
), done AS (
    SELECT b.*,
           (b.status <> 'cancelled' AND (b.good >= b.qty OR b.status = 'closed')) AS completed
    FROM base b
), timed AS (
    SELECT d.*,
           CASE WHEN NOT d.completed THEN NULL
                WHEN d.good >= d.qty THEN COALESCE(d.eta, d.done_at, d.last_event_ts)
                ELSE d.last_event_ts END AS completed_at
    FROM done d
)
SELECT t.order_no,
       t.customer,
       t.product,
       t.qty,
       t.due,
       t.status,
       t.good,
       t.scrap,
       t.received_at,
       t.started_at,
       t.completed,
       t.completed_at,
       CASE WHEN t.completed THEN t.completed_at <= t.due END              AS on_time,
       EXTRACT(EPOCH FROM (t.started_at - t.received_at))::double precision AS lead_time_s,
       t.scrap::double precision / NULLIF(t.good + t.scrap, 0)            AS scrap_rate,
       to_char(t.started_at, 'YYYY-MM')                                   AS start_month,
       to_char(t.completed_at, 'YYYY-MM')                                 AS completed_month
FROM timed t;

-- One row per change that reached the floor (v_change_response) with its order's customer
-- and product and the month it arrived.
CREATE VIEW v_change_delivery AS
SELECT r.change_request_id,
       r.order_no,
       c.customer,
       c.product,
       r.received_at,
       r.acknowledged_at,
       r.response_s,
       to_char(r.received_at, 'YYYY-MM') AS month
FROM v_change_response r
JOIN crm_order c USING (order_no);

-- Order lead time (order received → production started), per month production started.
CREATE VIEW v_kpi_lead_time AS
SELECT start_month AS month, customer, product,
       count(*)                                                    AS orders,
       avg(lead_time_s)                                            AS lead_time_avg_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lead_time_s)    AS lead_time_median_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY lead_time_s)    AS lead_time_p90_s
FROM v_order_delivery
WHERE started_at IS NOT NULL
GROUP BY start_month, customer, product;

-- Change response time (change arrived → first acknowledgement on the floor), per month the
-- change arrived. Median and p90 over the acknowledged changes; unacknowledged counted apart.
CREATE VIEW v_kpi_change_response AS
SELECT month, customer, product,
       count(*)                                                    AS changes,
       count(*) FILTER (WHERE acknowledged_at IS NULL)             AS unacknowledged,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY response_s)     AS response_median_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY response_s)     AS response_p90_s
FROM v_change_delivery
GROUP BY month, customer, product;

-- On-time delivery rate: completed orders completed by their due date, per month completed.
CREATE VIEW v_kpi_on_time AS
SELECT completed_month AS month, customer, product,
       count(*)                                                    AS completed,
       count(*) FILTER (WHERE on_time)                             AS on_time,
       count(*) FILTER (WHERE on_time)::double precision / count(*) AS on_time_rate
FROM v_order_delivery
WHERE completed
GROUP BY completed_month, customer, product;

-- Scrap rate of the orders' work orders (stands in for the rework rate until the
-- people-and-quality issue lands): scrap / (good + scrap), parts added up first, per month
-- production started.
CREATE VIEW v_kpi_scrap AS
SELECT start_month AS month, customer, product,
       sum(good)::bigint                                           AS good,
       sum(scrap)::bigint                                          AS scrap,
       sum(scrap)::double precision / NULLIF(sum(good + scrap), 0) AS scrap_rate
FROM v_order_delivery
WHERE started_at IS NOT NULL
GROUP BY start_month, customer, product;

-- All four per (month, customer, product); a KPI with no row in a month is NULL there.
CREATE VIEW v_delivery_kpis AS
WITH keys AS (
    SELECT month, customer, product FROM v_kpi_lead_time
    UNION SELECT month, customer, product FROM v_kpi_change_response
    UNION SELECT month, customer, product FROM v_kpi_on_time
    UNION SELECT month, customer, product FROM v_kpi_scrap
)
SELECT k.month, k.customer, k.product,
       l.orders AS orders_started, l.lead_time_avg_s, l.lead_time_median_s, l.lead_time_p90_s,
       c.changes, c.unacknowledged, c.response_median_s, c.response_p90_s,
       o.completed, o.on_time, o.on_time_rate,
       s.good, s.scrap, s.scrap_rate
FROM keys k
LEFT JOIN v_kpi_lead_time l USING (month, customer, product)
LEFT JOIN v_kpi_change_response c USING (month, customer, product)
LEFT JOIN v_kpi_on_time o USING (month, customer, product)
LEFT JOIN v_kpi_scrap s USING (month, customer, product);
