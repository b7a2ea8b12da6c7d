-- CRM order intake (collectors/crm_api.py, docs/crm.md).
-- The CRM sends full order snapshots with a rising version; the intake keeps the current
-- snapshot here, every accepted change in order_history, and hands the canonical `order`
-- and `work_order` events to the ingest log in the same transaction, so the dataflow sees
-- exactly the accepted changes, in order.

-- Current snapshot per CRM order. A cancellation or a hold is a status, never a delete.
CREATE TABLE crm_order (
    order_no    text        PRIMARY KEY,
    version     bigint      NOT NULL CHECK (version >= 0),
    customer    text        NOT NULL,
    priority    integer     NOT NULL CHECK (priority >= 1),    -- 1 is the most urgent
    product     text        NOT NULL,
    qty         integer     NOT NULL CHECK (qty > 0),
    due         timestamptz NOT NULL,
    status      text        NOT NULL CHECK (status IN ('open', 'on_hold', 'cancelled', 'closed')),
    event_ts    timestamptz NOT NULL,                          -- CRM-side time of this snapshot
    changed_by  text        NOT NULL,                          -- CRM client id that sent it
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The MES's unit of execution: one CRM order feeds one or more work orders. Work orders
-- carry no CRM version, so the MES numbers their accepted changes (`revision`).
CREATE TABLE work_order (
    work_order  text        PRIMARY KEY,
    order_no    text        NOT NULL REFERENCES crm_order (order_no),
    product     text        NOT NULL,
    qty         integer     NOT NULL CHECK (qty > 0),
    machine     text,
    revision    integer     NOT NULL DEFAULT 1,
    event_ts    timestamptz NOT NULL,
    changed_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX work_order_order_no ON work_order (order_no);

-- Every accepted change: who (CRM client id), when (accepted_at; event_ts is the CRM's
-- own time), what ({"field": {"old": x, "new": y}}, old null on creation).
-- work_order is NULL for a change of the order itself; `version` is then the order's
-- version, else the work order's revision.
CREATE TABLE order_history (
    id           bigserial   PRIMARY KEY,
    order_no     text        NOT NULL,
    work_order   text,
    version      bigint      NOT NULL,
    changed_by   text        NOT NULL,
    accepted_at  timestamptz NOT NULL DEFAULT now(),
    event_ts     timestamptz NOT NULL,
    delivery_id  text,
    change       jsonb       NOT NULL
);
CREATE UNIQUE INDEX order_history_order_version
    ON order_history (order_no, version) WHERE work_order IS NULL;
CREATE UNIQUE INDEX order_history_wo_revision
    ON order_history (work_order, version) WHERE work_order IS NOT NULL;
CREATE INDEX order_history_order ON order_history (order_no, id);

-- The inbox: one row per delivery id (webhook-id or Idempotency-Key) per CRM client, so a
-- redelivered request is answered "duplicate" and changes nothing.
CREATE TABLE intake_delivery (
    client       text        NOT NULL,
    delivery_id  text        NOT NULL,
    kind         text        NOT NULL,                          -- order | work_order
    key          text        NOT NULL,                          -- order_no or work_order
    outcome      text,                                          -- accepted | ignored | unchanged
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client, delivery_id)
);

-- Public: every accepted change with its author, newest last.
CREATE VIEW v_order_history AS
SELECT h.order_no, h.work_order, h.version, h.changed_by, h.accepted_at, h.event_ts,
       h.delivery_id, h.change
FROM order_history h;
