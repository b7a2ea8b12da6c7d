-- Board rollups (issue 14, docs/performance.md "Boards at scale"): the plant's downtime Pareto
-- and scrap Pareto over a month added up 180,000 reason rows and 720,000 scrap rows on every
-- refresh (136-300 ms at 500 machines x 30 days). These tables hold the same sums per shift
-- date, shift name and reason (and product), maintained on write by statement triggers on the
-- tables the dataflow writes, so a plant's month reads a few hundred rows. Plain SQL: the same
-- with or without TimescaleDB (a continuous aggregate needs a hypertable, and the KPI, reason
-- and scrap tables are not ones).
--
-- Invariant (tests/test_board_rollups.py checks it after every kind of write):
--   board_reason_shift summed over `writer` = v_downtime_by_reason's shift rows summed per
--     (shift_date, shift_name, reason) over every machine (n: how many rows);
--   board_scrap_day summed over `writer` = machine_scrap summed per (day, shift_name, reason,
--     product) (n: how many rows).
-- A key whose rows are all gone keeps n = 0 and sums of 0: readers skip n = 0. Seconds are
-- added as numeric (each float8 converted, 15 digits), so adding and taking away the same
-- rows gives back exactly what was there, whatever the order.
--
-- `writer` is the backend (pg_backend_pid()) whose transaction added the sums: two dataflow
-- processes writing at once never update the same rollup row, so they neither wait for each
-- other's commit nor deadlock (their machines are disjoint; the rollup rows would not be). A
-- key gets a row per connection that ever wrote it (a restart adds one); the readers add
-- them up. `shift_name` is '' where the source's is NULL (hours between shifts): a key
-- column cannot be NULL. Shift names of the calendar are never empty (config validation).

CREATE TABLE board_reason_shift (
    shift_date  date             NOT NULL,
    shift_name  text             NOT NULL,
    reason      text             NOT NULL,
    writer      integer          NOT NULL,
    seconds     numeric          NOT NULL,  -- exact: sums that go back to 0 are 0
    stops       bigint           NOT NULL,
    n           bigint           NOT NULL,
    PRIMARY KEY (shift_date, shift_name, reason, writer)
);

CREATE TABLE board_scrap_day (
    day         date    NOT NULL,
    shift_name  text    NOT NULL,
    reason      text    NOT NULL,
    product     text    NOT NULL,
    writer      integer NOT NULL,
    qty         bigint  NOT NULL,
    n           bigint  NOT NULL,
    PRIMARY KEY (day, shift_name, reason, product, writer)
);

-- -- downtime by reason: machine_kpi_reason's shift rows, dated by their machine_kpi row ----------

CREATE FUNCTION board_reason_on_reason_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO board_reason_shift AS b
        (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, pg_backend_pid(),
           sum(r.seconds::numeric), sum(r.stops), count(*)
    FROM new_rows r
    JOIN machine_kpi k USING (machine, bucket, bucket_start)
    WHERE r.bucket = 'shift' AND k.shift_date IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (shift_date, shift_name, reason, writer) DO UPDATE
        SET seconds = b.seconds + excluded.seconds, stops = b.stops + excluded.stops,
            n = b.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION board_reason_on_reason_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO board_reason_shift AS b
        (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, pg_backend_pid(),
           -sum(r.seconds::numeric), -sum(r.stops), -count(*)
    FROM old_rows r
    JOIN machine_kpi k USING (machine, bucket, bucket_start)
    WHERE r.bucket = 'shift' AND k.shift_date IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (shift_date, shift_name, reason, writer) DO UPDATE
        SET seconds = b.seconds + excluded.seconds, stops = b.stops + excluded.stops,
            n = b.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION board_reason_on_reason_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO board_reason_shift AS b
        (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, pg_backend_pid(),
           sum(r.sign * r.seconds::numeric), sum(r.sign * r.stops), sum(r.sign)
    FROM (SELECT o.*, -1 AS sign FROM old_rows o
          UNION ALL SELECT n.*, 1 FROM new_rows n) r
    JOIN machine_kpi k USING (machine, bucket, bucket_start)
    WHERE r.bucket = 'shift' AND k.shift_date IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (shift_date, shift_name, reason, writer) DO UPDATE
        SET seconds = b.seconds + excluded.seconds, stops = b.stops + excluded.stops,
            n = b.n + excluded.n;
    RETURN NULL;
END $$;

-- A KPI row that appears, goes or changes its date or name moves its machine-bucket's reasons
-- (in the dataflow's order the KPI row is written first and finds no reasons yet; a retention
-- run or a calendar change may do otherwise).

CREATE FUNCTION board_reason_on_kpi_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO board_reason_shift AS b
        (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, pg_backend_pid(),
           sum(r.seconds::numeric), sum(r.stops), count(*)
    FROM new_rows k
    JOIN machine_kpi_reason r USING (machine, bucket, bucket_start)
    WHERE k.bucket = 'shift' AND k.shift_date IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (shift_date, shift_name, reason, writer) DO UPDATE
        SET seconds = b.seconds + excluded.seconds, stops = b.stops + excluded.stops,
            n = b.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION board_reason_on_kpi_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO board_reason_shift AS b
        (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, pg_backend_pid(),
           -sum(r.seconds::numeric), -sum(r.stops), -count(*)
    FROM old_rows k
    JOIN machine_kpi_reason r USING (machine, bucket, bucket_start)
    WHERE k.bucket = 'shift' AND k.shift_date IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (shift_date, shift_name, reason, writer) DO UPDATE
        SET seconds = b.seconds + excluded.seconds, stops = b.stops + excluded.stops,
            n = b.n + excluded.n;
    RETURN NULL;
END $$;

-- An upsert of KPI rows (every batch of the dataflow) updates rows whose date and name stay
-- the same: only the rows whose shift key changed (EXCEPT ALL of before and after) move
-- their reasons, so the common case reads no reason row.
CREATE FUNCTION board_reason_on_kpi_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO board_reason_shift AS b
        (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, pg_backend_pid(),
           sum(k.sign * r.seconds::numeric), sum(k.sign * r.stops), sum(k.sign)
    FROM (SELECT g.*, -1 AS sign
          FROM (SELECT machine, bucket, bucket_start, shift_date, shift_name FROM old_rows
                WHERE bucket = 'shift' AND shift_date IS NOT NULL
                EXCEPT ALL
                SELECT machine, bucket, bucket_start, shift_date, shift_name FROM new_rows
                WHERE bucket = 'shift' AND shift_date IS NOT NULL) g
          UNION ALL
          SELECT c.*, 1
          FROM (SELECT machine, bucket, bucket_start, shift_date, shift_name FROM new_rows
                WHERE bucket = 'shift' AND shift_date IS NOT NULL
                EXCEPT ALL
                SELECT machine, bucket, bucket_start, shift_date, shift_name FROM old_rows
                WHERE bucket = 'shift' AND shift_date IS NOT NULL) c
         ) k
    JOIN machine_kpi_reason r USING (machine, bucket, bucket_start)
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (shift_date, shift_name, reason, writer) DO UPDATE
        SET seconds = b.seconds + excluded.seconds, stops = b.stops + excluded.stops,
            n = b.n + excluded.n;
    RETURN NULL;
END $$;

-- From scratch (this migration, and after a TRUNCATE of either table).
CREATE FUNCTION board_reason_rebuild() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM board_reason_shift;
    INSERT INTO board_reason_shift (shift_date, shift_name, reason, writer, seconds, stops, n)
    SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, 0,
           sum(r.seconds::numeric), sum(r.stops), count(*)
    FROM machine_kpi_reason r
    JOIN machine_kpi k USING (machine, bucket, bucket_start)
    WHERE r.bucket = 'shift' AND k.shift_date IS NOT NULL
    GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE TRIGGER board_reason_insert AFTER INSERT ON machine_kpi_reason
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_on_reason_insert();
CREATE TRIGGER board_reason_delete AFTER DELETE ON machine_kpi_reason
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_on_reason_delete();
CREATE TRIGGER board_reason_update AFTER UPDATE ON machine_kpi_reason
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_on_reason_update();
CREATE TRIGGER board_reason_truncate AFTER TRUNCATE ON machine_kpi_reason
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_rebuild();
CREATE TRIGGER board_reason_kpi_insert AFTER INSERT ON machine_kpi
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_on_kpi_insert();
CREATE TRIGGER board_reason_kpi_delete AFTER DELETE ON machine_kpi
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_on_kpi_delete();
CREATE TRIGGER board_reason_kpi_update AFTER UPDATE ON machine_kpi
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_on_kpi_update();
CREATE TRIGGER board_reason_kpi_truncate AFTER TRUNCATE ON machine_kpi
    FOR EACH STATEMENT EXECUTE FUNCTION board_reason_rebuild();

-- -- scrap by reason and product: machine_scrap carries its own day and shift name -----------

CREATE FUNCTION board_scrap_on_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TG_OP picks the transition tables this trigger has; the other branch is never planned.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO board_scrap_day AS b (day, shift_name, reason, product, writer, qty, n)
        SELECT day, COALESCE(shift_name, ''), reason, product, pg_backend_pid(),
               sum(qty), count(*)
        FROM new_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (day, shift_name, reason, product, writer) DO UPDATE
            SET qty = b.qty + excluded.qty, n = b.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO board_scrap_day AS b (day, shift_name, reason, product, writer, qty, n)
        SELECT day, COALESCE(shift_name, ''), reason, product, pg_backend_pid(),
               -sum(qty), -count(*)
        FROM old_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (day, shift_name, reason, product, writer) DO UPDATE
            SET qty = b.qty + excluded.qty, n = b.n + excluded.n;
    ELSE
        INSERT INTO board_scrap_day AS b (day, shift_name, reason, product, writer, qty, n)
        SELECT day, COALESCE(shift_name, ''), reason, product, pg_backend_pid(),
               sum(sign * qty), sum(sign)
        FROM (SELECT o.*, -1 AS sign FROM old_rows o
              UNION ALL SELECT n.*, 1 FROM new_rows n) r
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (day, shift_name, reason, product, writer) DO UPDATE
            SET qty = b.qty + excluded.qty, n = b.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION board_scrap_rebuild() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM board_scrap_day;
    INSERT INTO board_scrap_day (day, shift_name, reason, product, writer, qty, n)
    SELECT day, COALESCE(shift_name, ''), reason, product, 0, sum(qty), count(*)
    FROM machine_scrap GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

CREATE TRIGGER board_scrap_insert AFTER INSERT ON machine_scrap
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_scrap_on_write();
CREATE TRIGGER board_scrap_delete AFTER DELETE ON machine_scrap
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_scrap_on_write();
CREATE TRIGGER board_scrap_update AFTER UPDATE ON machine_scrap
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION board_scrap_on_write();
CREATE TRIGGER board_scrap_truncate AFTER TRUNCATE ON machine_scrap
    FOR EACH STATEMENT EXECUTE FUNCTION board_scrap_rebuild();

-- -- the state timeline ----------------------------------------------------------------------

-- The longest ended interval, read from the end of this index: the timeline of [from, to)
-- reads each machine's intervals from `from` minus that length by primary key (an interval
-- ending after `from` cannot start earlier), instead of every interval ending after `from`
-- (dashboards/analytics_queries.py timeline).
CREATE INDEX machine_state_interval_length ON machine_state_interval ((end_ts - start_ts));

-- -- public views (docs/sql-views.md): the rollups as the boards and BI tools read them ----------

-- v_downtime_by_reason's shift rows for the whole plant, one row per shift date, shift name and
-- reason (every machine's added up; the same as grouping v_downtime_by_reason WHERE bucket =
-- 'shift' by those columns). A filter on shift_date or shift_name reads only those keys.
CREATE VIEW v_downtime_by_reason_plant AS
SELECT b.shift_date, b.shift_name, b.reason,
       COALESCE(c.category, b.reason) AS category,
       c.name_en AS reason_en, c.name_zh AS reason_zh, b.seconds, b.stops
FROM (SELECT shift_date, NULLIF(shift_name, '') AS shift_name, reason,
             sum(seconds)::double precision AS seconds, sum(stops)::bigint AS stops
      FROM board_reason_shift
      GROUP BY shift_date, shift_name, reason
      HAVING sum(n) > 0) b
LEFT JOIN reason_code c ON c.code = b.reason;

-- v_scrap_by_reason for the whole plant, one row per day, shift name, reason and product.
CREATE VIEW v_scrap_by_reason_plant AS
SELECT b.day,
       CASE WHEN b.shift_name IS NOT NULL THEN b.day END AS shift_date,
       b.shift_name, b.reason,
       COALESCE(c.category, CASE WHEN b.reason = 'unspecified' THEN 'unspecified'
                                 ELSE 'other' END) AS category,
       c.name_en AS reason_en, c.name_zh AS reason_zh, b.product, b.qty
FROM (SELECT day, NULLIF(shift_name, '') AS shift_name, reason, product,
             sum(qty)::bigint AS qty
      FROM board_scrap_day
      GROUP BY day, shift_name, reason, product
      HAVING sum(n) > 0) b
LEFT JOIN reason_code c ON c.code = b.reason;

-- The history written before this migration (writer 0: no backend has pid 0).
INSERT INTO board_reason_shift (shift_date, shift_name, reason, writer, seconds, stops, n)
SELECT k.shift_date, COALESCE(k.shift_name, ''), r.reason, 0,
       sum(r.seconds::numeric), sum(r.stops), count(*)
FROM machine_kpi_reason r
JOIN machine_kpi k USING (machine, bucket, bucket_start)
WHERE r.bucket = 'shift' AND k.shift_date IS NOT NULL
GROUP BY 1, 2, 3;
INSERT INTO board_scrap_day (day, shift_name, reason, product, writer, qty, n)
SELECT day, COALESCE(shift_name, ''), reason, product, 0, sum(qty), count(*)
FROM machine_scrap GROUP BY 1, 2, 3, 4;
ANALYZE board_reason_shift, board_scrap_day;
