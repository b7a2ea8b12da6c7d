-- Scrap by reason and product (docs/analytics.md, docs/sql-views.md): every scrapped part of a
-- machine per hour of the plant's time zone, by the reason an operator gave in a `scrap` report
-- (`unspecified` for scrap the machine counted itself, or a report without a reason) and by the
-- product of the work order active at the part's time (`unknown` when none). Written by the
-- dataflow as the whole set of one machine-hour: an item that a late event or a rebuild moves
-- away disappears. The hour's sum equals machine_hour.scrap (every part, planned time or not).
CREATE TABLE machine_scrap (
    machine     text        NOT NULL,
    hour_start  timestamptz NOT NULL,
    -- The plant-local date the hour counts on: the date of the machine's shift instance that
    -- contains the hour's start (shift_name: its name), else the hour's own date (shift_name
    -- NULL: between shifts). Written by the dataflow, which knows the calendar: no join.
    day         date        NOT NULL,
    shift_name  text,
    reason      text        NOT NULL,
    product     text        NOT NULL,
    qty         bigint      NOT NULL,
    PRIMARY KEY (machine, hour_start, reason, product)
);
-- A plant or a line over a date range reads the hours by time whatever the machine.
CREATE INDEX machine_scrap_by_time ON machine_scrap (hour_start);

-- Public view. With shift times on whole hours, as in every shipped calendar, the shift is
-- exact; an hour that a shift boundary cuts in two is given whole to the shift it starts in.
CREATE VIEW v_scrap_by_reason AS
SELECT s.machine, m.line, s.hour_start, s.day,
       CASE WHEN s.shift_name IS NOT NULL THEN s.day END  AS shift_date,
       s.shift_name,
       s.reason,
       COALESCE(c.category, CASE WHEN s.reason = 'unspecified' THEN 'unspecified'
                                 ELSE 'other' END)       AS category,
       c.name_en AS reason_en, c.name_zh AS reason_zh,
       s.product, s.qty
FROM machine_scrap s
LEFT JOIN plant_machine m USING (machine)
LEFT JOIN reason_code c ON c.code = s.reason;
