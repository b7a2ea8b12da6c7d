"""The MQTT topic scheme for JSON machine signals and operator reports (ISA-95 style).

    mesflow/v1/<site>/<area>/<line>/<machine>/<type>

`type` is the event type of the contract: `state`, `count`, `counter`, `report` or
`process_value` (lot reports for traceability, `material_lot` and `production_lot`, are
`report`s: docs/traceability.md). The payload is a JSON object with the event's other fields; `type` and
`machine` may be left out (the topic says them) and must agree with the topic when present.
Example:

    mesflow/v1/suzhou/molding/IM/IM-01/state   {"ts": "2026-11-20T08:00:00+08:00", "state": "running"}

Topic levels use the ids from the plant configuration; `+`, `#` and `/` cannot appear in
them (the config's id pattern forbids them).
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "mesflow/v1"
MACHINE_TYPES = ("state", "count", "counter", "report", "process_value")
SUBSCRIPTION = f"{PREFIX}/#"


@dataclass(frozen=True, slots=True)
class MachineTopic:
    site: str
    area: str
    line: str
    machine: str
    type: str


class TopicError(ValueError):
    pass


def machine_topic(site: str, area: str, line: str, machine: str, type_: str) -> str:
    if type_ not in MACHINE_TYPES:
        raise TopicError(f"unknown event type {type_!r} for a machine topic")
    return f"{PREFIX}/{site}/{area}/{line}/{machine}/{type_}"


def parse_topic(topic: str) -> MachineTopic:
    parts = topic.split("/")
    if len(parts) != 7 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(
            f"topic {topic!r} does not follow {PREFIX}/<site>/<area>/<line>/<machine>/<type>"
        )
    site, area, line, machine, type_ = parts[2:]
    if type_ not in MACHINE_TYPES:
        raise TopicError(f"topic {topic!r}: last level must be one of {', '.join(MACHINE_TYPES)}")
    if not all((site, area, line, machine)):
        raise TopicError(f"topic {topic!r} has an empty level")
    return MachineTopic(site, area, line, machine, type_)
