-- The ingest log partitioned by machine (issue 14: scale-out on a Bytewax cluster).
--
-- `part` is fixed for the life of a database: 16 machine partitions (1..16, from a hash of
-- the machine id) and partition 0 for every row that names no machine (orders, work orders
-- without a machine, inputs that could not be decoded). A dataflow process reads only the
-- partitions Bytewax gives it (`WHERE part = ANY(..) AND seq > pos ORDER BY seq`), so all
-- rows of one machine are read by one reader, in seq order. Writers are unchanged: they
-- still serialise on the advisory lock, so seq order is commit order in every partition.
--
-- The hash is md5 (immutable, the same in every PostgreSQL version): the same function in
-- Python is streams/log_source.py `part_of`. Changing the partition count would move
-- machines between partitions: it is set once, here (docs/scale-out.md).
CREATE FUNCTION ingest_log_part(machine text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN machine IS NULL THEN 0
            ELSE 1 + get_byte(decode(md5(machine), 'hex'), 0) % 16 END;

ALTER TABLE ingest_log
    ADD COLUMN part smallint NOT NULL GENERATED ALWAYS AS (ingest_log_part(machine)) STORED;
CREATE INDEX ingest_log_part_seq ON ingest_log (part, seq);
COMMENT ON COLUMN ingest_log.part IS
    'Log partition (0: no machine; 1-16: by machine): what one dataflow reader reads.';

-- Progress per log partition ("<flow>:p00" .. "<flow>:p16"), so that min(last_seq) still
-- means "everything up to here is processed" when several processes read the log: an idle
-- partition advances to the seq horizon its reader read up to. The one-row progress of
-- the single-reader dataflow becomes the same position for every partition.
INSERT INTO dataflow_progress (flow, last_seq, updated_at)
SELECT p.flow || ':p' || lpad(k::text, 2, '0'), p.last_seq, p.updated_at
FROM dataflow_progress p CROSS JOIN generate_series(0, 16) AS k
WHERE p.flow = 'machines'
ON CONFLICT (flow) DO NOTHING;
DELETE FROM dataflow_progress WHERE flow = 'machines';

-- The end-of-replay clock of a dataflow run as several processes (streams/dataflow.py
-- EventClock): each process raises it to the highest event time it validated; the order
-- step reads it once every process's input has ended. Keyed by the run's last seq.
CREATE TABLE dataflow_clock (
    upto_seq  bigint PRIMARY KEY,
    high_us   bigint NOT NULL
);
