"""Process-value limits in the plant file (docs/configuration.md, "Process limits").

Config models only, no I/O. A product's `process_limits` apply to that product on any
machine; a machine's `process_limits` apply on that machine whatever runs there (also with
no work order running), and for a value named in both, the machine's entry wins whole.

Per value: `lsl`/`usl` are the specification limits (Cpk, sql/026_process_limits.sql);
`alarm_low`/`alarm_high` are what counts as out of limit (streams/limit_spans.py), each
defaulting to the spec limit on its side.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesflow.events import PROCESS_VALUE_NAME

# Finite and bounded: a limit of 1e300 is a typo, and keeps (usl - mean) / 3σ finite.
MAX_LIMIT = 1e12
Limit = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_LIMIT, le=MAX_LIMIT)]
ValueName = Annotated[str, Field(pattern=PROCESS_VALUE_NAME)]


class ValueLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lsl: Limit | None = None  # lower specification limit
    usl: Limit | None = None  # upper specification limit
    alarm_low: Limit | None = None  # out of limit below this (default: lsl)
    alarm_high: Limit | None = None  # out of limit above this (default: usl)

    @model_validator(mode="after")
    def _ordered(self) -> ValueLimits:
        if all(x is None for x in (self.lsl, self.usl, self.alarm_low, self.alarm_high)):
            raise ValueError("give at least one of lsl, usl, alarm_low, alarm_high")
        if self.lsl is not None and self.usl is not None and not self.lsl < self.usl:
            raise ValueError(f"lsl ({self.lsl}) must be below usl ({self.usl})")
        lo, hi = self.lower, self.upper
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"the low alarm limit ({lo}) must be below the high one ({hi})")
        return self

    @property
    def lower(self) -> float | None:
        """Below this, a value is out of limit."""
        return self.alarm_low if self.alarm_low is not None else self.lsl

    @property
    def upper(self) -> float | None:
        """Above this, a value is out of limit."""
        return self.alarm_high if self.alarm_high is not None else self.usl

    def side(self, v: float) -> str | None:
        """'upper' or 'lower' when `v` is beyond that limit (a value on it is in)."""
        hi, lo = self.upper, self.lower
        if hi is not None and v > hi:
            return "upper"
        if lo is not None and v < lo:
            return "lower"
        return None


ProcessLimits = Annotated[dict[ValueName, ValueLimits], Field(max_length=256)]


def merged(
    product: dict[str, ValueLimits] | None, machine: dict[str, ValueLimits] | None
) -> dict[str, ValueLimits]:
    """The limits on a machine while `product` runs: the machine's entries win whole."""
    return {**(product or {}), **(machine or {})}
