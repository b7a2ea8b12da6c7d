-- The metrics engine (docs/metrics.md): OEE figures per machine per hour and per shift
-- instance, computed once in event time by the dataflow and stored. Queries only add
-- stored figures up, so a KPI never changes with the window a dashboard asks for.

ALTER TABLE machine_state_interval
    ADD COLUMN is_microstop boolean;   -- idle/down only: shorter than microstop_seconds, whole duration

CREATE TABLE machine_kpi (
    machine          text             NOT NULL,
    bucket           text             NOT NULL CHECK (bucket IN ('hour', 'shift')),
    bucket_start     timestamptz      NOT NULL,
    bucket_end       timestamptz      NOT NULL,
    shift_date       date,            -- shift buckets: plant-local date the shift starts on
    shift_name       text,
    planned_s        double precision NOT NULL DEFAULT 0,  -- PBT: planned busy time
    running_s        double precision NOT NULL DEFAULT 0,  -- running inside planned time
    microstop_s      double precision NOT NULL DEFAULT 0,  -- micro-stop time (counts as APT)
    microstop_count  integer          NOT NULL DEFAULT 0,  -- micro-stops starting in the bucket
    idle_s           double precision NOT NULL DEFAULT 0,  -- non-micro idle inside planned time
    down_s           double precision NOT NULL DEFAULT 0,  -- non-micro down inside planned time
    setup_s          double precision NOT NULL DEFAULT 0,
    offline_s        double precision NOT NULL DEFAULT 0,
    planned_stop_s   double precision NOT NULL DEFAULT 0,  -- planned_stop in planned windows (not in PBT)
    good             bigint           NOT NULL DEFAULT 0,  -- parts whose ts is in planned time
    scrap            bigint           NOT NULL DEFAULT 0,
    ideal_s          double precision NOT NULL DEFAULT 0,  -- sum of ideal cycle time x parts
    failures         integer          NOT NULL DEFAULT 0,  -- non-micro down intervals starting here
    failure_s        double precision NOT NULL DEFAULT 0,  -- their whole durations
    all_good         bigint           NOT NULL DEFAULT 0,  -- every part in the bucket, planned or not
    all_scrap        bigint           NOT NULL DEFAULT 0,
    updated_at       timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (machine, bucket, bucket_start)
);
CREATE INDEX machine_kpi_by_time ON machine_kpi (bucket, bucket_start);

-- Availability losses by reason for the same buckets (non-micro stops, setup, offline,
-- inside planned time). Rewritten as a set per bucket when a reason is re-attributed.
CREATE TABLE machine_kpi_reason (
    machine       text             NOT NULL,
    bucket        text             NOT NULL,
    bucket_start  timestamptz      NOT NULL,
    reason        text             NOT NULL,
    seconds       double precision NOT NULL,
    stops         integer          NOT NULL,  -- stops of this reason starting in the bucket
    PRIMARY KEY (machine, bucket, bucket_start, reason)
);

-- KPI formulas, once (ISO 22400-2 time model, docs/metrics.md). Null rules:
-- PBT = 0: every KPI is null; P null when APT = 0; Q null when no parts; then OEE = 0.
CREATE FUNCTION kpi_availability(planned double precision, apt double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS
$$ SELECT CASE WHEN planned > 0 THEN apt / planned END $$;

CREATE FUNCTION kpi_performance(planned double precision, apt double precision,
                                ideal double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS
$$ SELECT CASE WHEN planned > 0 AND apt > 0 THEN ideal / apt END $$;

CREATE FUNCTION kpi_quality(planned double precision, good numeric, scrap numeric)
RETURNS double precision LANGUAGE sql IMMUTABLE AS
$$ SELECT CASE WHEN planned > 0 AND good + scrap <> 0 THEN (good / (good + scrap))::double precision END $$;

CREATE FUNCTION kpi_oee(planned double precision, apt double precision, ideal double precision,
                        good numeric, scrap numeric)
RETURNS double precision LANGUAGE sql IMMUTABLE AS
$$ SELECT CASE WHEN planned > 0 THEN COALESCE(
       kpi_availability(planned, apt) * kpi_performance(planned, apt, ideal)
       * kpi_quality(planned, good, scrap), 0) END $$;
