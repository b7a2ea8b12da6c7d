-- Results of the dataflow. Every row is written by an idempotent upsert keyed as below,
-- so a replay or a resume after a crash rewrites the same values instead of adding to them.

-- One row per state interval: from a `state` event to the machine's next one.
CREATE TABLE machine_state_interval (
    machine     text             NOT NULL,
    start_ts    timestamptz      NOT NULL,
    end_ts      timestamptz,                 -- null while the interval is open
    state       text             NOT NULL,
    reason      text,                        -- from the state event or a later operator report
    work_order  text,
    duration_s  double precision NOT NULL,   -- to end_ts; 0 while open (see v_state_intervals)
    first_seen_at timestamptz    NOT NULL DEFAULT clock_timestamp(),  -- when the row was first written
    updated_at  timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (machine, start_ts)
);

-- The current status of every machine (one row per machine).
CREATE TABLE machine_status (
    machine        text        PRIMARY KEY,
    state          text        NOT NULL,
    since          timestamptz NOT NULL,
    reason         text,
    work_order     text,
    last_event_ts  timestamptz NOT NULL,
    good_total     bigint      NOT NULL DEFAULT 0,
    scrap_total    bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Per machine and hour of the plant's time zone: seconds in each state and parts counted.
CREATE TABLE machine_hour (
    machine         text             NOT NULL,
    hour_start      timestamptz      NOT NULL,
    running_s       double precision NOT NULL DEFAULT 0,
    idle_s          double precision NOT NULL DEFAULT 0,
    down_s          double precision NOT NULL DEFAULT 0,
    setup_s         double precision NOT NULL DEFAULT 0,
    planned_stop_s  double precision NOT NULL DEFAULT 0,
    offline_s       double precision NOT NULL DEFAULT 0,
    good            bigint           NOT NULL DEFAULT 0,
    scrap           bigint           NOT NULL DEFAULT 0,
    updated_at      timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (machine, hour_start)
);
CREATE INDEX machine_hour_by_hour ON machine_hour (hour_start);
