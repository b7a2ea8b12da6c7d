-- Process limits (plant file `process_limits`, mesflow/process_limits.py), out-of-limit
-- spans (streams/limit_spans.py) and Cpk per shift and value (docs/metrics.md).

-- The plant file's limits, replaced at every start (mesflow/db.py sync_plant). scope
-- 'product': while product `id` runs, on any machine; 'machine': on machine `id`, whatever
-- runs, and its entry for a value wins over the product's.
CREATE TABLE process_limit (
    scope      text NOT NULL CHECK (scope IN ('product', 'machine')),
    id         text NOT NULL,
    name       text NOT NULL,
    lsl        double precision,
    usl        double precision,
    alarm_low  double precision,  -- out of limit below (NULL: lsl)
    alarm_high double precision,  -- out of limit above (NULL: usl)
    PRIMARY KEY (scope, id, name)
);

-- One row per span; the dataflow rewrites it while open (end NULL) and when it ends.
-- Keyed by its start: a replay writes the same rows again.
CREATE TABLE process_limit_span (
    machine   text NOT NULL,
    name      text NOT NULL,
    start_ts  timestamptz NOT NULL,
    end_ts    timestamptz,
    limit_side text NOT NULL CHECK (limit_side IN ('upper', 'lower')),
    bound     double precision NOT NULL,
    worst     double precision NOT NULL,
    product   text,
    PRIMARY KEY (machine, name, start_ts)
);
CREATE INDEX process_limit_span_open ON process_limit_span (machine) WHERE end_ts IS NULL;

CREATE VIEW v_process_limit_spans AS
SELECT machine, name, start_ts, end_ts, limit_side, bound, worst, product,
       EXTRACT(EPOCH FROM end_ts - start_ts)::double precision AS duration_s
FROM process_limit_span;

-- The product a machine ran at each work-order change (streams/limit_spans.py), so that
-- Cpk takes the limits of the product that ran when each value was measured.
CREATE TABLE process_product_run (
    machine  text NOT NULL,
    start_ts timestamptz NOT NULL,
    product  text,  -- NULL: no work order from here on
    PRIMARY KEY (machine, start_ts)
);

-- Cpk per shift instance, value and product. σ is the overall sample standard deviation
-- of the shift's raw values (stddev_samp), not a within-subgroup estimate: process values
-- come one per cycle or per minute, without rational subgroups, so this is Ppk-like
-- (named cpk as the issue asks; see docs/metrics.md). NULL when n < 2, σ = 0 or a limit
-- is missing (cp needs both, cpk both too: a one-sided index is left out).
CREATE VIEW v_process_cpk AS
WITH v AS (
    SELECT k.machine, k.shift_date, k.shift_name, k.bucket_start, k.bucket_end, pv.name,
           pv.value,
           (SELECT r.product FROM process_product_run r
            WHERE r.machine = pv.machine AND r.start_ts <= pv.ts
            ORDER BY r.start_ts DESC LIMIT 1) AS product
    FROM machine_kpi k
    JOIN process_value pv
      ON pv.machine = k.machine AND pv.ts >= k.bucket_start AND pv.ts < k.bucket_end
    WHERE k.bucket = 'shift'
), a AS (
    SELECT machine, shift_date, shift_name, bucket_start, bucket_end, name, product,
           count(*) AS n, avg(value) AS mean, stddev_samp(value) AS stddev
    FROM v GROUP BY 1, 2, 3, 4, 5, 6, 7
), l AS (
    SELECT a.*,
           CASE WHEN lm.name IS NOT NULL THEN lm.lsl ELSE lp.lsl END AS lsl,
           CASE WHEN lm.name IS NOT NULL THEN lm.usl ELSE lp.usl END AS usl
    FROM a
    LEFT JOIN process_limit lm ON lm.scope = 'machine' AND lm.id = a.machine AND lm.name = a.name
    LEFT JOIN process_limit lp ON lp.scope = 'product' AND lp.id = a.product AND lp.name = a.name
)
SELECT machine, shift_date, shift_name, bucket_start, bucket_end, name, product, n, mean,
       stddev, lsl, usl,
       CASE WHEN n >= 2 AND stddev > 0 AND lsl IS NOT NULL AND usl IS NOT NULL
            THEN LEAST(usl - mean, mean - lsl) / (3 * stddev) END AS cpk,
       CASE WHEN n >= 2 AND stddev > 0 AND lsl IS NOT NULL AND usl IS NOT NULL
            THEN (usl - lsl) / (6 * stddev) END AS cp
FROM l;
