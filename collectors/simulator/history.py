"""Write a simulated plant history as a replay file (JSON Lines of canonical events), or
straight into the ingest log (the demo's backfill)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from mesflow.plant import PlantConfig

from .calendar import to_ms
from .model import default_start, end_of, generate_timed

# Compact separators and no circular check: ~2x faster than json.dumps with defaults.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_CHUNK = 20_000  # lines per write()


def write_history(
    plant: PlantConfig,
    path: Path,
    *,
    seed: int,
    start: datetime | None,
    duration_s: float,
    process_values_s: float = 0.0,
) -> int:
    """Write `duration_s` simulated seconds from `start` to `path`; returns the event count.
    `process_values_s`: see `generate_timed` (0: none)."""
    if duration_s < 0:
        raise ValueError("duration_s must not be negative")
    start = start or default_start(plant)
    end = end_of(start, duration_s)
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    buf: list[str] = []
    with path.open("w", encoding="utf-8", newline="\n") as out:
        events = generate_timed(
            plant, seed=seed, start=start, end=end, process_values_s=process_values_s
        )
        for _, ev in events:
            buf.append(_encode(ev))
            if len(buf) >= _CHUNK:
                buf.append("")  # the trailing newline
                out.write("\n".join(buf))
                count += len(buf) - 1
                buf.clear()
        if buf:
            buf.append("")
            out.write("\n".join(buf))
            count += len(buf) - 1
    return count


BACKFILL_SOURCE = "simulator:backfill"
# History work orders are WO-<machine>-H0001, ...: never a live run's (WO-<machine>-S<run>-0001)
# nor the CRM stand-in's (WO-<machine>-0001), so last week's parts never count for today's.
HISTORY_WORK_ORDER_TAG = "H"


def backfill_log(
    plant: PlantConfig,
    database_url: str,
    *,
    seed: int,
    start: datetime,
    end: datetime,
    progress: Callable[[str], None] | None = None,
    every_s: float = 2.0,
) -> tuple[int, int]:
    """Append the simulated history [start, end) to the ingest log, in bulk, like a replay
    (the dataflow processes it as any other source's events). Returns (events, new rows).

    The same plant, seed and start give the same event ids, so running it again after an
    interruption stores only what is missing (the log's dedupe keys)."""
    from mesflow.db import connect
    from mesflow.ingest_log import LogRecord, append, record_for

    start_ms, end_ms = to_ms(start), to_ms(end)
    span = max(1, end_ms - start_ms)
    count = new = 0
    batch: list[LogRecord] = []
    next_report = time.monotonic() + every_s
    with connect(database_url, autocommit=True) as conn:
        # The live simulator continues this history with work orders of its own: the
        # history's running ones end with it (else they would be displaced without a
        # last piece, and every machine would start the demo flagged).
        events = generate_timed(
            plant,
            seed=seed,
            start=start,
            end=end,
            work_order_tag=HISTORY_WORK_ORDER_TAG,
            close_at_end=True,
        )
        for ts_ms, ev in events:
            batch.append(record_for(BACKFILL_SOURCE, ev))
            if len(batch) >= _CHUNK:
                new += append(conn, batch).new
                count += len(batch)
                batch.clear()
                if progress is not None and time.monotonic() >= next_report:
                    next_report = time.monotonic() + every_s
                    done = min(100, 100 * (ts_ms - start_ms) // span)
                    day = datetime.fromtimestamp(ts_ms / 1000, plant.tz)
                    progress(f"history: {done}% ({count:,} events, up to {day:%Y-%m-%d %H:%M})")
        if batch:
            new += append(conn, batch).new
            count += len(batch)
    return count, new
