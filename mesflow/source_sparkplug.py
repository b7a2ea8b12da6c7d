"""Where a machine's data is in Sparkplug B: the `sparkplug:` block of a machine in the
plant file (config models only; the host application is collectors/sparkplug/).

    machines:
      - id: IM-03
        name: {en: Press 3, zh: 注塑机3}
        state_mapping: euromap77          # the machine's codes -> canonical states
        sparkplug:
          group: plant1                   # Sparkplug group id
          edge_node: press-gw-1           # edge node id
          device: IM-03                   # device id; omit for metrics of the node itself
          state: Machine/Mode             # metric holding the state code
          total: Counters/Total           # cumulative counters
          scrap: Counters/Scrap
          process_values:                 # contract name -> metric name
            cycle_time_s: Process/CycleTime
            cushion_mm: Process/Cushion
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Sparkplug ids are UTF-8 without the MQTT wildcards and the topic separator.
SparkplugId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^+/#\x00]+$")]
MetricName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
# The process-value names of the event contract.
ProcessValueName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
MAX_PROCESS_VALUES = 64


class SparkplugSource(BaseModel):
    """One machine's metrics on one Sparkplug edge node (or one device of it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: SparkplugId
    edge_node: SparkplugId
    device: SparkplugId | None = None
    state: MetricName | None = None
    # Overrides the machine's own `state_mapping` for this source.
    state_mapping: str | None = None
    total: MetricName | None = None
    scrap: MetricName | None = None
    process_values: dict[ProcessValueName, MetricName] = Field(
        default={}, max_length=MAX_PROCESS_VALUES
    )

    @model_validator(mode="after")
    def _one_meaning_per_metric(self) -> SparkplugSource:
        seen: dict[str, str] = {}
        named = [("state", self.state), ("total", self.total), ("scrap", self.scrap)]
        named += [(f"process_values.{k}", v) for k, v in self.process_values.items()]
        for role, metric in named:
            if metric is None:
                continue
            if metric in seen:
                raise ValueError(
                    f"metric {metric!r} is used as both {seen[metric]} and {role}; "
                    "give each meaning its own metric"
                )
            seen[metric] = role
        return self
