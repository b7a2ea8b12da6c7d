"""The plant model (`config/plant.example.yaml`): validated once, at start.

A bad file fails with the file, the line and the field named, e.g.
`config/plant.yaml:42: lines.0.machines.3.microstop_seconds: Input should be greater than
or equal to 0`.
"""

from __future__ import annotations

from datetime import time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from mesflow.events import CANONICAL_STATES, MachineState
from mesflow.process_limits import ProcessLimits
from mesflow.source_opcua import OpcUaSource
from mesflow.source_sparkplug import SparkplugSource
from mesflow.yaml_lines import YamlError, line_of, load_with_lines

Code = str  # machine ids, line ids, reason codes: [A-Za-z0-9_.-]
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"

# Reason codes the metrics use when nobody named one: code -> (category, en, zh).
BUILTIN_REASONS = {
    "unassigned": ("unassigned", "Unassigned", "未分配"),
    "no_data": ("no_data", "No data (offline)", "无数据（离线）"),
    # what the OPC UA and Sparkplug collectors send with `offline` on a lost connection
    "connection_lost": ("no_data", "Connection lost", "连接中断"),
}

ReasonCategory = Literal[
    "technical",
    "material",
    "process",
    "operator",
    "quality",
    "organisational",
    "planned",
    "other",
]
REASON_CATEGORIES: tuple[str, ...] = get_args(ReasonCategory)


def _time_of_day(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 20:00 as the number 1200 (base 60), which pydantic would
    # take as 00:20: refuse numbers so that the shift is not silently misread.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError('write times of day in quotes, e.g. "20:00"')
    return value


TimeOfDay = Annotated[time, BeforeValidator(_time_of_day)]


class _LocatedError(ValueError):
    """A cross-field error that knows which value it is about, so the loader can name its line."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    # Typos in a config key are errors, not silently ignored settings.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalizedName(_Model):
    en: str = Field(min_length=1)
    zh: str = Field(min_length=1)

    def get(self, lang: str) -> str:
        return self.zh if lang.startswith("zh") else self.en


class Break(_Model):
    name: str = "break"
    start: TimeOfDay
    end: TimeOfDay


class Shift(_Model):
    name: str = Field(pattern=CODE_PATTERN)
    # What the boards call it ("白班" / "Day shift"); without it, the code.
    label: LocalizedName | None = None
    start: TimeOfDay
    end: TimeOfDay  # an end at or before the start means the shift ends the next day
    breaks: list[Break] = []


class ShiftCalendar(_Model):
    shifts: list[Shift] = Field(min_length=1)
    # ISO weekdays (1 = Monday) on which shifts start; a shift starting on a listed day runs
    # to its end even if that is the next day.
    workdays: list[int] = Field(default=[1, 2, 3, 4, 5, 6, 7])

    @field_validator("workdays")
    @classmethod
    def _weekdays(cls, days: list[int]) -> list[int]:
        bad = [d for d in days if not 1 <= d <= 7]
        if bad:
            raise ValueError(f"weekdays are 1 (Monday) to 7 (Sunday), got {bad}")
        return days


class Machine(_Model):
    id: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName
    ideal_cycle_seconds: PositiveFloat | None = None
    microstop_seconds: NonNegativeFloat | None = None
    # Silent machines (docs/metrics.md): offline after this long without a message; 0: never.
    silent_after_s: NonNegativeFloat | None = None
    # Name of an entry in `state_mappings` used by collectors for this machine's native codes.
    state_mapping: str | None = None
    # How the OPC UA collector reads this machine (mesflow/source_opcua.py).
    opcua: OpcUaSource | None = None
    # Where its state, counters and process values are in Sparkplug B (collectors-sparkplug.md).
    sparkplug: SparkplugSource | None = None
    # Process-value limits on this machine (mesflow/process_limits.py), over the product's.
    process_limits: ProcessLimits | None = None


class Line(_Model):
    id: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName
    area: Code = Field(default="main", pattern=CODE_PATTERN)
    shift_calendar: ShiftCalendar | None = None
    machines: list[Machine] = Field(min_length=1)


class Product(_Model):
    id: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName
    # Ideal cycle time per machine id, in seconds per part.
    ideal_cycle_seconds: dict[Code, PositiveFloat] = {}
    # Process-value limits while this product runs (mesflow/process_limits.py).
    process_limits: ProcessLimits | None = None
    # When its inspections are due (else the plant's `inspections`).
    inspections: InspectionPolicy | None = None


class InspectionPolicy(_Model):
    """When inspections are due (docs/inspections.md); per product under `products[].inspections`."""

    # A work order's first article (首检) must pass within this many parts made at a machine
    # after its start; 0: no first-article check.
    first_article_within_parts: int = Field(default=0, ge=0, le=1_000_000)
    # Production is "blocked" until the first article passes: the boards show it and the
    # tablet refuses production reports for it (mesflow cannot stop a machine itself).
    block_until_first_article_passes: bool = False
    # A patrol inspection (巡检) is due this often while the work order runs; 0: none.
    patrol_every_minutes: float = Field(default=0, ge=0, le=7 * 24 * 60)
    # How late a patrol may be before it counts as missed.
    patrol_grace_minutes: float = Field(default=10, ge=0, le=24 * 60)
    # A work order's end without a last-piece inspection (末检) is flagged.
    last_piece_required: bool = False


class RoutingOperation(_Model):
    op: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName | None = None
    # Machines (or one work centre's machines) that may run this operation; []: any.
    machines: list[Code] = []
    ideal_cycle_seconds: PositiveFloat | None = None


class Routing(_Model):
    """A product's operations in order (molding -> deburring -> ...): docs/routings.md."""

    product: Code = Field(pattern=CODE_PATTERN)
    operations: list[RoutingOperation] = Field(min_length=1, max_length=50)


class DefectCode(_Model):
    code: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName
    children: list[DefectCode] = []


class LaborPolicy(_Model):
    # A sign-in nobody closes ends this long after it began (a forgotten sign-out must not
    # book a week of labor): docs/labor.md.
    max_sign_in_hours: float = Field(default=12, gt=0, le=24 * 7)


class Reason(_Model):
    code: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName
    category: ReasonCategory
    children: list[Reason] = []


class PlantInfo(_Model):
    id: Code = Field(pattern=CODE_PATTERN)
    name: LocalizedName
    timezone: str
    site: Code = Field(default="site", pattern=CODE_PATTERN)
    allowed_lateness_seconds: NonNegativeFloat = 300
    # Clock policy (docs/events.md): an event dated further ahead of its arrival is
    # dead-lettered `future`, one older than the horizon `too_old`; neither moves a clock.
    # Upper bounds keep date arithmetic in range; they are far beyond any sensible setting.
    max_clock_skew_seconds: float = Field(default=300, gt=0, le=86400 * 36500)
    max_event_age_days: float = Field(default=30, gt=0, le=36500)
    # An order's machine down this long sends order.production_problem (docs/crm.md).
    order_problem_after_seconds: float = Field(default=1800, gt=0, le=86400 * 7)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (use an IANA name like Asia/Shanghai)"
            ) from None
        return name


class MachineDefaults(_Model):
    ideal_cycle_seconds: PositiveFloat = 60.0
    microstop_seconds: NonNegativeFloat = 120.0
    silent_after_s: NonNegativeFloat = 0.0  # 0: machines are not watched for silence


class PlantConfig(_Model):
    plant: PlantInfo
    defaults: MachineDefaults = MachineDefaults()
    shift_calendar: ShiftCalendar
    lines: list[Line] = Field(min_length=1)
    products: list[Product] = []
    reasons: list[Reason] = []
    # Operations per product (docs/routings.md), the defect-code tree (docs/quality.md),
    # inspection and labor settings (docs/inspections.md, docs/labor.md).
    routings: list[Routing] = []
    defects: list[DefectCode] = []
    inspections: InspectionPolicy = InspectionPolicy()
    labor: LaborPolicy = LaborPolicy()
    # Source-specific state codes -> canonical states, one table per source kind,
    # e.g. {"euromap77": {"1": "running", "2": "idle"}}. Applied by collectors only.
    state_mappings: dict[str, dict[str, MachineState]] = {}

    @model_validator(mode="after")
    def _cross_checks(self) -> PlantConfig:
        seen: set[str] = set()
        for li, line in enumerate(self.lines):
            for mi, machine in enumerate(line.machines):
                at = ("lines", li, "machines", mi)
                if machine.id in seen:
                    raise _LocatedError((*at, "id"), f"machine id {machine.id!r} is used twice")
                seen.add(machine.id)
                if machine.state_mapping and machine.state_mapping not in self.state_mappings:
                    raise _LocatedError(
                        (*at, "state_mapping"),
                        f"machine {machine.id!r} names state_mapping {machine.state_mapping!r}, "
                        f"which is not defined under state_mappings",
                    )
        for pi, product in enumerate(self.products):
            unknown = sorted(set(product.ideal_cycle_seconds) - seen)
            if unknown:
                raise _LocatedError(
                    ("products", pi, "ideal_cycle_seconds", unknown[0]),
                    f"product {product.id!r} names unknown machines {unknown}",
                )
        codes: set[str] = set()
        for loc, reason in _walk_located(self.reasons, ("reasons",)):
            if reason.code in codes:
                raise _LocatedError((*loc, "code"), f"reason code {reason.code!r} is used twice")
            codes.add(reason.code)
        routed: set[str] = set()
        for ri, routing in enumerate(self.routings):
            if routing.product in routed:
                raise _LocatedError(
                    ("routings", ri, "product"), f"product {routing.product!r} has two routings"
                )
            routed.add(routing.product)
            ops: set[str] = set()
            for oi, step in enumerate(routing.operations):
                at = ("routings", ri, "operations", oi)
                if step.op in ops:
                    raise _LocatedError((*at, "op"), f"operation {step.op!r} is listed twice")
                ops.add(step.op)
                unknown = sorted(set(step.machines) - seen)
                if unknown:
                    raise _LocatedError(
                        (*at, "machines"), f"operation {step.op!r} names unknown machines {unknown}"
                    )
        defect_codes: set[str] = set()
        for loc, defect in _walk_located(self.defects, ("defects",)):
            if defect.code in defect_codes:
                raise _LocatedError((*loc, "code"), f"defect code {defect.code!r} is used twice")
            defect_codes.add(defect.code)
        return self

    # -- lookups used by collectors and the dataflow --------------------------------------

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.plant.timezone)

    @cached_property
    def machines(self) -> dict[str, Machine]:
        return {m.id: m for line in self.lines for m in line.machines}

    @cached_property
    def line_of_machine(self) -> dict[str, Line]:
        return {m.id: line for line in self.lines for m in line.machines}

    @cached_property
    def reasons_by_code(self) -> dict[str, Reason]:
        return {r.code: r for r in _walk(self.reasons)}

    @cached_property
    def defects_by_code(self) -> dict[str, DefectCode]:
        return {d.code: d for d in _walk(self.defects)}

    @cached_property
    def defect_groups(self) -> dict[str, DefectCode]:
        """Each defect code's top-level group ('flash' -> 'molding': Molding defects)."""
        return {d.code: top for top in self.defects for d in _walk([top])}

    @cached_property
    def routings_by_product(self) -> dict[str, Routing]:
        return {r.product: r for r in self.routings}

    def inspection_policy(self, product: str | None) -> InspectionPolicy:
        for p in self.products:
            if p.id == product and p.inspections is not None:
                return p.inspections
        return self.inspections

    def ideal_cycle_seconds(self, machine: str, product: str | None = None) -> float:
        if product is not None:
            for p in self.products:
                if p.id == product and machine in p.ideal_cycle_seconds:
                    return p.ideal_cycle_seconds[machine]
        own = self.machines[machine].ideal_cycle_seconds
        return own if own is not None else self.defaults.ideal_cycle_seconds

    def microstop_seconds(self, machine: str) -> float:
        own = self.machines[machine].microstop_seconds
        return own if own is not None else self.defaults.microstop_seconds

    def silent_after_seconds(self, machine: str) -> float:
        own = self.machines[machine].silent_after_s
        return own if own is not None else self.defaults.silent_after_s

    @cached_property
    def _shift_labels(self) -> dict[str, LocalizedName]:
        calendars = [self.shift_calendar, *(ln.shift_calendar for ln in self.lines)]
        labels: dict[str, LocalizedName] = {}
        for cal in calendars:
            for shift in cal.shifts if cal is not None else ():
                if shift.label is not None:
                    labels.setdefault(shift.name, shift.label)
        return labels

    def shift_label(self, name: str | None, lang: str) -> str:
        """A shift's name as the boards show it: its label in `lang` (the first calendar
        that gives the code one: the plant's, then the lines'), else the code itself."""
        if not name:
            return ""
        label = self._shift_labels.get(name)
        return label.get(lang) if label is not None else name

    def calendar_for(self, machine: str) -> ShiftCalendar:
        return self.line_of_machine[machine].shift_calendar or self.shift_calendar

    def map_state(self, mapping: str, code: str) -> MachineState | None:
        """A source's native state code as a canonical state (None when unmapped)."""
        if code in CANONICAL_STATES:
            return code  # type: ignore[return-value]
        return self.state_mappings.get(mapping, {}).get(code)


_Tree = TypeVar("_Tree", Reason, DefectCode)


def _walk(reasons: list[_Tree]) -> list[_Tree]:
    out: list[_Tree] = []
    for r in reasons:
        out.append(r)
        out.extend(_walk(r.children))
    return out


def _walk_located(
    reasons: list[_Tree], prefix: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], _Tree]]:
    out: list[tuple[tuple[str | int, ...], _Tree]] = []
    for i, r in enumerate(reasons):
        out.append(((*prefix, i), r))
        out.extend(_walk_located(r.children, (*prefix, i, "children")))
    return out


class ConfigError(YamlError):
    """A plant configuration that cannot be used; the message names file, line and field."""


def load_plant_config(file: str | Path) -> PlantConfig:
    path = Path(file)
    try:
        data, lines = load_with_lines(path)
    except YamlError as err:  # unreadable file or bad YAML syntax: still a ConfigError
        raise ConfigError(err.file, err.line, err.message) from None
    if not isinstance(data, dict):
        raise ConfigError(path, 1, "the plant configuration must be a YAML mapping")
    try:
        return PlantConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = tuple(first["loc"])
        located = first.get("ctx", {}).get("error")
        if isinstance(located, _LocatedError):
            loc = located.loc
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(path, line_of(lines, loc), f"{field}: {msg}") from None
