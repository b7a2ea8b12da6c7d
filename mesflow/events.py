"""The canonical event contract (v1), as typed models.

Every collector turns what it receives into one of these before the dataflow sees it;
replay files hold them one per line. `docs/events.schema.json` is generated from these
models (`mesflow schema`), so the published JSON Schema cannot drift from the code.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from mesflow.ingest_log import safe_text

CANONICAL_STATES = ("running", "idle", "down", "setup", "planned_stop", "offline")
MachineState = Literal["running", "idle", "down", "setup", "planned_stop", "offline"]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


# Event times must fall in these years (local time of the given offset). Far outside them
# a clock is wrong, not early or late, and date arithmetic near year 1 or 9999 overflows
# (the dataflow once stopped on a year-0001 event on every restart).
MIN_YEAR = 1970
MAX_YEAR = 2199


def _rfc3339_text(value: Any) -> Any:
    # pydantic alone would read a numeric string ("1763596800") as epoch seconds: accept
    # only RFC 3339 text, parsed here (strict mode then refuses any other non-datetime).
    if not isinstance(value, str):
        return value
    if _RFC3339.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            pass
        else:
            if MIN_YEAR <= parsed.year <= MAX_YEAR:
                return parsed
            raise PydanticCustomError(
                "datetime_range", f"Input should be a time in the years {MIN_YEAR} to {MAX_YEAR}"
            )
    raise PydanticCustomError("datetime_rfc3339", "Input should be an RFC 3339 time")


# RFC 3339 with an offset: strict mode refuses numbers and naive times, so a PLC that sends
# epoch seconds or local time without an offset is dead-lettered instead of misread.
EventTime = Annotated[AwareDatetime, Field(strict=True), BeforeValidator(_rfc3339_text)]

# Text: PostgreSQL `text` cannot hold NUL; the length bound keeps one event small.
# (Lone surrogates never get here: the ingest log stores valid UTF-8 only.)
_NO_NUL = r"^[^\x00]*$"
MAX_ID_LENGTH = 200
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=_NO_NUL)]
Text = Annotated[str, Field(max_length=MAX_ID_LENGTH, pattern=_NO_NUL)]

# Numbers are strict: a JSON integer, never "1", true or 1.0. Bounds follow the result
# columns (docs/events.md): one count fits an `integer` column with room to spare, and
# sums of counts in `bigint` columns cannot overflow (2^63 / 10^9 = 9 x 10^9 events at the
# maximum). 2^53 - 1 is the largest integer every JSON reader holds exactly.
MAX_COUNT = 1_000_000_000
MAX_COUNTER = 1_000_000_000_000
MAX_VERSION = 2**53 - 1
MAX_PRIORITY = 2**31 - 1
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]


class _Event(BaseModel):
    # Unknown extra fields are ignored: sources may send more than the contract needs,
    # and the project may add optional fields without breaking old senders.
    model_config = ConfigDict(extra="ignore", frozen=True)

    ts: EventTime
    id: Id | None = None


class _MachineEvent(_Event):
    machine: Id


class StateEvent(_MachineEvent):
    """The machine entered `state` at `ts`; it lasts until the machine's next state event."""

    type: Literal["state"]
    state: MachineState
    reason: Id | None = None


class CountEvent(_MachineEvent):
    """Parts finished since the previous count event (increments)."""

    type: Literal["count"]
    good: Count = 0
    scrap: Count = 0


class CounterEvent(_MachineEvent):
    """A cumulative counter read from the machine; first value is a baseline, a drop a reset."""

    type: Literal["counter"]
    name: Literal["total", "scrap"]
    value: Annotated[int, Field(strict=True, ge=0, le=MAX_COUNTER)]


class _Report(_MachineEvent):
    type: Literal["report"]
    operator: Id | None = None


class DowntimeReasonReport(_Report):
    """Assigns `reason` to the stop of this machine that contains the instant `at`."""

    kind: Literal["downtime_reason"]
    at: EventTime
    reason: Id


class ScrapReport(_Report):
    """Moves `qty` parts the machine counted as good into scrap, at `ts`. With
    `work_order` (defects and rework scrapped later), the parts are taken from that work
    order's parts at this machine rather than from the one running at `ts`."""

    kind: Literal["scrap"]
    qty: Quantity
    reason: Id | None = None
    work_order: Id | None = None


class WorkOrderStartReport(_Report):
    """`work_order` starts at this machine; `operation` names its routing step (else the
    routing's step that lists this machine, else its first step: docs/routings.md)."""

    kind: Literal["wo_start"]
    work_order: Id
    operation: Id | None = None


class WorkOrderEndReport(_Report):
    kind: Literal["wo_end"]
    work_order: Id
    operation: Id | None = None


class SignInReport(_Report):
    """`operator` signs in at this machine (station): tablet, badge or code (docs/labor.md).
    A person may be signed in at several stations at once."""

    kind: Literal["sign_in"]
    operator: Id


class SignOutReport(_Report):
    kind: Literal["sign_out"]
    operator: Id


InspectionStage = Literal["first", "patrol", "last"]
MAX_CHARACTERISTICS = 64
MAX_DEFECT_LINES = 32
Measurement = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Characteristic(BaseModel):
    """One measured characteristic of an inspection: a value, and its limits if known."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Id
    value: Measurement | None = None  # None: an attribute checked by eye (`ok` says how)
    lsl: Measurement | None = None
    usl: Measurement | None = None
    unit: Text | None = None
    ok: bool | None = None  # None: judged from lsl/usl


class DefectCount(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    code: Id
    qty: Quantity


class InspectionReport(_Report):
    """A first-article (首检), patrol (巡检) or last-piece (末检) inspection of `work_order`
    at this machine, with its result and what was measured (docs/inspections.md)."""

    kind: Literal["inspection"]
    work_order: Id
    operation: Id | None = None
    stage: InspectionStage
    result: Literal["pass", "fail"]
    sample_qty: Quantity | None = None
    characteristics: Annotated[list[Characteristic], Field(max_length=MAX_CHARACTERISTICS)] = []
    defects: Annotated[list[DefectCount], Field(max_length=MAX_DEFECT_LINES)] = []
    note: Text | None = None


class DefectReport(_Report):
    """`qty` parts of `work_order` made at this machine have defect `code`: they are
    scrapped (moved from good to scrap, as a scrap report) or sent to rework."""

    kind: Literal["defect"]
    work_order: Id
    operation: Id | None = None
    code: Id
    qty: Quantity
    disposition: Literal["rework", "scrap"]


class ReworkReport(_Report):
    """`qty` parts of `work_order` (made at this machine) came back from rework: good, or
    scrapped after rework (moved from good to scrap at `ts`)."""

    kind: Literal["rework"]
    work_order: Id
    operation: Id | None = None
    code: Id | None = None  # the defect that sent them
    qty: Quantity
    outcome: Literal["good", "scrap"]


class MaterialLotReport(_Report):
    """Material lot `lot` of `material` was consumed by `work_order` at this machine
    (traceability, docs/traceability.md); `qty` if the reporter knows it."""

    kind: Literal["material_lot"]
    work_order: Id
    lot: Id
    material: Id
    qty: Quantity | None = None


class ProductionLotReport(_Report):
    """Production lot `lot` of `qty` parts was made for `work_order` at this machine."""

    kind: Literal["production_lot"]
    work_order: Id
    lot: Id
    qty: Quantity


# Process values: a handful of named measurements per message (cycle time, cushion,
# pressures, temperatures). Names are short lowercase keys so they fit a column and a URL
# unchanged; numbers must be finite (PostgreSQL would store NaN, but it poisons every
# min/avg/max it touches); bool is not a number here, unlike in Python.
MAX_PROCESS_VALUES = 64
PROCESS_VALUE_NAME = r"^[a-z][a-z0-9_.]{0,63}$"
ProcessValueName = Annotated[str, Field(pattern=PROCESS_VALUE_NAME)]
ProcessValueNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ProcessValueEvent(_MachineEvent):
    """Measured process values of the machine at `ts` (1 to 64 named finite numbers)."""

    type: Literal["process_value"]
    values: Annotated[
        dict[ProcessValueName, ProcessValueNumber],
        Field(
            min_length=1,
            max_length=MAX_PROCESS_VALUES,
            # patternProperties alone would let a schema reader accept any other name.
            json_schema_extra={"additionalProperties": False},
        ),
    ]


Report = Annotated[
    DowntimeReasonReport
    | ScrapReport
    | WorkOrderStartReport
    | WorkOrderEndReport
    | MaterialLotReport
    | ProductionLotReport
    | SignInReport
    | SignOutReport
    | InspectionReport
    | DefectReport
    | ReworkReport,
    Field(discriminator="kind"),
]


class OrderEvent(_Event):
    """A full CRM order snapshot; an older or equal `version` than the stored one is ignored."""

    type: Literal["order"]
    order_no: Id
    version: Annotated[int, Field(strict=True, ge=0, le=MAX_VERSION)]
    customer: Text
    priority: Annotated[int, Field(strict=True, ge=1, le=MAX_PRIORITY)]
    product: Id
    qty: Quantity
    due: EventTime
    status: Literal["open", "on_hold", "cancelled", "closed"]


MAX_ROUTING_STEPS = 50
CycleSeconds = Annotated[float, Field(strict=True, gt=0, le=86400 * 7, allow_inf_nan=False)]


class RoutingStep(BaseModel):
    """One operation of a routing: where it runs and how fast (docs/routings.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    op: Id
    name: Text | None = None
    machines: Annotated[list[Id], Field(max_length=MAX_ROUTING_STEPS)] = []  # []: any machine
    ideal_cycle_seconds: CycleSeconds | None = None


def _unique_ops(steps: list[RoutingStep]) -> list[RoutingStep]:
    ops = [s.op for s in steps]
    dup = next((o for o in ops if ops.count(o) > 1), None)
    if dup is not None:
        raise PydanticCustomError("routing_op_twice", f"operation {dup[:80]!r} is listed twice")
    return steps


Routing = Annotated[
    list[RoutingStep],
    Field(min_length=1, max_length=MAX_ROUTING_STEPS),
    AfterValidator(_unique_ops),
]


class WorkOrderEvent(_Event):
    """The MES's unit of execution: one CRM order feeds one or more work orders.
    `routing` (operations in order) overrides the plant file's routing of its product."""

    type: Literal["work_order"]
    work_order: Id
    order_no: Id
    product: Id
    qty: Quantity
    machine: Id | None = None
    routing: Routing | None = None


# An alert id: "<rule>:<scope>:<condition start, us>" (streams/alert_engine.py); a scope
# holds a machine or order id, so it is longer than an Id.
MAX_ALERT_ID_LENGTH = 500


class AlertAck(_Event):
    """Someone acknowledged an alert (the boards, or the signed link in a message): its
    escalation stops; it still resolves when its condition ends (docs/alerts.md)."""

    type: Literal["alert_ack"]
    alert_id: Annotated[str, Field(min_length=1, max_length=MAX_ALERT_ID_LENGTH, pattern=_NO_NUL)]
    by: Id
    via: Literal["board", "link"]


Event = Annotated[
    StateEvent
    | CountEvent
    | CounterEvent
    | Report
    | OrderEvent
    | WorkOrderEvent
    | ProcessValueEvent
    | AlertAck,
    Field(discriminator="type"),
]
MachineEvent = (
    StateEvent
    | CountEvent
    | CounterEvent
    | DowntimeReasonReport
    | ScrapReport
    | WorkOrderStartReport
    | WorkOrderEndReport
)

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class ContractError(ValueError):
    """A payload that is not a valid canonical event; `reason` is a short, stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        detail = safe_text(detail)  # details are stored as text: no NUL, no lone surrogate
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _field_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator values in error locations: ("report", "scrap", "qty").
    parts = list(loc)
    if parts and parts[0] in _TYPE_TAGS:
        tag = parts.pop(0)
        if tag == "report" and parts and parts[0] in _KIND_TAGS:
            parts.pop(0)
    return ".".join(str(p) for p in parts)


_TYPE_TAGS = {
    "state",
    "count",
    "counter",
    "report",
    "order",
    "work_order",
    "process_value",
    "alert_ack",
}
_KIND_TAGS = {
    "downtime_reason",
    "scrap",
    "wo_start",
    "wo_end",
    "material_lot",
    "production_lot",
    "sign_in",
    "sign_out",
    "inspection",
    "defect",
    "rework",
}


def _describe(err: ValidationError) -> ContractError:
    first = err.errors(include_url=False)[0]
    where = _field_path(first["loc"])
    kind = first["type"]
    if kind == "json_invalid":
        return ContractError("malformed", f"not valid JSON: {first['msg']}")
    if not where and kind in ("model_type", "model_attributes_type", "dict_type"):
        return ContractError("malformed", "an event must be a JSON object")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return ContractError("unknown_type", first["msg"])
    if kind == "missing":
        return ContractError("missing_field", f"field '{where}' is required")
    if kind == "datetime_range":
        return ContractError("bad_timestamp", f"field '{where}': {first['msg']}")
    if kind.startswith("datetime") or kind == "timezone_aware":
        return ContractError(
            "bad_timestamp", f"field '{where}' must be an RFC 3339 time with offset"
        )
    if kind == "greater_than_equal" and where in ("good", "scrap", "value"):
        return ContractError("negative_count", f"field '{where}': {first['msg']}")
    if kind == "string_pattern_mismatch" and first["loc"][-1:] == ("[key]",):
        # A process value name (the only pattern on a key); repr shows a stray newline.
        name = repr(first["loc"][-2])[:80]
        return ContractError(
            "invalid_field", f"process value name {name} must match {PROCESS_VALUE_NAME}"
        )
    if kind == "string_pattern_mismatch":  # the other pattern: no NUL
        return ContractError("invalid_field", f"field '{where}' may not contain a NUL character")
    return ContractError("invalid_field", f"field '{where}': {first['msg']}")


def parse_event(payload: bytes | str) -> Event:
    """Parse and validate one JSON event; raises ContractError with a stable reason code.

    The hot event types (state, count, counter, process_value) take a fast path when
    their payload is plain (see `_fast_event`); everything else, and every payload the fast
    path is not sure about, goes through pydantic, so errors are pydantic's."""
    ev = _fast_event(payload)
    return ev if ev is not None else parse_event_reference(payload)


def parse_event_reference(payload: bytes | str) -> Event:
    """`parse_event` by pydantic alone (the reference the fast path is tested against)."""
    try:
        return EVENT_ADAPTER.validate_json(payload)
    except ValidationError as err:
        raise _describe(err) from None


# --- The fast path --------------------------------------------------------------------
# pydantic's validate_json costs ~30,000 CPU instructions per event (callgrind), most of
# the replay's validation; checking the fields in Python after an untyped decode costs
# more (~36,000: the interpreter is the cost). So the fast path lets msgspec check what it
# can in C, into the structs below (types, ranges, lengths, literals; bool is not an
# int there either, nor 1.0), then checks the rest (times, NUL, process value names) and
# builds the same model objects pydantic would. It answers None ("ask pydantic") for
# anything it does not fully check, so it never produces an error itself: every type
# other than the four hot ones, any field that breaks a rule (pydantic then says which
# and why), any field the model does not have (an ignored extra field may be nested
# deeper than pydantic's JSON reader allows: its error must stay), a repeated "type".
# tests/test_fast_validation.py checks all of this against pydantic.
_FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_FastCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
# The longest time text the fast path takes: 19 characters, a fraction of at most 7 (a
# dot and 6 digits) and a "+hh:mm" offset (see _fast_event); longer ones go to pydantic.
_FastTime = Annotated[str, msgspec.Meta(max_length=32)]
_UNSET = msgspec.UNSET
_Unset = msgspec.UnsetType


# gc=False: a struct of text and numbers cannot be part of a reference cycle, and an
# untracked one costs the collector nothing (it lives only until its event is built).
class _HotState(
    msgspec.Struct, tag_field="type", tag="state", forbid_unknown_fields=True, gc=False
):
    ts: _FastTime
    machine: _FastId
    state: MachineState
    id: _FastId | _Unset | None = _UNSET
    reason: _FastId | _Unset | None = _UNSET


class _HotCount(
    msgspec.Struct, tag_field="type", tag="count", forbid_unknown_fields=True, gc=False
):
    ts: _FastTime
    machine: _FastId
    id: _FastId | _Unset | None = _UNSET
    good: _FastCount | _Unset = _UNSET
    scrap: _FastCount | _Unset = _UNSET


class _HotCounter(
    msgspec.Struct, tag_field="type", tag="counter", forbid_unknown_fields=True, gc=False
):
    ts: _FastTime
    machine: _FastId
    name: Literal["total", "scrap"]
    value: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
    id: _FastId | _Unset | None = _UNSET


class _HotProcessValue(
    msgspec.Struct, tag_field="type", tag="process_value", forbid_unknown_fields=True, gc=False
):
    ts: _FastTime
    machine: _FastId
    # float takes a JSON integer, as a float (so does pydantic's strict float).
    values: Annotated[dict[str, float], msgspec.Meta(min_length=1, max_length=MAX_PROCESS_VALUES)]
    id: _FastId | _Unset | None = _UNSET


_to_datetime = msgspec.convert
_decode_hot = msgspec.json.Decoder(_HotState | _HotCount | _HotCounter | _HotProcessValue).decode
_PROCESS_VALUE_NAME = re.compile(PROCESS_VALUE_NAME.removeprefix("^").removesuffix("$"))
_FAST_NAMES: set[str] = set()  # process value names seen valid (a plant has few)
_MAX_NAMES = 4096


def _shapes(base: set[str], optional: tuple[str, ...]) -> tuple[set[str], ...]:
    """The fields sets of a model by which optional fields the input has (bit i: the
    i-th of `optional`), made once: the fast path's models share them. Sharing is safe:
    these models are frozen (pydantic refuses assignment before it would add to the set),
    and model_copy gives a copy its own set before it adds the updated fields."""
    return tuple(
        base | {name for i, name in enumerate(optional) if shape >> i & 1}
        for shape in range(1 << len(optional))
    )


# Fields sets by shape: id 1, then good 2 and scrap 4 (count), reason 2 (state).
_COUNT_FIELDS = _shapes({"ts", "machine", "type"}, ("id", "good", "scrap"))
_STATE_FIELDS = _shapes({"ts", "machine", "type", "state"}, ("id", "reason"))
_COUNTER_FIELDS = _shapes({"ts", "machine", "type", "name", "value"}, ("id",))
_PROCESS_VALUE_FIELDS = _shapes({"ts", "machine", "type", "values"}, ("id",))
_new = object.__new__
# BaseModel's own slot setters, called directly: ~half the cost of object.__setattr__,
# which looks the descriptor up by name on every call.
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__


def _fast_event(payload: bytes | str) -> Event | None:
    """The event, if the payload is a plain, valid hot event; else None (ask pydantic).

    Written flat (few calls, no helpers): every bytecode counts here."""
    if type(payload) is not bytes:
        return None
    try:
        hot = _decode_hot(payload)
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return None
    # `_rfc3339_text`'s rule: msgspec parses RFC 3339 in C (a third of the regex and
    # fromisoformat's time), to the same datetime. It also takes two forms the rule
    # refuses, left to pydantic here: an offset without its colon (+0800), and more than
    # 6 digits of fraction (msgspec rounds them, fromisoformat truncates). Without them
    # the text is 19 characters, a fraction of at most 7 and the offset: "+hh:mm" (at
    # most 32 characters, _FastTime) or "Z" (at most 27).
    ts = hot.ts
    if ts[-3:-2] != ":":
        last = ts[-1:]
        if (last != "Z" and last != "z") or len(ts) > 27:
            return None
    try:
        t = _to_datetime(ts, datetime)
    except msgspec.ValidationError:
        return None
    if t.tzinfo is None or not MIN_YEAR <= t.year <= MAX_YEAR:
        return None
    machine = hot.machine
    id_ = hot.id
    if "\x00" in machine:
        return None
    if id_ is _UNSET:
        id_ = None
        shape = 0
    else:
        if id_ is not None and "\x00" in id_:
            return None
        shape = 1
    kind = type(hot)
    values: dict[str, Any]
    cls: type[BaseModel]
    if kind is _HotCount:  # most events: first, past the other branches' tests
        good = hot.good
        scrap = hot.scrap
        if good is _UNSET:
            good = 0
        else:
            shape |= 2
        if scrap is _UNSET:
            scrap = 0
        else:
            shape |= 4
        cls = CountEvent
        values = {
            "ts": t,
            "id": id_,
            "machine": machine,
            "type": "count",
            "good": good,
            "scrap": scrap,
        }
        fields = _COUNT_FIELDS[shape]
    elif kind is _HotState:
        reason = hot.reason
        if reason is _UNSET:
            reason = None
        else:
            shape |= 2
            if reason is not None and "\x00" in reason:
                return None
        cls = StateEvent
        values = {
            "ts": t,
            "id": id_,
            "machine": machine,
            "type": "state",
            "state": hot.state,
            "reason": reason,
        }
        fields = _STATE_FIELDS[shape]
    elif kind is _HotCounter:
        cls = CounterEvent
        values = {
            "ts": t,
            "id": id_,
            "machine": machine,
            "type": "counter",
            "name": hot.name,
            "value": hot.value,
        }
        fields = _COUNTER_FIELDS[shape]
    else:
        numbers = hot.values
        for name in numbers:
            if name not in _FAST_NAMES:
                if not _PROCESS_VALUE_NAME.fullmatch(name):
                    return None
                if len(_FAST_NAMES) >= _MAX_NAMES:
                    _FAST_NAMES.clear()
                _FAST_NAMES.add(name)
        cls = ProcessValueEvent
        values = {
            "ts": t,
            "id": id_,
            "machine": machine,
            "type": "process_value",
            "values": numbers,
        }
        fields = _PROCESS_VALUE_FIELDS[shape]
    # What pydantic's validator leaves in an instance (its model_construct does the same,
    # ~4x slower): the field values in declaration order (the dicts above), the fields
    # the input set (a shared set, _shapes), no extra values (extra="ignore"), no private
    # attributes.
    model = _new(cls)
    _set_dict(model, values)
    _set_fields(model, fields)
    _set_extra(model, None)
    _set_private(model, None)
    return model  # type: ignore[return-value]


def event_json_schema() -> dict[str, object]:
    schema = EVENT_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mesflow.dev/schemas/events-v1.json"
    schema["title"] = "mesflow canonical event (v1)"
    return schema


def to_utc(ts: datetime) -> datetime:
    from datetime import UTC

    return ts.astimezone(UTC)
