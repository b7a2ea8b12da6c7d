"""OPC UA collector: a real asyncua server (tests/opcua_server.py) against the collector,
into a real PostgreSQL ingest log. No mocks."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from asyncua import ua
from pydantic import ValidationError

from collectors.opcua import (
    MachineMap,
    OpcUaCollector,
    Sample,
    event_time,
    map_samples,
)
from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from mesflow.source_opcua import BUILTIN_STATE_MAPPINGS, OpcUaSource, state_table
from tests.helpers import OwnPostgres, wait_until
from tests.opcua_server import MachineServer, free_port, make_certificate

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "plant.example.yaml"
MACHINE = "IM-03"
T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


# -- helpers ---------------------------------------------------------------------------------


def plant_with(sources: dict[str, dict[str, Any]], *, reasons: bool = True) -> PlantConfig:
    """The example plant with `opcua:` sections on the named machines."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for line in data["lines"]:
        for m in line["machines"]:
            if m["id"] in sources:
                m["opcua"] = sources[m["id"]]
    if not reasons:
        data["reasons"] = []
    return PlantConfig.model_validate(data)


def source_for(server: MachineServer, machine: str = MACHINE, **extra: Any) -> dict[str, Any]:
    src: dict[str, Any] = {
        "endpoint": server.url,
        "state": {"node": f"ns=2;s={machine}.MachineMode", "mapping": "euromap77_machine_mode"},
        "total": {"path": f"2:{machine}/2:TotalParts"},
        "scrap": {"node": f"nsu=urn:mesflow:test:imm;s={machine}.ScrapParts"},
        "process_values": {
            "cycle_time_s": {"node": f"ns=2;s={machine}.CycleTime"},
            "cushion_mm": {"path": f"Objects/t:{machine}/t:Cushion"},
        },
        "namespaces": {"t": "urn:mesflow:test:imm"},
        "sampling_interval_ms": 50,
        "publishing_interval_ms": 50,
        "queue_size": 100,
        "keep_alive_count": 10,
    }
    if server.user:
        src["user"] = server.user[0]
        src["password_env"] = "TEST_OPCUA_PASSWORD"
    src.update(extra)
    return src


def rows(url: str, after: int = 0) -> list[tuple[int, dict[str, Any] | None, str | None, str]]:
    """(seq, event or None, error, source) of the ingest log after `after`."""
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT seq, payload, error, source FROM ingest_log WHERE seq > %s ORDER BY seq",
            (after,),
        ).fetchall()
    out = []
    for seq, payload, error, source in got:
        out.append((seq, None if error else json.loads(bytes(payload)), error, source))
    return out


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The collector's error lines (asyncua's own logging is not what we promise)."""
    return [
        r for r in caplog.records if r.name == "collectors.opcua" and r.levelno >= logging.ERROR
    ]


def events(url: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for _, e, _, _ in rows(url)
        if e is not None and all(e.get(k) == v for k, v in match.items())
    ]


def verdicts(url: str, plant: PlantConfig) -> list[tuple[str, str]]:
    """What the dataflow's first step says of every logged row: (reason, detail) of each
    rejection; an empty list when every row is accepted as it would be from MQTT."""
    from mesflow.ingest_log import read_after
    from streams.records import Rejection
    from streams.validate import Validator

    with psycopg.connect(url) as conn:
        entries = read_after(conn, 0, 100_000)
    return [(r.reason, r.detail) for r in Validator(plant)(entries) if isinstance(r, Rejection)]


@pytest.fixture
def server() -> Iterator[MachineServer]:
    srv = MachineServer(free_port(), [MACHINE], user=("mes", "s3cret"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def collector_factory() -> Iterator[Any]:
    made: list[OpcUaCollector] = []

    def make(plant: PlantConfig, url: str, **kw: Any) -> OpcUaCollector:
        kw.setdefault("env", {"TEST_OPCUA_PASSWORD": "s3cret"})
        kw.setdefault("reconnect_max_delay", 1.0)
        c = OpcUaCollector(plant, url, **kw)
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def sample(role: str, name: str, value: Any, **kw: Any) -> Sample:
    base: dict[str, Any] = {
        "machine": MACHINE,
        "role": role,
        "name": name,
        "node": f"ns=2;s={name}",
        "value": value,
        "status": None,
        "bad": False,
        "source_ts": T0,
        "server_ts": T0 + timedelta(seconds=1),
        "received": T0 + timedelta(seconds=2),
    }
    base.update(kw)
    return Sample(**base)


MAPS = {MACHINE: MachineMap(BUILTIN_STATE_MAPPINGS["euromap77_machine_mode"])}


# -- pure mapping ------------------------------------------------------------------------------


def test_builtin_tables_follow_the_specs() -> None:
    """OPC 40083 MachineModeEnumeration / ProductionStatusEnumeration numbers and names, and
    OPC 40001 MachineryItemState names, each to one canonical state."""
    mode = BUILTIN_STATE_MAPPINGS["euromap77_machine_mode"]
    assert [mode[str(i)] for i in range(6)] == [
        "idle",
        "running",
        "running",
        "setup",
        "setup",
        "planned_stop",
    ]
    assert mode["AUTOMATIC"] == "running" and mode["SLEEP"] == "planned_stop"
    status = BUILTIN_STATE_MAPPINGS["euromap77_production_status"]
    assert status["4"] == status["PRODUCTION"] == "running"
    assert status["5"] == "setup"  # DRY_RUN makes no good parts
    item = BUILTIN_STATE_MAPPINGS["opc40001_machinery_item_state"]
    assert item == {
        "Executing": "running",
        "NotExecuting": "idle",
        "OutOfService": "down",
        "NotAvailable": "offline",
    }


def test_values_map_to_contract_events() -> None:
    recs = map_samples(
        [
            sample("state", "state", 4),
            sample("state", "state", ua.LocalizedText("running")),
            sample("counter", "total", 17),
            sample("counter", "scrap", 3.0),  # a Double counter holding a whole number
            sample("process_value", "cycle_time_s", 31),
            sample("process_value", "cushion_mm", 4.1),
        ],
        MAPS,
    )
    assert [r.error for r in recs] == [None] * 5
    evs = [json.loads(r.payload) for r in recs]
    for e in evs:
        parse_event(json.dumps(e))  # every one is a valid contract event
    assert evs[0] == {"type": "state", "machine": MACHINE, "ts": T0.isoformat(), "state": "setup"}
    assert evs[1]["state"] == "running"
    assert evs[2] == {
        "type": "counter",
        "machine": MACHINE,
        "ts": T0.isoformat(),
        "name": "total",
        "value": 17,
    }
    assert evs[3]["value"] == 3 and isinstance(evs[3]["value"], int)
    # Process values of one machine and one time: one event.
    assert evs[4] == {
        "type": "process_value",
        "machine": MACHINE,
        "ts": T0.isoformat(),
        "values": {"cycle_time_s": 31.0, "cushion_mm": 4.1},
    }


@pytest.mark.parametrize(
    ("role", "name", "value", "reason"),
    [
        ("counter", "total", "many", "invalid_field"),
        ("counter", "total", True, "invalid_field"),
        ("counter", "total", 2.5, "invalid_field"),
        ("process_value", "cushion_mm", "4.1", "invalid_field"),
        ("process_value", "cushion_mm", math.nan, "invalid_field"),
        ("process_value", "cushion_mm", False, "invalid_field"),
        ("process_value", "cushion_mm", [1.0, 2.0], "invalid_field"),
        ("state", "state", 3.5, "invalid_field"),
        ("state", "state", 99, "unmapped_state"),
    ],
)
def test_wrong_values_are_dead_letters_naming_machine_and_node(
    role: str, name: str, value: Any, reason: str
) -> None:
    (rec,) = map_samples([sample(role, name, value)], MAPS)
    assert rec.error is not None and rec.error.startswith(f"{reason}: ")
    assert MACHINE in rec.error and f"ns=2;s={name}" in rec.error
    assert MACHINE in rec.source
    assert json.loads(rec.payload)["machine"] == MACHINE  # what the server sent is kept


def test_bad_status_is_a_dead_letter() -> None:
    (rec,) = map_samples(
        [sample("counter", "total", None, status="BadSensorFailure", bad=True)], MAPS
    )
    assert rec.error is not None and rec.error.startswith("bad_status: ")
    assert "BadSensorFailure" in rec.error


def test_event_time_source_then_server_then_arrival() -> None:
    s = sample("counter", "total", 1)
    assert event_time(s) == T0
    assert event_time(sample("counter", "total", 1, source_ts=None)) == T0 + timedelta(seconds=1)
    no_time = sample("counter", "total", 1, source_ts=None, server_ts=None)
    assert event_time(no_time) == T0 + timedelta(seconds=2)
    # OPC UA's "no time" (1601) counts as absent.
    old = sample("counter", "total", 1, source_ts=datetime(1601, 1, 1, tzinfo=UTC))
    assert event_time(old) == T0 + timedelta(seconds=1)
    # The first value on a connection, older than the connection: dated at arrival.
    snap = sample("state", "state", 1, snapshot_of=T0 + timedelta(milliseconds=500))
    assert event_time(snap) == T0 + timedelta(seconds=2)
    # ... but a value that changed after the connection was made keeps its own time.
    fresh = sample("state", "state", 1, snapshot_of=T0 - timedelta(seconds=1))
    assert event_time(fresh) == T0


def test_offline_marker_and_its_reason() -> None:
    off = sample("offline", "offline", None)
    (rec,) = map_samples([off], MAPS)
    assert json.loads(rec.payload) == {
        "type": "state",
        "machine": MACHINE,
        "ts": (T0 + timedelta(seconds=2)).isoformat(),
        "state": "offline",
        "reason": "connection_lost",  # built in: valid with any reason tree
    }


# -- configuration ---------------------------------------------------------------------------


def test_source_config_is_checked() -> None:
    def src(**kw: Any) -> OpcUaSource:
        return OpcUaSource.model_validate({"endpoint": "opc.tcp://press:4840", **kw})

    ok = src(state={"node": "ns=2;s=X"})
    assert ok.sampling_interval_ms == 500 and ok.queue_size == 10
    with pytest.raises(ValidationError, match="password"):  # never in the plant file
        src(user="u", password="x", total={"node": "i=1"})
    with pytest.raises(ValidationError, match="certificate"):
        src(security={"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}, total={"node": "i=1"})
    with pytest.raises(ValidationError, match="policy None"):
        src(security={"mode": "Sign"}, total={"node": "i=1"})
    with pytest.raises(ValidationError, match="not an OPC UA node id"):
        src(total={"node": "Press.Total"})
    with pytest.raises(ValidationError, match="either 'node'"):
        src(total={"node": "i=1", "path": "2:A/2:B"})
    with pytest.raises(ValidationError, match="process value name"):
        src(process_values={"Cycle Time": {"node": "i=1"}})
    with pytest.raises(ValidationError, match="at least one node"):
        src()
    with pytest.raises(ValidationError, match="lifetime_count"):
        src(total={"node": "i=1"}, keep_alive_count=30, lifetime_count=60)


def test_unknown_mapping_and_unset_password_name_the_machine() -> None:
    src = {"endpoint": "opc.tcp://h:4840", "state": {"node": "ns=2;s=X", "mapping": "nope"}}
    plant = plant_with({MACHINE: src})
    with pytest.raises(ValueError, match=f"machine '{MACHINE}'.*'nope'"):
        state_table(plant, plant.machines[MACHINE])
    # A plant table of the same name replaces the built-in one; the machine's own
    # state_mapping is the default.
    plant = plant_with({"IM-01": {"endpoint": "opc.tcp://h:4840", "state": {"node": "i=1"}}})
    assert state_table(plant, plant.machines["IM-01"]) == plant.state_mappings["euromap77"]
    plant = plant_with(
        {
            MACHINE: {
                "endpoint": "opc.tcp://h:4840",
                "user": "u",
                "password_env": "NOT_SET_X",
                "state": {"node": "i=1"},
            }
        }
    )
    with pytest.raises(ValueError, match=f"machine '{MACHINE}'.*NOT_SET_X"):
        OpcUaCollector(plant, "postgresql://unused", env={})


# -- against a real server -------------------------------------------------------------------


def test_values_flow_with_source_timestamps(
    server: MachineServer, db_url: str, collector_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    src = source_for(server)
    src["process_values"]["operator"] = {"node": f"ns=2;s={MACHINE}.Operator"}  # a String
    src["process_values"]["ghost"] = {"node": f"ns=2;s={MACHINE}.NoSuchNode"}
    plant = plant_with({MACHINE: src})
    collector_factory(plant, db_url)
    # The snapshot on connecting: the current state, counters and process values.
    wait_until(lambda: len(events(db_url, type="state")) == 1, what="the state snapshot")
    wait_until(lambda: len(events(db_url, type="counter")) == 2, what="counter snapshots")
    assert events(db_url, type="state")[0]["state"] == "running"  # MachineMode 1 AUTOMATIC

    changed_at = datetime.now(UTC).replace(microsecond=123000) - timedelta(seconds=1)
    server.set(MACHINE, "MachineMode", 4, source_ts=changed_at)  # SETUP
    wait_until(lambda: len(events(db_url, type="state")) == 2, what="the state change")
    change = events(db_url, type="state")[1]
    assert change["state"] == "setup"
    assert datetime.fromisoformat(change["ts"]) == changed_at  # the machine's time, exactly

    for n in (1, 2, 3):
        server.set(MACHINE, "TotalParts", n)
    server.set(MACHINE, "ScrapParts", 1)
    # Each node's changes come in its own notifications, so the scrap may land a
    # publish interval after the last total: wait for both.
    wait_until(
        lambda: [e["value"] for e in events(db_url, type="counter", name="total")] == [0, 1, 2, 3],
        what="every counter increment",
    )
    wait_until(
        lambda: [e["value"] for e in events(db_url, type="counter", name="scrap")] == [0, 1],
        what="the scrap increment",
    )

    server.set(MACHINE, "CycleTime", 29.5)
    server.set(MACHINE, "Cushion", 3.9)
    wait_until(
        lambda: any(
            e["values"].get("cycle_time_s") == 29.5 for e in events(db_url, type="process_value")
        ),
        what="the new cycle time",
    )
    wait_until(
        lambda: any(
            e["values"].get("cushion_mm") == 3.9 for e in events(db_url, type="process_value")
        ),
        what="the new cushion",
    )
    for e in events(db_url):
        parse_event(json.dumps(e))

    # The String node is a dead letter naming machine and node, read again on change.
    server.set(MACHINE, "Operator", "op9")
    wait_until(
        lambda: len([r for r in rows(db_url) if r[2] and "Operator" in r[2]]) == 2,
        what="dead letters of the string node",
    )
    dead = [r for r in rows(db_url) if r[2]]
    assert all(r[2] and r[2].startswith("invalid_field: machine IM-03") for r in dead), dead
    # The dataflow takes every other row as it takes MQTT's.
    assert {reason for reason, _ in verdicts(db_url, plant)} == {"invalid_field"}
    # The node that does not exist: one error line naming machine and node; the rest flows.
    ghost = [r for r in caplog.records if "NoSuchNode" in r.getMessage()]
    assert len(ghost) == 1 and ghost[0].levelno == logging.ERROR
    assert MACHINE in ghost[0].getMessage() and "BadNodeIdUnknown" in ghost[0].getMessage()


def test_server_restart_is_an_offline_gap_then_data_flows_again(
    server: MachineServer, db_url: str, collector_factory: Any
) -> None:
    plant = plant_with({MACHINE: source_for(server)}, reasons=False)
    c = collector_factory(plant, db_url)
    wait_until(lambda: len(events(db_url, type="state")) == 1, what="the state snapshot")
    server.set(MACHINE, "TotalParts", 5)
    wait_until(lambda: len(events(db_url, type="counter", name="total")) == 2, what="count 5")

    stopped_at = datetime.now(UTC)
    server.stop()
    wait_until(lambda: len(events(db_url, state="offline")) == 1, what="offline recorded")
    (offline,) = events(db_url, state="offline")
    assert offline["reason"] == "connection_lost"
    detected = datetime.fromisoformat(offline["ts"])
    assert stopped_at <= detected < stopped_at + timedelta(seconds=5)
    assert not c.endpoints[0].status.connected
    time.sleep(2.5)  # a few failed reconnects: still one offline event for the gap

    server.start()
    wait_until(
        lambda: len(events(db_url, type="state")) == 3, what="the state after restart", timeout=30
    )
    states = events(db_url, type="state")
    assert [s["state"] for s in states] == ["running", "offline", "running"]
    back = datetime.fromisoformat(states[2]["ts"])
    assert back - detected >= timedelta(seconds=2)  # the gap is visible as offline time
    # Subscriptions are new: changes flow again.
    server.set(MACHINE, "TotalParts", 6)
    wait_until(
        lambda: [e["value"] for e in events(db_url, type="counter", name="total")][-1] == 6,
        what="count 6 after the restart",
    )
    assert len(events(db_url, state="offline")) == 1
    assert c.endpoints[0].status.connected
    assert verdicts(db_url, plant) == []  # offline with its reason included


def test_wrong_password_is_one_error_line_naming_the_machine(
    server: MachineServer, db_url: str, collector_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    plant = plant_with({MACHINE: source_for(server)})
    c = collector_factory(plant, db_url, env={"TEST_OPCUA_PASSWORD": "wrong"})
    wait_until(lambda: c.endpoints[0].status.errors >= 3, what="three attempts", timeout=30)
    lines = ours(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    text = lines[0].getMessage()
    assert MACHINE in text and "refused user 'mes'" in text and "TEST_OPCUA_PASSWORD" in text
    assert "wrong" not in text  # never the password
    assert not events(db_url, type="counter")
    # The machine is recorded offline once, not once per attempt.
    assert len(events(db_url, state="offline")) == 1


def test_wrong_endpoint_is_one_error_line_naming_the_machine(
    db_url: str, collector_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    url = f"opc.tcp://127.0.0.1:{free_port()}/"
    plant = plant_with({MACHINE: {"endpoint": url, "total": {"node": "ns=2;s=X"}}})
    c = collector_factory(plant, db_url)
    wait_until(lambda: c.endpoints[0].status.errors >= 2, what="two attempts", timeout=30)
    lines = [r.getMessage() for r in ours(caplog)]
    assert len(lines) == 1 and MACHINE in lines[0] and "connection refused" in lines[0]


def test_basic256sha256_sign_and_encrypt(
    tmp_path: Path, db_url: str, collector_factory: Any
) -> None:
    server_cert, server_key = tmp_path / "server.der", tmp_path / "server.pem"
    client_cert, client_key = tmp_path / "client.der", tmp_path / "client.pem"
    make_certificate(server_cert, server_key, "urn:freeopcua:python:server")
    make_certificate(client_cert, client_key, "urn:mesflow:opcua-collector")
    srv = MachineServer(
        free_port(), [MACHINE], user=("mes", "s3cret"), certificate=(server_cert, server_key)
    )
    srv.start()
    try:
        security = {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": str(client_cert),
            "private_key": str(client_key),
            "server_certificate": str(server_cert),
        }
        c = collector_factory(plant_with({MACHINE: source_for(srv, security=security)}), db_url)
        wait_until(lambda: len(events(db_url, type="state")) == 1, what="the snapshot")
        srv.set(MACHINE, "TotalParts", 42)
        wait_until(
            lambda: any(e["value"] == 42 for e in events(db_url, type="counter")),
            what="a counter over the encrypted channel",
        )
        client = c.endpoints[0]
        assert client.status.connected and client.status.errors == 0
    finally:
        srv.stop()


def test_database_down_loses_nothing(
    server: MachineServer, own_pg: OwnPostgres, collector_factory: Any
) -> None:
    """The callback never waits for PostgreSQL: values received while it is down wait in
    the collector's queue and are stored when it is back."""
    url = own_pg.url
    c = collector_factory(plant_with({MACHINE: source_for(server)}), url)
    wait_until(lambda: len(events(url, type="counter", name="total")) == 1, what="snapshot")
    own_pg.crash()
    try:
        for n in range(1, 41):
            server.set(MACHINE, "TotalParts", n)
        wait_until(
            lambda: c.endpoints[0].status.received >= 45,
            what="values received while the database is down",
        )
    finally:
        own_pg.start()
    wait_until(
        lambda: [e["value"] for e in events(url, type="counter", name="total")] == list(range(41)),
        what="every count stored after the database is back",
        timeout=40,
    )


def test_machine_tool_and_press_share_one_connection(db_url: str, collector_factory: Any) -> None:
    """An OPC 40001 machine tool (LocalizedText CurrentState, browse paths) next to a press
    on one server: one client for both, each machine's events under its own id."""
    srv = MachineServer(free_port(), [MACHINE, "CNC-01"])
    srv.start()
    try:
        tool = {
            "endpoint": srv.url,
            "namespaces": {"t": "urn:mesflow:test:imm"},
            "state": {
                "path": "t:CNC-01/t:MachineryItemState/t:CurrentState",
                "mapping": "opc40001_machinery_item_state",
            },
            "total": {"path": "t:CNC-01/t:Production/t:PartsProduced"},
            "process_values": {"spindle_load_pct": {"path": "t:CNC-01/t:Monitoring/t:SpindleLoad"}},
            "publishing_interval_ms": 50,
            "sampling_interval_ms": 50,
        }
        c = collector_factory(
            plant_with({MACHINE: source_for(srv), "CNC-01": tool}, reasons=False), db_url
        )
        assert len(c.endpoints) == 1 and c.endpoints[0].status.machines == [MACHINE, "CNC-01"]
        wait_until(lambda: len(events(db_url, type="state")) == 2, what="both snapshots")
        srv.set("CNC-01", "CurrentState", "OutOfService")
        srv.set("CNC-01", "PartsProduced", 7)
        srv.set("CNC-01", "SpindleLoad", 81.5)
        wait_until(
            lambda: (
                [e["state"] for e in events(db_url, machine="CNC-01", type="state")]
                == ["running", "down"]
            ),
            what="the tool's state change",
        )
        wait_until(
            lambda: any(e["value"] == 7 for e in events(db_url, machine="CNC-01", type="counter")),
            what="the tool's part count",
        )
        wait_until(
            lambda: any(
                e["values"] == {"spindle_load_pct": 81.5}
                for e in events(db_url, machine="CNC-01", type="process_value")
            ),
            what="the spindle load",
        )
        srv.stop()
        wait_until(lambda: len(events(db_url, state="offline")) == 2, what="both offline")
        assert {e["machine"] for e in events(db_url, state="offline")} == {MACHINE, "CNC-01"}
    finally:
        srv.stop()


def test_mesflow_run_opcua_refuses_a_missing_password_naming_the_machine(
    db_url: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["lines"][0]["machines"][2]["opcua"] = {
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "user": "mes",
        "password_env": "MESFLOW_OPCUA_IM03_PASSWORD",
        "state": {"node": "ns=2;s=IM-03.MachineMode"},
    }
    plant = tmp_path / "plant.yaml"
    plant.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "MESFLOW_DATABASE_URL": db_url, "MESFLOW_PLANT_CONFIG": str(plant)}
    env.pop("MESFLOW_OPCUA_IM03_PASSWORD", None)
    done = subprocess.run(
        [sys.executable, "-m", "mesflow.cli", "run", "opcua"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "IM-03" in done.stderr and "MESFLOW_OPCUA_IM03_PASSWORD" in done.stderr


def test_mesflow_run_opcua_collects_and_stops_on_sigterm(
    server: MachineServer, db_url: str, tmp_path: Path
) -> None:
    import os

    from tests.helpers import Mesflow

    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["lines"][0]["machines"][2]["opcua"] = source_for(server)
    plant = tmp_path / "plant.yaml"
    plant.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": db_url,
        "MESFLOW_PLANT_CONFIG": str(plant),
        "TEST_OPCUA_PASSWORD": "s3cret",
        "PYTHONUNBUFFERED": "1",
    }
    proc = Mesflow("run", "opcua", env=env, log=tmp_path / "opcua.log")
    try:
        wait_until(lambda: len(events(db_url, type="counter")) == 2, what="the snapshot")
        server.set(MACHINE, "TotalParts", 3)
        wait_until(
            lambda: any(e["value"] == 3 for e in events(db_url, type="counter")), what="count 3"
        )
    finally:
        code = proc.terminate()
    assert code == 0, proc.output()
    out = proc.output()
    assert f"opcua: reading {MACHINE} from {server.url}" in out
    assert "opcua: stopped" in out


def test_wrong_certificates_name_the_machine(
    tmp_path: Path, db_url: str, collector_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    for name, uri in (("server", "urn:s"), ("client", "urn:c"), ("other", "urn:o")):
        make_certificate(tmp_path / f"{name}.der", tmp_path / f"{name}.pem", uri)
    srv = MachineServer(
        free_port(), [MACHINE], certificate=(tmp_path / "server.der", tmp_path / "server.pem")
    )
    srv.start()
    try:

        def plant(**files: str) -> PlantConfig:
            security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", **files}
            return plant_with({MACHINE: source_for(srv, security=security)})

        mine = {"certificate": str(tmp_path / "client.der")}
        # Found at start: a key that is not the certificate's, a file that is not there.
        with pytest.raises(ValueError, match=f"machine '{MACHINE}'.*does not belong"):
            OpcUaCollector(plant(**mine, private_key=str(tmp_path / "other.pem")), db_url)
        with pytest.raises(ValueError, match=f"machine '{MACHINE}'.*nope.der"):
            OpcUaCollector(
                plant(
                    certificate=str(tmp_path / "nope.der"), private_key=str(tmp_path / "client.pem")
                ),
                db_url,
            )
        # Found by connecting: a server certificate that is not this server's.
        wrong = plant(
            **mine,
            private_key=str(tmp_path / "client.pem"),
            server_certificate=str(tmp_path / "other.der"),
        )
        c = collector_factory(wrong, db_url)
        # The error count goes up a moment before the line is logged: wait for the line.
        wait_until(lambda: ours(caplog), what="a failed attempt's error line", timeout=40)
        assert c.endpoints[0].status.errors >= 1
        line = ours(caplog)[0].getMessage()
        assert MACHINE in line and "server_certificate" in line
        assert not c.endpoints[0].status.connected
    finally:
        srv.stop()


def test_a_full_queue_drops_the_newest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The callback never waits: past max_queued values (the database down for long),
    newer values are counted as dropped, with one error line a minute."""
    caplog.set_level(logging.INFO, logger="collectors.opcua")
    src = {"endpoint": "opc.tcp://127.0.0.1:4840", "total": {"node": "ns=2;s=X"}}
    c = OpcUaCollector(plant_with({MACHINE: src}), "postgresql://unused", max_queued=3)
    started = time.monotonic()
    for n in range(10):
        c._put(sample("counter", "total", n))
    assert time.monotonic() - started < 0.5
    assert c._inbox.qsize() == 3 and c.dropped == 7
    (line,) = [r.getMessage() for r in ours(caplog)]
    assert "dropped" in line


class FreezingProxy:
    """A TCP proxy that can stop forwarding while keeping its sockets open: a pulled cable
    or a dead switch, which no socket error reports (unlike a stopped server)."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target = target_port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set():  # hold the bytes: nothing goes through, nothing closes
                time.sleep(0.05)
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()


def test_a_silent_network_is_detected_as_a_lost_connection(
    server: MachineServer, db_url: str, collector_factory: Any
) -> None:
    proxy = FreezingProxy(server.port)
    try:
        src = source_for(server, endpoint=f"opc.tcp://127.0.0.1:{proxy.port}/mesflow/")
        c = collector_factory(plant_with({MACHINE: src}, reasons=False), db_url)
        wait_until(lambda: len(events(db_url, type="state")) == 1, what="the state snapshot")
        frozen_at = datetime.now(UTC)
        proxy.frozen.set()
        wait_until(lambda: len(events(db_url, state="offline")) == 1, what="offline", timeout=30)
        detected = datetime.fromisoformat(events(db_url, state="offline")[0]["ts"])
        assert detected - frozen_at < timedelta(seconds=10)
        proxy.frozen.clear()
        wait_until(
            lambda: len(events(db_url, type="state")) == 3, what="state after thaw", timeout=60
        )
        server.set(MACHINE, "TotalParts", 9)
        wait_until(
            lambda: any(e["value"] == 9 for e in events(db_url, type="counter")),
            what="data after the network is back",
        )
        assert c.endpoints[0].status.connected
    finally:
        proxy.close()
