"""`mesflow demo`: the whole pipeline on one machine, on embedded defaults.

Starts (or reuses) the database and the broker, applies migrations, then runs each
component as its own process, exactly as production runs them (`mesflow run ...`):
a crash of one shows up here instead of taking the others down. Ctrl-C stops them in
data-flow order (simulator first, dashboard last) so nothing in flight is lost; the
next start resumes from the same database, broker session and Bytewax snapshots.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from mesflow.db import migrate, sync_plant
from mesflow.plant import PlantConfig
from mesflow.services import Broker, EmbeddedPostgres, free_port, start_broker, wait_for_port
from mesflow.settings import Settings
from mesflow.users import demo_logins


@dataclass
class Component:
    name: str
    args: list[str]
    ready_marker: str | None = None  # a line the component prints once it is up
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)


_PRINT = threading.Lock()  # component output and demo lines must not interleave


def _say(msg: str) -> None:
    with _PRINT:
        print(f"[demo] {msg}", flush=True)


def _pump(comp: Component, stream: IO[bytes], logfile: Path) -> None:
    """Copy a component's output to its log file and the console, and spot readiness."""
    with logfile.open("ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").rstrip()
            if comp.ready_marker and comp.ready_marker in line:
                comp.ready.set()
            if (
                "WARNING" in line
                or "ERROR" in line
                or "Traceback" in line
                or line.startswith(comp.name)
            ):
                with _PRINT:
                    print(f"  {comp.name:>15} | {line}", flush=True)


def run_demo(settings: Settings, plant: PlantConfig, *, speed: float, seed: int, port: int) -> int:
    data = settings.data_dir
    (data / "logs").mkdir(parents=True, exist_ok=True)
    _say(f"plant '{plant.plant.name.en}' ({len(plant.machines)} machines, {plant.plant.timezone})")
    _say(f"state is kept in {data}; logs in {data / 'logs'}")

    pg: EmbeddedPostgres | None = None
    broker: Broker | None = None
    components: list[Component] = []
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if settings.database_url:
            db_url = settings.database_url
            _say("database: using MESFLOW_DATABASE_URL")
        else:
            pg = EmbeddedPostgres(data / "pgdata")
            db_url = pg.url
            _say(f"database: embedded PostgreSQL up (data in {data / 'pgdata'})")
        applied = migrate(db_url, log=lambda _m: None)
        sync_plant(db_url, plant)
        _say(f"database: schema up to date ({len(applied)} migration(s) applied now)")

        if settings.mqtt_url:
            mqtt_url = settings.mqtt_url
            _say(f"broker: using {mqtt_url}")
        else:
            broker = start_broker(data / "broker", free_port(1883))
            mqtt_url = broker.url
            _say(f"broker: {broker.kind} listening on {broker.url}")

        http_port = free_port(port)
        api_port = free_port(settings.api_port)
        from collectors.simulator.crm import demo_env

        crm_env = demo_env(api_port, free_port(api_port + 1))
        env = {
            **crm_env,
            **os.environ,
            "MESFLOW_DATABASE_URL": db_url,
            "MESFLOW_MQTT_URL": mqtt_url,
            "MESFLOW_HTTP_PORT": str(http_port),
            "MESFLOW_PLANT_CONFIG": str(settings.plant_config),
            "MESFLOW_DATA_DIR": str(data),
            "PYTHONUNBUFFERED": "1",
        }
        # Started downstream first, so nothing an upstream component sends is waiting on
        # a component that is not up yet; stopped in the reverse order.
        components = [
            Component("collector-mqtt", ["run", "collector-mqtt"], "collector-mqtt: subscribing"),
            Component("dataflow", ["run", "dataflow"], "dataflow: following"),
            Component("api", ["run", "api"]),
            Component("notify", ["run", "notify"], "notify: delivering"),
            Component("dashboard", ["run", "dashboard"]),
            Component("simulator", ["simulate", "--speed", str(speed), "--seed", str(seed)]),
            Component("crm", ["simulate-crm", "--seed", str(seed)]),
        ]
        ports = {"dashboard": http_port, "api": api_port}
        for comp in components:
            _start(comp, env, data / "logs")
            if comp.name in ports:
                wait_for_port("127.0.0.1", ports[comp.name], timeout=60)
                comp.ready.set()
            elif comp.ready_marker:
                comp.ready.wait(60)
            _say(f"{comp.name}: up")
        _say(f"order intake API: http://127.0.0.1:{api_port}/docs (CRM stand-in posting orders)")
        _say(f"dashboard: http://127.0.0.1:{http_port}   (Ctrl-C stops everything)")
        logins = demo_logins(db_url, data)  # kept in var/demo-logins.json across restarts
        _say(f"dashboard sign-in: user admin, password {logins.password}")
        _say(f"wall-screen URL (viewer token): http://127.0.0.1:{http_port}/andon?token={logins.token}")  # fmt: skip
        _say("more users: mesflow user add NAME --role viewer (or operator, manager, admin)")

        while not stopping.wait(1.0):
            for comp in components:
                assert comp.process is not None
                code = comp.process.poll()
                if code is not None:
                    _say(
                        f"{comp.name} exited with code {code}; see {data / 'logs'}/{comp.name}.log"
                    )
                    return 1
        return 0
    finally:
        _say("stopping ...")
        # Reverse start order: the plant and the CRM stop first, the collector last.
        for comp in reversed(components):
            _stop(comp)
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()
        _say("stopped; run `mesflow demo` again to resume")


def _start(comp: Component, env: dict[str, str], logs: Path) -> None:
    comp.process = subprocess.Popen(
        [sys.executable, "-m", "mesflow.cli", *comp.args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Own session: a terminal Ctrl-C reaches only the demo, which stops the
        # components one by one in order.
        start_new_session=True,
    )
    assert comp.process.stdout is not None
    threading.Thread(
        target=_pump, args=(comp, comp.process.stdout, logs / f"{comp.name}.log"), daemon=True
    ).start()


def _stop(comp: Component) -> None:
    proc = comp.process
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _say(f"{comp.name}: stopped")
    time.sleep(0.05)
