-- People at stations (docs/labor.md): who is signed in where, and labor time per person,
-- station, work order, operation and shift. Written by the dataflow's labor step
-- (streams/labor.py); every row is an idempotent upsert, so replays and restarts rewrite
-- the same values.

-- A person's time at a station, [start_ts, end_ts), cut at sign-in/out, work-order
-- changes, shift boundaries and a forgotten sign-in's expiry. `share` is 1/k while the
-- person is signed in at k stations at once. An open segment (end_ts NULL) grows with the
-- wall clock up to bound_ts, where the step cuts it (views: now() capped at bound_ts).
CREATE TABLE labor_segment (
    person       text             NOT NULL,
    station      text             NOT NULL,
    start_ts     timestamptz      NOT NULL,
    end_ts       timestamptz      CHECK (end_ts >= start_ts),
    bound_ts     timestamptz      NOT NULL,
    work_order   text             NOT NULL DEFAULT '',  -- '': no work order running
    operation    text             NOT NULL DEFAULT '',  -- '': none known
    shift_date   date             NOT NULL,             -- plant-local date the shift starts on
    shift_name   text             NOT NULL DEFAULT '',  -- '': outside every shift
    share        double precision NOT NULL CHECK (share > 0 AND share <= 1),
    closed_by    text             NOT NULL
        CHECK (closed_by IN ('open', 'sign_out', 'share', 'wo', 'shift', 'expired')),
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (person, station, start_ts)
);
CREATE INDEX labor_segment_wo ON labor_segment (work_order, operation);
CREATE INDEX labor_segment_shift ON labor_segment (shift_date, shift_name);
CREATE INDEX labor_segment_open ON labor_segment (station) WHERE end_ts IS NULL;

-- Who is signed in at each station now (deleted at sign-out or expiry).
CREATE TABLE labor_presence (
    station      text             NOT NULL,
    person       text             NOT NULL,
    since        timestamptz      NOT NULL,
    sign_in_seq  bigint           NOT NULL,
    work_order   text             NOT NULL DEFAULT '',
    operation    text             NOT NULL DEFAULT '',
    share        double precision NOT NULL,
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (station, person)
);

-- Labor reports that were odd but not refused: a sign-in where the person already is
-- (ignored), a sign-out without a sign-in (no-op), a forgotten sign-out closed by expiry
-- (seq: the sign-in's), a late report applied at the person's booked time.
CREATE TABLE labor_issue (
    seq          bigint      NOT NULL,
    kind         text        NOT NULL
        CHECK (kind IN ('duplicate_sign_in', 'sign_out_without_sign_in', 'expired', 'late')),
    station      text        NOT NULL,
    person       text        NOT NULL,
    ts           timestamptz NOT NULL,  -- the report's time (expired: the expiry)
    applied_ts   timestamptz NOT NULL,  -- when it took effect
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seq, kind)
);
CREATE INDEX labor_issue_ts ON labor_issue (ts);

-- Public: every labor segment with its hours (open ones up to now, at most to bound_ts).
CREATE VIEW v_labor_segments AS
SELECT s.person, s.station, m.line, s.start_ts, s.end_ts, s.bound_ts,
       s.end_ts IS NULL AS is_open,
       NULLIF(s.work_order, '') AS work_order, NULLIF(s.operation, '') AS operation,
       w.order_no, w.product, s.shift_date, NULLIF(s.shift_name, '') AS shift_name,
       s.share, s.closed_by,
       GREATEST(EXTRACT(EPOCH FROM (
           COALESCE(s.end_ts, LEAST(now(), s.bound_ts)) - s.start_ts))::double precision, 0)
           * s.share / 3600.0 AS hours
FROM labor_segment s
LEFT JOIN plant_machine m ON m.machine = s.station
LEFT JOIN work_order w ON w.work_order = s.work_order;

-- Public: who is at which station now.
CREATE VIEW v_station_people AS
SELECT p.station, m.line, p.person, p.since, NULLIF(p.work_order, '') AS work_order,
       NULLIF(p.operation, '') AS operation, p.share,
       GREATEST(EXTRACT(EPOCH FROM (now() - p.since))::double precision, 0) / 3600.0
           AS hours_signed_in
FROM labor_presence p
LEFT JOIN plant_machine m ON m.machine = p.station;

-- Public: labor hours per shift and person (shift_name NULL: outside every shift).
CREATE VIEW v_labor_by_shift_person AS
SELECT shift_date, shift_name, person, sum(hours) AS hours,
       array_agg(DISTINCT station ORDER BY station) AS stations,
       count(DISTINCT work_order) AS work_orders, bool_or(is_open) AS is_open,
       min(start_ts) AS first_ts, max(COALESCE(end_ts, LEAST(now(), bound_ts))) AS last_ts
FROM v_labor_segments
GROUP BY shift_date, shift_name, person;

-- Public: labor hours per work order, operation and person (work_order NULL: time with no
-- work order running at the station).
CREATE VIEW v_labor_by_work_order AS
SELECT work_order, operation, order_no, product, person, sum(hours) AS hours,
       array_agg(DISTINCT station ORDER BY station) AS stations, bool_or(is_open) AS is_open,
       min(start_ts) AS first_ts, max(COALESCE(end_ts, LEAST(now(), bound_ts))) AS last_ts
FROM v_labor_segments
GROUP BY work_order, operation, order_no, product, person;

-- Public: the odd labor reports (see labor_issue).
CREATE VIEW v_labor_issues AS
SELECT i.seq, i.kind, i.station, m.line, i.person, i.ts, i.applied_ts
FROM labor_issue i
LEFT JOIN plant_machine m ON m.machine = i.station;
