"""The cluster's sequencer (streams/sequencer.py): whatever the pace of each reader, the
plant-wide steps get their inputs in the log's order, and never an input before every
partition has been read past it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.records import FloorInput
from streams.sequencer import Keyed, Sequencer
from streams.validate import OrderInput

PARTS = (0, 1, 2, 3)


@st.composite
def cluster_reads(draw: st.DrawFn) -> tuple[list[Keyed], list[list[Any]]]:
    """A log spread over the partitions, read by 1-3 workers in batches up to rising
    horizons (each batch: its inputs, then its read mark), the workers' arrivals
    interleaved at random and cut into feed calls at random."""
    n = draw(st.integers(1, 40))
    part_of = draw(st.lists(st.sampled_from(PARTS), min_size=n, max_size=n))
    workers = draw(st.integers(1, 3))
    owner = {p: draw(st.integers(0, workers - 1)) for p in PARTS}
    items: list[Keyed] = []
    per_worker: list[list[Any]] = [[] for _ in range(workers)]
    for w in range(workers):
        owned = [p for p in PARTS if owner[p] == w]
        pos = 0
        cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=5))) | {n})
        for top in cuts:
            batch: list[Keyed] = []
            for seq in range(pos + 1, top + 1):
                if part_of[seq - 1] in owned:
                    # A validated input and a machine's row of the same seq.
                    batch.append(Keyed(seq, 1, "", 0, ("input", seq)))
                    batch.append(Keyed(seq, 0, f"M{part_of[seq - 1]}", 0, ("row", seq)))
            items.extend(batch)
            per_worker[w].extend(batch)
            per_worker[w].append(tuple((p, top) for p in owned))  # the read mark
            pos = top
    # A random interleaving that keeps each worker's own order.
    arrivals: list[Any] = []
    heads = [0] * workers
    while any(heads[w] < len(per_worker[w]) for w in range(workers)):
        w = draw(st.sampled_from([w for w in range(workers) if heads[w] < len(per_worker[w])]))
        arrivals.append(per_worker[w][heads[w]])
        heads[w] += 1
    calls: list[list[Any]] = []
    i = 0
    while i < len(arrivals):
        k = draw(st.integers(1, 6))
        calls.append(arrivals[i : i + k])
        i += k
    return items, calls


@settings(max_examples=50, deadline=None)
@given(cluster_reads())
def test_any_interleaving_releases_the_log_order(case: tuple[list[Keyed], list[list[Any]]]) -> None:
    items, calls = case
    seq = Sequencer(PARTS)
    released: list[Any] = []
    arrived: set[Any] = set()
    for call in calls:
        inputs = [x for x in call if type(x) is Keyed]
        marks = [x for x in call if type(x) is not Keyed]
        arrived.update(k.item for k in inputs)
        out = seq.feed(inputs, marks)
        top = seq.watermark()
        # Nothing above the lowest read mark of all partitions.
        assert all(top is not None and item[1] <= top for item in out)
        released.extend(out)
    released.extend(seq.finish())
    want = [k.item for k in sorted(items, key=lambda k: (k.seq, k.rank, k.machine, k.pos))]
    assert released == want
    assert not seq.buffer


def test_nothing_is_released_until_every_partition_is_read() -> None:
    seq = Sequencer(PARTS)
    a = Keyed(5, 1, "", 0, "a")
    # Partitions 0-2 read up to 9, partition 3 not yet: an input of 3 may still come.
    assert seq.feed([a], [((0, 9), (1, 9), (2, 9))]) == []
    b = Keyed(3, 0, "M3", 0, "b")
    assert seq.feed([b], [((3, 4),)]) == ["b"]
    assert seq.feed([], [((3, 9),)]) == ["a"]
    # An input below what was released (a late rebuild's rows) goes out at once.
    assert seq.feed([Keyed(2, 0, "M1", 0, "c")], []) == ["c"]
    assert seq.finish() == []


def test_the_validators_inputs_carry_the_seq_of_their_row(plant: PlantConfig) -> None:
    """The cluster's tags (one pass over the validator's output of a batch) are the seqs
    the rows give when validated one by one: orders and work orders carry none."""
    from streams.dataflow import _SeqTag, _tag_seqs
    from streams.validate import Validator
    from tests.test_scale_out import history

    received = datetime(2026, 11, 20, 12, tzinfo=UTC)
    entries = [
        LogEntry(i + 1, json.dumps(e).encode(), None, received) for i, e in enumerate(history())
    ]
    one_by_one = Validator(plant)
    want = [
        (e.seq, x)
        for e in entries
        for x in one_by_one([e])
        if type(x) is OrderInput or type(x) is FloorInput
    ]
    tag = _tag_seqs(Validator(plant))
    got = [
        (x.seq, x.item)
        for i in range(0, len(entries), 97)
        for x in tag(entries[i : i + 97])
        if type(x) is _SeqTag
    ]
    assert sum(type(x) is OrderInput for _, x in want) >= 6  # orders and work orders
    assert got == want
