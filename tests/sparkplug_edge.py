"""A Sparkplug B edge node for the tests, written from the spec (not from our host code,
apart from the payload encoder): real protobuf payloads over a real broker.

- CONNECT with the Will NDEATH {bdSeq}; subscribe to its NCMD topic (QoS 1) before NBIRTH;
- NBIRTH (seq 0, bdSeq, `Node Control/Rebirth` = false, node metrics with aliases), then a
  DBIRTH per device; DATA messages carry aliases only; seq increments and wraps 255 -> 0;
- a Rebirth NCMD is counted (`rebirths`) and, with `answer_rebirth`, answered by NBIRTH
  (same bdSeq, seq 0) and the DBIRTHs;
- `die()` drops the TCP connection without DISCONNECT, so the broker publishes the Will.

Also the test plant: the example plant with `sparkplug:` blocks on three machines.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from collectors.sparkplug import codec
from collectors.sparkplug.codec import Metric
from mesflow.plant import PlantConfig

GROUP = "plant1"
PRESS_GW = "press-gw"  # devices IM-01 and IM-02
CNC_GW = "cnc-gw"  # node-level metrics of CNC-01

PRESS_METRICS = [
    ("Machine/Mode", codec.INT32),
    ("Counters/Total", codec.UINT64),
    ("Counters/Scrap", codec.UINT32),
    ("Process/CycleTime", codec.DOUBLE),
    ("Process/Cushion", codec.FLOAT),
    ("Process/Recipe", codec.STRING),  # not bound to anything
]
CNC_METRICS = [("State", codec.STRING), ("Parts", codec.INT64), ("Spindle/Load", codec.FLOAT)]

SPARKPLUG_BLOCKS: dict[str, dict[str, Any]] = {
    "IM-01": {
        "group": GROUP,
        "edge_node": PRESS_GW,
        "device": "IM-01",
        "state": "Machine/Mode",
        "total": "Counters/Total",
        "scrap": "Counters/Scrap",
        "process_values": {"cycle_time_s": "Process/CycleTime", "cushion_mm": "Process/Cushion"},
    },
    "IM-02": {
        "group": GROUP,
        "edge_node": PRESS_GW,
        "device": "IM-02",
        "state": "Machine/Mode",
        "total": "Counters/Total",
    },
    "CNC-01": {
        "group": GROUP,
        "edge_node": CNC_GW,
        "state": "State",
        "total": "Parts",
        "process_values": {"spindle_load_pct": "Spindle/Load"},
    },
}


def sparkplug_plant_text(base: Path) -> str:
    """The plant file `base` with the test's `sparkplug:` blocks added to three machines."""
    data = yaml.safe_load(base.read_text(encoding="utf-8"))
    for line in data["lines"]:
        for machine in line["machines"]:
            if machine["id"] in SPARKPLUG_BLOCKS:
                machine["sparkplug"] = SPARKPLUG_BLOCKS[machine["id"]]
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def sparkplug_plant(base: Path) -> PlantConfig:
    return PlantConfig.model_validate(yaml.safe_load(sparkplug_plant_text(base)))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Table:
    """One birth's metrics: name -> (alias, datatype)."""

    metrics: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, defs: list[tuple[str, int]], first_alias: int) -> Table:
        return cls({n: (first_alias + i, dt) for i, (n, dt) in enumerate(defs)})


class EdgeNode:
    def __init__(
        self,
        host: str,
        port: int,
        edge: str,
        *,
        group: str = GROUP,
        node_metrics: list[tuple[str, int]] | None = None,
        devices: dict[str, list[tuple[str, int]]] | None = None,
        bdseq: int = 0,
        data_qos: int = 0,
        answer_rebirth: bool = False,
        initial: dict[tuple[str | None, str], Any] | None = None,
    ) -> None:
        self.group, self.edge = group, edge
        self.bdseq = bdseq
        self.seq = 0
        self.data_qos = data_qos
        self.answer_rebirth = answer_rebirth
        self.node = Table.of(node_metrics or [], 100)
        self.devices = {
            d: Table.of(defs, 1000 * (i + 1)) for i, (d, defs) in enumerate((devices or {}).items())
        }
        self.values: dict[tuple[str | None, str], Any] = dict(initial or {})
        self.rebirths = 0
        self.ncmds: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edge-{edge}-{bdseq}", clean_session=True
        )
        self.client.will_set(self.topic("NDEATH"), self._death_payload(), qos=1, retain=False)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.host, self.port = host, port

    def topic(self, kind: str, device: str | None = None) -> str:
        t = f"spBv1.0/{self.group}/{kind}/{self.edge}"
        return f"{t}/{device}" if device else t

    def _death_payload(self) -> bytes:
        return codec.encode([Metric(name="bdSeq", datatype=codec.INT64, value=self.bdseq)])

    # -- session -----------------------------------------------------------------------------

    def connect(self, *, birth: bool = True) -> EdgeNode:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(self.topic("NCMD"), qos=1)
        assert self._subscribed.wait(10), "edge node: NCMD subscription not acknowledged"
        if birth:
            self.birth()
        return self

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) % 256
        return seq

    def _publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)

    def birth(self, ts: int | None = None) -> None:
        with self._lock:
            ts = ts or now_ms()
            self.seq = 0
            metrics = [
                Metric(name="bdSeq", datatype=codec.INT64, value=self.bdseq, timestamp=ts),
                Metric(
                    name="Node Control/Rebirth", datatype=codec.BOOLEAN, value=False, timestamp=ts
                ),
            ]
            metrics += self._birth_metrics(None, self.node, ts)
            self._publish(
                self.topic("NBIRTH"), codec.encode(metrics, timestamp=ts, seq=self._next_seq())
            )
            for device, table in self.devices.items():
                self._dbirth(device, table, ts)

    def _dbirth(self, device: str, table: Table, ts: int) -> None:
        payload = codec.encode(
            self._birth_metrics(device, table, ts), timestamp=ts, seq=self._next_seq()
        )
        self._publish(self.topic("DBIRTH", device), payload)

    def dbirth(self, device: str, ts: int | None = None) -> None:
        with self._lock:
            self._dbirth(device, self.devices[device], ts or now_ms())

    def _birth_metrics(self, device: str | None, table: Table, ts: int) -> list[Metric]:
        return [
            Metric(
                name=name,
                alias=alias,
                datatype=dt,
                value=self.values.get((device, name), _zero(dt)),
                timestamp=ts,
            )
            for name, (alias, dt) in table.metrics.items()
        ]

    def data(
        self,
        values: dict[str, Any],
        *,
        device: str | None = None,
        ts: int | None = None,
        seq: int | None = None,
        qos: int | None = None,
    ) -> int:
        """NDATA (device None) or DDATA with aliases only; returns the seq used. `seq`
        forces a sequence number (a gap), after which numbering goes on from it."""
        with self._lock:
            ts = ts or now_ms()
            table = self.node if device is None else self.devices[device]
            metrics = []
            for name, value in values.items():
                alias, _dt = table.metrics[name]
                self.values[(device, name)] = value
                metrics.append(Metric(alias=alias, value=value, datatype=_dt, timestamp=ts))
            if seq is not None:
                self.seq = seq
            used = self._next_seq()
            # DATA metrics carry no datatype (spec: SHOULD NOT): encode with it, then drop it.
            payload = _without_datatypes(codec.encode(metrics, timestamp=ts, seq=used))
            kind = "NDATA" if device is None else "DDATA"
            self._publish(self.topic(kind, device), payload, self.data_qos if qos is None else qos)
            return used

    def ddeath(self, device: str, ts: int | None = None) -> None:
        with self._lock:
            payload = codec.encode([], timestamp=ts or now_ms(), seq=self._next_seq())
            self._publish(self.topic("DDEATH", device), payload)

    def raw(self, kind: str, payload: bytes, device: str | None = None, qos: int = 0) -> None:
        """Publish any bytes on one of this node's topics (hostile input)."""
        self._publish(self.topic(kind, device), payload, qos)

    def die(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the Will NDEATH."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    # -- commands ------------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.ncmds.append(bytes(msg.payload))
        try:
            payload = codec.decode(bytes(msg.payload))
        except codec.CodecError:
            return
        if any(m.name == "Node Control/Rebirth" and m.value is True for m in payload.metrics):
            self.rebirths += 1
            if self.answer_rebirth:
                threading.Thread(target=self.birth, daemon=True).start()


def _zero(datatype: int) -> Any:
    if datatype in (codec.FLOAT, codec.DOUBLE):
        return 0.0
    if datatype in (codec.STRING, codec.TEXT):
        return ""
    if datatype == codec.BOOLEAN:
        return False
    return 0


def _without_datatypes(payload: bytes) -> bytes:
    from collectors.sparkplug import sparkplug_b_pb2 as pb

    msg = pb.Payload()
    msg.ParseFromString(payload)
    for m in msg.metrics:
        m.ClearField("datatype")
    return msg.SerializeToString()


def wait_for(cond: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
