"""The dataflow's wiring carries rows in lists (streams/dataflow.py): few items cross the
Bytewax operators, and the results do not depend on how the log is batched.

The real flow (build_flow) under Bytewax, fed the simulator's history of the test plant with
process limits and values; no database (no late-data store, a list as the sink).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bytewax.testing import TestingSink, TestingSource, run_main

from collectors.simulator import write_history
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.dataflow import build_flow
from streams.pg_sink import _Batch
from tests.test_process_limits import limited

START = datetime(2026, 11, 18, 6, 0, tzinfo=UTC)
# Rows that carry when their figures were observed (a work order's parts as of the batch
# that counted them: ETAs, yields, run figures), which depends on the batching, with any
# wiring (the one-row-at-a-time wiring before this one gave the same differences).
OBSERVED = {
    "orders",
    "work_orders",
    "work_order_operation:OperationSetRow",
    "inspection_run:InspectionRun",
    "inspection_flag:InspectionFlag",
    "quality_yield:YieldRow",
}


def log(plant: PlantConfig, tmp_path: Path) -> list[LogEntry]:
    """Six simulated hours of the plant, with process values, as ingest-log rows."""
    from streams.replay import line_records

    path = tmp_path / "history.jsonl"
    write_history(plant, path, seed=5, start=START, duration_s=6 * 3600, process_values_s=30)
    records = [r for chunk in line_records(path) for r in chunk]
    received = datetime(2026, 11, 19, tzinfo=UTC)  # within the clock policy's bounds
    return [LogEntry(i + 1, r.payload, r.error, received) for i, r in enumerate(records)]


def run(plant: PlantConfig, entries: list[LogEntry], batch: int) -> list[Any]:
    out: list[Any] = []
    run_main(build_flow(plant, TestingSource(entries, batch_size=batch), TestingSink(out)))
    return out


def reduced(items: list[Any]) -> dict[str, Any]:
    """What the sink would store: the last row per key of every table (pg_sink._Batch)."""
    batch = _Batch()
    for _, value in items:
        if type(value) is list:
            batch.add_all(value)
        else:
            batch.add(value)
    tables = {
        name: value
        for name, value in vars(batch).items()
        if name not in ("registered", "dead", "callbacks", "alerts", "max_seq", "last_seq")
    }
    for spec, rows in batch.registered.groups():
        tables[spec.table + ":" + type(rows[0]).__name__] = sorted(map(repr, rows))
    tables["dead"] = sorted(batch.dead)
    tables["values"] = sorted(map(repr, batch.values))
    return tables


def test_rows_cross_the_operators_in_lists_and_do_not_depend_on_batching(
    plant: PlantConfig, tmp_path: Path
) -> None:
    plant = limited(plant)  # the out-of-limit span step too
    entries = log(plant, tmp_path)
    assert len(entries) > 3_000
    big = run(plant, entries, 500)
    # Rows reach the sink in lists: a handful of items per input batch, not one per row.
    rows = sum(len(v) if type(v) is list else 1 for _, v in big)
    batches = -(-len(entries) // 500)
    assert rows > len(entries) // 2
    assert all(type(v) is list for _, v in big)
    assert len(big) <= 12 * (batches + 1), (len(big), batches)
    # Batched differently, the same stored results (a machine's events, its values and
    # reports, the orders' inputs reach their steps in log order whatever the batching).
    want = reduced(big)
    assert want["spans"] and want["runs"] and want["intervals"] and want["kpis"]
    for size in (1, 37):
        got = reduced(run(plant, entries, size))
        differ = [t for t in want if got[t] != want[t] and t not in OBSERVED]
        assert differ == [], size
