"""Production problems go back to the CRM (docs/crm.md, `order.production_problem`).

Plain Python, no Bytewax and no I/O. One `OrderProblems` for the plant reads the rows the
dataflow already makes: stop intervals (IntervalRow: machine, start, state, reason and the
work order active on the machine), work-order rows (which order a work order feeds) and
order rows (the order's ETA); status rows move event time on. It emits one callback per stop
of a machine that is running one of the order's work orders, when

- the stop is `down` for `threshold_s` or longer (kind `machine_down`), or
- the stop's reason is in category `material` (kind `material_shortage`, at once),

with the dedupe key `problem:<order>:<machine>:<stop start>`: one per stop, whatever the
batching, and never twice (the outbox ignores a key it already holds, so a replay of the
same log sends nothing more).

Time is event time: a stop's length is its interval's duration, or, while it is open, the
highest event time the step has seen minus its start (live, the dataflow moves that on with
the wall clock, so a machine that is down and silent still counts). Old history does not
flood the CRM: live, a problem that arose (threshold crossed, or material reason learnt, in
event time) more than `max_age_s` (1 h) of wall time ago is marked done without a callback;
a replay is deterministic and relies on the outbox dedupe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from mesflow.plant import PlantConfig
from streams.hour_clock import from_us, to_us
from streams.order_progress import Callback, OrderProgressRow, WorkOrderProgressRow
from streams.records import IntervalRow, StatusRow

DEFAULT_THRESHOLD_S: Final = 30 * 60
DEFAULT_MAX_AGE_S: Final = 60 * 60
EVENT_TYPE: Final = "production_problem"
_FORGET_US: Final = 24 * 3600 * 1_000_000
INPUT_TYPES: Final = (IntervalRow, StatusRow, WorkOrderProgressRow, OrderProgressRow)


@dataclass(slots=True)
class _Stop:
    machine: str
    start: int  # us
    state: str
    reason: str | None
    order_no: str
    eta_before: datetime | None
    end: int | None = None  # us; None while open


@dataclass(slots=True)
class ProblemState:
    """Picklable: what the step keeps between batches (and in snapshots)."""

    wo_order: dict[str, str] = field(default_factory=dict)
    order_eta: dict[str, datetime | None] = field(default_factory=dict)
    open: dict[tuple[str, int], _Stop] = field(default_factory=dict)  # (machine, start)
    done: set[tuple[str, int]] = field(default_factory=set)  # stops already decided
    now: int | None = None  # highest event time seen, us


class OrderProblems:
    def __init__(
        self,
        material_reasons: Iterable[str],
        state: ProblemState | None = None,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        self.material = frozenset(material_reasons)
        self.state = state or ProblemState()
        self.threshold_us = round(threshold_s * 1_000_000)
        self.max_age_us = round(max_age_s * 1_000_000)

    @classmethod
    def from_plant(cls, plant: PlantConfig, state: ProblemState | None = None) -> OrderProblems:
        material = [c for c, r in plant.reasons_by_code.items() if r.category == "material"]
        return cls(material, state, threshold_s=plant.plant.order_problem_after_seconds)

    def feed(self, rows: Iterable[Any], wall_us: int | None = None) -> list[Callback]:
        """The rows of one batch; `wall_us` live (the anti-flood guard), None in a replay."""
        s = self.state
        for row in rows:
            t = type(row)
            if t is WorkOrderProgressRow:
                s.wo_order[row.work_order] = row.order_no
            elif t is OrderProgressRow:
                s.order_eta[row.order_no] = row.eta
            elif t is IntervalRow:
                self._interval(row)
            elif t is StatusRow:
                # A machine still sending while down moves event time on (an open stop's
                # interval row has no length yet).
                ts = to_us(row.last_event_ts)
                if s.now is None or ts > s.now:
                    s.now = ts
        return self._decide(wall_us)

    def tick(self, now_us: int, wall_us: int | None = None) -> list[Callback]:
        """Move event time on without rows (live: the wall clock minus the lag)."""
        s = self.state
        if s.now is None or now_us > s.now:
            s.now = now_us
        return self._decide(wall_us)

    # -- internals ---------------------------------------------------------------------------

    def _interval(self, row: IntervalRow) -> None:
        s = self.state
        start = to_us(row.start_ts)
        end = start + round(row.duration_s * 1_000_000)
        if s.now is None or end > s.now:
            s.now = end
        key = (row.machine, start)
        if key in s.done:
            return
        order_no = s.wo_order.get(row.work_order) if row.work_order else None
        if row.state == "running" or order_no is None:
            s.open.pop(key, None)  # a merge may have turned a stop into something else
            return
        stop = s.open.get(key)
        if stop is None:
            # The ETA the order had when the stop was first seen: its ETA before the stop.
            stop = s.open[key] = _Stop(
                row.machine, start, row.state, row.reason, order_no, s.order_eta.get(order_no)
            )
        stop.state, stop.reason, stop.order_no = row.state, row.reason, order_no
        stop.end = None if row.end_ts is None else to_us(row.end_ts)

    def _decide(self, wall_us: int | None) -> list[Callback]:
        s = self.state
        out: list[Callback] = []
        if s.now is not None:  # decided stops a day old no longer come back as rows
            s.done = {k for k in s.done if k[1] >= s.now - _FORGET_US}
        for key, stop in sorted(s.open.items()):
            end = stop.end if stop.end is not None else s.now
            length = (end or stop.start) - stop.start
            if stop.reason in self.material:
                kind = "material_shortage"
            elif stop.state == "down" and length >= self.threshold_us:
                kind = "machine_down"
            else:
                if stop.end is not None:  # over, and short of the threshold: never a problem
                    del s.open[key]
                continue
            del s.open[key]
            s.done.add(key)
            # When it became a problem: the threshold crossed, or the reason learnt.
            became = stop.start + self.threshold_us if kind == "machine_down" else (s.now or 0)
            if wall_us is not None and became < wall_us - self.max_age_us:
                continue  # live, an old problem (history catching up): no callback
            out.append(self._callback(stop, kind, length))
        return out

    def _callback(self, stop: _Stop, kind: str, length_us: int) -> Callback:
        before = stop.eta_before
        after: datetime | None = None
        if before is not None:
            # The machine made nothing for the order while stopped: the ETA moves at least
            # by the stop so far; a later ETA the order step already computed wins.
            after = before + timedelta(microseconds=length_us)
            latest = self.state.order_eta.get(stop.order_no)
            if latest is not None and latest > after:
                after = latest
        since = from_us(stop.start)
        return Callback(
            stop.order_no,
            EVENT_TYPE,
            {
                "kind": kind,
                "machine": stop.machine,
                "reason": stop.reason,
                "state": stop.state,
                "since": since,
                "stopped_s": round(length_us / 1_000_000, 1),
                "eta_before": before,
                "eta_after": after,
            },
            f"problem:{stop.order_no}:{stop.machine}:{since.isoformat()}",
        )
