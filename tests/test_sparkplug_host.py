"""The Sparkplug B host's state, pure (collectors/sparkplug/host.py): births, aliases,
seq and bdSeq, rebirths, deaths -> offline, metrics -> contract events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.sparkplug import codec
from collectors.sparkplug.codec import Metric
from collectors.sparkplug.host import REBIRTH_INTERVAL_MS, Output, SparkplugHost, bindings
from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from tests.conftest import EXAMPLE_CONFIG
from tests.sparkplug_edge import CNC_GW, GROUP, PRESS_GW, sparkplug_plant

T0 = 1_795_000_000_000  # 2026-11-18, ms
PRESS = [
    ("Machine/Mode", codec.INT32, 1),
    ("Counters/Total", codec.UINT64, 2),
    ("Counters/Scrap", codec.UINT32, 3),
    ("Process/CycleTime", codec.DOUBLE, 4),
    ("Process/Cushion", codec.FLOAT, 5),
]


@pytest.fixture(scope="module")
def sp_plant() -> PlantConfig:
    return sparkplug_plant(EXAMPLE_CONFIG)


def topic(kind: str, edge: str = PRESS_GW, device: str | None = None) -> str:
    t = f"spBv1.0/{GROUP}/{kind}/{edge}"
    return f"{t}/{device}" if device else t


def nbirth(bdseq: int = 0, ts: int = T0, extra: list[Metric] | None = None) -> bytes:
    metrics = [
        Metric(name="bdSeq", datatype=codec.INT64, value=bdseq, timestamp=ts),
        Metric(name="Node Control/Rebirth", datatype=codec.BOOLEAN, value=False, timestamp=ts),
        *(extra or []),
    ]
    return codec.encode(metrics, timestamp=ts, seq=0)


def dbirth(seq: int, values: dict[str, Any], ts: int = T0) -> bytes:
    metrics = [
        Metric(name=n, alias=a, datatype=dt, value=values.get(n, 0), timestamp=ts)
        for n, dt, a in PRESS
    ]
    return codec.encode(metrics, timestamp=ts, seq=seq)


def ddata(
    seq: int, by_alias: dict[int, Any], ts: int, datatype: dict[int, int] | None = None
) -> bytes:
    types = {a: dt for _, dt, a in PRESS}
    metrics = [
        Metric(alias=a, datatype=types[a], value=v, timestamp=ts) for a, v in by_alias.items()
    ]
    raw = codec.encode(metrics, timestamp=ts, seq=seq)
    # Strip datatypes as a Sparkplug DATA message does (aliases only), unless asked to keep.
    from collectors.sparkplug import sparkplug_b_pb2 as pb

    msg = pb.Payload()
    msg.ParseFromString(raw)
    for m in msg.metrics:
        if datatype and m.alias in datatype:
            m.datatype = datatype[m.alias]
        else:
            m.ClearField("datatype")
    return msg.SerializeToString()


def ndeath(bdseq: int) -> bytes:
    return codec.encode([Metric(name="bdSeq", datatype=codec.INT64, value=bdseq)])


def events(out: Output) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in out.records if r.error is None]


def errors(out: Output) -> list[str]:
    return [r.error for r in out.records if r.error is not None]


def born(host: SparkplugHost, now: int = T0) -> None:
    """NBIRTH of the press gateway, DBIRTH of IM-01 (mode 4 = idle) and IM-02."""
    assert not errors(host.handle(topic("NBIRTH"), nbirth(), now))
    assert not errors(
        host.handle(
            topic("DBIRTH", device="IM-01"),
            dbirth(1, {"Machine/Mode": 4, "Counters/Total": 100}),
            now,
        )
    )
    assert not errors(
        host.handle(topic("DBIRTH", device="IM-02"), dbirth(2, {"Machine/Mode": 1}), now)
    )


def test_births_then_aliased_data_become_contract_events_at_the_metric_times(
    sp_plant: PlantConfig,
) -> None:
    host = SparkplugHost(sp_plant)
    out = host.handle(topic("NBIRTH"), nbirth(), T0)
    assert out.records == [] and out.commands == []  # no node-level machine on this gateway
    out = host.handle(
        topic("DBIRTH", device="IM-01"),
        dbirth(1, {"Machine/Mode": 4, "Counters/Total": 100, "Process/CycleTime": 30.5}),
        T0,
    )
    birth = events(out)
    assert {"type": "state", "machine": "IM-01", "state": "idle"}.items() <= birth[0].items()
    assert any(e["type"] == "counter" and e["name"] == "total" and e["value"] == 100 for e in birth)
    t1 = T0 + 31_000
    out = host.handle(
        topic("DDATA", device="IM-01"),
        ddata(2, {1: 1, 2: 101, 3: 2, 4: 31.25, 5: 4.5}, t1),
        T0 + 31_500,
    )
    assert errors(out) == [] and out.commands == []
    got = events(out)
    ts = codec.ms_to_rfc3339(t1)
    assert [(e["type"], e["ts"]) for e in got] == [
        ("state", ts),
        ("counter", ts),
        ("counter", ts),
        ("process_value", ts),
    ]
    assert got[0]["state"] == "running"  # euromap77 "1"
    assert got[1]["name"] == "total" and got[1]["value"] == 101
    assert got[2]["name"] == "scrap" and got[2]["value"] == 2
    assert got[3]["values"] == {"cycle_time_s": 31.25, "cushion_mm": 4.5}
    for e in got:  # every event is a valid contract event
        parse_event(json.dumps(e).encode())


def test_a_sequence_gap_asks_that_node_for_one_rebirth_and_keeps_the_data(
    sp_plant: PlantConfig,
) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    out = host.handle(topic("DDATA", device="IM-01"), ddata(3, {2: 150}, T0 + 1000), T0 + 1000)
    assert out.commands == []
    out = host.handle(
        topic("DDATA", device="IM-01"), ddata(5, {2: 160}, T0 + 2000), T0 + 2000
    )  # 4 lost
    assert [c.topic for c in out.commands] == [f"spBv1.0/{GROUP}/NCMD/{PRESS_GW}"]
    cmd = codec.decode(out.commands[0].payload)
    assert [(m.name, m.value) for m in cmd.metrics] == [("Node Control/Rebirth", True)]
    assert [e["value"] for e in events(out)] == [160]  # aliases known: the data is not lost
    # Another gap before the node answered: no second Rebirth within the interval.
    out = host.handle(topic("DDATA", device="IM-01"), ddata(9, {2: 170}, T0 + 3000), T0 + 3000)
    assert out.commands == []
    later = T0 + 3000 + REBIRTH_INTERVAL_MS
    out = host.handle(topic("DDATA", device="IM-01"), ddata(20, {2: 180}, later), later)
    assert len(out.commands) == 1  # still unanswered: asked again
    # seq wraps 255 -> 0 without a gap
    host2 = SparkplugHost(sp_plant)
    born(host2)
    host2.nodes[(GROUP, PRESS_GW)].seq = 254
    for seq in (255, 0, 1):
        assert (
            host2.handle(topic("DDATA", device="IM-01"), ddata(seq, {2: 1}, T0), T0).commands == []
        )


def test_ndeath_with_the_births_bdseq_takes_all_machines_of_the_node_offline(
    sp_plant: PlantConfig,
) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    stale = host.handle(topic("NDEATH"), ndeath(7), T0 + 5000)  # an older session's will
    assert stale.records == [] and stale.note == "stale_death"
    out = host.handle(topic("NDEATH"), ndeath(0), T0 + 6000)
    got = events(out)
    assert sorted(e["machine"] for e in got) == ["IM-01", "IM-02"]
    assert all(e["state"] == "offline" and e["reason"] == "connection_lost" for e in got)
    assert all(e["ts"] == codec.ms_to_rfc3339(T0 + 6000) for e in got)  # when it was seen
    # A second delivery of the same death: the node is dead already, nothing more.
    assert host.handle(topic("NDEATH"), ndeath(0), T0 + 7000).records == []
    # The next birth ends it: the state metric of the new DBIRTH.
    host.handle(topic("NBIRTH"), nbirth(bdseq=1, ts=T0 + 8000), T0 + 8000)
    out = host.handle(
        topic("DBIRTH", device="IM-01"), dbirth(1, {"Machine/Mode": 1}, T0 + 8000), T0 + 8000
    )
    assert events(out)[0]["state"] == "running"


def test_ddeath_takes_only_that_devices_machine_offline_at_its_timestamp(
    sp_plant: PlantConfig,
) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    out = host.handle(
        topic("DDEATH", device="IM-02"), codec.encode([], timestamp=T0 + 900, seq=3), T0 + 950
    )
    got = events(out)
    assert [(e["machine"], e["state"], e["ts"]) for e in got] == [
        ("IM-02", "offline", codec.ms_to_rfc3339(T0 + 900))
    ]
    # Data of the dead device is not guessed: dead letter and a Rebirth.
    out = host.handle(topic("DDATA", device="IM-02"), ddata(4, {1: 1}, T0 + 1000), T0 + 1000)
    assert events(out) == [] and errors(out)[0].startswith("no_birth") and len(out.commands) == 1


def test_data_before_any_birth_is_not_guessed_and_asks_for_a_rebirth(sp_plant: PlantConfig) -> None:
    host = SparkplugHost(sp_plant)
    out = host.handle(topic("DDATA", device="IM-01"), ddata(7, {1: 1, 2: 5}, T0), T0)
    assert events(out) == []
    assert errors(out)[0].startswith("no_birth: DDATA from edge node 'press-gw' before its NBIRTH")
    assert [c.topic for c in out.commands] == [f"spBv1.0/{GROUP}/NCMD/{PRESS_GW}"]
    # Node born, device not yet: DDATA before DBIRTH.
    host.handle(topic("NBIRTH"), nbirth(), T0 + 20_000)
    out = host.handle(topic("DDATA", device="IM-01"), ddata(1, {1: 1}, T0 + 20_001), T0 + 20_001)
    assert events(out) == [] and errors(out)[0].startswith("no_birth: DDATA for device 'IM-01'")
    assert len(out.commands) == 1


def test_unknown_alias_and_wrong_datatype_are_dead_letters_with_reasons(
    sp_plant: PlantConfig,
) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    out = host.handle(topic("DDATA", device="IM-01"), ddata(3, {2: 5}, T0), T0)
    assert errors(out) == []
    from collectors.sparkplug import sparkplug_b_pb2 as pb

    msg = pb.Payload(timestamp=T0, seq=4)
    m = msg.metrics.add()
    m.alias, m.timestamp, m.long_value = 999, T0, 5
    out = host.handle(topic("DDATA", device="IM-01"), msg.SerializeToString(), T0)
    assert errors(out)[0].startswith("unknown_alias: alias 999 is not in the birth")
    assert len(out.commands) == 1
    # Counters/Total (UInt64 in the birth) sent as a string: refused, others kept.
    msg = pb.Payload(timestamp=T0, seq=5)
    bad = msg.metrics.add()
    bad.alias, bad.timestamp, bad.string_value = 2, T0, "12"
    good = msg.metrics.add()
    good.alias, good.timestamp, good.double_value = 4, T0, 29.0
    out = host.handle(topic("DDATA", device="IM-01"), msg.SerializeToString(), T0)
    assert errors(out) == [
        "bad_datatype: metric 'Counters/Total' is declared UInt64 but carries string_value"
    ]
    assert [e["type"] for e in events(out)] == ["process_value"]
    # A DATA metric declaring another datatype than its birth.
    out = host.handle(
        topic("DDATA", device="IM-01"), ddata(6, {2: 7}, T0, datatype={2: codec.STRING}), T0
    )
    assert errors(out)[0].startswith("bad_datatype")


def test_unmapped_state_code_and_node_level_machine(sp_plant: PlantConfig) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    out = host.handle(topic("DDATA", device="IM-01"), ddata(3, {1: 42}, T0), T0)
    assert errors(out)[0].startswith("unmapped_state: state code '42' of IM-01")
    # CNC-01: metrics of the node itself, canonical state names, no mapping.
    birth = nbirth(
        extra=[
            Metric(name="State", alias=1, datatype=codec.STRING, value="idle", timestamp=T0),
            Metric(name="Parts", alias=2, datatype=codec.INT64, value=9, timestamp=T0),
            Metric(name="Spindle/Load", alias=3, datatype=codec.FLOAT, value=0.0, timestamp=T0),
        ]
    )
    got = events(host.handle(topic("NBIRTH", edge=CNC_GW), birth, T0))
    assert [(e["machine"], e["type"]) for e in got] == [
        ("CNC-01", "state"),
        ("CNC-01", "counter"),
        ("CNC-01", "process_value"),
    ]
    nd = codec.encode(
        [Metric(alias=1, datatype=codec.STRING, value="running", timestamp=T0 + 1)],
        timestamp=T0 + 1,
        seq=1,
    )
    got = events(host.handle(topic("NDATA", edge=CNC_GW), nd, T0 + 1))
    assert got[0]["state"] == "running"


def test_commands_state_and_foreign_nodes_are_ignored(sp_plant: PlantConfig) -> None:
    host = SparkplugHost(sp_plant)
    for t, p in [
        (topic("NCMD"), codec.encode([], seq=0)),  # our own Rebirth coming back
        ("spBv1.0/STATE/mesflow", b'{"online": true, "timestamp": 1}'),
        (f"spBv1.0/{GROUP}/NDATA/somebody-else", b"garbage"),
    ]:
        out = host.handle(t, p, T0)
        assert out.records == [] and out.commands == []
    out = host.handle("spBv1.0/plant1/NOPE/x/y/z", b"", T0)
    assert errors(out)[0].startswith("bad_topic")


def test_a_message_delivered_again_gives_the_same_event_ids(sp_plant: PlantConfig) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    data = ddata(3, {1: 1, 2: 5, 4: 1.5}, T0)
    first = host.handle(topic("DDATA", device="IM-01"), data, T0)
    snap = host.snapshot()
    restarted = SparkplugHost(sp_plant)
    restarted.restore(json.loads(json.dumps(snap)))
    restarted.nodes[(GROUP, PRESS_GW)].seq = 2  # as saved before that message
    again = restarted.handle(topic("DDATA", device="IM-01"), data, T0 + 60_000)
    assert [r.dedupe_key for r in first.records] == [r.dedupe_key for r in again.records]
    assert [r.payload for r in first.records] == [r.payload for r in again.records]
    assert again.commands == []


def test_a_restored_host_reads_aliases_without_a_new_birth(sp_plant: PlantConfig) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    restored = SparkplugHost(sp_plant)
    restored.restore(json.loads(json.dumps(host.snapshot())))
    out = restored.handle(topic("DDATA", device="IM-01"), ddata(3, {2: 321}, T0), T0)
    assert errors(out) == [] and out.commands == [] and events(out)[0]["value"] == 321


def test_a_bad_state_mapping_name_is_refused_naming_the_machine(sp_plant: PlantConfig) -> None:
    data = sp_plant.model_dump()
    data["lines"][0]["machines"][0]["sparkplug"]["state_mapping"] = "nope"
    with pytest.raises(ValueError, match=r"machine 'IM-01': sparkplug\.state_mapping 'nope'"):
        bindings(PlantConfig.model_validate(data))


def test_every_event_the_host_makes_passes_the_dataflows_validator(sp_plant: PlantConfig) -> None:
    """Contract, clock policy, known machine, reason tree: as the dataflow will judge them."""
    from datetime import UTC, datetime

    from mesflow.ingest_log import LogEntry
    from streams.records import Rejection
    from streams.validate import Validator

    host = SparkplugHost(sp_plant)
    outs = [
        host.handle(topic("NBIRTH"), nbirth(), T0),
        host.handle(
            topic("DBIRTH", device="IM-01"), dbirth(1, {"Machine/Mode": 5, "Counters/Total": 7}), T0
        ),
        host.handle(topic("DBIRTH", device="IM-02"), dbirth(2, {"Machine/Mode": 1}), T0),
        host.handle(
            topic("DDATA", device="IM-01"),
            ddata(3, {1: 3, 2: 8, 3: 1, 4: 29.5, 5: 4.0}, T0 + 1000),
            T0 + 1000,
        ),
        host.handle(
            topic("DDEATH", device="IM-02"), codec.encode([], timestamp=T0 + 2000, seq=4), T0 + 2000
        ),
        host.handle(topic("NDEATH"), ndeath(0), T0 + 3000),
    ]
    received = datetime.fromtimestamp((T0 + 5000) / 1000, UTC)
    entries = [
        LogEntry(i, r.payload, r.error, received)
        for i, r in enumerate((r for o in outs for r in o.records), start=1)
    ]
    assert len(entries) >= 12
    judged = list(Validator(sp_plant)(entries))
    assert [j for j in judged if isinstance(j, Rejection)] == []


def test_the_plant_files_sparkplug_block_is_checked() -> None:
    from pydantic import ValidationError

    from mesflow.source_sparkplug import SparkplugSource

    ok = SparkplugSource(group="g", edge_node="e", total="T", process_values={"cycle_time_s": "C"})
    assert ok.device is None
    bad: list[dict[str, Any]] = [
        {"group": "g", "edge_node": "e", "total": "X", "process_values": {"x_mm": "X"}},  # twice
        {"group": "g/1", "edge_node": "e"},  # '/' in an id
        {"group": "g", "edge_node": "e#"},  # wildcard
        {"group": "g", "edge_node": "e", "process_values": {"Cycle Time": "C"}},  # contract name
        {"group": "g", "edge_node": "e", "totl": "T"},  # a typo is an error, not ignored
    ]
    for fields in bad:
        with pytest.raises(ValidationError):
            SparkplugSource(**fields)


def test_a_metric_dated_a_day_ahead_is_stored_then_dead_lettered_future_by_the_dataflow(
    sp_plant: PlantConfig,
) -> None:
    """Up to 2199 a time is the clock policy's to judge (as for every source), not the host's."""
    from datetime import UTC, datetime

    from mesflow.ingest_log import LogEntry
    from streams.records import Rejection
    from streams.validate import Validator

    host = SparkplugHost(sp_plant)
    born(host)
    ahead = T0 + 86_400_000
    out = host.handle(topic("DDATA", device="IM-01"), ddata(3, {2: 9}, ahead), T0)
    assert errors(out) == [] and len(out.records) == 1
    received = datetime.fromtimestamp(T0 / 1000, UTC)
    (judged, _progress) = Validator(sp_plant)([LogEntry(1, out.records[0].payload, None, received)])
    assert isinstance(judged, Rejection) and judged.reason == "future"


def test_devices_the_plant_does_not_name_keep_no_tables(sp_plant: PlantConfig) -> None:
    host = SparkplugHost(sp_plant)
    born(host)
    for i in range(50):
        out = host.handle(topic("DBIRTH", device=f"junk-{i}"), dbirth(3 + i, {}), T0)
        assert out.records == [] and out.note == "not_configured"
    assert sorted(host.nodes[(GROUP, PRESS_GW)].devices) == ["IM-01", "IM-02"]
    # Their data asks for nothing either (no rebirth storm for devices that are not ours).
    assert host.handle(topic("DDATA", device="junk-1"), ddata(53, {1: 1}, T0), T0).commands == []


_KINDS = ["NBIRTH", "NDEATH", "NDATA", "DBIRTH", "DDEATH", "DDATA", "NCMD"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_KINDS),
            st.sampled_from([None, "IM-01", "IM-02", "other"]),
            st.integers(0, 255),
            st.dictionaries(st.integers(1, 6), st.integers(0, 2**31), max_size=4),
            st.integers(0, 2),
        ),
        max_size=40,
    )
)
def test_any_message_sequence_never_raises_and_stores_only_valid_events(
    steps: list[tuple[str, str | None, int, dict[int, int], int]],
) -> None:
    from datetime import UTC, datetime

    from mesflow.ingest_log import LogEntry
    from streams.records import Rejection
    from streams.validate import Validator

    plant = sparkplug_plant(EXAMPLE_CONFIG)
    host = SparkplugHost(plant)
    records = []
    for i, (kind, device, seq, values, bdseq) in enumerate(steps):
        now = T0 + i * 1000
        if kind == "NBIRTH":
            payload = nbirth(bdseq, now)
        elif kind == "NDEATH":
            payload = ndeath(bdseq)
        elif kind == "DBIRTH":
            payload = dbirth(seq, {"Machine/Mode": values.get(1, 1) % 6}, now)
        else:
            payload = ddata(seq, {a: v for a, v in values.items() if a in (1, 2, 3)}, now)
        dev = device if kind.startswith("D") else None
        if kind.startswith("D") and dev is None:
            dev = "IM-01"
        out = host.handle(topic(kind, device=dev), payload, now)
        assert all(c.topic == f"spBv1.0/{GROUP}/NCMD/{PRESS_GW}" for c in out.commands)
        records += out.records
    received = datetime.fromtimestamp((T0 + 60_000) / 1000, UTC)
    good = [
        LogEntry(i, r.payload, None, received) for i, r in enumerate(records, 1) if r.error is None
    ]
    rejected = [j for j in Validator(plant)(good) if isinstance(j, Rejection)]
    # Mode values outside the mapping are dead-lettered by the host, never stored.
    assert rejected == []
