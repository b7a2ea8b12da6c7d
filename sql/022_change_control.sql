-- Change control (mesflow/change_control.py, docs/crm.md "Change control").
-- An order is locked once one of its work orders has started. A change of a locked order
-- that touches qty, due, product or cancels it is held here as a change request until a
-- planner (role manager) approves or rejects it; a change of an unlocked order is applied
-- at once and recorded here as `applied`, so every change that reaches the floor has one
-- row, one arrival time and one response time.

CREATE TABLE change_request (
    id            bigserial   PRIMARY KEY,
    order_no      text        NOT NULL REFERENCES crm_order (order_no),
    from_version  bigint      NOT NULL,                  -- the order's version when it arrived
    to_version    bigint      NOT NULL,                  -- the version the change would give it
    requested_by  text        NOT NULL,                  -- CRM client id or dashboard user
    source        text        NOT NULL CHECK (source IN ('crm', 'person')),
    received_at   timestamptz NOT NULL DEFAULT now(),    -- the change's arrival
    change        jsonb       NOT NULL,                  -- {"field": {"old": x, "new": y}}
    snapshot      jsonb       NOT NULL,                  -- the full requested snapshot
    status        text        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'rejected', 'superseded', 'applied')),
    decided_by    text,
    decided_at    timestamptz,
    comment       text,
    applied_at    timestamptz,                           -- when it reached crm_order
    superseded_by bigint      REFERENCES change_request (id),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
-- At most one pending request per order: a newer one supersedes it (in the same
-- transaction, under the intake's advisory lock; the index makes it a rule).
CREATE UNIQUE INDEX change_request_one_pending ON change_request (order_no)
    WHERE status = 'pending';
CREATE INDEX change_request_order ON change_request (order_no, id);

-- One notice per affected machine of an applied change, shown on the andon tile and the
-- operator tablet until someone acknowledges it there.
CREATE TABLE floor_notice (
    id                bigserial   PRIMARY KEY,
    change_request_id bigint      NOT NULL REFERENCES change_request (id),
    order_no          text        NOT NULL,
    summary           text        NOT NULL,              -- "qty 1000 → 1500; due ..."
    machine           text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    acknowledged_by   text,
    acknowledged_at   timestamptz,
    UNIQUE (change_request_id, machine),
    CHECK ((acknowledged_by IS NULL) = (acknowledged_at IS NULL))
);
-- The andon and the tablet read only the open ones: a small partial index keeps that cheap.
CREATE INDEX floor_notice_open ON floor_notice (machine) WHERE acknowledged_at IS NULL;

-- Is the order locked? Decided in the intake's transaction, from SQL, under the advisory
-- lock the intake takes (pg_advisory_xact_lock(hashtext('crm_order'), hashtext(order_no))).
-- Started = the dataflow saw the work order start (work_order_progress.started_at), or a
-- `wo_start` report for one of its work orders is in the ingest log past the point the
-- slowest dataflow has committed (dataflow_progress.last_seq commits with the results):
-- so a start that the dataflow has not processed yet still locks the order.
CREATE FUNCTION order_locked(p_order text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
               SELECT 1 FROM work_order_progress
               WHERE order_no = p_order AND started_at IS NOT NULL)
        OR EXISTS (
               SELECT 1
               FROM ingest_log l
               JOIN work_order w ON w.order_no = p_order
               WHERE l.seq > (SELECT COALESCE(min(last_seq), 0) FROM dataflow_progress)
                 AND l.error IS NULL
                 AND position('"wo_start"'::bytea IN l.payload) > 0
                 AND convert_from(l.payload, 'UTF8')::jsonb ->> 'kind' = 'wo_start'
                 AND convert_from(l.payload, 'UTF8')::jsonb ->> 'work_order' = w.work_order)
$$;

-- Public: every change request and its decision (who, when, what, why).
CREATE VIEW v_change_requests AS
SELECT c.id, c.order_no, c.from_version, c.to_version, c.requested_by, c.source,
       c.received_at, c.change, c.snapshot, c.status, c.decided_by, c.decided_at, c.comment,
       c.applied_at, c.superseded_by,
       (SELECT count(*) FROM floor_notice n WHERE n.change_request_id = c.id) AS notices,
       (SELECT count(*) FROM floor_notice n
        WHERE n.change_request_id = c.id AND n.acknowledged_at IS NOT NULL)  AS acknowledged
FROM change_request c;

-- Public: change response time, per change that reached the floor: arrival (received_at)
-- → the first acknowledgement on the floor. NULL seconds while nobody has acknowledged.
CREATE VIEW v_change_response AS
SELECT c.id             AS change_request_id,
       c.order_no,
       c.source,
       c.status,
       c.received_at,
       c.applied_at,
       a.first_ack_at   AS acknowledged_at,
       a.first_ack_by   AS acknowledged_by,
       EXTRACT(EPOCH FROM (a.first_ack_at - c.received_at))::double precision AS response_s
FROM change_request c
JOIN LATERAL (
    SELECT min(n.acknowledged_at) AS first_ack_at,
           (array_agg(n.acknowledged_by ORDER BY n.acknowledged_at)
               FILTER (WHERE n.acknowledged_at IS NOT NULL))[1] AS first_ack_by,
           count(*) AS notices
    FROM floor_notice n WHERE n.change_request_id = c.id
) a ON a.notices > 0
WHERE c.applied_at IS NOT NULL;

-- Public: the notices the floor has not acknowledged yet, per machine (andon, tablet).
CREATE VIEW v_floor_notice_open AS
SELECT n.id, n.change_request_id, n.order_no, n.summary, n.machine, n.created_at
FROM floor_notice n
WHERE n.acknowledged_at IS NULL;
