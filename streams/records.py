"""What the dataflow's logic emits: one row type per results table, plus rejections.

Plain NamedTuples: cheap to build on the hot path, picklable for Bytewax, and each one
maps 1:1 onto the upsert that stores it (streams/pg_sink.py).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, NamedTuple


class IntervalRow(NamedTuple):
    machine: str
    start_ts: datetime
    end_ts: datetime | None
    state: str
    reason: str | None
    work_order: str | None
    duration_s: float
    is_microstop: bool | None


class IntervalDelete(NamedTuple):
    """An interval that no longer exists (a late state event merged it into another)."""

    machine: str
    start_ts: datetime


class StatusRow(NamedTuple):
    machine: str
    state: str
    since: datetime
    reason: str | None
    work_order: str | None
    last_event_ts: datetime
    good_total: int
    scrap_total: int


class HourRow(NamedTuple):
    machine: str
    hour_start: datetime
    running_s: float
    idle_s: float
    down_s: float
    setup_s: float
    planned_stop_s: float
    offline_s: float
    good: int
    scrap: int


class KpiRow(NamedTuple):
    """One machine_kpi row: a machine's figures for one hour or one shift instance."""

    machine: str
    bucket: str  # "hour" | "shift"
    bucket_start: datetime
    bucket_end: datetime
    shift_date: date | None
    shift_name: str | None
    planned_s: float
    running_s: float
    microstop_s: float
    microstop_count: int
    idle_s: float
    down_s: float
    setup_s: float
    offline_s: float
    planned_stop_s: float
    good: int
    scrap: int
    ideal_s: float
    failures: int
    failure_s: float
    all_good: int
    all_scrap: int


class ReasonSetRow(NamedTuple):
    """The whole downtime-by-reason set of one bucket: (reason, seconds, stops) items."""

    machine: str
    bucket: str
    bucket_start: datetime
    items: tuple[tuple[str, float, int], ...]


class ScrapSetRow(NamedTuple):
    """The whole scrap-by-reason set of one machine-hour: (reason, product, qty) items.

    Replaced whole when written: a late work-order product or a rebuild moves scrap away
    from a (reason, product), which must then disappear from that hour. `day` and
    `shift_name`: the shift instance containing the hour's start (its date and name), else
    the hour's own plant-local date and None; stored so that queries need no join."""

    machine: str
    hour_start: datetime
    day: date
    shift_name: str | None
    items: tuple[tuple[str, str, int], ...]


class WorkOrderParts(NamedTuple):
    """Parts counted on one machine while a work order was active there (absolute, as of t).

    `ops`: the same totals split by the routing operation each wo_start named, as
    (operation, good, scrap), "" for a wo_start naming none; () when no wo_start of this
    work order on this machine named one (all parts are then under ""). Which routing step
    "" is: streams/routing.py `op_for` (docs/routings.md)."""

    order_no: str
    work_order: str
    machine: str
    t: int  # the machine's clock, us
    good_total: int
    scrap_total: int
    ops: tuple[tuple[str, int, int], ...] = ()


class WorkOrderStarted(NamedTuple):
    order_no: str
    work_order: str
    machine: str
    t: int  # us
    # The first start per operation named, (operation, us); () as in WorkOrderParts.ops.
    ops: tuple[tuple[str, int], ...] = ()


class FloorInput(NamedTuple):
    """A floor report for the people and quality steps (sign-in/out, inspection, defect,
    rework), and a copy of each wo_start/wo_end (who works on which work order): these
    steps filter it by the event's class (streams/labor.py, inspections.py, quality.py)."""

    seq: int
    event: Any


class Rejection(NamedTuple):
    """An ingest_log row that goes to the dead-letter table, with a stable reason code."""

    seq: int
    reason: str
    detail: str


class Progress(NamedTuple):
    """The highest ingest_log seq of a batch the dataflow has taken in, with batch counts."""

    last_seq: int
    events: int
    dead: int


# What a machine tracker emits, and everything the results sink accepts from the machines.
MachineRow = (
    IntervalRow
    | IntervalDelete
    | StatusRow
    | HourRow
    | KpiRow
    | ReasonSetRow
    | ScrapSetRow
    | WorkOrderParts
    | WorkOrderStarted
)
ResultRow = MachineRow | Rejection | Progress


class AlertRow(NamedTuple):
    """One step in an alert's life (streams/alert_engine.py), in event time.

    Stored by the results sink in `alert` / `alert_step`, and handed to the alert outbox
    (notify/alert_outbox.py), which turns it into one delivery per person and channel.
    `alert_id` is a function of the rule, the scope and the event time the condition began,
    so a replay or a restart from a snapshot names the same alert and sends nothing twice.
    """

    alert_id: str  # "<rule>:<scope>:<condition start, us since epoch>"
    rule: str  # rule name from the alerts file
    kind: str  # machine_down | no_reason | kpi_below | scrap_rate | silent | order_at_risk
    scope: str  # "machine:IM-03" | "line:L1" | "plant" | "order:SO-1001"
    machine: str | None
    line: str | None
    order_no: str | None
    severity: str  # info | warning | critical
    step: str  # opened | escalated | resolved | acknowledged
    level: int  # escalation level reached, 0 = first
    at: datetime  # event time of this step
    opened_at: datetime  # event time the alert opened
    facts: dict[str, object]  # what the message says (JSON-serialisable): reason, minutes, oee...
    people: tuple[str, ...]  # who this step goes to: person names from the alerts file
    channels: tuple[str, ...]  # and which robot/webhook channels (names from the alerts file)
    quiet_until: datetime | None  # inside the rule's quiet hours: deliver at this time, not now
