-- The outbox (ARCHITECTURE rule 4): callbacks to send, written in the same transaction as
-- the results that caused them; `mesflow run notify` (notify/dispatcher.py) delivers them,
-- in order per (endpoint, aggregate), with retries, backoff and a dead letter (status
-- 'failed'). Delivered rows stay for audit.

-- A delivery target; its URL and secret come from settings, keyed by `name`. An HTTP 410
-- from it sets disabled_at: nothing more is sent to it until its URL changes or an
-- operator clears disabled_at (docs/crm.md).
CREATE TABLE webhook_endpoint (
    name             text        PRIMARY KEY,
    url              text        NOT NULL,
    disabled_at      timestamptz,
    disabled_reason  text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id               bigserial   PRIMARY KEY,                   -- also the per-order sequence
    webhook_id       text        NOT NULL UNIQUE
                     DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    endpoint         text        NOT NULL DEFAULT 'crm',
    aggregate        text        NOT NULL,                      -- order_no: the unit of ordering
    event_type       text        NOT NULL,                      -- order.milestone, ...
    payload          jsonb       NOT NULL,                      -- the `data` of the callback
    dedupe           text,                                      -- a repeated key is not enqueued again
    created_at       timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,                               -- lease of the dispatcher sending it
    last_error       text,
    last_http_status integer,
    delivered_at     timestamptz
);
-- A dataflow restarted from a snapshot may emit a callback again: the key makes enqueue
-- idempotent, like every other sink.
CREATE UNIQUE INDEX outbox_dedupe ON outbox (endpoint, dedupe) WHERE dedupe IS NOT NULL;
-- The claim query: due rows, and "is there an older pending row of the same order?".
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_pending_aggregate ON outbox (endpoint, aggregate, id) WHERE status = 'pending';
CREATE INDEX outbox_aggregate ON outbox (aggregate, id);

-- Wake the dispatchers at once instead of waiting for their next poll.
CREATE FUNCTION outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mesflow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_wake AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake();

-- Public: one row per callback with its delivery state.
CREATE VIEW v_outbox_status AS
SELECT o.id,
       o.webhook_id,
       o.endpoint,
       o.aggregate AS order_no,
       o.event_type,
       o.status,
       o.attempts,
       o.created_at,
       o.next_attempt_at,
       o.delivered_at,
       o.last_http_status,
       o.last_error,
       o.payload,
       CASE WHEN o.status = 'pending'
            THEN EXTRACT(EPOCH FROM (now() - o.created_at))::double precision END AS pending_seconds,
       e.disabled_at IS NOT NULL AS endpoint_disabled
FROM outbox o
LEFT JOIN webhook_endpoint e ON e.name = o.endpoint;

-- Public: counts per endpoint and status, for a health tile or an alert rule.
CREATE VIEW v_outbox_summary AS
SELECT o.endpoint, o.status, count(*) AS messages,
       min(o.created_at) AS oldest, max(o.created_at) AS newest
FROM outbox o
GROUP BY o.endpoint, o.status;
