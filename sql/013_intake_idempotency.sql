-- CRM intake idempotency (collectors/crm_api.py, docs/crm.md): a delivery id reused with a
-- different request is a conflict (409), and a true repeat gets the first answer again,
-- so the inbox keeps a hash of the validated request and the answer given.
ALTER TABLE intake_delivery
    ADD COLUMN request_hash bytea,      -- sha256 of the kind and the validated body
    ADD COLUMN status_code  smallint,   -- HTTP status of the first answer
    ADD COLUMN response     jsonb;      -- its body
