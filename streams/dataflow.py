"""The dataflow, wired: ingest log -> validate -> per-machine trackers -> PostgreSQL.

This is the only module that knows Bytewax operators; the logic lives in
streams/validate.py and streams/machine_tracker.py. Reads top to bottom:

    ingest_log ─► validate ─┬─► by machine ─► machine trackers ─┬─► rows ───────────────┐
                            ├─► orders, work orders ─┐           └─► work-order parts ─┐ │
                            │                        └─► by order ─► order progress ◄──┘ │
                            │                                           └─► rows, callbacks ┤
                            └─► process values, rejections, progress ──────────────────────┴─► results sink

Process values (streams/process_values.py) change no machine figure: they bypass the
trackers and the order step (neither branch below takes them) and go straight to the sink.
So do lot reports and who-reported-what rows (streams/lots.py, traceability).

With alert rules (streams/alert_engine.py), the rows the rules read (states, status, hour
and shift figures, order rows and risk callbacks) and `alert_ack` events also go to one
alert step, whose AlertRow steps join the results for the sink.
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from bisect import bisect_right
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from mesflow.alert_rules import AlertsConfig
from mesflow.events import MachineEvent, OrderEvent, WorkOrderEvent
from mesflow.plant import PlantConfig
from streams.alert_engine import AckInput, AlertEngine
from streams.hour_clock import HOUR_US, to_us
from streams.inspections import InspectionFlag
from streams.inspections_flow import inspection_rows
from streams.labor_flow import labor_rows
from streams.limit_spans import LimitSpan, has_limits
from streams.limit_spans_flow import limit_span_rows
from streams.log_source import PARTS, ReadMark, log_input, owned_only
from streams.machine_tracker import MachineSpec, MachineTracker, Row
from streams.order_problems_flow import order_problem_rows
from streams.order_progress import (
    Callback,
    IdealCycles,
    OrderProgress,
    OrderProgressRow,
    OrderRow,
)
from streams.quality_flow import quality_rows
from streams.rebuild import LateStore, lost_parts_late_from
from streams.records import (
    AlertRow,
    FloorInput,
    HourRow,
    IntervalDelete,
    IntervalRow,
    KpiRow,
    Progress,
    Rejection,
    StatusRow,
    WorkOrderParts,
    WorkOrderStarted,
)
from streams.sequencer import Keyed as SeqKeyed
from streams.sequencer import Sequencer
from streams.silence import live_check, live_due
from streams.tracker_snapshot import TrackerSnapshots, decode, restore_runs
from streams.validate import OrderInput, Validator

log = logging.getLogger(__name__)

Keyed = tuple[int, MachineEvent | WorkOrderEvent]
Out = Row | Rejection


def _phase(machine: str) -> float:
    """A machine's fixed share of the figures' throttle, in [0, 0.5): spreads the plant's
    figure flushes over the second."""
    return (zlib.crc32(machine.encode()) % 500) / 1000


class MachineLogic(StatefulBatchLogic[list[Keyed], list[Out], bytes]):
    """Bytewax adapter around one machine's MachineTracker.

    With a LateStore, it also keeps the machine's checkpoints and merges late data: an
    event later than the allowed lateness marks the machine, and a rebuild from the log
    follows once late events stop coming for `debounce_s` (at most `max_wait_s` after the
    first), and at the end of a replay (streams/rebuild.py).
    """

    def __init__(
        self,
        resume: bytes | None,
        plant: PlantConfig,
        throttle: timedelta | None,
        late: LateStore | None = None,
    ) -> None:
        # Bytewax hands the builder only the resume state, not the key: a new tracker is
        # made on the first batch, whose events name the machine.
        self.tracker: MachineTracker | None = decode(resume) if resume else None
        # Snapshots re-encode only what changed since the last, and with the log at hand
        # leave the lateness buffer's part times in it (streams/tracker_snapshot.py).
        self.snapshots = TrackerSnapshots(lean=late is not None)
        self.plant = plant
        self.throttle = throttle
        self.next_full = None  # wall clock: when figures are due (a property)
        self.phased = False  # the first due time got the machine's phase (_phase)
        self.late = late
        self.rebuild_at: datetime | None = None  # wall clock: when the pending rebuild runs
        self.late_first: datetime | None = None
        self.checkpoint_hour: int | None = None  # event hour of the last checkpoint
        self.checkpoint_wall = float("-inf")
        if self.tracker is not None:
            self._refresh_reasons(self.tracker)
            if self.tracker.runs_log is not None:
                self._restore_runs(self.tracker)
            if self.tracker.late_from is not None:  # resumed with a rebuild pending
                self._late_seen()

    def _restore_runs(self, tracker: MachineTracker) -> None:
        """The part times a lean snapshot left in the log, read back; if they do not add
        up (the log or the plant changed under it), the machine is rebuilt from its
        checkpoint instead, as for late data."""
        if self.late is None:
            raise RuntimeError(
                f"{tracker.machine}: the snapshot needs the ingest log to resume (a database)"
            )
        where = tracker.runs_log
        assert where is not None
        started = time.monotonic()
        events = self.late.machine_events(tracker.machine, where[0], where[1])
        if restore_runs(tracker, events):
            log.info(
                "%s: %d part times read back from the log in %.2f s",
                tracker.machine,
                where[3],
                time.monotonic() - started,
            )
            return
        log.warning(
            "%s: the snapshot's %d part times are not in the log as recorded; "
            "rebuilding the machine from its checkpoint",
            tracker.machine,
            where[3],
        )
        tracker.runs_log = None
        # The rebuild takes a checkpoint up to the allowed lateness after `late_from` (right
        # for a late event, which is in the log after it); here the lost part times may be
        # inside such a checkpoint, so only one from before the earliest of them will do.
        before = lost_parts_late_from(where[2], tracker.spec.lateness_us)
        pending = tracker.late_from
        tracker.late_from = before if pending is None else min(pending, before)

    def _refresh_reasons(self, tracker: MachineTracker) -> None:
        # A reason added to the plant file applies from the next start (and to re-queued
        # events); the rest of the spec stays as the figures were computed with it.
        if tracker.machine in self.plant.machines:
            spec = MachineSpec.from_plant(self.plant, tracker.machine)
            known, silent = spec.known_reasons, spec.silent_after_us  # silent_after_s too
            if (known, silent) != (tracker.spec.known_reasons, tracker.spec.silent_after_us):
                tracker.spec = replace(tracker.spec, known_reasons=known, silent_after_us=silent)

    @property
    def next_full(self) -> datetime | None:
        """Wall clock: when figures are due (None: at the next batch)."""
        return self._next_full

    @next_full.setter
    def next_full(self, when: datetime | None) -> None:
        self._next_full = when
        # The same as a POSIX time: each live batch compares it with time.time(), a
        # tenth of datetime.now()'s cost (one batch per machine and 20 ms poll).
        self._next_full_s = float("-inf") if when is None else when.timestamp()

    def on_batch(self, values: list[list[Keyed]]) -> tuple[list[list[Out]], bool]:
        return [self._batch(values)], StatefulBatchLogic.RETAIN

    def _batch(self, values: list[list[Keyed]]) -> list[Out]:
        # Each value: the machine's events of one input batch, in log order (_grouped).
        # Live, a batch is one or two events of this machine: what is not needed for
        # them (late data, rejections, the figures between throttles) is skipped by a
        # test, not by a call.
        tracker = self.tracker
        if tracker is None:
            machine = values[0][0][1].machine
            assert machine is not None  # the validator keys every event by its machine
            tracker = self.tracker = MachineTracker(MachineSpec.from_plant(self.plant, machine))
        rejected: list[Out] = []
        apply = tracker.apply
        for group in values:
            for seq, ev in group:
                r = apply(seq, ev)
                if r is not None:
                    rejected.append(r)
        if tracker.late_new:
            late = tracker.take_late()
            if self.late is not None:
                self.late.record_late(tracker.machine, late)
                self._late_seen()
            else:  # no log to rebuild from (a flow without a database): lost, but visibly
                tracker.late_from = None
                rejected.extend(
                    Rejection(s, "late", "later than the allowed lateness") for s in late
                )
        full = True
        if self.throttle is not None and time.time() >= self._next_full_s:
            # Live: intervals and status go out at once; the hour, shift and work-order
            # figures at most once per `throttle` (the timer below sends what is left).
            now = datetime.now(UTC)
            if self._next_full is None and not self.phased:
                # A machine's first figures: due again after a phase of its own, so that
                # the plant's machines do not all flush in the same activation every
                # second (one burst of 200 machines' figures, then nothing).
                self.phased = True
                self.next_full = now + self.throttle * (1 + _phase(tracker.machine))
            else:
                self.next_full = now + self.throttle
        elif self.throttle is not None:
            full = False
        rows: list[Out] = []
        rows += tracker.flush() if full else tracker.flush_board()
        if rejected:
            rows.extend(rejected)
        if tracker.late_from is not None:
            rows.extend(self._merge_if_due(False))
        if full:
            self._checkpoint_if_due(True)
        if rows:
            self.snapshots.note(rows)
        return rows

    def notify_at(self) -> datetime | None:
        due = self.rebuild_at
        tracker = self.tracker
        if tracker is None:
            return due
        if self._next_full is not None and tracker.has_pending():
            due = self._next_full if due is None else min(due, self._next_full)
        if self.throttle is not None and tracker.spec.silent_after_us:  # live: silent machines
            due = live_due(tracker, due)
        return due

    def on_notify(self) -> tuple[list[list[Out]], bool]:
        assert self.tracker is not None
        rows: list[Out] = list(self._merge_if_due(False))
        if self.throttle is not None and live_check(self.tracker):
            self.next_full = None  # offline now (streams/silence.py): written at once
        now = datetime.now(UTC)
        if self.next_full is None or now >= self.next_full:
            rows.extend(self.tracker.flush())
            # The next figures a throttle from now, not at the next batch: a busy machine's
            # figures are written once per throttle, not by the timer and again right after.
            self.next_full = now + self.throttle if self.throttle is not None else None
            self._checkpoint_if_due(True)
        self.snapshots.note(rows)
        return [rows], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[Out]], bool]:
        if self.tracker is None:
            return [], StatefulBatchLogic.RETAIN
        rows: list[Out] = list(self._merge_if_due(True))
        rows.extend(self.tracker.flush())
        self._checkpoint_if_due(True, force=True)
        self.snapshots.note(rows)
        return [rows], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # Bytes: an immutable copy, as Bytewax requires, cheaper than a deepcopy.
        if self.tracker is None:
            return pickle.dumps(None)
        return self.snapshots.encode(self.tracker)

    # -- late data ---------------------------------------------------------------------------

    def _late_seen(self) -> None:
        assert self.late is not None
        now = datetime.now(UTC)
        if self.late_first is None:
            self.late_first = now
        self.rebuild_at = min(
            now + timedelta(seconds=self.late.debounce_s),
            self.late_first + timedelta(seconds=self.late.max_wait_s),
        )

    def _merge_if_due(self, eof: bool) -> list[Out]:
        tracker = self.tracker
        if self.late is None or tracker is None or tracker.late_from is None:
            return []
        if not eof and self.rebuild_at is not None and datetime.now(UTC) < self.rebuild_at:
            return []
        result = self.late.rebuild(tracker)
        self.tracker = result.tracker
        self.rebuild_at = self.late_first = None
        return list(result.rows)

    def _checkpoint_if_due(self, flushed: bool, force: bool = False) -> None:
        tracker = self.tracker
        if self.late is None or tracker is None or tracker.last_ts is None:
            return
        if tracker.late_from is not None or not flushed:
            return  # only a state that is a function of the log prefix it consumed
        hour = tracker.last_ts // HOUR_US
        wall = time.monotonic()
        if hour == self.checkpoint_hour:
            return
        if not force and wall - self.checkpoint_wall < self.late.checkpoint_every_s:
            return
        self.late.save_checkpoint(tracker)
        self.checkpoint_hour, self.checkpoint_wall = hour, wall


class OrderLogic(StatefulBatchLogic[Any, list[OrderRow], bytes]):
    """Bytewax adapter around one CRM order's OrderProgress.

    The clock moves its "now" without new events, so ETAs and at-risk move while its
    machines are silent: live, the wall clock every TICK while the order is open and not
    made; in a replay, at its end, the highest event time the flow saw (deterministic)."""

    TICK = timedelta(seconds=60)

    def __init__(
        self,
        resume: bytes | None,
        ideal: IdealCycles,
        live: bool = False,
        clock: EventClock | None = None,
        throttle: timedelta | None = None,
    ) -> None:
        self.progress: OrderProgress | None = pickle.loads(resume) if resume else None
        self.ideal = ideal
        self.live = live
        self.clock = clock
        self.next_tick: datetime | None = None
        # Live: an order's rows (all its work orders') at most once per `throttle`, as the
        # machines' figures: at 20 ms polls a busy order was rewritten 50 times a second
        # (docs/performance.md, "What bounds each"). What a batch changed and did not
        # flush is in the progress (its snapshot too) and goes out by the timer.
        self.throttle_s = throttle.total_seconds() if throttle is not None else None
        self.due_s = float("-inf")  # POSIX time: the next flush allowed
        # Live, a resumed order flushes at its first timer (what it had not flushed).
        self.pending = resume is not None and throttle is not None

    def on_batch(self, values: list[Any]) -> tuple[list[list[OrderRow]], bool]:
        p = self.progress
        if p is None:
            p = self.progress = OrderProgress(values[0].order_no, self.ideal)
        for x in values:
            if type(x) is WorkOrderParts:
                p.on_parts(x.work_order, x.machine, x.t, x.good_total, x.scrap_total, x.ops)
            elif type(x) is WorkOrderStarted:
                p.on_wo_started(x.work_order, x.machine, x.t, x.ops)
            elif isinstance(x.event, OrderEvent):
                p.on_order(x.event)
            else:
                p.on_work_order(x.event)
        if self.throttle_s is not None:
            now = time.time()
            if now < self.due_s:
                self.pending = True
                return [], StatefulBatchLogic.RETAIN
            self.due_s, self.pending = now + self.throttle_s, False
        return [p.flush()], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due: datetime | None = None
        if self.pending:
            due = datetime.fromtimestamp(max(self.due_s, 0.0), UTC)
        if not self.live or self.progress is None or not self.progress.wants_clock():
            return due
        if self.next_tick is None:
            self.next_tick = datetime.now(UTC) + self.TICK
        return self.next_tick if due is None else min(due, self.next_tick)

    def on_notify(self) -> tuple[list[list[OrderRow]], bool]:
        p = self.progress
        if p is None:
            self.next_tick, self.pending = None, False
            return [], StatefulBatchLogic.RETAIN
        now = datetime.now(UTC)
        flush_due = self.pending and now.timestamp() >= self.due_s
        # Called when one of the two timers is due: the clock's tick unless only the
        # throttle's is.
        if self.next_tick is not None and (now >= self.next_tick or not flush_due):
            self.next_tick = None
            p.on_clock(_wall_us())
        elif not flush_due:
            return [], StatefulBatchLogic.RETAIN
        if self.throttle_s is not None:
            self.due_s = now.timestamp() + self.throttle_s
        self.pending = False
        return [p.flush()], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[OrderRow]], bool]:
        p, high = self.progress, self.clock.high if self.clock is not None else None
        if self.live or p is None or high is None or not p.wants_clock():
            return [], StatefulBatchLogic.RETAIN
        p.on_clock(high)
        return [p.flush()], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.progress, protocol=pickle.HIGHEST_PROTOCOL)


class EventClock:
    """The highest event time (us) of the machine events the validator passed: a replay's
    "now" at its end. One per flow, shared by the steps of the one worker process.

    In a cluster (several processes, `EventClock.shared` set by streams/runner.py) each
    process validates only its partitions: each raises the run's row in dataflow_clock to
    its highest time, and `high` reads the row, once, when first asked: the order step asks
    only at the end of its input, after every process's validator has seen all of its own.
    """

    __slots__ = ("_conn", "_final", "_high", "_shared")

    # (database URL, the run's last seq) of a cluster run; None: one process.
    shared: tuple[str, int] | None = None

    def __init__(self) -> None:
        self._high: int | None = None
        self._shared = EventClock.shared
        self._final: int | None = None
        self._conn: Any = None

    @property
    def high(self) -> int | None:
        if self._shared is None:
            return self._high
        if self._final is None:
            sql = "SELECT high_us FROM dataflow_clock WHERE upto_seq = %s"
            row = self._db().execute(sql, (self._shared[1],)).fetchone()
            self._final = int(row[0]) if row else None
        return self._final

    def watch(self, step: Any) -> _Watched:
        """`step` (the validator), its machine events' times seen by this clock."""
        return _Watched(self, step)

    def saw(self, hi: datetime) -> None:
        """A batch's highest machine event time (one to_us per batch, not per event)."""
        t = to_us(hi)
        if self._high is None or t > self._high:
            self._high = t
            if self._shared is not None:
                self._raise_shared(t)

    def _raise_shared(self, t: int) -> None:
        assert self._shared is not None
        self._db().execute(
            "INSERT INTO dataflow_clock (upto_seq, high_us) VALUES (%s, %s) ON CONFLICT "
            "(upto_seq) DO UPDATE SET high_us = GREATEST(dataflow_clock.high_us, %s)",
            (self._shared[1], t, t),
        )

    def _db(self) -> Any:
        from mesflow.db import connect

        assert self._shared is not None
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._shared[0], autocommit=True)
        return self._conn


# Below every event time (aware datetimes compare without overflow down to year 1).
_NO_TIME = datetime(1, 1, 2, tzinfo=UTC)


class _Watched:
    """A validator watched by an EventClock. `_grouped` runs it through `step` and
    `clock` itself, taking the batch's highest time in its own pass over the output."""

    __slots__ = ("clock", "step")

    def __init__(self, clock: EventClock, step: Any) -> None:
        self.clock = clock
        self.step = step

    def __call__(self, batch: list[Any]) -> Any:
        out = self.step(batch)
        hi = _NO_TIME
        for x in out:
            if type(x) is tuple:
                ts = x[1][1].ts
                if ts > hi:
                    hi = ts
        if hi is not _NO_TIME:
            self.clock.saw(hi)
        return out


class AlertLogic(StatefulBatchLogic[Any, list[AlertRow], bytes]):
    """Bytewax adapter around the plant's one AlertEngine (all rows under one key).

    Live, a timer moves event time on with the wall clock while nothing arrives, so a
    machine that is down and silent still escalates."""

    TICK = timedelta(seconds=5)

    def __init__(
        self, resume: bytes | None, config: AlertsConfig, plant: PlantConfig, live: bool
    ) -> None:
        state = pickle.loads(resume) if resume else None
        # Live, rows come in order within seconds: the wall-clock lag is the grace. A replay
        # waits the plant's allowed lateness before deciding about a machine that is quiet.
        self.engine = AlertEngine(config, plant, state, grace_s=LIVE_LAG_S if live else None)
        self.live = live

    def on_batch(self, values: list[Any]) -> tuple[list[list[AlertRow]], bool]:
        return [self.engine.feed(values, _wall_us() if self.live else None)], self.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + self.TICK if self.live else None

    def on_notify(self) -> tuple[list[list[AlertRow]], bool]:
        return [self.engine.tick(_wall_us())], self.RETAIN

    def on_eof(self) -> tuple[list[list[AlertRow]], bool]:
        # The end of a replay: every row of the log is in, the clock may catch up.
        return [self.engine.settle()], self.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.engine.state, protocol=pickle.HIGHEST_PROTOCOL)


LIVE_LAG_S = 10.0


def _wall_us() -> int:
    return time.time_ns() // 1000


def _alert_inputs(config: AlertsConfig) -> frozenset[type]:
    """The row types the configured rules read (fewer rows to the alert step)."""
    kinds = {r.kind for r in config.rules}
    types: set[type] = {AckInput, Progress}  # Progress: end of an input batch (the clock)
    if kinds - {"order_at_risk"}:
        types |= {IntervalRow, IntervalDelete, StatusRow}
    if "kpi_below" in kinds:
        types.add(KpiRow)
    if "scrap_rate" in kinds:
        types.add(HourRow)
    if "order_at_risk" in kinds:
        types |= {OrderProgressRow, Callback}
    if "process_limit" in kinds:
        types.add(LimitSpan)
    if kinds & {"first_article", "patrol_missed"}:
        types.add(InspectionFlag)
    return frozenset(types)


_TO_ORDERS = frozenset({OrderInput, WorkOrderParts, WorkOrderStarted})


def _grouped(step: Any) -> Any:
    """The validator's output per input batch as: one (machine, [(seq, event), ...]) per
    machine (its events in log order), then one list of everything else (orders, floor
    reports, process values, rejections, the batch's Progress), in order."""

    if type(step) is Validator:
        return _grouped_validator(step, None)
    if type(step) is _Watched and type(step.step) is Validator:
        return _grouped_validator(step.step, step.clock)

    def grouped(batch: list[Any]) -> list[Any]:
        groups: dict[str, list[Keyed]] = {}
        others: list[Any] = []
        for x in step(batch):
            if type(x) is tuple:
                g = groups.get(x[0])
                if g is None:
                    groups[x[0]] = [x[1]]
                else:
                    g.append(x[1])
            else:
                others.append(x)
        out: list[Any] = list(groups.items())
        if others:
            out.append(others)
        return out

    return grouped


def _grouped_validator(validator: Validator, clock: EventClock | None) -> Any:
    """_grouped of the validator itself (one process): it groups as it validates, and
    gives the clock its batch's highest time (Validator.grouped)."""

    def grouped(batch: list[Any]) -> list[Any]:
        out, hi = validator.grouped(batch)
        if clock is not None and hi is not None:
            clock.saw(hi)
        return out

    return grouped


def _is_group(x: Any) -> bool:
    return type(x) is tuple


def _rows_of(keyed: list[tuple[str, list[Any]]]) -> list[list[Any]]:
    """A keyed step's outputs as one list per call (none if empty)."""
    rows = [r for _, out in keyed for r in out]
    return [rows] if rows else []


def _order_inputs(lists: list[list[Any]]) -> list[tuple[str, Any]]:
    return [(str(x.order_no), x) for rows in lists for x in rows if type(x) in _TO_ORDERS]


# -- a cluster's sequencer (streams/sequencer.py): the plant-wide steps' inputs in log order --

_MACHINE_TO_SEQUENCER = frozenset({WorkOrderParts, WorkOrderStarted})


class _SeqTag(NamedTuple):
    """A validated input with the seq of its log row (a cluster's validator output)."""

    seq: int
    item: Any


class _ToSequencer(NamedTuple):
    """A batch's validated inputs for the sequencer, with their sort keys."""

    items: list[SeqKeyed]


def _tag_seqs(step: Any) -> Any:
    """The validator, its order and floor inputs tagged with the seq of their log row (an
    OrderInput carries none). A cluster only. The validator gives every row at least one
    output, in row order, and an input without a seq (an order, a work order, an alert
    acknowledgement) is the first output of its row: the row after the last one seen."""

    def run(batch: list[Any]) -> list[Any]:
        out = list(step(batch))
        seqs: list[int] | None = None
        prev = batch[0].seq - 1 if batch else 0  # the seq of the previous output's row
        for i, x in enumerate(out):
            t = type(x)
            if t is tuple:
                prev = x[1][0]
            elif t is FloorInput:
                prev = x.seq
                out[i] = _SeqTag(prev, x)
            elif t is OrderInput or t is AckInput:
                if seqs is None:
                    seqs = [e.seq for e in batch]
                prev = seqs[bisect_right(seqs, prev)]
                if t is OrderInput:
                    out[i] = _SeqTag(prev, x)
            elif t is not Progress:
                prev = x.seq  # rejections, lot and activity rows, process values
        return out

    return run


def _grouped_seq(step: Any) -> Any:
    """_grouped for a cluster: the tagged inputs go in the others list as themselves and,
    with their sort keys, in a _ToSequencer item."""
    grouped = _grouped(step)

    def run(batch: list[Any]) -> list[Any]:
        out = grouped(batch)
        if not out or type(out[-1]) is not list:
            return out
        others = out[-1]
        tagged: list[SeqKeyed] = []
        last, index = -1, 0
        for i, x in enumerate(others):
            if type(x) is _SeqTag:
                index = index + 1 if x.seq == last else 0
                last = x.seq
                tagged.append(SeqKeyed(x.seq, 1, "", index, x.item))
                others[i] = x.item
        if tagged:
            out.append(_ToSequencer(tagged))
        return out

    return run


class _SeqMachineLogic(MachineLogic):
    """MachineLogic whose rows carry the first seq of the batch of the machine's events that
    made them (a machine reports its figures once per batch, in one process too, so a
    batch's rows go before the other inputs of its seqs). Rows of a timer (a late-data
    rebuild) carry the last batch's: the sequencer passes them at once."""

    seq = -1

    def on_batch(self, values: list[list[Keyed]]) -> tuple[list[Any], bool]:
        # (live: one group, one or two events)
        first = values[0][0][0] if len(values) == 1 else min(group[0][0] for group in values)
        if first > self.seq:
            self.seq = first
        return [(self.seq, self._batch(values))], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Any], bool]:
        out, retain = super().on_notify()
        return [(self.seq, rows) for rows in out], retain

    def on_eof(self) -> tuple[list[Any], bool]:
        out, retain = super().on_eof()
        return [(self.seq, rows) for rows in out], retain


def _seq_rows_of(keyed: list[Any]) -> list[list[Any]]:
    rows = [r for _, (_, rs) in keyed for r in rs]
    return [rows] if rows else []


def _machine_to_sequencer(keyed: list[Any]) -> list[tuple[str, Any]]:
    want = _MACHINE_TO_SEQUENCER
    return [
        ("plant", SeqKeyed(seq, 0, machine, i, x))
        for machine, (seq, rows) in keyed
        for i, x in enumerate(rows)
        if type(x) in want
    ]


def _to_sequencer(items: list[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for x in items:
        if type(x) is _ToSequencer:
            out.extend(("plant", k) for k in x.items)
        else:  # a ReadMark
            out.append(("plant", x))
    return out


class SequencerLogic(StatefulBatchLogic[Any, list[Any], bytes]):
    """Bytewax adapter around the cluster's one Sequencer (all inputs under one key)."""

    def __init__(self, resume: bytes | None) -> None:
        self.seq: Sequencer = pickle.loads(resume) if resume else Sequencer(PARTS)

    def on_batch(self, values: list[Any]) -> tuple[list[list[Any]], bool]:
        inputs = [x for x in values if type(x) is SeqKeyed]
        marks = [x.positions for x in values if type(x) is ReadMark]
        out = self.seq.feed(inputs, marks)
        return ([out] if out else []), self.RETAIN

    def on_eof(self) -> tuple[list[list[Any]], bool]:
        out = self.seq.finish()
        return ([out] if out else []), self.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.seq, protocol=pickle.HIGHEST_PROTOCOL)


def _is_to_sequencer(x: Any) -> bool:
    return type(x) is _ToSequencer


def build_flow(
    plant: PlantConfig,
    source: Source[Any],
    sink: Sink[Any],
    figures_every: timedelta | None = None,
    late: LateStore | None = None,
    alerts: AlertsConfig | None = None,
) -> Dataflow:
    """The dataflow. `figures_every` (live) limits how often a machine's figures are
    rewritten; None (replay) writes them after every batch. `late`: checkpoints and
    rebuilds from the log, so that late data is merged (without it, late data fails).
    `alerts`: the alerts file's rules (None or no rules: no alert step)."""
    ideal = IdealCycles.from_plant(plant)
    flow = Dataflow("mesflow")
    entries, marks = log_input(flow, source)  # log rows; read marks in a cluster
    live = figures_every is not None
    clock = None if live else EventClock()  # replay: ETAs move to the last event time
    validator = Validator(plant)
    # Rows travel in lists (one per input batch and step) between the steps: Bytewax's cost
    # is per item and per operator, and the rows stream is nearly as long as the events.
    # Only the keyed steps' inputs are single items: a machine's events of one batch (one
    # item), an order's inputs, each side step's few inputs.
    # In a cluster, only this worker's machines (streams/log_source.py owned_only).
    validating = validator if clock is None else clock.watch(validator)
    if marks is None:  # one process
        checked = op.flat_map_batch("validate", entries, _grouped(owned_only(source, validating)))
        split = op.branch("machine_events", checked, _is_group)
        trackers = op.stateful_batch(
            "machines", split.trues, lambda resume: MachineLogic(resume, plant, figures_every, late)
        )
        # `rest`: the machines' rows and everything else the validator passed, in lists.
        rest = op.merge(
            "machine_rows_and_rest",
            op.flat_map_batch("machine_rows", trackers, _rows_of),
            split.falses,
        )
        # One reader reads the log in seq order: the plant-wide steps get each batch's
        # inputs together, in the order the sequencer gives a cluster's (no sequencer here).
        ordered = rest
    else:
        # A cluster: the plant-wide steps' inputs, tagged with their seqs, go through the
        # sequencer, which gives them back in log order (streams/sequencer.py).
        validate = owned_only(source, _tag_seqs(validating))
        checked = op.flat_map_batch("validate", entries, _grouped_seq(validate))
        split = op.branch("machine_events", checked, _is_group)
        side = op.branch("to_sequencer", split.falses, _is_to_sequencer)
        trackers = op.stateful_batch(
            "machines",
            split.trues,
            lambda resume: _SeqMachineLogic(resume, plant, figures_every, late),
        )
        rest = op.merge(
            "machine_rows_and_rest",
            op.flat_map_batch("machine_rows", trackers, _seq_rows_of),
            side.falses,
        )
        sequencer = op.stateful_batch(
            "sequencer",
            op.merge(
                "sequencer_inputs",
                op.flat_map_batch("validated_to_sequencer", side.trues, _to_sequencer),
                op.flat_map_batch("machines_to_sequencer", trackers, _machine_to_sequencer),
                op.flat_map_batch("marks_to_sequencer", marks, _to_sequencer),
            ),
            SequencerLogic,
        )
        ordered = op.flat_map_batch("sequenced", sequencer, _rows_of)
    # Orders join CRM snapshots, work orders and the parts the machines counted for them.
    orders = op.stateful_batch(
        "orders",
        op.flat_map_batch("order_inputs", ordered, _order_inputs),
        lambda resume: OrderLogic(resume, ideal, live, clock, figures_every),
    )
    # The order inputs stay in `rest`: no result step takes them, the sink stores none.
    results = op.merge("all_results", op.flat_map_batch("order_rows", orders, _rows_of), rest)
    # Production problems back to the CRM (streams/order_problems.py).
    results = order_problem_rows(results, plant, live)
    results = op.merge("results_and_inspections", results, inspection_rows(plant, ordered, live))
    results = op.merge("results_and_quality", results, quality_rows(plant, ordered, live))
    results = op.merge("results_and_labor", results, labor_rows(plant, ordered, live))
    if has_limits(plant):  # out-of-limit spans of process values (streams/limit_spans.py)
        results = op.merge("results_and_spans", results, limit_span_rows(plant, checked))
    if alerts is not None and alerts.rules:
        wanted = _alert_inputs(alerts)
        to_alerts = op.flat_map_batch(
            "alert_inputs",
            results,
            lambda lists: [("plant", x) for rows in lists for x in rows if type(x) in wanted],
        )
        engine = op.stateful_batch(
            "alerts", to_alerts, lambda resume: AlertLogic(resume, alerts, plant, live)
        )
        results = op.merge(
            "results_and_alerts", results, op.flat_map_batch("alert_rows", engine, _rows_of)
        )
    if marks is not None:  # how far each log partition is read (streams/log_source.py)
        results = op.merge("results_and_marks", results, marks)
    # One sink partition: every row goes to it, in order (from every worker, in a cluster).
    op.output("results", op.map("to_sink", results, lambda row: ("results", row)), sink)
    return flow
