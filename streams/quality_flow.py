"""Bytewax wiring of the quality step (logic: streams/quality.py), keyed by machine.

Event-driven only: yield and defect records change with reports and part counts, never
with the clock, so there is no timer and a replay is deterministic.
"""

from __future__ import annotations

import pickle
from typing import Any

import bytewax.operators as op
import psycopg
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from mesflow.plant import PlantConfig
from streams import row_stores
from streams.inspections_flow import rows_of
from streams.quality import MachineQuality, Quality, QualityRecord, YieldRow, machine_of


def _inputs(lists: list[list[Any]]) -> list[tuple[str, Any]]:
    # One call per batch: this stream carries every machine row, most of them not ours.
    out: list[tuple[str, Any]] = []
    for rows in lists:
        for x in rows:
            machine = machine_of(x)
            if machine is not None:
                out.append((machine, x))
    return out


class QualityLogic(StatefulBatchLogic[Any, list[Any], bytes]):
    def __init__(self, resume: bytes | None, logic: Quality) -> None:
        self.state: MachineQuality | None = pickle.loads(resume) if resume else None
        self.logic = logic

    def on_batch(self, values: list[Any]) -> tuple[list[list[Any]], bool]:
        s = self.state
        if s is None:
            machine = machine_of(values[0])
            assert machine is not None  # _inputs keyed it so
            s = self.state = MachineQuality(machine)
        return [self.logic.feed(s, values)], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def quality_rows(plant: PlantConfig, rest: Stream[Any], live: bool) -> Stream[Any]:
    """Defect records and yield rows from the floor reports, work orders and part counts.
    `live` is unused: the step has no timer (see the module's note)."""
    del live
    logic = Quality(plant)
    keyed = op.flat_map_batch("quality_inputs", rest, _inputs)
    step = op.stateful_batch("quality", keyed, lambda resume: QualityLogic(resume, logic))
    return op.flat_map_batch("quality_rows", step, rows_of)


# -- storing (the results sink calls these in its transaction: streams/row_stores.py) ------

_RECORD_SQL = """
INSERT INTO quality_record (seq, line, ts, day, shift_name, kind, code, code_path, qty,
                            disposition, machine, work_order, operation, product, operator)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (seq, line) DO UPDATE SET
    ts = EXCLUDED.ts, day = EXCLUDED.day, shift_name = EXCLUDED.shift_name,
    kind = EXCLUDED.kind, code = EXCLUDED.code, code_path = EXCLUDED.code_path,
    qty = EXCLUDED.qty, disposition = EXCLUDED.disposition, machine = EXCLUDED.machine,
    work_order = EXCLUDED.work_order, operation = EXCLUDED.operation,
    product = EXCLUDED.product, operator = EXCLUDED.operator
"""

_YIELD_SQL = """
INSERT INTO quality_yield (work_order, machine, operation, product, made, first_scrap,
                           sent_to_rework, rework_good, rework_scrap, rework_pending,
                           first_pass_good, final_good, first_ts, last_ts)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (work_order, machine) DO UPDATE SET
    operation = EXCLUDED.operation, product = EXCLUDED.product, made = EXCLUDED.made,
    first_scrap = EXCLUDED.first_scrap, sent_to_rework = EXCLUDED.sent_to_rework,
    rework_good = EXCLUDED.rework_good, rework_scrap = EXCLUDED.rework_scrap,
    rework_pending = EXCLUDED.rework_pending, first_pass_good = EXCLUDED.first_pass_good,
    final_good = EXCLUDED.final_good, first_ts = EXCLUDED.first_ts,
    last_ts = EXCLUDED.last_ts, updated_at = clock_timestamp()
"""


def _staged(sql: str, table: str, key: tuple[str, ...]) -> row_stores.Staged:
    """The single-row upsert above as a staged one (row_stores.Staged): the same columns
    and the same DO UPDATE."""
    columns = tuple(c.strip() for c in sql.split("(", 1)[1].split(")", 1)[0].split(","))
    return row_stores.Staged(table, columns, key, "DO " + sql.split(") DO ", 1)[1].strip())


_RECORDS = _staged(_RECORD_SQL, "quality_record", ("seq", "line"))
_YIELDS = _staged(_YIELD_SQL, "quality_yield", ("work_order", "machine"))


def store_records(cur: psycopg.Cursor[Any], rows: list[QualityRecord]) -> None:
    _RECORDS.write(cur, [(*r[:7], list(r.code_path), *r[8:]) for r in rows])


def store_yields(cur: psycopg.Cursor[Any], rows: list[YieldRow]) -> None:
    _YIELDS.write(cur, rows)


row_stores.register(
    QualityRecord,
    "quality_record",
    store_records,
    key=lambda r: (r.seq, r.line),
    owner=lambda r: ("seq", r.seq),
)
row_stores.register(
    YieldRow,
    "quality_yield",
    store_yields,
    key=lambda r: (r.work_order, r.machine),
    owner=lambda r: ("work_order", r.work_order),
)
