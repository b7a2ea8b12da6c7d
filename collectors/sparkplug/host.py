"""The Sparkplug B host application's state (pure: no I/O, no clock of its own).

`SparkplugHost.handle(topic, payload, received_ms)` takes one MQTT message and returns what
to store (log records: contract events, or dead letters with a reason) and what to send
(Rebirth NCMDs). It keeps, per edge node, what the Sparkplug 3.0 host must know:

- the NBIRTH/DBIRTH metric tables (name, alias, datatype) of the node and of each device,
  so that NDATA/DDATA carrying aliases only can be read;
- `bdSeq` of the last NBIRTH: only an NDEATH with the same bdSeq ends that session (an
  older one, delivered late, is ignored);
- `seq` (0..255, wrapping): a gap means a message was lost, answered by one
  `Node Control/Rebirth` NCMD (rate-limited per node); the message itself is still used,
  since its aliases are known. Data for a node or device without a birth is never guessed:
  it is dead-lettered and a Rebirth requested.

Only machines the plant file binds (`sparkplug:` under a machine) produce events; other
edge nodes on the broker are not ours and are ignored. Event ids derive from the message
(topic + payload), so a message delivered again after a collector restart stores nothing
new. `snapshot()`/`restore()` carry the tables across a restart of the collector.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from collectors.sparkplug import codec
from collectors.sparkplug.codec import CodecError, Metric, Scalar, ms_to_rfc3339
from mesflow.ingest_log import LogRecord, error_record, record_for, safe_text
from mesflow.plant import PlantConfig
from mesflow.source_sparkplug import SparkplugSource

NAMESPACE = "spBv1.0"
SUBSCRIPTION = f"{NAMESPACE}/#"
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"
# A node that does not answer a Rebirth within this time is asked again (not sooner: a
# burst of out-of-order messages must not become a burst of rebirths).
REBIRTH_INTERVAL_MS = 10_000
_NODE_TYPES = {"NBIRTH", "NDEATH", "NDATA", "NCMD"}
_DEVICE_TYPES = {"DBIRTH", "DDEATH", "DDATA", "DCMD"}
_MAX_PROBLEMS = 5


@dataclass(frozen=True, slots=True)
class SpTopic:
    group: str
    kind: str
    edge: str
    device: str | None


class TopicError(ValueError):
    pass


def parse_topic(topic: str) -> SpTopic | None:
    """spBv1.0/<group>/<TYPE>/<edge>[/<device>]; None for the host STATE topic."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != NAMESPACE:
        raise TopicError(f"not a Sparkplug B topic ({NAMESPACE}/<group>/<type>/<edge node>)")
    if parts[1] == "STATE" and len(parts) == 3:
        return None
    if len(parts) not in (4, 5) or not all(parts):
        raise TopicError(f"a Sparkplug B topic has 4 or 5 levels, this one {len(parts)}")
    group, kind, edge = parts[1], parts[2], parts[3]
    device = parts[4] if len(parts) == 5 else None
    if (kind in _NODE_TYPES and device is None) or (kind in _DEVICE_TYPES and device is not None):
        return SpTopic(group, kind, edge, device)
    raise TopicError(f"message type {kind!r} with {len(parts)} topic levels")


@dataclass(frozen=True, slots=True)
class Command:
    """A message for the broker: a Rebirth NCMD (QoS 0, not retained, per Sparkplug)."""

    topic: str
    payload: bytes


@dataclass(slots=True)
class Output:
    records: list[LogRecord] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    # What happened, for logs and counters: "stored", "ignored", "dead_letter", ...
    note: str = "ignored"


@dataclass(slots=True)
class _Table:
    """The metrics of one birth: alias -> name, name -> datatype."""

    names: dict[str, int] = field(default_factory=dict)
    aliases: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    born: bool = False
    bdseq: int | None = None
    seq: int | None = None
    metrics: _Table = field(default_factory=_Table)
    devices: dict[str, _Table] = field(default_factory=dict)
    rebirth_at: int | None = None  # received_ms of the last Rebirth asked for


@dataclass(frozen=True, slots=True)
class _Binding:
    machine: str
    source: SparkplugSource
    mapping: str | None
    roles: dict[str, str]  # metric name -> "state" | "total" | "scrap" | "pv:<name>"


def bindings(plant: PlantConfig) -> dict[tuple[str, str, str | None], list[_Binding]]:
    """The plant file's `sparkplug:` blocks by (group, edge node, device); ValueError (naming
    the machine) for a state mapping that does not exist."""
    out: dict[tuple[str, str, str | None], list[_Binding]] = {}
    for machine in plant.machines.values():
        src = machine.sparkplug
        if src is None:
            continue
        mapping = src.state_mapping or machine.state_mapping
        if mapping is not None and mapping not in plant.state_mappings:
            raise ValueError(
                f"machine {machine.id!r}: sparkplug.state_mapping {mapping!r} is not defined "
                "under state_mappings"
            )
        roles: dict[str, str] = {}
        for role, metric in (("state", src.state), ("total", src.total), ("scrap", src.scrap)):
            if metric is not None:
                roles[metric] = role
        for name, metric in src.process_values.items():
            roles[metric] = f"pv:{name}"
        key = (src.group, src.edge_node, src.device)
        out.setdefault(key, []).append(_Binding(machine.id, src, mapping, roles))
    return out


class SparkplugHost:
    def __init__(self, plant: PlantConfig, *, max_metrics: int = codec.MAX_METRICS) -> None:
        self.plant = plant
        self.max_metrics = max_metrics
        self._bindings = bindings(plant)
        self._edges = {(g, e) for g, e, _ in self._bindings}
        self.nodes: dict[tuple[str, str], _Node] = {}

    # -- one message ---------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, received_ms: int) -> Output:
        """What one message means. Never raises: a bug of ours on one message becomes that
        message's dead letter."""
        source = f"sparkplug:{safe_text(topic, 900)}"
        try:
            return self._handle(source, topic, payload, received_ms)
        except Exception as err:
            return Output([_error(source, payload, "malformed", f"{type(err).__name__}: {err}")])

    def _handle(self, source: str, topic: str, payload: bytes, received_ms: int) -> Output:
        try:
            where = parse_topic(topic)
        except TopicError as err:
            return Output([_error(source, payload, "bad_topic", str(err))], note="dead_letter")
        if where is None or where.kind in ("NCMD", "DCMD"):
            # Host STATE messages (ours included) and commands (ours, echoed back by the
            # subscription): not data, and never sequence-checked (a rebirth storm else).
            return Output()
        if (where.group, where.edge) not in self._edges:
            return Output(note="not_configured")
        try:
            decoded = codec.decode(payload, max_metrics=self.max_metrics)
        except CodecError as err:
            return Output([_error(source, payload, err.reason, err.detail)], note="dead_letter")
        ctx = _Msg(self, source, topic, payload, where, decoded, received_ms)
        handler = {
            "NBIRTH": ctx.nbirth,
            "NDEATH": ctx.ndeath,
            "NDATA": ctx.data,
            "DBIRTH": ctx.dbirth,
            "DDEATH": ctx.ddeath,
            "DDATA": ctx.data,
        }[where.kind]
        handler()
        return ctx.finish()

    # -- helpers used by _Msg ----------------------------------------------------------------

    def node(self, where: SpTopic) -> _Node:
        key = (where.group, where.edge)
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = _Node()
        return node

    def machines(
        self, where: SpTopic, device: str | None, *, all_devices: bool = False
    ) -> list[_Binding]:
        if all_devices:
            return [
                b
                for (g, e, _), bs in self._bindings.items()
                if (g, e) == (where.group, where.edge)
                for b in bs
            ]
        return self._bindings.get((where.group, where.edge, device), [])

    def rebirth(self, where: SpTopic, received_ms: int) -> list[Command]:
        """One Rebirth NCMD for the node, unless one was asked for recently."""
        node = self.node(where)
        if node.rebirth_at is not None and received_ms - node.rebirth_at < REBIRTH_INTERVAL_MS:
            return []
        node.rebirth_at = received_ms
        body = codec.encode(
            [
                Metric(
                    name=REBIRTH_METRIC, datatype=codec.BOOLEAN, value=True, timestamp=received_ms
                )
            ],
            timestamp=received_ms,
        )
        return [Command(f"{NAMESPACE}/{where.group}/NCMD/{where.edge}", body)]

    # -- across restarts ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The host's tables as JSON-able data (for a restart of the collector)."""
        return {
            "version": 1,
            "nodes": [
                {
                    "group": g,
                    "edge": e,
                    "born": n.born,
                    "bdseq": n.bdseq,
                    "seq": n.seq,
                    "rebirth_at": n.rebirth_at,
                    "metrics": _table_data(n.metrics),
                    "devices": {d: _table_data(t) for d, t in n.devices.items()},
                }
                for (g, e), n in self.nodes.items()
            ],
        }

    def restore(self, data: dict[str, Any]) -> None:
        if data.get("version") != 1:
            return  # an unknown layout: start empty; rebirths rebuild the tables
        self.nodes = {
            (n["group"], n["edge"]): _Node(
                born=bool(n["born"]),
                bdseq=n["bdseq"],
                seq=n["seq"],
                rebirth_at=n["rebirth_at"],
                metrics=_table_from(n["metrics"]),
                devices={d: _table_from(t) for d, t in n["devices"].items()},
            )
            for n in data["nodes"]
        }


def _table_data(t: _Table) -> dict[str, Any]:
    return {"names": t.names, "aliases": {str(a): n for a, n in t.aliases.items()}}


def _table_from(d: dict[str, Any]) -> _Table:
    return _Table(
        names={str(k): int(v) for k, v in d["names"].items()},
        aliases={int(a): str(n) for a, n in d["aliases"].items()},
    )


def _error(source: str, payload: bytes, reason: str, detail: str) -> LogRecord:
    return error_record(source, payload, reason, detail)


class _Msg:
    """One message being handled: collects events, problems and commands."""

    def __init__(
        self,
        host: SparkplugHost,
        source: str,
        topic: str,
        payload: bytes,
        where: SpTopic,
        decoded: codec.Payload,
        received_ms: int,
    ) -> None:
        self.host = host
        self.source = source
        self.payload = payload
        self.where = where
        self.p = decoded
        self.received_ms = received_ms
        self.events: list[dict[str, Any]] = []
        self.problems: list[tuple[str, str]] = []
        self.commands: list[Command] = []
        self.note = "stored"
        digest = hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=12).hexdigest()
        self.id_prefix = f"spb:{digest}"

    def finish(self) -> Output:
        records = []
        for i, body in enumerate(self.events):
            if "id" not in body:
                body["id"] = f"{self.id_prefix}:{i}"
            rec = record_for(self.source, body)
            if rec.error is not None:
                reason, _, detail = rec.error.partition(": ")
                self.problems.append((reason, detail))
            else:
                records.append(rec)
        if self.problems:
            reason = self.problems[0][0]
            detail = "; ".join(d for _, d in self.problems[:_MAX_PROBLEMS])
            if len(self.problems) > _MAX_PROBLEMS:
                detail += f"; and {len(self.problems) - _MAX_PROBLEMS} more"
            records.append(_error(self.source, self.payload, reason, detail))
            if self.note == "stored":
                self.note = "dead_letter" if not self.events else "partly_stored"
        return Output(records, self.commands, self.note)

    def problem(self, reason: str, detail: str) -> None:
        self.problems.append((reason, detail))

    def ask_rebirth(self) -> None:
        self.commands += self.host.rebirth(self.where, self.received_ms)

    def _seq_ok(self, node: _Node) -> None:
        """Track seq; a gap (or no seq at all) asks the node for a rebirth."""
        seq = self.p.seq
        expected = None if node.seq is None else (node.seq + 1) % 256
        if seq is None or seq != expected:
            self.ask_rebirth()
        if seq is not None:
            node.seq = seq

    # -- node messages --------------------------------------------------------------------------

    def nbirth(self) -> None:
        node = self.host.node(self.where)
        table = self._birth_table()
        if table is None:
            node.born = False
            self.ask_rebirth()
            return
        bdseq = _int_metric(self.p.metrics, BDSEQ_METRIC)
        if bdseq is None:
            self.problem("bad_birth", f"NBIRTH without a {BDSEQ_METRIC} metric")
            node.born = False
            return
        node.born = True
        node.bdseq = bdseq
        node.seq = self.p.seq if self.p.seq is not None else 0
        node.metrics = table
        node.devices = {}  # devices are born again after their node
        node.rebirth_at = None
        self._emit(self.host.machines(self.where, None), table, birth=True)

    def ndeath(self) -> None:
        node = self.host.nodes.get((self.where.group, self.where.edge))
        bdseq = _int_metric(self.p.metrics, BDSEQ_METRIC)
        if bdseq is None:
            self.problem("bad_death", f"NDEATH without a {BDSEQ_METRIC} metric")
            return
        if node is None or not node.born or node.bdseq != bdseq:
            # The death of an older session, delivered after the node was born again.
            self.note = "stale_death"
            return
        node.born = False
        node.devices = {}
        node.seq = None
        # The will carries the time of the CONNECT, not of the loss: the loss is now. A
        # redelivery of this NDEATH (collector restart) is seen at another time, so the
        # ids hold that time: the same id with other content would be an id_conflict.
        self.id_prefix += f":{self.received_ms}"
        self._offline(self.host.machines(self.where, None, all_devices=True), self.received_ms)

    # -- device messages ------------------------------------------------------------------------

    def _born_node(self) -> _Node | None:
        node = self.host.nodes.get((self.where.group, self.where.edge))
        if node is None or not node.born:
            self.problem(
                "no_birth",
                f"{self.where.kind} from edge node {self.where.edge!r} before its NBIRTH; "
                "a Rebirth was requested",
            )
            self.note = "no_birth"
            self.ask_rebirth()
            return None
        return node

    def dbirth(self) -> None:
        node = self._born_node()
        if node is None:
            return
        self._seq_ok(node)
        assert self.where.device is not None
        machines = self.host.machines(self.where, self.where.device)
        if not machines:
            # Not ours: no table kept (device ids come from topics: an edge inventing
            # new ones must not grow the host's memory).
            self.note = "not_configured"
            return
        table = self._birth_table()
        if table is None:
            node.devices.pop(self.where.device, None)
            self.ask_rebirth()
            return
        node.devices[self.where.device] = table
        self._emit(machines, table, birth=True)

    def ddeath(self) -> None:
        node = self._born_node()
        if node is None:
            return
        self._seq_ok(node)
        assert self.where.device is not None
        if node.devices.pop(self.where.device, None) is None:
            self.note = "stale_death"
            return
        ts = self.p.timestamp if self.p.timestamp is not None else self.received_ms
        self._offline(self.host.machines(self.where, self.where.device), ts)

    def data(self) -> None:
        node = self._born_node()
        if node is None:
            return
        self._seq_ok(node)
        device = self.where.device
        machines = self.host.machines(self.where, device)
        if not machines:  # another device of a configured node: not ours, no rebirths
            self.note = "not_configured"
            return
        table = node.metrics if device is None else node.devices.get(device)
        if table is None:
            self.problem(
                "no_birth",
                f"DDATA for device {device!r} before its DBIRTH; a Rebirth was requested",
            )
            self.note = "no_birth"
            self.ask_rebirth()
            return
        self._emit(machines, table, birth=False)

    # -- births, values, events ------------------------------------------------------------------

    def _birth_table(self) -> _Table | None:
        table = _Table()
        for m in self.p.metrics:
            if m.name is None or m.datatype is None:
                self.problem(
                    "bad_birth",
                    f"{self.where.kind} metric {m.label()} without a name or datatype",
                )
                return None
            if m.alias is not None:
                if m.alias in table.aliases and table.aliases[m.alias] != m.name:
                    self.problem(
                        "bad_birth",
                        f"alias {m.alias} names both {table.aliases[m.alias]!r} and {m.name!r}",
                    )
                    return None
                table.aliases[m.alias] = m.name
            table.names[m.name] = m.datatype
        return table

    def _resolve(self, table: _Table, m: Metric, birth: bool) -> tuple[str, Scalar] | None:
        name = m.name
        if name is None:
            name = table.aliases.get(m.alias) if m.alias is not None else None
            if name is None:
                self.problem(
                    "unknown_alias", f"{m.label()} is not in the birth; a Rebirth was requested"
                )
                self.ask_rebirth()
                return None
        datatype = table.names.get(name)
        if datatype is None:
            if not birth:
                self.problem("unknown_alias", f"metric {name!r} is not in the birth")
            return None
        if m.datatype is not None and m.datatype != datatype:
            self.problem(
                "bad_datatype",
                f"metric {name!r} is {codec.datatype_name(m.datatype)} here but "
                f"{codec.datatype_name(datatype)} in its birth",
            )
            return None
        if m.is_null:
            return name, None
        if m.datatype is not None:
            return name, m.value
        try:
            return name, codec.value_as(datatype, m.kind, m.raw, f"metric {name!r}")
        except CodecError as err:
            self.problem(err.reason, err.detail)
            return None

    def _emit(self, machines: list[_Binding], table: _Table, *, birth: bool) -> None:
        if not machines:  # another device of a configured node: not ours
            self.note = "not_configured"
            return
        values: list[tuple[str, Scalar, int]] = []
        for m in self.p.metrics:
            resolved = self._resolve(table, m, birth)
            if resolved is None or resolved[1] is None:
                continue
            ts = m.timestamp if m.timestamp is not None else self.p.timestamp
            if ts is None:
                self.problem("bad_timestamp", f"metric {resolved[0]!r} has no timestamp")
                continue
            values.append((resolved[0], resolved[1], ts))
        for b in machines:
            self._machine_events(b, values)

    def _machine_events(self, b: _Binding, values: Iterable[tuple[str, Scalar, int]]) -> None:
        pvs: dict[int, dict[str, float | int]] = {}
        for name, value, ts in values:
            role = b.roles.get(name)
            if role is None:
                continue
            when = ms_to_rfc3339(ts)
            if role == "state":
                state = self._state(b, name, value)
                if state is not None:
                    self.events.append(
                        {"type": "state", "machine": b.machine, "ts": when, "state": state}
                    )
            elif role in ("total", "scrap"):
                count = _count(value)
                if count is None:
                    self.problem(
                        "bad_value",
                        f"counter metric {name!r} of {b.machine}: {value!r} is not a count",
                    )
                    continue
                self.events.append(
                    {
                        "type": "counter",
                        "machine": b.machine,
                        "ts": when,
                        "name": role,
                        "value": count,
                    }
                )
            else:
                number = _number(value)
                if number is None:
                    self.problem(
                        "bad_value",
                        f"process value metric {name!r} of {b.machine}: {value!r} is not a finite number",
                    )
                    continue
                pvs.setdefault(ts, {})[role[3:]] = number
        for ts, vals in sorted(pvs.items()):
            self.events.append(
                {
                    "type": "process_value",
                    "machine": b.machine,
                    "ts": ms_to_rfc3339(ts),
                    "values": vals,
                }
            )

    def _state(self, b: _Binding, name: str, value: Scalar) -> str | None:
        code = _state_code(value)
        if code is None:
            self.problem(
                "bad_value", f"state metric {name!r} of {b.machine}: {value!r} is not a state code"
            )
            return None
        if b.mapping is not None:
            mapped = self.host.plant.map_state(b.mapping, code)
        else:
            mapped = self.host.plant.map_state("", code)  # canonical names only
        if mapped is None:
            self.problem(
                "unmapped_state",
                f"state code {code!r} of {b.machine} is not in state mapping {b.mapping!r}",
            )
        return mapped

    def _offline(self, machines: list[_Binding], ts_ms: int) -> None:
        when = ms_to_rfc3339(ts_ms)
        # `connection_lost` is a built-in reason code (mesflow/plant.py): valid in every plant.
        for b in machines:
            self.events.append(
                {
                    "type": "state",
                    "machine": b.machine,
                    "ts": when,
                    "state": "offline",
                    "reason": "connection_lost",
                }
            )


def _int_metric(metrics: tuple[Metric, ...], name: str) -> int | None:
    for m in metrics:
        if m.name == name:
            v = m.value if m.datatype is not None else m.raw
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                return v
            return None
    return None


def _state_code(value: Scalar) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value:
        return value
    return None


def _count(value: Scalar) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= 1_000_000_000_000:
        return value
    return None


def _number(value: Scalar) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else float(value)
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None
