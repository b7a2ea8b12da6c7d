"""Late data: rebuilding one machine's figures from the ingest log (docs/metrics.md, 6).

The log is immutable and the tracker is deterministic, so a machine's tracker is a
function of the log prefix it has consumed. The dataflow keeps a few per-machine
checkpoints of it (table `machine_checkpoint`). An event later than the allowed lateness
is not applied at once: its machine is marked, and a moment later (one rebuild per
backfilled file, not per line) the machine is rebuilt:

1. pick the newest checkpoint C with C.last_ts - lateness <= the earliest ts of the
   machine's events logged after it (`choose_checkpoint`): every one of them is then
   within the allowed lateness of C, where the tracker's figures are exact;
2. load C (or an empty tracker) and re-apply those events in event-time order
   (`event_order`, `replay_events`);
3. emit every row from C's time on, and deletes for intervals that no longer exist.

The first half of this module is pure (no I/O, unit-tested); `LateStore` below is the
database side: checkpoints, the machine's events, the record of merged late events.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import psycopg

from mesflow.db import connect
from mesflow.events import (
    DowntimeReasonReport,
    MachineEvent,
    StateEvent,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
)
from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.buckets import Bucket
from streams.hour_clock import HOUR_US, from_us, to_us
from streams.machine_tracker import MachineTracker, Row, _hour_row, _kpi_rows
from streams.records import (
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    ReasonSetRow,
    Rejection,
    ScrapSetRow,
    StatusRow,
    WorkOrderParts,
    WorkOrderStarted,
)
from streams.shift_calendar import ShiftInstance
from streams.validate import Validator

log = logging.getLogger(__name__)

Keyed = tuple[int, MachineEvent | WorkOrderEvent]


class CheckpointInfo(NamedTuple):
    seq: int  # the last log seq the machine had consumed
    last_ts: int  # its clock then, us


# -- pure ------------------------------------------------------------------------------------


def rank(ev: MachineEvent | WorkOrderEvent) -> int:
    """Processing order at the same ts (docs/metrics.md, 6): state, work orders, parts,
    reasons."""
    if isinstance(ev, StateEvent):
        return 0
    if isinstance(ev, WorkOrderStartReport | WorkOrderEndReport | WorkOrderEvent):
        return 1
    if isinstance(ev, DowntimeReasonReport):
        return 3
    return 2


def event_order(item: Keyed) -> tuple[int, int, int]:
    """Sort key of a (seq, event): event time, then rank, then arrival (log seq)."""
    seq, ev = item
    return to_us(ev.ts), rank(ev), seq


def choose_checkpoint(
    checkpoints: Sequence[CheckpointInfo], events: Sequence[tuple[int, int]], lateness_us: int
) -> CheckpointInfo | None:
    """The newest checkpoint from which every later event is within the allowed lateness.

    `events` are the machine's (seq, ts) with seq above the oldest checkpoint considered
    (in any order). None: no checkpoint qualifies (rebuild from an empty tracker).
    """
    by_seq = sorted(events)
    # Suffix minima of ts by seq, walked from the newest checkpoint down.
    k = len(by_seq)
    low: int | None = None
    for c in sorted(checkpoints, reverse=True):
        while k > 0 and by_seq[k - 1][0] > c.seq:
            k -= 1
            ts = by_seq[k][1]
            low = ts if low is None else min(low, ts)
        if low is None or c.last_ts - lateness_us <= low:
            return c
    return None


def rebuild_candidates(
    checkpoints: Sequence[CheckpointInfo], late_from: int, lateness_us: int
) -> list[CheckpointInfo]:
    """The checkpoints a rebuild from `late_from` may start at: those whose clock is at
    most the allowed lateness past it (an event logged after one of them at `late_from`
    would have been applied as late there)."""
    return [c for c in checkpoints if c.last_ts - lateness_us <= late_from]


def lost_parts_late_from(earliest_lost: int, lateness_us: int) -> int:
    """The `late_from` that rebuilds a machine whose part times from `earliest_lost` on
    are gone from the log: every checkpoint it admits (`rebuild_candidates`) has a clock
    before them, so none holds a part the log no longer has."""
    return earliest_lost - lateness_us - 1


def row_key(row: Row | Rejection) -> tuple[Any, ...]:
    """The identity of a row in its table: a later row with the same key supersedes it."""
    t = type(row)
    if t is IntervalRow or t is IntervalDelete:
        return ("interval", row.start_ts)  # type: ignore[union-attr]
    if t is HourRow:
        return ("hour", row.hour_start)  # type: ignore[union-attr]
    if t is ScrapSetRow:
        return ("scrap", row.hour_start)  # type: ignore[union-attr]
    if t is KpiRow or t is ReasonSetRow:
        return (t.__name__, row.bucket, row.bucket_start)  # type: ignore[union-attr]
    if t is StatusRow:
        return ("status",)
    if t is WorkOrderParts or t is WorkOrderStarted:
        return (t.__name__, row.work_order)  # type: ignore[union-attr]
    assert t is Rejection
    return ("dead", row.seq)  # type: ignore[union-attr]


@dataclass
class Rebuilt:
    tracker: MachineTracker
    rows: list[Row | Rejection]
    events: int
    since: int  # us: rows were rewritten from here on


def replay_events(
    base: MachineTracker,
    events: Iterable[Keyed],
    upto_seq: int,
    old_intervals: Iterable[int] = (),
    old_hours: Iterable[int] = (),
    old_shifts: Iterable[ShiftInstance] = (),
) -> Rebuilt:
    """Apply `events` (any order) to `base` in event-time order; the rows to store.

    `old_intervals`: interval starts (us) stored or known before the rebuild; those at or
    after the rebuilt span's start that no longer exist get an IntervalDelete.
    `old_hours`, `old_shifts`: the buckets the tracker had before the rebuild; those from
    the rebuilt span's start on that no longer exist are written empty (see _vanished).
    """
    tracker = base
    # Reports the base refused that a state event among `events` may make reports about a
    # stop: applied again at their own place in event time (taken at the state event,
    # they would move the clock past events still to come).
    last, late = base.last_ts, base.spec.lateness_us
    again = [(s, ev) for _, _, s, ev in base.refused if last is None or to_us(ev.ts) >= last - late]
    base.refused = ()
    ordered = sorted([*events, *again], key=event_order)
    out: dict[tuple[Any, ...], Row | Rejection] = {}

    def take(rows: Iterable[Row | Rejection]) -> None:
        for r in rows:
            key = row_key(r)
            out.pop(key, None)  # keep the order of the latest row of each key
            out[key] = r

    since = to_us(ordered[0][1].ts) if ordered else (tracker.last_ts or 0)
    if tracker.intervals and tracker.last_ts is not None:
        # An event inside an interval also changes that interval (its end, its class).
        i = tracker._index_at(min(since, tracker.last_ts))
        if i >= 0:
            since = min(since, tracker.intervals[i].start)
    hour = None
    for seq, ev in ordered:
        r = tracker.apply(seq, ev)
        if r is not None:
            take([r])
        h = tracker.last_ts // HOUR_US if tracker.last_ts is not None else None
        if h != hour:
            # Flush per event-hour as the live path does: part details settle and old
            # history is dropped, so a long rebuild stays as cheap per event as live.
            hour = h
            take(tracker.flush())
    if tracker.late_new:  # the checkpoint was too recent for these events
        raise LateInRebuild(tracker.late_new)
    tracker.late_from = None
    tracker.seq = max(tracker.seq, upto_seq)
    # Every figure from `since` on is written again: the stored rows came from another
    # order of processing, and rows are absolute values.
    d = tracker.dirty
    hs = tracker.clock.bucket(since)[0]
    d.hours.update(h for h in tracker.hours if h >= hs)
    d.shifts.update(s for s in tracker.shifts if s.end > since)
    for iv in tracker.intervals:
        if iv.end is None or iv.end > since:
            d.intervals[iv.start] = iv
    d.work_orders.update(tracker.wo_parts)
    d.status = True
    take(tracker.flush())
    kept = {iv.start for iv in tracker.intervals}
    kept.update(to_us(r.start_ts) for r in out.values() if type(r) is IntervalRow)
    gone = sorted({s for s in old_intervals if s >= since} - kept)
    take(IntervalDelete(tracker.machine, from_us(s)) for s in gone)
    take(_vanished(tracker, hs, since, old_hours, old_shifts))
    return Rebuilt(tracker, list(out.values()), len(ordered), since)


def _vanished(
    tracker: MachineTracker,
    hs: int,
    since: int,
    old_hours: Iterable[int],
    old_shifts: Iterable[ShiftInstance],
) -> list[Row]:
    """Empty rows for the buckets the old processing wrote and the merged one has not.

    The machine's clock can go back in a merge: a reason report accepted on arrival (its
    `at` then in a stop) that a late state event turns into running time is dead-lettered
    `no_stop` in event-time order, and a rejected report moves no clock. The open interval
    then ends earlier, and the hours and shifts it had reached would keep their old time
    (rows are upserts): they are written empty. Only buckets the merged tracker still
    keeps in its history can be told apart from forgotten ones.
    """
    m = tracker.machine
    last = tracker.last_ts
    floor = hs if last is None else max(hs, last - tracker.spec.history_us)
    rows: list[Row] = []
    for h in sorted(set(old_hours)):
        if h >= floor and h not in tracker.hours:
            empty = Bucket(h, h + HOUR_US)
            rows.append(_hour_row(m, empty))
            rows.extend(_kpi_rows(m, "hour", empty, None))
    for inst in sorted(set(old_shifts), key=lambda s: s.start):
        if inst.end > since and inst.end >= floor and inst not in tracker.shifts:
            rows.extend(_kpi_rows(m, "shift", Bucket(inst.start, inst.end), inst))
    return rows


# -- I/O -------------------------------------------------------------------------------------

_CHECKPOINTS = """
SELECT seq, last_ts FROM machine_checkpoint
WHERE machine = %s AND seq <= %s ORDER BY seq DESC"""
_EVENTS = """
SELECT seq, payload, error, received_at FROM ingest_log
WHERE (machine = %s OR machine IS NULL) AND seq > %s AND seq <= %s ORDER BY seq"""
_SAVE = """
INSERT INTO machine_checkpoint (machine, seq, last_ts, state) VALUES (%s, %s, %s, %s)
ON CONFLICT (machine, seq) DO NOTHING"""
# Beyond the horizon only the newest checkpoint is kept: a rebuild never starts earlier.
_PRUNE = """
DELETE FROM machine_checkpoint c
WHERE c.machine = %(m)s AND c.last_ts < %(cutoff)s AND c.seq < (
    SELECT max(seq) FROM machine_checkpoint
    WHERE machine = %(m)s AND last_ts < %(cutoff)s)"""


class LateInRebuild(Exception):
    """A rebuild met an event beyond the allowed lateness of its checkpoint."""


class _MachineLog:
    """One machine's parsed events with seq <= upto, read from the log as far back as
    asked (each range once)."""

    def __init__(self, store: LateStore, machine: str, upto: int) -> None:
        self.store, self.machine = store, machine
        self.covered = upto  # events with seq in (covered, upto] are read
        self.events: list[Keyed] = []

    def after(self, seq: int) -> list[Keyed]:
        if seq < self.covered:
            self.events = self.store.machine_events(self.machine, seq, self.covered) + self.events
            self.covered = seq
        return [e for e in self.events if e[0] > seq]


class LateStore:
    """The database side of late data, for the per-machine step (one connection).

    Its calls block the dataflow: checkpoints are a few per machine and hour, and a
    rebuild is the rare path.
    """

    def __init__(
        self,
        database_url: str,
        plant: PlantConfig,
        *,
        checkpoint_every_s: float = 180.0,
        debounce_s: float = 2.0,
        max_wait_s: float = 30.0,
    ) -> None:
        self.database_url = database_url
        self.validator = Validator(plant)
        self.checkpoint_every_s = checkpoint_every_s
        self.debounce_s = debounce_s
        self.max_wait_s = max_wait_s
        days = float(getattr(plant.plant, "max_event_age_days", 30))
        self.horizon_us = round(days * 86400e6)
        self._conn: psycopg.Connection | None = None

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url, autocommit=True)
        return self._conn

    def _retrying(self, what: str, fn: Callable[[psycopg.Connection], Any]) -> Any:
        # The database restarting must not fail the dataflow (as the source and the sink).
        delay = 0.5
        while True:
            try:
                return fn(self._db())
            except psycopg.OperationalError as err:
                log.warning("%s: database unreachable (%s); retrying in %.1fs", what, err, delay)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, tracker: MachineTracker) -> None:
        assert tracker.last_ts is not None and tracker.late_from is None
        state = pickle.dumps(tracker, protocol=pickle.HIGHEST_PROTOCOL)
        m, seq, last = tracker.machine, tracker.seq, tracker.last_ts

        # One statement, one round trip (it blocks the dataflow): the insert and the prune of
        # _SAVE and _PRUNE. The prune does not see the new row, and needs not: its last_ts is
        # past the cutoff. (late_merge rows are retired by `mesflow retention`.)
        save_and_prune = (
            "WITH saved AS ("
            "INSERT INTO machine_checkpoint (machine, seq, last_ts, state) "
            "VALUES (%(m)s, %(seq)s, %(last)s, %(state)s) ON CONFLICT (machine, seq) DO NOTHING) "
            "DELETE FROM machine_checkpoint c WHERE c.machine = %(m)s AND c.last_ts < %(cutoff)s "
            "AND c.seq < (SELECT max(seq) FROM machine_checkpoint "
            "WHERE machine = %(m)s AND last_ts < %(cutoff)s)"
        )
        values = {
            "m": m,
            "seq": seq,
            "last": from_us(last),
            "state": state,
            "cutoff": from_us(last - self.horizon_us),
        }
        self._retrying("checkpoint", lambda conn: conn.execute(save_and_prune, values))

    # -- late events ---------------------------------------------------------------------

    def record_late(self, machine: str, seqs: Sequence[int]) -> None:
        """Late events seen: pending until their machine is rebuilt (replay waits on them)."""
        seq_list = list(seqs)

        def run(conn: psycopg.Connection) -> None:
            # One statement per batch: a backfilled file makes every line late.
            conn.execute(
                "INSERT INTO late_merge (log_seq, machine) SELECT unnest(%s::bigint[]), %s "
                "ON CONFLICT DO NOTHING",
                (seq_list, machine),
            )

        self._retrying("late events", run)

    def rebuild(self, old: MachineTracker) -> Rebuilt:
        """`old` with its late events merged: a new tracker and the rows to store."""
        assert old.late_from is not None
        m, upto = old.machine, old.seq
        started = time.monotonic()
        cps = [
            CheckpointInfo(int(s), to_us(ts))
            for s, ts in self._retrying(
                "checkpoints", lambda c: c.execute(_CHECKPOINTS, (m, upto)).fetchall()
            )
        ]
        log_rows = _MachineLog(self, m, upto)
        try:
            # A `work_order` event goes to every machine, and the CRM may date it well in
            # the past; where the work order did not run it changes nothing and needs no
            # earlier checkpoint. Tried first without them; if one does matter, the
            # rebuild meets it late and is done again with every event counted.
            chosen, result = self._attempt(old, cps, log_rows, work_orders=False)
        except LateInRebuild:
            chosen, result = self._attempt(old, cps, log_rows, work_orders=True)
        # The old marks are facts about the log; the replay's own, made in event order,
        # are not (their seqs go back and forth).
        result.tracker.seq_marks = old.seq_marks
        self._retrying(
            "late events",
            lambda c: c.execute(
                "UPDATE late_merge SET merged_at = clock_timestamp() "
                "WHERE machine = %s AND merged_at IS NULL AND log_seq <= %s",
                (m, upto),
            ),
        )
        log.info(
            "%s: merged late data: %d events re-applied from %s (checkpoint seq %s) in %.2f s",
            m,
            result.events,
            from_us(result.since).isoformat(),
            chosen.seq if chosen else 0,
            time.monotonic() - started,
        )
        return result

    def _attempt(
        self,
        old: MachineTracker,
        cps: list[CheckpointInfo],
        log_rows: _MachineLog,
        *,
        work_orders: bool,
    ) -> tuple[CheckpointInfo | None, Rebuilt]:
        assert old.late_from is not None
        lateness = old.spec.lateness_us
        # Only a checkpoint from before the earliest late event can qualify; older ones
        # are tried while events logged after it (merged late before) rule it out.
        chosen: CheckpointInfo | None = None
        for c in rebuild_candidates(cps, old.late_from, lateness):
            times = [
                (s, to_us(ev.ts))
                for s, ev in log_rows.after(c.seq)
                if work_orders or not isinstance(ev, WorkOrderEvent)
            ]
            if choose_checkpoint([c], times, lateness) == c:
                chosen = c
                break
        if chosen is None:
            base = MachineTracker(old.spec)
        else:
            base = self._load(old.machine, chosen.seq)
            # The reason tree may have grown since (a re-queued event needs the new code).
            base.spec = replace(base.spec, known_reasons=old.spec.known_reasons)
        events = log_rows.after(chosen.seq if chosen else 0)
        # Intervals stored from the old processing (also those the old tracker forgot).
        since = min((to_us(ev.ts) for _, ev in events), default=old.late_from)
        stored = self._retrying(
            "intervals",
            lambda c: c.execute(
                "SELECT start_ts FROM machine_state_interval WHERE machine = %s AND start_ts >= %s",
                (old.machine, from_us(min(since, base.last_ts or since) - HOUR_US)),
            ).fetchall(),
        )
        old_starts = {to_us(r[0]) for r in stored} | {iv.start for iv in old.intervals}
        return chosen, replay_events(
            base, events, old.seq, old_starts, list(old.hours), list(old.shifts)
        )

    def machine_events(self, machine: str, after: int, upto: int) -> list[Keyed]:
        """The machine's events with after < seq <= upto, parsed as the live path does
        (for a rebuild, and for a lean snapshot's part times)."""

        def read(conn: psycopg.Connection) -> list[LogEntry]:
            with conn.cursor(binary=True) as cur:
                rows = cur.execute(_EVENTS, (machine, after, upto)).fetchall()
            return [LogEntry(*r) for r in rows]

        out: list[Keyed] = []
        for item in self.validator(self._retrying("events", read)):
            if type(item) is tuple and item[0] == machine:
                out.append(item[1])
        return out

    def _load(self, machine: str, seq: int) -> MachineTracker:
        row = self._retrying(
            "checkpoint",
            lambda c: c.execute(
                "SELECT state FROM machine_checkpoint WHERE machine = %s AND seq = %s",
                (machine, seq),
            ).fetchone(),
        )
        tracker = pickle.loads(row[0])
        assert isinstance(tracker, MachineTracker)
        return tracker

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


# -- what a replay merged --------------------------------------------------------------------


def merged_between(conn: psycopg.Connection, first_seq: int, last_seq: int) -> int:
    """How many log rows with seq in [first, last] were merged late (each row once)."""
    row = conn.execute(
        "SELECT count(DISTINCT log_seq) FROM late_merge "
        "WHERE log_seq BETWEEN %s AND %s AND merged_at IS NOT NULL",
        (first_seq, last_seq),
    ).fetchone()
    return int(row[0]) if row else 0


def wait_for_merges(
    conn: psycopg.Connection,
    first_seq: int,
    last_seq: int,
    *,
    settle_s: float = 0.0,
    timeout_s: float = 600.0,
) -> None:
    """Block until every late event with seq in [first, last] is merged and stored.

    Merged means its machine was rebuilt; stored means the results sink committed the
    rebuild's rows after that (the machine's status row, written by every rebuild of a
    machine that has a state, is newer than the merge).
    """
    deadline = time.monotonic() + timeout_s
    # A live dataflow may store a batch's progress just before its machines' step records
    # the late events of that batch: give it a moment.
    time.sleep(settle_s)
    while True:
        row = conn.execute(
            """SELECT count(*) FROM late_merge l
               LEFT JOIN machine_status s ON s.machine = l.machine
               WHERE l.log_seq BETWEEN %s AND %s
                 AND (l.merged_at IS NULL OR s.updated_at < l.merged_at)""",
            (first_seq, last_seq),
        ).fetchone()
        if not row or not row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{row[0]} late events are not merged after {timeout_s:.0f} s")
        time.sleep(0.2)


def describe_merged(n: int) -> str:
    return f", {n} merged late" if n else ""


__all__ = [
    "CheckpointInfo",
    "LateInRebuild",
    "LateStore",
    "Rebuilt",
    "choose_checkpoint",
    "event_order",
    "merged_between",
    "replay_events",
    "wait_for_merges",
]
