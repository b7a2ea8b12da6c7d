"""The alerts file (`MESFLOW_ALERTS_CONFIG`, the demo's `config/alerts.example.yaml`):
people, channels and rules, validated once, at start, against the plant model.

A bad file fails with the file, the line and the field named, e.g.
`config/alerts.yaml:31: rules.2.levels.1.people.0: person 'wang' is not under people`.
The people and channels models are mesflow/alert_channels.py's; the rules are here and are
evaluated by streams/alert_engine.py. docs/alerts.md describes every field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mesflow.alert_channels import Channel, Channels, People
from mesflow.events import ProcessValueName
from mesflow.plant import CODE_PATTERN, PlantConfig, TimeOfDay
from mesflow.yaml_lines import YamlError, line_of, load_with_lines

Kind = Literal[
    "machine_down",
    "no_reason",
    "kpi_below",
    "scrap_rate",
    "silent",
    "order_at_risk",
    "process_limit",
    "first_article",
    "patrol_missed",
]
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

# Upper bounds far beyond any sensible setting: they keep date arithmetic in range (a
# `after_min: 1e300` would overflow a timedelta deep in the dataflow, not here).
MAX_MINUTES = 60 * 24 * 366  # a year
MAX_SECONDS = MAX_MINUTES * 60
MAX_LEVELS = 10
MAX_RULES = 1000

Name = Annotated[str, Field(pattern=CODE_PATTERN, max_length=100)]
Minutes = Annotated[float, Field(ge=0, le=MAX_MINUTES, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Level(_Model):
    """One escalation level: who hears of the alert once it has lasted `after_min`."""

    # Minutes after the condition began; level 0's is the delay before the alert opens.
    after_min: Minutes = 0
    people: list[Name] = Field(default=[], max_length=100)
    channels: list[Name] = Field(default=[], max_length=100)


class Scope(_Model):
    line: Name | None = None
    machine: Name | None = None

    @model_validator(mode="after")
    def _one(self) -> Scope:
        if self.line is not None and self.machine is not None:
            raise ValueError("give line or machine, not both")
        return self


def _severities(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class QuietHours(_Model):
    """Plant-local hours in which steps wait (`quiet_until`) unless their severity is in
    `except`. `from` after `to` spans midnight ("22:00" to "06:00")."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: TimeOfDay = Field(alias="from")
    end: TimeOfDay = Field(alias="to")
    exempt: Annotated[list[Severity], BeforeValidator(_severities)] = Field(
        default=[], alias="except"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("from and to are the same time: an empty quiet period")
        return self

    def until(self, at: datetime, tz: ZoneInfo) -> datetime | None:
        """The end of the quiet period `at` lies in, or None when `at` is not in one."""
        local = at.astimezone(tz)
        t = local.time().replace(tzinfo=None)
        day = local.date()
        if self.start < self.end:
            if not self.start <= t < self.end:
                return None
        elif t >= self.start:
            day = day + timedelta(days=1)
        elif t >= self.end:
            return None
        return datetime.combine(day, self.end, tzinfo=tz)


class _Rule(_Model):
    name: Name
    scope: Scope = Scope()
    severity: Severity = "warning"
    levels: list[Level] = Field(min_length=1, max_length=MAX_LEVELS)
    quiet_hours: QuietHours | None = None
    # Flapping: a condition that clears and returns within this many seconds continues
    # the same alert (no "resolved", no new "opened"); the resolve waits this long.
    clear_after_s: Seconds = 120

    @field_validator("levels")
    @classmethod
    def _increasing(cls, levels: list[Level]) -> list[Level]:
        for i in range(1, len(levels)):
            if levels[i].after_min <= levels[i - 1].after_min:
                raise ValueError(
                    f"levels must come in increasing after_min: level {i} "
                    f"({levels[i].after_min:g}) is not after level {i - 1} "
                    f"({levels[i - 1].after_min:g})"
                )
        return levels

    def applies_to(self, machine: str, line: str | None) -> bool:
        s = self.scope
        if s.machine is not None:
            return s.machine == machine
        if s.line is not None:
            return s.line == line
        return True


class MachineDownRule(_Rule):
    """The machine is `down` longer than levels[0].after_min."""

    kind: Literal["machine_down"]


class NoReasonRule(_Rule):
    """A stop (state in `states`) without a reason longer than levels[0].after_min."""

    kind: Literal["no_reason"]
    states: list[Literal["down", "idle", "setup"]] = Field(default=["down", "idle"], min_length=1)


class KpiBelowRule(_Rule):
    """The current shift's OEE or availability below `target`, judged from
    `after_first_min` into the shift."""

    kind: Literal["kpi_below"]
    metric: Literal["oee", "availability"]
    target: Ratio
    after_first_min: Minutes = 60


class ScrapRateRule(_Rule):
    """scrap / (good + scrap) over the last `window_min` above `threshold`, once at least
    `min_parts` parts were made in the window. Hour resolution (the hour figures)."""

    kind: Literal["scrap_rate"]
    threshold: Ratio
    window_min: Annotated[float, Field(ge=60, le=MAX_MINUTES, allow_inf_nan=False)] = 60
    min_parts: Annotated[int, Field(ge=1, le=10**9)] = 20


class SilentRule(_Rule):
    """Nothing heard from the machine for `after_s` seconds."""

    kind: Literal["silent"]
    after_s: Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]


class OrderAtRiskRule(_Rule):
    """An open order of priority 1..`min_priority` (1 = most urgent) whose ETA passed its
    due; resolved ("back on track") when it no longer is."""

    kind: Literal["order_at_risk"]
    min_priority: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1


class ProcessLimitRule(_Rule):
    """A process value of the machine out of its limits (an out-of-limit span,
    sql/026_process_limits.sql) longer than levels[0].after_min; `names` empty: any value
    with limits. One alert per machine while any of its values is out."""

    kind: Literal["process_limit"]
    names: list[ProcessValueName] = Field(default=[], max_length=256)


class FirstArticleRule(_Rule):
    """A run's first article (首检) failed, or is missing after the plant's part limit
    (streams/inspections.py); one alert per run, from its start until a pass or its end."""

    kind: Literal["first_article"]


class PatrolMissedRule(_Rule):
    """A patrol inspection (巡检) missed its due time plus grace; until the next patrol."""

    kind: Literal["patrol_missed"]


Rule = Annotated[
    MachineDownRule
    | NoReasonRule
    | KpiBelowRule
    | ScrapRateRule
    | SilentRule
    | OrderAtRiskRule
    | ProcessLimitRule
    | FirstArticleRule
    | PatrolMissedRule,
    Field(discriminator="kind"),
]
MachineRule = (
    MachineDownRule
    | NoReasonRule
    | KpiBelowRule
    | ScrapRateRule
    | SilentRule
    | ProcessLimitRule
    | FirstArticleRule
    | PatrolMissedRule
)
_KINDS = (
    "machine_down",
    "no_reason",
    "kpi_below",
    "scrap_rate",
    "silent",
    "order_at_risk",
    "process_limit",
    "first_article",
    "patrol_missed",
)


class OrderChangeRoute(_Model):
    """Who hears of an applied order change on a line (mesflow/change_control.py): the
    line's supervisor. `line` unset: every line."""

    line: Name | None = None
    people: list[Name] = Field(default=[], max_length=100)
    channels: list[Name] = Field(default=[], max_length=100)


class _LocatedError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class AlertsConfig(_Model):
    people: People = {}
    channels: Channels = {}
    rules: list[Rule] = Field(default=[], max_length=MAX_RULES)
    # Order changes pushed to the floor's supervisors (issue 12, docs/alerts.md).
    order_changes: list[OrderChangeRoute] = Field(default=[], max_length=MAX_RULES)
    # True: a channel whose url_env/secret_env is unset is left out (with a warning in
    # `disabled`) instead of failing the start. The demo's example file sets it, because
    # the demo has no robot URLs; a production file should not.
    channels_optional: bool = False
    # Channels left out for channels_optional: name -> why (filled in by the loader).
    disabled: dict[str, str] = {}

    @model_validator(mode="after")
    def _cross_checks(self) -> AlertsConfig:
        names: set[str] = set()
        for ri, rule in enumerate(self.rules):
            if rule.name in names:
                raise _LocatedError(("rules", ri, "name"), f"rule name {rule.name!r} is used twice")
            names.add(rule.name)
            for li, level in enumerate(rule.levels):
                for pi, person in enumerate(level.people):
                    if person not in self.people:
                        raise _LocatedError(
                            ("rules", ri, "levels", li, "people", pi),
                            f"person {person!r} is not under people",
                        )
                for ci, channel in enumerate(level.channels):
                    if channel not in self.channels:
                        why = self.disabled.get(channel)
                        if why is not None:
                            continue  # left out on purpose (channels_optional)
                        raise _LocatedError(
                            ("rules", ri, "levels", li, "channels", ci),
                            f"channel {channel!r} is not under channels",
                        )
            if rule.kind == "order_at_risk" and (rule.scope.line or rule.scope.machine):
                raise _LocatedError(
                    ("rules", ri, "scope"), "an order_at_risk rule has no line or machine scope"
                )
        for oi, route in enumerate(self.order_changes):
            for pi, person in enumerate(route.people):
                if person not in self.people:
                    raise _LocatedError(
                        ("order_changes", oi, "people", pi),
                        f"person {person!r} is not under people",
                    )
            for ci, channel in enumerate(route.channels):
                if channel not in self.channels and channel not in self.disabled:
                    raise _LocatedError(
                        ("order_changes", oi, "channels", ci),
                        f"channel {channel!r} is not under channels",
                    )
        return self

    def check_plant(self, plant: PlantConfig) -> tuple[tuple[str | int, ...], str] | None:
        """The first rule whose scope names a line or machine the plant does not have."""
        lines = {line.id for line in plant.lines}
        for ri, rule in enumerate(self.rules):
            if rule.scope.line is not None and rule.scope.line not in lines:
                return ("rules", ri, "scope", "line"), (
                    f"line {rule.scope.line!r} is not in the plant configuration"
                )
            if rule.scope.machine is not None and rule.scope.machine not in plant.machines:
                return ("rules", ri, "scope", "machine"), (
                    f"machine {rule.scope.machine!r} is not in the plant configuration"
                )
        for oi, route in enumerate(self.order_changes):
            if route.line is not None and route.line not in lines:
                return ("order_changes", oi, "line"), (
                    f"line {route.line!r} is not in the plant configuration"
                )
        return None

    def level_channels(self, level: Level) -> tuple[str, ...]:
        """A level's channels, without those left out for channels_optional."""
        return tuple(c for c in level.channels if c in self.channels)


class AlertsConfigError(YamlError):
    """An alerts file that cannot be used; the message names file, line and field."""


def _strip_tag(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts the discriminator value into locations: ("rules", 0, "silent", "after_s").
    if len(loc) >= 3 and loc[0] == "rules" and loc[2] in _KINDS:
        return (*loc[:2], *loc[3:])
    return loc


def _drop_unset_channels(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """channels_optional: remove each channel that does not validate because a variable is
    unset; return name -> reason. Other channel errors are left for the full validation."""
    channels = data.get("channels")
    if not isinstance(channels, dict):
        return {}
    disabled: dict[str, str] = {}
    for name, body in list(channels.items()):
        if not isinstance(body, dict):
            continue
        try:
            Channel.model_validate({"name": str(name), **body}, context={"environ": environ})
        except ValidationError as err:
            msg = err.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            if "is not set" in msg:
                disabled[str(name)] = msg
                del channels[name]
    return disabled


def load_alerts_config(
    file: str | Path,
    plant: PlantConfig,
    *,
    environ: Mapping[str, str] | None = None,
) -> AlertsConfig:
    """Read and validate the alerts file; AlertsConfigError names file, line and field."""
    path = Path(file)
    env = os.environ if environ is None else environ
    try:
        data, lines = load_with_lines(path)
    except YamlError as err:
        raise AlertsConfigError(err.file, err.line, err.message) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AlertsConfigError(path, 1, "the alerts file must be a YAML mapping")
    if "disabled" in data:
        raise AlertsConfigError(
            path, lines.get(("disabled",)), "disabled: Extra inputs are not permitted"
        )
    disabled: dict[str, str] = {}
    if data.get("channels_optional") is True:
        disabled = _drop_unset_channels(data, env)
    try:
        config = AlertsConfig.model_validate(
            {**data, "disabled": disabled}, context={"environ": env}
        )
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = _strip_tag(tuple(first["loc"]))
        located = first.get("ctx", {}).get("error")
        if isinstance(located, _LocatedError):
            loc = located.loc
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        raise AlertsConfigError(path, line_of(lines, loc), f"{field}: {msg}") from None
    bad = config.check_plant(plant)
    if bad is not None:
        loc, msg = bad
        field = ".".join(str(p) for p in loc)
        raise AlertsConfigError(path, line_of(lines, loc), f"{field}: {msg}")
    return config


__all__ = [
    "AlertsConfig",
    "AlertsConfigError",
    "FirstArticleRule",
    "KpiBelowRule",
    "Level",
    "MachineDownRule",
    "MachineRule",
    "NoReasonRule",
    "OrderAtRiskRule",
    "OrderChangeRoute",
    "PatrolMissedRule",
    "ProcessLimitRule",
    "QuietHours",
    "Rule",
    "Scope",
    "ScrapRateRule",
    "SilentRule",
    "load_alerts_config",
]
