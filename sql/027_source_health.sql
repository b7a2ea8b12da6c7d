-- Source health (issue 11 item 5): each collector process upserts, every few seconds, one row
-- per endpoint it reads (mesflow/source_health.py). The sources page reads v_source_health and
-- v_machine_last_input; nothing in the dataflow depends on these.
CREATE TABLE source_health (
    kind               text        NOT NULL CHECK (kind IN ('mqtt', 'opcua', 'sparkplug', 'crm_api', 'other')),
    instance           text        NOT NULL,           -- MQTT client id, host id or host name
    endpoint           text        NOT NULL,           -- broker URL (password redacted), OPC UA endpoint, ...
    connected          boolean     NOT NULL,
    since              timestamptz,                    -- connected / disconnected since
    last_message_at    timestamptz,                    -- last input stored from this endpoint
    messages_total     bigint      NOT NULL DEFAULT 0, -- since the collector process started
    errors_total       bigint      NOT NULL DEFAULT 0,
    last_error         text,
    last_error_at      timestamptz,
    report_interval_s  double precision NOT NULL DEFAULT 5,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- The previous report's count and time: messages per second without a history table.
    prev_messages_total bigint,
    prev_updated_at     timestamptz,
    PRIMARY KEY (kind, instance, endpoint)
);
COMMENT ON TABLE source_health IS 'Connection health of each collector endpoint, upserted by the collectors (mesflow).';

-- messages_per_s: over the last report interval (NULL after the first report; 0 when the
-- process restarted and its count began again). stale: no report for 3 intervals: the
-- collector is down or cannot reach the database, so `connected` is no longer known.
CREATE VIEW v_source_health AS
SELECT kind, instance, endpoint, connected, since, last_message_at, messages_total,
       errors_total, last_error, last_error_at, report_interval_s, updated_at,
       CASE WHEN prev_updated_at IS NOT NULL AND updated_at > prev_updated_at
            THEN GREATEST(messages_total - prev_messages_total, 0)::double precision
                 / EXTRACT(EPOCH FROM (updated_at - prev_updated_at))::double precision
       END AS messages_per_s,
       updated_at < now() - make_interval(secs => 3 * report_interval_s) AS stale
FROM source_health;

-- The last input the ingest log holds per machine (by the (machine, seq) index: one row
-- read per machine) next to the last event time the dataflow has seen.
CREATE VIEW v_machine_last_input AS
SELECT m.machine, m.line, m.position AS machine_position, l.position AS line_position,
       li.received_at, li.source, s.last_event_ts,
       EXTRACT(EPOCH FROM (now() - li.received_at))::double precision AS silent_s
FROM plant_machine m
JOIN plant_line l USING (line)
LEFT JOIN machine_status s USING (machine)
LEFT JOIN LATERAL (
    SELECT received_at, source FROM ingest_log g
    WHERE g.machine = m.machine ORDER BY g.seq DESC LIMIT 1
) li ON true;
