-- Alerts (docs/alerts.md): one row per alert and one per step of its life, written by the
-- results sink from the AlertRow steps of the alert engine (streams/alert_engine.py), in
-- the same transaction as the figures that caused them.
--
-- Every write is idempotent: a step is keyed (alert_id, step, level), and the alert row only
-- moves forward (the highest level, the first acknowledgement, the resolve), so a replay or
-- a restart from a snapshot rewrites nothing and adds nothing.

CREATE TABLE alert (
    alert_id         text        PRIMARY KEY,     -- <rule>:<scope>:<condition start, us>
    rule             text        NOT NULL,
    kind             text        NOT NULL,
    scope            text        NOT NULL,        -- machine:IM-03 | line:L1 | plant | order:SO-1
    machine          text,
    line             text,
    order_no         text,
    severity         text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    level            integer     NOT NULL,        -- escalation level reached, 0 = first
    started_at       timestamptz NOT NULL,        -- the condition began (event time)
    opened_at        timestamptz NOT NULL,        -- the alert opened (level 0 reached)
    escalated_at     timestamptz,                 -- the last escalation
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    facts            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        GENERATED ALWAYS AS (
                         CASE WHEN resolved_at IS NOT NULL THEN 'resolved'
                              WHEN acknowledged_at IS NOT NULL THEN 'acknowledged'
                              ELSE 'open' END) STORED,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_open ON alert (opened_at DESC) WHERE resolved_at IS NULL;
CREATE INDEX alert_opened ON alert (opened_at DESC);
CREATE INDEX alert_machine ON alert (machine, opened_at DESC);

CREATE TABLE alert_step (
    alert_id     text        NOT NULL REFERENCES alert (alert_id) ON DELETE CASCADE,
    step         text        NOT NULL CHECK (step IN ('opened', 'escalated', 'acknowledged', 'resolved')),
    level        integer     NOT NULL,
    at           timestamptz NOT NULL,            -- event time of the step
    facts        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    people       text[]      NOT NULL DEFAULT '{}',
    channels     text[]      NOT NULL DEFAULT '{}',
    quiet_until  timestamptz,                     -- quiet hours: delivered from then
    stored_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, step, level)
);
CREATE INDEX alert_step_at ON alert_step (at DESC);

-- One row per alert. duration_s: from the condition's start to its end, or to now (the
-- later of now and the last step, so history replayed ahead of the clock is not negative).
CREATE VIEW v_alerts AS
SELECT a.alert_id, a.rule, a.kind, a.scope, a.machine, a.line, a.order_no, a.severity,
       a.status, a.level, a.started_at, a.opened_at, a.escalated_at, a.acknowledged_at,
       a.acknowledged_by, a.resolved_at,
       GREATEST(EXTRACT(EPOCH FROM (
           COALESCE(a.resolved_at, GREATEST(now(), a.opened_at)) - a.started_at)), 0)::double precision
           AS duration_s,
       a.facts
FROM alert a;

-- One row per step, with its alert's scope: the history an auditor reads.
CREATE VIEW v_alert_history AS
SELECT s.alert_id, s.step, s.level, s.at, a.rule, a.kind, a.scope, a.machine, a.line,
       a.order_no, a.severity, s.people, s.channels, s.quiet_until, s.facts
FROM alert_step s
JOIN alert a USING (alert_id);
