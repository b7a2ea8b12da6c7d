-- Inspections (issue 13): first-article (首检), patrol (巡检) and last-piece (末检) reports,
-- what each run of a work order at a machine owes, and the flags the boards and alerts
-- read (streams/inspections.py, docs/inspections.md).

-- One row per inspection report, keyed by its ingest-log seq (a replay writes it again).
-- characteristics: [{name, value, lsl, usl, unit, ok}], `ok` judged from lsl/usl when the
-- report gave none (NULL: not judged). defects: [{code, qty}].
CREATE TABLE inspection (
    seq             bigint PRIMARY KEY,
    ts              timestamptz NOT NULL,
    machine         text NOT NULL,
    work_order      text NOT NULL,
    operation       text,
    stage           text NOT NULL CHECK (stage IN ('first', 'patrol', 'last')),
    result          text NOT NULL CHECK (result IN ('pass', 'fail')),
    sample_qty      integer,
    characteristics jsonb NOT NULL DEFAULT '[]',
    defects         jsonb NOT NULL DEFAULT '[]',
    note            text,
    operator        text,
    product         text,  -- as known when it was taken (the views fall back on work_order)
    all_ok          boolean
);
CREATE INDEX inspection_ts ON inspection (ts);
CREATE INDEX inspection_wo ON inspection (work_order, machine, ts);

-- One row per run: a work order (and operation) at a machine from its wo_start to its
-- wo_end or the next wo_start there. Rewritten whole by the dataflow.
-- slots: every inspection due so far, [{stage, due, day, status, at, result}], status
-- on_time | late | missed | open; day: the plant-local date of `due`.
CREATE TABLE inspection_run (
    work_order          text NOT NULL,
    machine             text NOT NULL,
    operation           text NOT NULL DEFAULT '',
    start_ts            timestamptz NOT NULL,
    end_ts              timestamptz,
    product             text,
    first_article       text NOT NULL
        CHECK (first_article IN ('off', 'pending', 'passed', 'failed', 'missing')),
    blocked             boolean NOT NULL,
    parts_made          integer NOT NULL,
    patrol_every_min    double precision NOT NULL,
    next_patrol_due     timestamptz,
    patrol_missed_since timestamptz,
    last_piece          text NOT NULL CHECK (last_piece IN ('off', 'pending', 'done', 'missing')),
    slots               jsonb NOT NULL DEFAULT '[]',
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (work_order, machine, operation, start_ts)
);
CREATE INDEX inspection_run_open ON inspection_run (machine) WHERE end_ts IS NULL;

-- Flag episodes: open while until_ts is NULL; until_ts = since: withdrawn (an inspection
-- arrived after the rows that had made it seem missing), it never was.
CREATE TABLE inspection_flag (
    work_order text NOT NULL,
    machine    text NOT NULL,
    operation  text NOT NULL DEFAULT '',
    run_start  timestamptz NOT NULL,
    flag       text NOT NULL CHECK (flag IN ('first_article', 'patrol_missed', 'last_piece')),
    since      timestamptz NOT NULL,
    until_ts   timestamptz,
    detail     text NOT NULL,
    product    text,
    blocking   boolean NOT NULL,
    parts_made integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (work_order, machine, operation, run_start, flag, since)
);
CREATE INDEX inspection_flag_open ON inspection_flag (machine) WHERE until_ts IS NULL;

-- Public views (docs/sql-views.md).

CREATE VIEW v_inspections AS
SELECT i.seq, i.ts, i.machine, m.line AS line, i.work_order, i.operation,
       COALESCE(i.product, w.product) AS product, i.stage, i.result, i.sample_qty,
       i.characteristics, i.defects, i.note, i.operator, i.all_ok
FROM inspection i
LEFT JOIN work_order w ON w.work_order = i.work_order
LEFT JOIN plant_machine m ON m.machine = i.machine;

-- Runs with their inspection status: what a station owes now (end_ts NULL: running).
CREATE VIEW v_inspection_runs AS
SELECT r.work_order, r.machine, m.line AS line, r.operation, r.start_ts, r.end_ts,
       COALESCE(r.product, w.product) AS product, r.first_article, r.blocked, r.parts_made,
       r.patrol_every_min, r.next_patrol_due, r.patrol_missed_since, r.last_piece, r.updated_at
FROM inspection_run r
LEFT JOIN work_order w ON w.work_order = r.work_order
LEFT JOIN plant_machine m ON m.machine = r.machine;

-- Open flags: a first article failed or missing (blocking: the plant waits for it), a
-- patrol missed, a last piece missing.
CREATE VIEW v_inspection_flags AS
SELECT f.work_order, f.machine, m.line AS line, f.operation, f.run_start, f.flag,
       f.detail, f.since, COALESCE(f.product, w.product) AS product, f.blocking,
       f.parts_made
FROM inspection_flag f
LEFT JOIN work_order w ON w.work_order = f.work_order
LEFT JOIN plant_machine m ON m.machine = f.machine
WHERE f.until_ts IS NULL;

-- Compliance per product, machine, plant-local day and stage: inspections due, done on
-- time, done late, missed, failed (a done inspection whose result was fail), still open.
CREATE VIEW v_inspection_compliance AS
SELECT (s ->> 'day')::date AS day, COALESCE(r.product, w.product) AS product, r.machine,
       m.line AS line, s ->> 'stage' AS stage,
       count(*) FILTER (WHERE s ->> 'status' <> 'open') AS due,
       count(*) FILTER (WHERE s ->> 'status' = 'on_time') AS done_on_time,
       count(*) FILTER (WHERE s ->> 'status' = 'late') AS done_late,
       count(*) FILTER (WHERE s ->> 'status' = 'missed') AS missed,
       count(*) FILTER (WHERE s ->> 'result' = 'fail') AS failed,
       count(*) FILTER (WHERE s ->> 'status' = 'open') AS open
FROM inspection_run r
CROSS JOIN LATERAL jsonb_array_elements(r.slots) AS s
LEFT JOIN work_order w ON w.work_order = r.work_order
LEFT JOIN plant_machine m ON m.machine = r.machine
GROUP BY 1, 2, 3, 4, 5;
