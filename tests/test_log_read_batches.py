"""The ingest log reader keeps a bounded number of rows in flight.

Bytewax asks every partition of a worker for a batch at each activation; the partitions
of one worker share a reader (one query for all). If each of them read, one activation
of a single process (17 partitions) put 17 x batch_size rows into the flow, and the
replay's peak memory rose from ~150 to 240-300 MiB. Here the rounds are driven the way
Bytewax drives them, against a real PostgreSQL. (A cluster's workers still read per
partition: see streams/log_source.py.)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mesflow.ingest_log import LogEntry
from streams.log_source import PARTS, IngestLogSource, part_name
from tests.helpers import feed, log_position

BATCH = 50


def events(n: int) -> list[dict[str, Any]]:
    t0 = datetime.fromisoformat("2026-11-20T08:00:00+08:00")
    return [
        {
            "id": f"c{i}",
            "type": "count",
            "machine": f"M-{i % 40:02d}",
            "good": 1,
            "ts": (t0 + timedelta(seconds=i)).isoformat(),
        }
        for i in range(n)
    ]


def rounds(source: IngestLogSource, parts: list[int]) -> list[list[Any]]:
    """Every partition's next_batch once per round (a Bytewax activation), until all end."""
    live = [source.build_part("in", part_name(k), None) for k in parts]
    out: list[list[Any]] = []
    while live:
        got: list[Any] = []
        for p in list(live):
            try:
                got.extend(p.next_batch())
            except StopIteration:
                live.remove(p)
        out.append(got)
    return out


def test_one_worker_reads_a_batch_per_round_not_one_per_partition(db_url: str) -> None:
    feed(db_url, events(1000))
    upto = log_position(db_url)
    source = IngestLogSource(db_url, batch_size=BATCH, upto_seq=upto)
    done = rounds(source, list(PARTS))
    sizes = [len(r) for r in done]
    assert max(sizes) <= BATCH, sizes
    # Every row once, in log order.
    seqs = [x.seq for r in done for x in r if type(x) is LogEntry]
    assert seqs == list(range(1, upto + 1))
