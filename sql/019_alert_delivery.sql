-- Alert delivery (docs/alerts.md, "Delivery"): one row per message to send, written by the
-- results sink in the same transaction as the alert step (notify/alert_outbox.py), sent by
-- `mesflow run notify` (notify/alert_dispatcher.py) with leases, retries and a dead letter,
-- like the CRM outbox (008_outbox.sql).

CREATE TABLE alert_delivery (
    id               bigserial   PRIMARY KEY,
    -- alert_id|step|level|target: a step re-emitted after a restart is not enqueued twice.
    dedupe           text        NOT NULL UNIQUE,
    alert_id         text        NOT NULL,
    step             text        NOT NULL,        -- opened | escalated | resolved | acknowledged
    level            integer     NOT NULL,
    severity         text        NOT NULL,
    target           text        NOT NULL,        -- 'email:<person>' | 'channel:<name>'
    person           text,                        -- e-mail: the person
    channel          text        NOT NULL,        -- 'email' or the channel's name
    channel_type     text        NOT NULL
                     CHECK (channel_type IN ('email', 'wecom', 'dingtalk', 'feishu', 'webhook')),
    address          text,                        -- e-mail address (robot URLs are secrets: never here)
    language         text        NOT NULL DEFAULT 'zh',
    payload          jsonb       NOT NULL,        -- what the message says: the step and its mentions
    event_at         timestamptz NOT NULL,        -- event time of the step
    created_at       timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'failed', 'stale')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,                 -- lease of the dispatcher sending it
    shorten          integer     NOT NULL DEFAULT 0,  -- halvings of the size limit after "too long"
    last_error       text,
    error_code       text,                        -- the platform's errcode/code, or HTTP status
    message_id       text,                        -- the message it went out in (merged: shared)
    sent_at          timestamptz
);
CREATE INDEX alert_delivery_due ON alert_delivery (channel, next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX alert_delivery_alert ON alert_delivery (alert_id, id);

-- One row per channel (and 'email' for SMTP): its health, as the dispatcher last saw it.
-- bad_key is permanent until the channel's URL or secret changes (config_hash).
CREATE TABLE alert_channel (
    name             text        PRIMARY KEY,
    channel_type     text        NOT NULL,
    config_hash      text,                        -- sha256 of URL and secret: a change clears bad_key
    state            text        NOT NULL DEFAULT 'ok'
                     CHECK (state IN ('ok', 'failing', 'bad_key')),
    last_error       text,
    error_code       text,
    last_error_at    timestamptz,
    last_success_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The per-robot budget (20 messages a minute), shared by every dispatcher process: the
-- send times inside the sliding window, read and written under SELECT ... FOR UPDATE.
CREATE TABLE robot_budget (
    channel          text        PRIMARY KEY,
    sends            timestamptz[] NOT NULL DEFAULT '{}'
);

-- Wake the dispatchers at once instead of waiting for their next poll.
CREATE FUNCTION alert_delivery_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mesflow_alert_delivery', '');
    RETURN NULL;
END $$;
CREATE TRIGGER alert_delivery_wake AFTER INSERT ON alert_delivery
    FOR EACH STATEMENT EXECUTE FUNCTION alert_delivery_wake();

-- Public: one row per delivery.
CREATE VIEW v_alert_deliveries AS
SELECT d.id,
       d.alert_id,
       d.step,
       d.level,
       d.severity,
       d.target,
       d.person,
       d.channel,
       d.channel_type,
       d.status,
       d.attempts,
       d.last_error,
       d.error_code,
       d.event_at,
       d.created_at,
       d.next_attempt_at,
       d.sent_at,
       d.message_id
FROM alert_delivery d;

-- Public: one row per channel that has deliveries or a recorded health.
CREATE VIEW v_channel_status AS
WITH counts AS (
    SELECT channel,
           min(channel_type) AS channel_type,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'sent') AS sent,
           min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending
    FROM alert_delivery
    GROUP BY channel
)
SELECT COALESCE(c.name, n.channel) AS channel,
       COALESCE(c.channel_type, n.channel_type) AS channel_type,
       COALESCE(c.state, 'ok') AS status,
       c.last_error,
       c.error_code,
       c.last_error_at,
       c.last_success_at,
       COALESCE(n.pending, 0) AS pending,
       COALESCE(n.failed, 0) AS failed,
       COALESCE(n.sent, 0) AS sent,
       n.oldest_pending
FROM alert_channel c
FULL JOIN counts n ON n.channel = c.name;
