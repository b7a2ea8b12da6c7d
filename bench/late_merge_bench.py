"""Cost of merging late data: one rebuild of a busy machine from the ingest log.

    python bench/late_merge_bench.py [--cycle 4] [--hours 24]

A press counting a part every `cycle` seconds for `hours` hours (with a stop every
20 minutes and a counter reading every minute) is run through the dataflow, which keeps a
checkpoint per event-hour. Then one event arrives `late` hours late and the machine is
rebuilt (`LateStore.rebuild`: choose the checkpoint, read and parse the machine's events,
re-apply them in event-time order, build the rows); the time of that call is printed, for
an event an hour late and one a whole day late.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database
from mesflow.db import connect
from mesflow.ingest_log import append, record_for
from mesflow.plant import load_plant_config
from mesflow.settings import REPO_ROOT
from streams.hour_clock import to_us
from streams.rebuild import LateStore
from streams.runner import run_flow

M = "IM-01"


def busy_day(start: datetime, hours: float, cycle: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "state", "machine": M, "ts": start.isoformat(),
                                  "state": "running"}]  # fmt: skip
    t, i, total = 0.0, 0, 0
    end = hours * 3600
    while t < end:
        t += cycle
        i += 1
        ts = start + timedelta(seconds=t)
        if i % 300 == 0:  # a 2-minute stop every 20 minutes
            out.append({"type": "state", "machine": M, "ts": ts.isoformat(), "state": "down"})
            t += 120
            ts = start + timedelta(seconds=t)
            out.append({"type": "state", "machine": M, "ts": ts.isoformat(), "state": "running"})
        elif i % 15 == 0:
            total += 15
            out.append({"type": "counter", "machine": M, "ts": ts.isoformat(), "name": "scrap",
                        "value": total // 50})  # fmt: skip
        else:
            out.append({"type": "count", "machine": M, "ts": ts.isoformat(), "good": 1})
    for n, e in enumerate(out):
        e["id"] = f"e{n}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycle", type=float, default=4.0, help="seconds per part")
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()

    plant = load_plant_config(REPO_ROOT / "config" / "plant.example.yaml")
    start = (datetime.now(plant.tz) - timedelta(hours=args.hours + 1)).replace(microsecond=0)
    events = busy_day(start, args.hours, args.cycle)
    pg, url = fresh_database(plant)
    work = Path(tempfile.mkdtemp(prefix="mesflow-late-bench-"))
    try:
        with connect(url, autocommit=True) as conn:
            appended = append(conn, [record_for("bench", e) for e in events])
        assert appended.last_seq is not None
        t = time.perf_counter()
        # Replay mode with a checkpoint at every event-hour (no wall-clock spacing).
        import streams.runner as runner

        runner.LateStore = lambda u, p: LateStore(u, p, checkpoint_every_s=0)  # type: ignore[assignment,misc]
        run_flow(plant, url, work / "rec", 10.0, upto_seq=appended.last_seq)
        print(f"{len(events):,} events of {M} over {args.hours:g} h "
              f"(a part every {args.cycle:g} s) in {time.perf_counter() - t:.1f} s")  # fmt: skip
        store = LateStore(url, plant)
        with connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*), max(seq) FROM machine_checkpoint WHERE machine = %s", (M,)
            ).fetchone()
            assert row is not None
            print(f"checkpoints kept: {row[0]}")
            for hours_late in (1.0, args.hours - 0.5):
                ts = start + timedelta(hours=args.hours - hours_late)
                late = {"type": "count", "machine": M, "ts": ts.isoformat(), "good": 1,
                        "id": f"late-{hours_late}"}  # fmt: skip
                seq = append(conn, [record_for("bench", late)]).last_seq
                assert seq is not None
                old = store._load(M, int(row[1]))
                old.seq, old.late_from = seq, to_us(ts)
                t = time.perf_counter()
                result = store.rebuild(old)
                took = time.perf_counter() - t
                print(
                    f"rebuild for an event {hours_late:g} h late: {took * 1000:,.0f} ms "
                    f"({result.events:,} events re-applied, {len(result.rows):,} rows; "
                    f"{result.events / took:,.0f} events/s)"
                )
        store.close()
    finally:
        pg.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
