"""First-article, patrol and last-piece inspections (docs/inspections.md).

Plain Python, no Bytewax and no I/O (streams/inspections_flow.py wires it). One
`Inspections` for the plant takes

- FloorInput(inspection): stored as one InspectionRecord (keyed by its seq);
- FloorInput(wo_start / wo_end): the runs of work orders at each machine;
- WorkOrderParts: the parts a work order has made at a machine (absolute totals);
- OrderInput(WorkOrderEvent): the work order's product, whose inspection policy applies
  (`plant.inspection_policy(product)`).

A *run* is one (work order, machine, operation) from its wo_start to its wo_end, or to the
next wo_start at that machine (the machine tracker's rule too). One step for the plant,
not one per work order: a wo_start of another work order ends a run, and only the
machine's whole history knows that (a displaced work order must not go on owing patrols).

Everything about a run is derived again from its facts whenever one of them changes (the
inspections of its work order at its machine, sorted by event time; its start and end; the
parts made): so a result does not depend on the order in which the dataflow's branches
deliver rows. The rows out are absolute (a run row, flag episodes keyed by their start),
written again only when they change; a flag episode that disappears (an inspection arrived
after the rows that had seemed to make it missing) is written with `until = since`, which
the boards and the alert engine read as "never was".

Time is event time: the highest event time seen, less `lag_us` (rows of other branches may
still be on their way); live, the dataflow moves it with the wall clock (`tick`), and a
replay decides at its end from its last event time (`settle`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from mesflow.events import (
    Characteristic,
    InspectionReport,
    WorkOrderEndReport,
    WorkOrderEvent,
    WorkOrderStartReport,
)
from mesflow.plant import InspectionPolicy, PlantConfig
from streams.hour_clock import from_us, to_us
from streams.records import FloorInput, WorkOrderParts
from streams.shift_calendar import CalendarIndex

MIN_US = 60_000_000
DAY_US = 24 * 3600 * 1_000_000
KEEP_US = 3 * DAY_US  # a run ended this long before the clock is forgotten
LAST_PIECE_SHOWN_US = DAY_US  # a missing last piece stays an open flag this long
MAX_POINTS = 512  # parts totals kept per (work order, machine)
_MAX_TOTAL = 2**63  # sorts after every total: (t, _MAX_TOTAL) bisects past the points at t


class InspectionRecord(NamedTuple):
    """One inspection report, as stored (table `inspection`)."""

    seq: int
    ts: datetime
    machine: str
    work_order: str
    operation: str | None
    stage: str
    result: str
    sample_qty: int | None
    characteristics: tuple[dict[str, Any], ...]  # each with `ok` judged from lsl/usl
    defects: tuple[dict[str, Any], ...]
    note: str | None
    operator: str | None
    product: str | None
    all_ok: bool | None  # every judged characteristic ok; None: none judged


class InspectionRun(NamedTuple):
    """A run's inspection status (table `inspection_run`), rewritten whole."""

    work_order: str
    machine: str
    operation: str  # "" when the wo_start named none
    start_ts: datetime
    end_ts: datetime | None
    product: str | None
    first_article: str  # off | pending | passed | failed | missing
    blocked: bool  # block_until_first_article_passes, open and not passed
    parts_made: int
    patrol_every_min: float
    next_patrol_due: datetime | None
    patrol_missed_since: datetime | None
    last_piece: str  # off | pending | done | missing
    # Every inspection due so far: (stage, due, plant-local day, status, done at, result);
    # status on_time | late | missed | open (not decided yet).
    slots: tuple[tuple[str, datetime, date, str, datetime | None, str | None], ...]
    # True: the run no longer exists (its start was revised away by a later-arriving
    # report): the sink deletes its row, so a resumed or differently batched run of the
    # same log stores the same runs.
    gone: bool = False


class InspectionRunSet(NamedTuple):
    """Every run of `machine` that starts at or after `since`, as derived now (table
    `inspection_run`): the sink deletes the machine's other rows from `since` on. A run
    that an earlier, differently batched derivation wrote (a replay resumed mid-way, a
    report arriving late) and that no longer exists goes with it."""

    machine: str
    since: datetime
    runs: tuple[tuple[str, str, datetime], ...]  # (work order, operation, start)


class InspectionFlag(NamedTuple):
    """One flag episode (table `inspection_flag`): open while `until` is None; `until ==
    since`: withdrawn (it never was). Read by the boards and the alert engine."""

    work_order: str
    machine: str
    operation: str
    run_start: datetime
    flag: str  # first_article | patrol_missed | last_piece
    since: datetime
    until: datetime | None
    detail: str  # first_article: missing | failed; patrol_missed, last_piece: missed
    product: str | None
    blocking: bool
    parts_made: int


Row = InspectionRecord | InspectionRun | InspectionRunSet | InspectionFlag


def judge(c: Characteristic) -> bool | None:
    """A characteristic's verdict: as reported, else from its limits; None: not judged."""
    if c.ok is not None:
        return c.ok
    if c.value is None or (c.lsl is None and c.usl is None):
        return None
    return (c.lsl is None or c.value >= c.lsl) and (c.usl is None or c.value <= c.usl)


def record_of(seq: int, ev: InspectionReport, product: str | None) -> InspectionRecord:
    chars: list[dict[str, Any]] = []
    verdicts: list[bool] = []
    for c in ev.characteristics:
        ok = judge(c)
        if ok is not None:
            verdicts.append(ok)
        chars.append(
            {
                "name": c.name,
                "value": c.value,
                "lsl": c.lsl,
                "usl": c.usl,
                "unit": c.unit,
                "ok": ok,
            }
        )
    return InspectionRecord(
        seq=seq,
        ts=ev.ts,
        machine=ev.machine,
        work_order=ev.work_order,
        operation=ev.operation,
        stage=ev.stage,
        result=ev.result,
        sample_qty=ev.sample_qty,
        characteristics=tuple(chars),
        defects=tuple({"code": d.code, "qty": d.qty} for d in ev.defects),
        note=ev.note,
        operator=ev.operator,
        product=product,
        all_ok=all(verdicts) if verdicts else None,
    )


class _Check(NamedTuple):
    t: int
    seq: int
    stage: str
    result: str
    op: str | None


class _WoEvent(NamedTuple):
    t: int
    seq: int
    start: bool
    work_order: str
    op: str


RunKey = tuple[str, str, str, int]  # work order, machine, operation, start (us)
# (stage, due, its plant-local day, status, done at, result): one inspection slot of a run
Slot = tuple[str, datetime, date, str, datetime | None, str | None]
FlagKey = tuple[str, str, str, int, str, int]  # run key + flag, since (us)


@dataclass(slots=True)
class _Memo:
    """What a run remembers between derivations: its last rows, and when it went missing."""

    detected_at: int | None = None  # first parts total seen above the first-article limit
    # _parts' last answer and what it was computed from: (points, last point, next start,
    # limit, made).
    parts_seen: tuple[int, tuple[int, int] | None, int | None, int, int] | None = None
    row: InspectionRun | None = None
    flags: dict[FlagKey, InspectionFlag] = field(default_factory=dict)
    end: int | None = None


@dataclass(slots=True)
class InspectionState:
    """Picklable: everything the step keeps (snapshots)."""

    high: int = 0  # highest event time seen
    clock: int = 0  # decided up to here
    products: dict[str, str] = field(default_factory=dict)  # work order -> product
    wo_events: dict[str, list[_WoEvent]] = field(default_factory=dict)  # machine -> sorted
    checks: dict[tuple[str, str], list[_Check]] = field(default_factory=dict)  # (wo, machine)
    # (work order, machine, operation or "*" for all): (t, parts made in total), sorted.
    parts: dict[tuple[str, str, str], list[tuple[int, int]]] = field(default_factory=dict)
    runs: dict[RunKey, _Memo] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # machines whose runs are all derived again
    # (work order, machine) whose inspections or parts changed: its runs are derived again.
    dirty_wo: set[tuple[str, str]] = field(default_factory=set)
    # Runs that ended before this were forgotten (_forget): not derived again. Runs seen
    # for the first time are written however old they are, so a replay in one big batch
    # writes the same runs as one in many small ones.
    forgotten_before: int = 0


class _Run(NamedTuple):
    work_order: str
    op: str
    start: int
    end: int | None


class _MachineRuns(NamedTuple):
    """A machine's runs as derived from its work-order reports (the list object and its
    length: reports are only inserted), and what each batch would otherwise derive again
    from them: the run set row, each run's work order's next start here, the runs' keys
    and indexes."""

    events: list[_WoEvent]
    n: int
    runs: list[_Run]
    run_set: InspectionRunSet | None
    nxt: list[int | None]
    keys: list[RunKey]
    pos: dict[RunKey, int]
    by_wo: dict[str, list[int]]  # work order -> its runs' indexes
    unique: bool  # no two runs share a key (then the index finds every run)


def _machine_runs(machine: str, events: list[_WoEvent]) -> _MachineRuns:
    runs = _runs(events)
    nxt: list[int | None] = [None] * len(runs)
    later: dict[str, int] = {}
    for i in range(len(runs) - 1, -1, -1):
        r = runs[i]
        nxt[i] = later.get(r.work_order)
        later[r.work_order] = r.start
    keys = [(r.work_order, machine, r.op, r.start) for r in runs]
    pos = {k: i for i, k in enumerate(keys)}
    by_wo: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        by_wo.setdefault(r.work_order, []).append(i)
    run_set = (
        InspectionRunSet(
            machine,
            from_us(runs[0].start),
            tuple((r.work_order, r.op, from_us(r.start)) for r in runs),
        )
        if runs
        else None
    )
    return _MachineRuns(
        events, len(events), runs, run_set, nxt, keys, pos, by_wo, len(pos) == len(runs)
    )


class Inspections:
    def __init__(
        self,
        plant: PlantConfig,
        state: InspectionState | None = None,
        lag_s: float | None = None,
    ) -> None:
        self.plant = plant
        self.tz: ZoneInfo = plant.tz
        self.state = state or InspectionState()
        lag = plant.plant.allowed_lateness_seconds if lag_s is None else lag_s
        self.lag_us = round(lag * 1_000_000)
        # Imported here: streams/validate.py imports the alert engine, which reads this
        # module's flag rows (a module-level import would be a cycle).
        from streams.validate import OrderInput

        self._order_input = OrderInput
        self._cals: dict[str, CalendarIndex] = {}  # machine -> its line's shift calendar
        self._cal_of: dict[int, CalendarIndex] = {}  # id(calendar) -> its index
        # Pure functions of their arguments, asked again for every open run at every batch
        # (its patrol slots are derived from its start each time): remembered.
        self._later: dict[tuple[str, int, int], int] = {}
        self._days: dict[int, date] = {}
        # Per run: (its memo, the inputs its rows were derived from, the clock up to which
        # they stand): see _run_rows.
        self._same: dict[RunKey, tuple[_Memo, tuple[Any, ...], int]] = {}
        self._patrol_memo: dict[RunKey, tuple[tuple[Any, ...], Any]] = {}
        # Per run: its patrol slots and missed episodes up to its last patrol, as of
        # ((every, grace), the patrols, slots, episodes, the last patrol's time): _patrols.
        self._patrol_prefix: dict[RunKey, tuple[Any, ...]] = {}
        self._policies: dict[str | None, InspectionPolicy] = {}  # product -> its policy
        # machine -> the first clock at which one of its ticking runs may say something new
        # (the earliest `until` of their last derivations): before it, a batch that does
        # not touch the machine skips it (live: most machines, every batch).
        self._wake: dict[str, int] = {}
        # work order -> machines whose kept reports name it (built on first use; rebuilt
        # after _forget drops reports); and each machine's runs as last derived from its
        # work-order reports (the list object and its length: reports are only inserted).
        self._naming: dict[str, set[str]] | None = None
        self._runs_of: dict[str, _MachineRuns] = {}
        # machine -> its runs that tick (open, or an open flag): built on first use, then
        # kept as runs are derived (not a scan of every run at every batch).
        self._tick: dict[str, set[RunKey]] | None = None
        # No ended run ends before this (a lower bound): _forget has nothing to drop while
        # its horizon has not passed it.
        self._min_end = -_NEVER
        # Per run: the parts points its count was summed from (the list object, how many,
        # its reshapes count then, the next start), the highest total up to its start
        # and in its window (None: none): a batch's new points are folded in, not the
        # whole list summed again. _point counts the reshapes of each list.
        self._made: dict[RunKey, tuple[list[tuple[int, int]], int, int, int | None, Any, Any]] = {}
        self._reshaped: dict[tuple[str, str, str], int] = {}
        # (work order, machine) whose inspections changed since the last derivation (the
        # others in `dirty_wo` changed by their parts alone).
        self._checked: set[tuple[str, str]] = set()

    # -- input -------------------------------------------------------------------------------

    def feed(self, items: list[Any]) -> list[Row]:
        s = self.state
        out: list[Row] = []
        for x in items:
            t = type(x)
            if t is FloorInput:
                ev = x.event
                te = type(ev)
                if te is InspectionReport:
                    out.append(record_of(x.seq, ev, s.products.get(ev.work_order)))
                    at = to_us(ev.ts)
                    insort(
                        s.checks.setdefault((ev.work_order, ev.machine), []),
                        _Check(at, x.seq, ev.stage, ev.result, ev.operation),
                    )
                    self._named(ev.work_order, ev.machine)
                    s.dirty_wo.add((ev.work_order, ev.machine))
                    self._checked.add((ev.work_order, ev.machine))
                    self._saw(at)
                    continue
                elif te is WorkOrderStartReport or te is WorkOrderEndReport:
                    at = to_us(ev.ts)
                    insort(
                        s.wo_events.setdefault(ev.machine, []),
                        _WoEvent(
                            at, x.seq, te is WorkOrderStartReport, ev.work_order, ev.operation or ""
                        ),
                    )
                    self._named(ev.work_order, ev.machine)
                else:
                    continue
                self._saw(at)
                s.dirty.add(ev.machine)
            elif t is WorkOrderParts:
                # All its parts here ("*"), and those of each operation its starts named.
                total = x.good_total + x.scrap_total
                _point(s.parts, (x.work_order, x.machine, "*"), x.t, total, self._reshaped)
                for op_name, good, scrap in x.ops:
                    if op_name:
                        key = (x.work_order, x.machine, op_name)
                        _point(s.parts, key, x.t, good + scrap, self._reshaped)
                self._saw(x.t)
                s.dirty_wo.add((x.work_order, x.machine))
            elif t is self._order_input and type(x.event) is WorkOrderEvent:
                ev = x.event
                if s.products.get(ev.work_order) != ev.product:
                    s.products[ev.work_order] = ev.product
                    # Its policy may change: every machine it ran on is derived again.
                    s.dirty.update(self._machines_naming(ev.work_order))
        s.clock = max(s.clock, s.high - self.lag_us)
        out.extend(self._derive())
        return out

    def _named(self, work_order: str, machine: str) -> None:
        if self._naming is not None:
            self._naming.setdefault(work_order, set()).add(machine)

    def _machines_naming(self, work_order: str) -> set[str]:
        """The machines whose kept inspections or work-order reports name the work order
        (an index, not a scan of every machine's reports per work_order event)."""
        index = self._naming
        if index is None:
            s = self.state
            index = self._naming = {}
            for wo, m in s.checks:
                index.setdefault(wo, set()).add(m)
            for m, evs in s.wo_events.items():
                for e in evs:
                    index.setdefault(e.work_order, set()).add(m)
        return index.get(work_order, set())

    def tick(self, now_us: int) -> list[Row]:
        """Live: event time goes on with the wall clock (less the lag) while nothing comes."""
        self.state.clock = max(self.state.clock, now_us)
        return self._derive()

    def settle(self) -> list[Row]:
        """The end of a replay: every row is in; decide up to the last event time."""
        self.state.clock = max(self.state.clock, self.state.high)
        return self._derive()

    def wants_clock(self) -> bool:
        """True while a run is open (patrols fall due by time) or an ended run's flag is."""
        return bool(self._ticking())

    def _saw(self, t: int) -> None:
        if t > self.state.high:
            self.state.high = t

    # -- derivation ----------------------------------------------------------------------------

    def _derive(self) -> list[Row]:
        s = self.state
        dirty, dirty_wo = s.dirty, s.dirty_wo
        tick = self._ticking()
        # Open runs fall due by the clock alone, and so does an ended run's open flag
        # (the index `tick`); other runs only when their facts changed (dirty).
        wos_of: dict[str, set[str]] = {}
        for wo, m in dirty_wo:
            w = wos_of.get(m)
            if w is None:
                wos_of[m] = {wo}
            else:
                w.add(wo)
        machines = set(dirty)
        machines.update(wos_of)
        machines.update(tick)
        checked = self._checked
        s.dirty, s.dirty_wo, self._checked = set(), set(), set()
        out: list[Row] = []
        clock = s.clock
        fresh: dict[str, _MachineRuns] = {}
        runs_of, wo_events = self._runs_of, s.wo_events
        for machine in machines:
            evs = wo_events.get(machine, _NO_EVENTS)
            known_runs = runs_of.get(machine)
            if known_runs is None or known_runs.events is not evs or known_runs.n != len(evs):
                fresh[machine] = runs_of[machine] = _machine_runs(machine, evs)
        # The known runs of the machines whose runs may have changed, in one pass.
        known: dict[str, list[RunKey]] = {}
        if dirty or fresh:
            for k in s.runs:
                if k[1] in dirty or k[1] in fresh:
                    known.setdefault(k[1], []).append(k)
        memos, same_of, made_only, wake = s.runs, self._same, self._made_only, self._wake
        for machine in sorted(machines):
            mr = runs_of[machine]
            if mr.run_set is not None and machine in fresh:
                # Only when derived anew (new reports, or the first batch after a restore):
                # the same set again deletes nothing, and live it would be one statement
                # per machine with an open run at every batch.
                out.append(mr.run_set)
            runs = mr.runs
            wos = wos_of.get(machine)
            if machine not in dirty and machine not in fresh and mr.unique:
                # Its runs are those of its last derivation: only its runs that tick
                # (open, or with an open flag) and those of the work orders whose
                # inspections or parts changed can say anything new.
                if wos is None and clock < wake.get(machine, -_NEVER):
                    continue  # only the clock moved, and not up to its runs' next instant
                keys = tick.get(machine)
                pos = mr.pos
                picks = [pos[k] for k in keys] if keys else []
                if wos is not None:
                    for wo in wos:
                        picks.extend(mr.by_wo.get(wo, ()))
                if len(picks) > 1:
                    picks = sorted(set(picks))
                rederived = False
                for i in picks:
                    run, key = runs[i], mr.keys[i]
                    memo = memos.get(key)
                    if memo is None:
                        if run.end is not None and run.end < s.forgotten_before:
                            continue  # long over and forgotten: nothing to say again
                        memo = memos[key] = _Memo()
                    else:
                        same = same_of.get(key)
                        if same is not None and same[0] is memo and clock < same[2]:
                            if wos is None or run.work_order not in wos:
                                continue  # its inputs are those of its last derivation
                            if (run.work_order, machine) not in checked:
                                # Its parts alone changed: so may the parts made (its
                                # end and flags' being open stay: the index too).
                                rows = made_only(machine, run, mr.nxt[i], memo, same, key)
                                if rows is not None:
                                    out.extend(rows)
                                    continue
                    memo.end = run.end
                    out.extend(self._run_rows(machine, run, mr.nxt[i], memo))
                    self._note(key, memo)
                    rederived = True
                if rederived or machine not in wake:
                    # (a parts-only change keeps each run's `until`: its wake stands)
                    self._rewake(machine)
                continue
            mtick = tick.get(machine, ())
            seen: set[RunKey] = set()
            for i, run in enumerate(runs):
                key = (run.work_order, machine, run.op, run.start)
                seen.add(key)
                memo = s.runs.get(key)
                if memo is None:
                    if run.end is not None and run.end < s.forgotten_before:
                        continue  # long over and forgotten: nothing to say again
                    memo = s.runs[key] = _Memo()
                elif (
                    run.end is not None
                    and machine not in dirty
                    and (wos is None or run.work_order not in wos)
                    and key not in mtick
                ):
                    continue  # over, and none of its facts changed
                memo.end = run.end
                out.extend(self._run_rows(machine, run, mr.nxt[i], memo))
                self._note(key, memo)
            # Runs that no longer exist (a start revised away): withdraw their flags.
            # (runs added above are all in `seen`; only this machine's runs changed)
            for key in [k for k in known.get(machine, ()) if k not in seen]:
                memo = s.runs.pop(key)
                self._unnote(key)
                for fl in memo.flags.values():
                    if fl.until != fl.since:
                        out.append(fl._replace(until=fl.since))
                if memo.row is not None:
                    out.append(memo.row._replace(gone=True))
            self._rewake(machine)
        self._forget()
        return out

    def _rewake(self, machine: str) -> None:
        """The machine's wake (see __init__), after its runs were derived."""
        keys = self._tick.get(machine) if self._tick is not None else None
        if keys:
            memos, same_of = self.state.runs, self._same
            wake = _NEVER
            for k in keys:
                same = same_of.get(k)
                if same is None or same[0] is not memos.get(k):
                    break  # not derived whole yet: derive it at the next batch
                if same[2] < wake:
                    wake = same[2]
            else:
                self._wake[machine] = wake
                return
        self._wake.pop(machine, None)

    def _ticking(self) -> dict[str, set[RunKey]]:
        """machine -> its runs that are open or have an open flag (built from the state
        once, then kept by _note / _unnote as runs are derived and dropped)."""
        tick = self._tick
        if tick is None:
            tick = self._tick = {}
            for k, m in self.state.runs.items():
                if m.end is None or _has_open_flag(m):
                    tick.setdefault(k[1], set()).add(k)
        return tick

    def _note(self, key: RunKey, memo: _Memo) -> None:
        """A run was derived: keep the index of ticking runs and the earliest end current."""
        tick = self._tick
        assert tick is not None
        if memo.end is None or _has_open_flag(memo):
            tick.setdefault(key[1], set()).add(key)
        else:
            keys = tick.get(key[1])
            if keys is not None and key in keys:
                keys.discard(key)
                if not keys:
                    del tick[key[1]]
        if memo.end is not None and memo.end < self._min_end:
            self._min_end = memo.end

    def _unnote(self, key: RunKey) -> None:
        tick = self._tick
        keys = None if tick is None else tick.get(key[1])
        if keys is not None and key in keys:
            keys.discard(key)
            if not keys:
                del tick[key[1]]  # type: ignore[union-attr]

    def _run_rows(self, machine: str, run: _Run, nxt: int | None, memo: _Memo) -> list[Row]:
        s = self.state
        product = s.products.get(run.work_order)
        policy = self._policy(product)
        checks = [
            c
            for c in s.checks.get((run.work_order, machine), [])
            if c.t >= run.start and (not c.op or not run.op or c.op == run.op)
        ]
        if nxt is not None:  # an inspection belongs to the latest run of its work order here
            checks = [c for c in checks if c.t < nxt]
        made, detected = self._parts(machine, run, nxt, policy, memo)
        clock = s.clock
        # The rows below are a function of these and of the clock, which they read only
        # in comparisons with a few instants: up to the first of them (`until`), the same
        # inputs give the rows already sent (open runs are derived at every batch).
        inputs = (run, nxt, product, tuple(checks), made, detected)
        run_key = (run.work_order, machine, run.op, run.start)
        same = self._same.get(run_key)
        if same is not None and same[0] is memo and clock < same[2] and memo.row is not None:
            before = same[1]
            if before == inputs:
                return []
            if before[5] == detected and before[:4] == inputs[:4]:
                # Only the parts made changed (most runs at most batches): it is read
                # nowhere but in the rows' part counts.
                return self._made_changed(run_key, memo, inputs, same[2], made)
        until = _NEVER
        firsts = [c for c in checks if c.stage == "first"]
        patrols = [c for c in checks if c.stage == "patrol" and (run.end is None or c.t <= run.end)]
        lasts = [c for c in checks if c.stage == "last"]
        slots: list[Slot] = []
        flags: list[InspectionFlag] = []
        run_start = from_us(run.start)

        def flag(name: str, since: int, until: int | None, detail: str, blocking: bool) -> None:
            flags.append(
                InspectionFlag(
                    run.work_order,
                    machine,
                    run.op,
                    run_start,
                    name,
                    from_us(since),
                    None if until is None else from_us(until),
                    detail,
                    product,
                    blocking,
                    made,
                )
            )

        # First article: required when a part limit is set or production waits for it.
        fa_on = policy.first_article_within_parts > 0 or policy.block_until_first_article_passes
        fa = "off"
        if fa_on:
            fa = "pending"
            if firsts:
                fa = "passed" if firsts[-1].result == "pass" else "failed"
            elif detected is not None:
                fa = "missing"
            first_fail = next((c for c in firsts if c.result == "fail"), None)
            first_pass = next((c for c in firsts if c.result == "pass"), None)
            # An episode runs from the run's start (deterministic: the alert id is made of
            # it) until a pass after the last failure, or the run's end.
            went_missing = detected is not None and (first_pass is None or first_pass.t > detected)
            if first_fail is not None or went_missing:
                closing = None
                if fa == "passed":
                    last_fail = max((c.t for c in firsts if c.result == "fail"), default=-1)
                    closing = next(c.t for c in firsts if c.result == "pass" and c.t > last_fail)
                elif run.end is not None:
                    closing = run.end
                detail = "failed" if first_fail is not None else "missing"
                blocking = policy.block_until_first_article_passes
                flag("first_article", run.start, closing, detail, blocking)
            day = self._day(run.start)
            if firsts:
                on_time = detected is None or firsts[0].t <= detected
                status = "on_time" if on_time else "late"
                done: datetime | None = from_us(firsts[0].t)
                res: str | None = "fail" if first_fail is not None else "pass"
            else:
                status = "missed" if detected is not None or run.end is not None else "open"
                done, res = None, None
            slots.append(("first", run_start, day, status, done, res))
        blocked = policy.block_until_first_article_passes and fa != "passed" and run.end is None

        # Patrols: one due every `every` after the start or the last patrol; missed once
        # `grace` has passed with none (a later patrol restarts the clock).
        every = round(policy.patrol_every_minutes * MIN_US)
        grace = round(policy.patrol_grace_minutes * MIN_US)
        next_due: int | None = None
        missed_since: int | None = None
        if every > 0:
            p_slots, p_flags, next_due, missed_since, p_until = self._patrols(
                machine, run, patrols, every, grace, clock
            )
            slots.extend(p_slots)
            for name, since, upto in p_flags:
                flag(name, since, upto, "missed", False)
            until = min(until, p_until)

        # Last piece: owed at the run's end.
        lp = "off"
        if policy.last_piece_required:
            if lasts:
                lp = "done"
            elif run.end is not None:
                lp = "missing"
                # Shown for a day (time to record it late), then a compliance figure only.
                shown_until = run.end + LAST_PIECE_SHOWN_US
                if clock < shown_until:
                    until = min(until, shown_until)
                flag(
                    "last_piece",
                    run.end,
                    shown_until if clock >= shown_until else None,
                    "missed",
                    False,
                )
            else:
                lp = "pending"
            if run.end is not None:
                done_at = from_us(lasts[0].t) if lasts else None
                res_lp = lasts[-1].result if lasts else None
                slots.append(
                    (
                        "last",
                        from_us(run.end),
                        self._day(run.end),
                        "on_time" if lasts else "missed",
                        done_at,
                        res_lp,
                    )
                )

        row = InspectionRun(
            run.work_order,
            machine,
            run.op,
            run_start,
            None if run.end is None else from_us(run.end),
            product,
            fa,
            blocked,
            made,
            policy.patrol_every_minutes,
            None if next_due is None else from_us(next_due),
            None if missed_since is None else from_us(missed_since),
            lp,
            tuple(slots),
        )
        out: list[Row] = []
        if row != memo.row:
            memo.row = row
            out.append(row)
        new = {_flag_key(f): f for f in flags}
        for k, f in new.items():
            was = memo.flags.get(k)
            # A closed episode is not written again for its part count alone.
            if was != f and not (
                f.until is not None and was == f._replace(parts_made=was.parts_made if was else 0)
            ):
                out.append(f)
        for k, f in memo.flags.items():
            if k not in new and f.until != f.since:
                out.append(f._replace(until=f.since))  # withdrawn
        memo.flags = new
        if len(self._same) > _MAX_MEMO:
            self._same.clear()
            self._wake.clear()
        self._same[run_key] = (memo, inputs, until)
        return out

    def _made_only(
        self,
        machine: str,
        run: _Run,
        nxt: int | None,
        memo: _Memo,
        same: tuple[_Memo, tuple[Any, ...], int],
        run_key: RunKey,
    ) -> list[Row] | None:
        """_run_rows for a run whose inputs other than its parts are those of its last
        derivation (`same`, whose rows stand on the clock): None when the first-article
        limit's passing moved (then it is derived whole)."""
        if memo.row is None or memo.end != run.end:
            return None
        product = self.state.products.get(run.work_order)
        policy = self._policy(product)
        made, detected = self._parts(machine, run, nxt, policy, memo)
        before = same[1]
        if before[5] != detected:
            return None
        if before[4] == made:
            return []
        inputs = (*before[:4], made, detected)
        return self._made_changed(run_key, memo, inputs, same[2], made)

    def _made_changed(
        self, run_key: RunKey, memo: _Memo, inputs: tuple[Any, ...], until: int, made: int
    ) -> list[Row]:
        """The rows _run_rows derives when only the parts made differ from the inputs of
        its last derivation: the run row, and the open flag episodes, with the new count
        (a closed episode is not written again for its part count alone)."""
        out: list[Row] = []
        row = memo.row
        if row is not None and row.parts_made != made:
            # row._replace(parts_made=made), without its keyword machinery (hot).
            memo.row = row = _tuple_new(
                InspectionRun, (*row[:_RUN_MADE], made, *row[_RUN_MADE + 1 :])
            )
            out.append(row)
        flags = memo.flags
        for k, f in flags.items():
            if f.parts_made != made:
                flags[k] = g = _tuple_new(
                    InspectionFlag, (*f[:_FLAG_MADE], made, *f[_FLAG_MADE + 1 :])
                )
                if f.until is None:
                    out.append(g)
        self._same[run_key] = (memo, inputs, until)
        return out

    def _patrols(
        self, machine: str, run: _Run, patrols: list[_Check], every: int, grace: int, clock: int
    ) -> tuple[list[Slot], list[tuple[str, int, int | None]], int | None, int | None, int]:
        """The run's patrol slots and missed episodes, when the next patrol is due, since
        when one is missed, and the clock up to which all this stands. Remembered per run:
        a long run has many patrols, and its rows are derived again at every batch that
        brings it parts (the part count changes nothing here)."""
        run_key = (run.work_order, machine, run.op, run.start)
        done = tuple(patrols)
        inputs = (run, done, every, grace)
        seen = self._patrol_memo.get(run_key)
        if seen is not None and seen[0] == inputs and clock < seen[1][4]:
            return seen[1]
        slots: list[Slot] = []
        flags: list[tuple[str, int, int | None]] = []
        anchor = run.start
        # The slots up to the last patrol depend on the patrols alone (each is at or
        # before the run's end): resumed after those of the last derivation when these
        # patrols begin with them (patrols come in time order; the clock reads only the
        # tail after the last one).
        prefix = self._patrol_prefix.get(run_key)
        if prefix is not None and prefix[0] == (every, grace):
            k = len(prefix[1])
            if k <= len(done) and done[:k] == prefix[1]:
                slots.extend(prefix[2])
                flags.extend(prefix[3])
                anchor = prefix[4]
                patrols = patrols[k:]
        next_due: int | None = None
        missed_since: int | None = None
        limit = clock if run.end is None else min(clock, run.end)
        cal = self._calendar(machine)
        memo_later = self._later
        if len(memo_later) > _MAX_MEMO:
            memo_later.clear()

        def later(t: int, by: int) -> int:
            k = (machine, t, by)
            v = memo_later.get(k)
            if v is None:
                v = memo_later[k] = _shift_time_after(cal, t, by)
            return v

        episode: int | None = None  # the open missed episode's start
        for p in patrols:
            d = later(anchor, every)
            while later(d, grace) < p.t and (run.end is None or later(d, grace) < run.end):
                slots.append(("patrol", from_us(d), self._day(d), "missed", None, None))
                if episode is None:
                    episode = later(d, grace)
                d = later(d, every)
            if episode is not None:
                flags.append(("patrol_missed", episode, p.t))
                episode = None
            slots.append(("patrol", from_us(d), self._day(d), "on_time", from_us(p.t), p.result))
            anchor = p.t
        if len(self._patrol_prefix) > _MAX_MEMO:
            self._patrol_prefix.clear()
        self._patrol_prefix[run_key] = ((every, grace), done, tuple(slots), tuple(flags), anchor)
        d = later(anchor, every)
        while later(d, grace) < limit:
            slots.append(("patrol", from_us(d), self._day(d), "missed", None, None))
            if episode is None:
                episode = later(d, grace)
            d = later(d, every)
        until = later(d, grace) + 1  # then `d` may be missed
        if run.end is not None and clock >= run.end:
            # Ended, and the clock past its end: the end bounds every slot (the clock no
            # longer matters), so an ended run is not derived again at every batch.
            until = _NEVER
        if episode is not None:
            flags.append(("patrol_missed", episode, run.end))
            if run.end is None:
                missed_since = episode
        if run.end is None:
            next_due = d
            if d <= clock:  # due, within its grace: not decided yet
                slots.append(("patrol", from_us(d), self._day(d), "open", None, None))
            else:
                until = min(until, d)
        out = (slots, flags, next_due, missed_since, until)
        if len(self._patrol_memo) > _MAX_MEMO:
            self._patrol_memo.clear()
        self._patrol_memo[run_key] = (inputs, out)
        return out

    def _parts(
        self, machine: str, run: _Run, nxt: int | None, policy: InspectionPolicy, memo: _Memo
    ) -> tuple[int, int | None]:
        """(parts made since the start, when the first-article limit was passed)."""
        parts = self.state.parts
        pkey = (run.work_order, machine, run.op)
        points = parts.get(pkey) if run.op else None
        if points is None:
            pkey = (run.work_order, machine, "*")
            points = parts.get(pkey, [])
        # The same points and end as last time: the same answer (most runs, most batches).
        limit = policy.first_article_within_parts
        n = len(points)
        last = points[-1] if n else None
        seen = memo.parts_seen
        if (
            seen is not None
            and seen[0] == n
            and seen[1] == last
            and seen[2] == nxt
            and seen[3] == limit
        ):
            return seen[4], memo.detected_at
        # Points are sorted by time: those up to the start give the total before the run;
        # after the run's end its work order's total here stays the run's (a total comes
        # when the machine's figures are written, often after the end), until the work
        # order starts here again.
        lo = (run.start, _MAX_TOTAL)
        hi = None if nxt is None else (nxt, -1)
        run_key = (run.work_order, machine, run.op, run.start)
        reshaped = self._reshaped.get(pkey, 0)
        known = self._made.get(run_key)
        if known is not None and known[0] is points and known[2] == reshaped and known[3] == nxt:
            # Only points appended since (in time order): fold them in.
            base, top = known[4], known[5]
            for p in points[known[1] :]:
                if p <= lo:  # up to the start (then the window is still empty)
                    base = p[1] if base is None or p[1] > base else base
                elif hi is None or p < hi:
                    top = p[1] if top is None or p[1] > top else top
                else:
                    break  # the rest is the work order's next run's
        else:
            i0 = bisect_right(points, lo)
            i1 = n if hi is None else bisect_left(points, hi)
            base = max((total for _t, total in points[:i0]), default=None)
            top = max((total for _t, total in points[i0:i1]), default=None)
        if len(self._made) > _MAX_MEMO:
            self._made.clear()
        self._made[run_key] = (points, n, reshaped, nxt, base, top)
        b = 0 if base is None else base
        made = max((b if top is None else top) - b, 0)
        if limit > 0 and memo.detected_at is None and made > limit:
            # The first total seen above the limit: by then the limit was certainly
            # passed. Totals come once per batch of the machine's events (live about
            # every second; a replay's batch may span an hour): a first article between
            # two totals is given the benefit of the doubt, never flagged wrongly.
            i0 = bisect_right(points, lo)
            i1 = n if hi is None else bisect_left(points, hi)
            memo.detected_at = next(t for t, total in points[i0:i1] if total - b > limit)
        memo.parts_seen = (n, last, nxt, limit, made)
        return made, memo.detected_at

    def _policy(self, product: str | None) -> InspectionPolicy:
        policy = self._policies.get(product)
        if policy is None:
            policy = self._policies[product] = self.plant.inspection_policy(product)
        return policy

    def _calendar(self, machine: str) -> CalendarIndex | None:
        cal = self._cals.get(machine)
        if cal is None and machine in self.plant.machines:
            # One index per calendar (a line's machines share it): building one names
            # the calendar by its repr, which costs more than a few batches of a replay.
            calendar = self.plant.calendar_for(machine)
            cal = self._cal_of.get(id(calendar))
            if cal is None:
                cal = self._cal_of[id(calendar)] = CalendarIndex(
                    calendar, self.plant.plant.timezone
                )
            self._cals[machine] = cal
        return cal

    def _day(self, t: int) -> date:
        days = self._days
        d = days.get(t)
        if d is None:
            if len(days) > _MAX_MEMO:
                days.clear()
            d = days[t] = from_us(t).astimezone(self.tz).date()
        return d

    def _forget(self) -> None:
        """Runs ended KEEP_US before the clock, and their facts, go (state stays small)."""
        s = self.state
        horizon = s.clock - KEEP_US
        if horizon <= self._min_end:
            return  # no run ended before the horizon
        old: list[RunKey] = []
        min_end = _NEVER
        for k, m in s.runs.items():
            if m.end is not None:
                if m.end < horizon:
                    old.append(k)
                elif m.end < min_end:
                    min_end = m.end
        self._min_end = min_end
        if not old:
            return
        s.forgotten_before = max(s.forgotten_before, horizon)
        self._naming = None  # reports are dropped below
        for k in old:
            del s.runs[k]
            self._unnote(k)
            self._made.pop(k, None)
            self._patrol_prefix.pop(k, None)
        for machine, evs in list(s.wo_events.items()):
            # Keep the start of the last run begun before the horizon (a run still open
            # may begin long ago) and what follows. Never cut inside a run: a repeated
            # start of the running work order would otherwise become its start.
            keep_from = 0
            cur: tuple[str, str] | None = None
            for i, e in enumerate(evs):
                if e.t >= horizon:
                    break
                if e.start:
                    if cur != (e.work_order, e.op):
                        keep_from = i
                    cur = (e.work_order, e.op)
                elif cur is not None and cur[0] == e.work_order and (not e.op or e.op == cur[1]):
                    cur = None
            if keep_from:
                s.wo_events[machine] = evs[keep_from:]
        live = {(k[0], k[1]) for k in s.runs}
        for key in [k for k in s.checks if k not in live]:
            if all(c.t < horizon for c in s.checks[key]):
                del s.checks[key]
        for pkey in [k for k in s.parts if k[:2] not in live]:
            if all(t < horizon for t, _ in s.parts[pkey]):
                del s.parts[pkey]


_tuple_new = tuple.__new__
_NO_EVENTS: list[_WoEvent] = []  # a machine without work-order reports (never appended to)
_RUN_MADE = InspectionRun._fields.index("parts_made")
_FLAG_MADE = InspectionFlag._fields.index("parts_made")
_MAX_MEMO = 100_000  # entries of each memo above (a few MB at most)
_NEVER = 1 << 62


def _shift_time_after(cal: CalendarIndex | None, t: int, span: int) -> int:
    """The time at which `span` us of shift time (the machine's line's shifts, breaks
    included) have passed since `t`: patrols fall due while the line works, not overnight
    when it has no shift. Without shifts in the next weeks (or a calendar): wall time."""
    if cal is None or span <= 0:
        return t + span
    # Most patrols fall due within the shift they start in: the shift covering t (shifts
    # are disjoint) lasts the span out. The walk below gives the same then.
    inst = cal.shift_at(t)
    if inst is not None and inst.end - t >= span:
        return t + span
    return _shift_time_walk(cal, t, span)


def _shift_time_walk(cal: CalendarIndex, t: int, span: int) -> int:
    """_shift_time_after, through the shifts from t on."""
    left = span
    a = t
    stop = t + 56 * DAY_US  # eight weeks without enough shift time: no shifts at all
    while a < stop:
        b = a + left + DAY_US  # enough for most spans (hours) within a working day
        for inst in cal.shifts_between(a, b):
            lo = max(inst.start, a)
            if inst.end <= lo:
                continue
            if inst.end - lo >= left:
                return lo + left
            left -= inst.end - lo
            a = inst.end
        a = max(a, b)
    return t + span


def _point(
    parts: dict[tuple[str, str, str], list[tuple[int, int]]],
    key: tuple[str, str, str],
    t: int,
    total: int,
    reshaped: dict[tuple[str, str, str], int],
) -> None:
    """Adds a parts total; counts in `reshaped` the changes that are not an append at the
    end (an insertion before the last point, the oldest points dropped)."""
    points = parts.setdefault(key, [])
    p = (t, total)
    if not points or points[-1] != p:
        if not points or p >= points[-1]:
            points.append(p)  # where insort would put it: the common case, in time order
        else:
            insort(points, p)
            reshaped[key] = reshaped.get(key, 0) + 1
        if len(points) > MAX_POINTS:
            del points[: len(points) - MAX_POINTS]
            reshaped[key] = reshaped.get(key, 0) + 1


def _has_open_flag(memo: _Memo) -> bool:
    return any(f.until is None for f in memo.flags.values())


def _flag_key(f: InspectionFlag) -> FlagKey:
    return (f.work_order, f.machine, f.operation, to_us(f.run_start), f.flag, to_us(f.since))


def _runs(events: list[_WoEvent]) -> list[_Run]:
    """A machine's runs from its wo_start / wo_end reports, in event time order."""
    runs: list[_Run] = []
    cur: _Run | None = None
    for e in events:
        if e.start:
            if cur is not None and cur.work_order == e.work_order and cur.op == e.op:
                continue  # started again while running: the same run
            if cur is not None:
                runs.append(_Run(cur.work_order, cur.op, cur.start, e.t))
            cur = _Run(e.work_order, e.op, e.t, None)
        elif cur is not None and cur.work_order == e.work_order and (not e.op or e.op == cur.op):
            runs.append(_Run(cur.work_order, cur.op, cur.start, e.t))
            cur = None
    if cur is not None:
        runs.append(cur)
    return runs
