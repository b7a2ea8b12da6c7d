"""A closed broker (password file + the shipped ACL), TLS, and no secret in a log; against a
real mosquitto and the real collector."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.mqtt_conn import TlsFiles, configure_client, parse_mqtt_url, redact_url
from collectors.mqtt_json import MqttJsonCollector
from collectors.topics import machine_topic
from mesflow.plant import PlantConfig
from mesflow.services import Broker, BrokerTls, start_broker
from tests.conftest import require
from tests.helpers import wait_until

# Passwords with characters that must be percent-encoded in a URL.
USERS = {
    "mesflow-collector": "c0ll:ector/p@ss word",
    "mesflow-gateway": "gw-secret-91",
    "IM-01": "im01-secret",
    "IM-02": "im02-secret",
}


def _have_mosquitto() -> None:
    require(
        bool(
            subprocess.run(["which", "mosquitto"], capture_output=True).returncode == 0
            or os.path.exists("/usr/sbin/mosquitto")
        ),
        "mosquitto (apt-get install mosquitto)",
    )


@pytest.fixture
def closed_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with the shipped ACL (config/mosquitto/acl) and a password file."""
    _have_mosquitto()
    b = start_broker(tmp_path / "closed", persistence=False, prefer="mosquitto", users=USERS)
    try:
        yield b
    finally:
        b.stop()


def _certs(where: Path) -> dict[str, Path]:
    """A test CA, a broker certificate for 127.0.0.1 and a client certificate (openssl)."""
    where.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=mesflow test CA")  # fmt: skip
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("broker", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            *(["-extfile", "san.ext"] if name == "broker" else []))  # fmt: skip
    # A second CA that signed nothing of ours: a broker must not be trusted through it.
    run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "2",
        "-subj", "/CN=another CA")  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in where.iterdir()}


def _client(url: str, tls: TlsFiles | None = None, client_id: str = "") -> tuple[mqtt.Client, str]:
    """Connect like a gateway would; returns the client and the CONNACK's reason."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    configure_client(c, parse_mqtt_url(url), tls or TlsFiles())
    answered = threading.Event()
    reason: list[str] = []

    def on_connect(cl: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        reason.append(str(rc))
        answered.set()

    c.on_connect = on_connect
    c.connect(parse_mqtt_url(url).host, parse_mqtt_url(url).port)
    c.loop_start()
    answered.wait(10)
    return c, reason[0] if reason else "no answer"


def _publish(broker: Broker, user: str, topic: str) -> None:
    """Publish one event as `user` and wait for the PUBACK (the broker is done with it).

    One connection each: mosquitto 2.0 acknowledges a refused publish, then drops the
    connection."""
    c, reason = _client(broker.url_for(user))
    assert reason == "Success"
    acked = threading.Event()
    c.on_publish = lambda cl, u, mid, rc, props: acked.set()
    c.publish(topic, json.dumps({"ts": "2026-11-20T08:00:00+08:00", "good": 1}), qos=1)
    assert acked.wait(5), "no PUBACK"
    c.disconnect()
    c.loop_stop()


def _topic(plant: PlantConfig, machine: str, kind: str = "count") -> str:
    line = plant.line_of_machine[machine]
    return machine_topic(plant.plant.site, line.area, line.id, machine, kind)


def _machines_in_log(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT payload FROM ingest_log ORDER BY seq").fetchall()
    return [json.loads(bytes(r[0]))["machine"] for r in rows]


def test_anonymous_and_wrong_password_refused(closed_broker: Broker) -> None:
    for url in (
        closed_broker.url,
        closed_broker.url.replace("://", "://IM-01:wrong@"),
        closed_broker.url.replace("://", "://nobody:nothing@"),
    ):
        c, reason = _client(url)
        c.loop_stop()
        assert reason == "Not authorized", url
    c, reason = _client(closed_broker.url_for("IM-01"))
    c.disconnect()
    c.loop_stop()
    assert reason == "Success"


def test_machine_publishes_only_under_its_own_topics(
    closed_broker: Broker, db_url: str, plant: PlantConfig
) -> None:
    collector = MqttJsonCollector(
        plant, closed_broker.url_for("mesflow-collector"), db_url, client_id="sec-collector"
    )
    collector.start()
    # A machine may not read the plant's data either.
    spy, _ = _client(closed_broker.url_for("IM-02"))
    seen_by_spy: list[str] = []
    spy.on_message = lambda c, u, m: seen_by_spy.append(m.topic)
    spy.subscribe("mesflow/v1/#", qos=1)

    try:
        assert collector.connected.wait(10)
        # Refused by the ACL: IM-01 writing as IM-02, as a machine of another line, and a
        # topic that only looks like its own.
        _publish(closed_broker, "IM-01", _topic(plant, "IM-02"))
        _publish(closed_broker, "IM-01", _topic(plant, "CNC-01"))
        _publish(closed_broker, "IM-01", "mesflow/v1/x/y/z/IM-01/../IM-02/count")
        _publish(closed_broker, "IM-01", _topic(plant, "IM-01").replace("/count", "/count/x"))
        # Allowed: its own topic, and a plant-wide gateway for any machine.
        _publish(closed_broker, "IM-01", _topic(plant, "IM-01"))
        _publish(closed_broker, "mesflow-gateway", _topic(plant, "IM-03"))
        wait_until(lambda: collector.stats.received >= 2, what="the allowed messages")
        time.sleep(0.5)  # anything else the broker let through would have arrived by now
    finally:
        spy.disconnect()
        spy.loop_stop()
        collector.stop()
    assert collector.stats.received == 2
    assert sorted(_machines_in_log(db_url)) == ["IM-01", "IM-03"]
    assert seen_by_spy == []


def test_collector_credentials_cannot_publish(closed_broker: Broker, plant: PlantConfig) -> None:
    """Leaked collector credentials cannot inject events: the collector's user only reads."""
    got: list[str] = []
    reader, _ = _client(closed_broker.url_for("mesflow-collector"), client_id="reader")
    reader.on_message = lambda c, u, m: got.append(m.topic)
    reader.subscribe("mesflow/v1/#", qos=1)
    time.sleep(0.3)
    _publish(closed_broker, "mesflow-collector", _topic(plant, "IM-01"))
    _publish(closed_broker, "mesflow-gateway", _topic(plant, "IM-02"))
    wait_until(lambda: len(got) >= 1, what="the gateway's message")
    time.sleep(0.3)
    reader.disconnect()
    reader.loop_stop()
    assert got == [_topic(plant, "IM-02")]


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    return _certs(tmp_path / "certs")


def test_collector_over_tls(
    tmp_path: Path,
    certs: dict[str, Path],
    db_url: str,
    plant: PlantConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """mqtts:// with the CA file: stored; a CA that did not sign the broker: never connects."""
    _have_mosquitto()
    caplog.set_level(logging.WARNING, logger="collectors.mqtt_json")
    broker = start_broker(
        tmp_path / "tls",
        persistence=False,
        prefer="mosquitto",
        users=USERS,
        tls=BrokerTls(certs["broker_crt"], certs["broker_key"]),
    )
    trusting = TlsFiles(ca_file=certs["ca_crt"])
    collector = MqttJsonCollector(
        plant, broker.url_for("mesflow-collector"), db_url, client_id="tls-collector", tls=trusting
    )
    distrusting = MqttJsonCollector(
        plant,
        broker.url_for("mesflow-collector"),
        db_url,
        client_id="tls-collector-2",
        tls=TlsFiles(ca_file=certs["other_crt"]),
    )
    plain = MqttJsonCollector(
        plant,
        broker.url_for("mesflow-collector").replace("mqtts://", "mqtt://"),
        db_url,
        client_id="tls-collector-3",
    )
    try:
        assert broker.url.startswith("mqtts://")
        for c in (collector, distrusting, plain):
            c.start()
        assert collector.connected.wait(10)
        gateway, reason = _client(broker.url_for("mesflow-gateway"), trusting)
        assert reason == "Success"
        gateway.publish(
            _topic(plant, "IM-01"), json.dumps({"ts": "2026-11-20T08:00:00+08:00", "good": 1}), 1
        ).wait_for_publish(5)
        wait_until(lambda: collector.stats.received == 1, what="the message over TLS")
        gateway.disconnect()
        gateway.loop_stop()
        assert not distrusting.connected.is_set()
        assert not plain.connected.is_set()
        # The refused certificate is logged with its cause, the password is not.
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        assert USERS["mesflow-collector"] not in caplog.text
    finally:
        for c in (collector, distrusting, plain):
            c.stop()
        broker.stop()
    assert _machines_in_log(db_url) == ["IM-01"]


def test_client_certificate_required(
    tmp_path: Path, certs: dict[str, Path], db_url: str, plant: PlantConfig
) -> None:
    _have_mosquitto()
    broker = start_broker(
        tmp_path / "mtls",
        persistence=False,
        prefer="mosquitto",
        users=USERS,
        tls=BrokerTls(
            certs["broker_crt"],
            certs["broker_key"],
            ca_file=certs["ca_crt"],
            require_certificate=True,
        ),
    )
    url = broker.url_for("mesflow-collector")
    with_cert = MqttJsonCollector(
        plant,
        url,
        db_url,
        client_id="mtls-1",
        tls=TlsFiles(certs["ca_crt"], certs["client_crt"], certs["client_key"]),
    )
    without = MqttJsonCollector(
        plant, url, db_url, client_id="mtls-2", tls=TlsFiles(certs["ca_crt"])
    )
    try:
        with_cert.start()
        without.start()
        assert with_cert.connected.wait(10)
        time.sleep(1.5)
        assert not without.connected.is_set()
    finally:
        with_cert.stop()
        without.stop()
        broker.stop()


def test_redact_url() -> None:
    assert redact_url("mqtt://u:s3cr%40t@h:1883") == "mqtt://u:***@h:1883"
    assert redact_url("mqtts://h") == "mqtts://h"
    ep = parse_mqtt_url("mqtts://mesflow-collector:p%40ss%3Aw%2Fd@broker")
    assert (ep.host, ep.port, ep.tls, ep.password) == ("broker", 8883, True, "p@ss:w/d")
    assert "p@ss" not in repr(ep)
    with pytest.raises(ValueError, match=r"\*\*\*") as err:
        parse_mqtt_url("http://u:topsecret@h")
    assert "topsecret" not in str(err.value)


def test_no_secret_in_the_collectors_output(
    closed_broker: Broker, db_url: str, tmp_path: Path
) -> None:
    """`mesflow run collector-mqtt` with a refused and with an accepted password: its
    output names the broker but never shows the password."""
    for password, expect in (("not-the-password-4711", "refused"), (None, "subscribing")):
        url = closed_broker.url_for("mesflow-collector")
        if password is not None:
            url = closed_broker.url.replace("://", f"://mesflow-collector:{password}@")
        secret = password or USERS["mesflow-collector"]
        env = {
            **os.environ,
            "MESFLOW_DATABASE_URL": db_url,
            "MESFLOW_MQTT_URL": url,
            "MESFLOW_DATA_DIR": str(tmp_path / "var"),
            "MESFLOW_MQTT_CLIENT_ID": "secret-check",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesflow.cli", "run", "collector-mqtt"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        time.sleep(4)  # a connection attempt, its refusal, a retry
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
        assert expect in out, out
        assert "mesflow-collector:***@127.0.0.1" in out, out
        for shown in (secret, secret.replace(" ", "%20"), "c0ll", "ector/p"):
            assert shown not in out, out


def test_simulator_publishes_to_a_closed_tls_broker(
    tmp_path: Path,
    certs: dict[str, Path],
    db_url: str,
    plant: PlantConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's path with a closed broker: the simulator as the gateway user over TLS
    (CA from MESFLOW_MQTT_CA_FILE), the collector as the collector user; all stored."""
    from datetime import datetime, timedelta

    from collectors.simulator import generate, run_simulator

    _have_mosquitto()
    broker = start_broker(
        tmp_path / "sim-tls",
        persistence=False,
        prefer="mosquitto",
        users=USERS,
        tls=BrokerTls(certs["broker_crt"], certs["broker_key"]),
    )
    monkeypatch.setenv("MESFLOW_MQTT_CA_FILE", str(certs["ca_crt"]))
    collector = MqttJsonCollector(
        plant,
        broker.url_for("mesflow-collector"),
        db_url,
        client_id="sim-tls-collector",
        tls=TlsFiles(ca_file=certs["ca_crt"]),
    )
    start = datetime.now(plant.tz).replace(microsecond=0) - timedelta(hours=1)
    expected = sum(  # work_order events have no MQTT topic (they go to the ingest log)
        ev["type"] != "work_order"
        for ev in generate(plant, seed=5, start=start, end=start + timedelta(seconds=300))
    )
    try:
        collector.start()
        assert collector.connected.wait(10)
        run_simulator(
            plant, broker.url_for("mesflow-gateway"), seed=5, speed=3600, start=start,
            duration_s=300,
        )  # fmt: skip
        wait_until(lambda: collector.stats.received >= expected, what="the simulated plant")
    finally:
        collector.stop()
        broker.stop()
    assert expected > 0
    assert collector.stats.received == expected
    assert collector.stats.with_errors == 0
