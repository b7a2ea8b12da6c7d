-- The machine an input names, and a hash of its content (issue 8).
-- `machine`: set by the collectors and the replay from the event's `machine` field (NULL
-- for orders and for inputs that could not be decoded). With the index on (machine, seq),
-- one machine's history can be read back from the log, e.g. to recompute its figures
-- after late data.
-- `content_key`: a 16-byte hash of the canonical payload. An input whose dedupe_key is
-- already in the log but whose content differs is not a duplicate: it is stored as an
-- `id_conflict` error row and dead-lettered, never dropped silently.
ALTER TABLE ingest_log ADD COLUMN machine text;
ALTER TABLE ingest_log ADD COLUMN content_key bytea;
CREATE INDEX ingest_log_machine_seq ON ingest_log (machine, seq);
COMMENT ON COLUMN ingest_log.machine IS 'Machine the input names (NULL: orders, undecodable input).';
COMMENT ON COLUMN ingest_log.content_key IS '16-byte BLAKE2b hash of the canonical payload (id_conflict check).';
