"""`mesflow demo`: the whole pipeline on one machine, on embedded defaults.

Starts (or reuses) the database and the broker, applies migrations, then runs each
component as its own process, exactly as production runs them (`mesflow run ...`):
a crash of one shows up here instead of taking the others down.

Ctrl-C reaches only the demo (every component, and the broker, runs in its own session),
which stops them in data-flow order: the producers (simulator, CRM stand-in) first, then
the collector (it stores and acknowledges what the broker still holds), the dataflow
(finishes and snapshots), notify, api and dashboard, and the broker and PostgreSQL last.
Nothing in flight is lost; the next start resumes from the same database, broker session
and Bytewax snapshots, on the same ports, with the same CRM and broker credentials (var/).

The demo's broker is closed like the shipped one (config/mosquitto/acl): no anonymous
clients; the components read as `mesflow-collector`, the simulator publishes as
`mesflow-gateway`. Without mosquitto it falls back to an open amqtt broker, and says so.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO

from collectors.mqtt_conn import redact_url as redact_mqtt_url
from collectors.simulator.crm import READY as CRM_READY
from mesflow.db import migrate, redact_url, sync_plant
from mesflow.demo_mail import DemoMailbox
from mesflow.plant import PlantConfig
from mesflow.resources import resource_dir
from mesflow.services import (
    Broker,
    EmbeddedPostgres,
    free_port,
    require_port,
    start_broker,
    wait_for_port,
)
from mesflow.settings import Settings
from mesflow.users import demo_logins


@dataclass
class Component:
    name: str
    args: list[str]
    ready_marker: str | None = None  # a line the component prints once it is up
    env: dict[str, str] = field(default_factory=dict)  # on top of the shared environment
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)


HISTORY = timedelta(days=7)  # well inside the plant's max_event_age_days (30 in the example)
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


def run_demo(
    settings: Settings,
    plant: PlantConfig,
    *,
    speed: float,
    seed: int,
    port: int,
    history_days: float = HISTORY.days,
) -> int:
    data = settings.data_dir
    (data / "logs").mkdir(parents=True, exist_ok=True)
    _say(f"plant '{plant.plant.name.en}' ({len(plant.machines)} machines, {plant.plant.timezone})")
    _say(f"state is kept in {data}; logs in {data / 'logs'}")

    pg: EmbeddedPostgres | None = None
    broker: Broker | None = None
    mailbox: DemoMailbox | None = None
    components: list[Component] = []
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        # Ports first: one that is taken is an error before anything starts. The dashboard
        # and the API keep the ports asked for (bookmarks, the CRM's URL); the broker and the
        # CRM stand-in's callback port are picked once and kept in var/demo-ports.json.
        http_port = require_port(port, what="the dashboard (mesflow demo --port N)")
        api_port = require_port(settings.api_port, what="the order intake API (MESFLOW_API_PORT)")
        wanted = {"crm_callback": api_port + 1}
        if not settings.mqtt_url:  # else the broker is someone else's, on its own port
            wanted["mqtt"] = 1883
        kept = _kept_ports(data, wanted)

        if settings.database_url:
            db_url = settings.database_url
            _say(f"database: using MESFLOW_DATABASE_URL ({redact_url(db_url)})")
        else:
            pg = EmbeddedPostgres(data / "pgdata")
            db_url = pg.url
            _say(f"database: embedded PostgreSQL up (data in {data / 'pgdata'})")
        applied = migrate(db_url, log=lambda _m: None)
        sync_plant(db_url, plant)
        _say(f"database: schema up to date ({len(applied)} migration(s) applied now)")
        if history_days > 0:
            backfill_history(plant, db_url, data, seed=seed, history=timedelta(days=history_days))
        # For `mesflow report`, psql and BI tools in another shell (a password is not shown).
        _say(f"database: export MESFLOW_DATABASE_URL='{redact_url(db_url)}'")

        if settings.mqtt_url:
            mqtt_url = settings.mqtt_url
            # Someone else's broker: the simulator publishes with its own URL if one is given
            # (as in docker-compose.yml), else with the same one.
            sim_mqtt_url = os.environ.get("MESFLOW_SIMULATOR_MQTT_URL") or mqtt_url
            for line in external_broker_lines(mqtt_url, sim_mqtt_url):
                _say(line)
        else:
            broker = _start_closed_broker(data, kept["mqtt"])
            mqtt_url, sim_mqtt_url = broker.url, broker.url
            if broker.users:
                mqtt_url = broker.url_for(COLLECTOR_USER)
                sim_mqtt_url = broker.url_for(GATEWAY_USER)
                _say(f"broker: {broker.kind} listening on {redact_mqtt_url(mqtt_url)}")
                _say(
                    f"broker: closed (no anonymous clients): {COLLECTOR_USER} reads, "
                    f"{GATEWAY_USER} publishes (the simulator; a gateway); passwords kept in "
                    f"{data / DEMO_MQTT_FILE}"
                )
            else:
                _say(f"broker: {broker.kind} listening on {broker.url}")

        # Alert e-mails to a local mailbox, unless an SMTP server is configured.
        notify_env: dict[str, str] = {}
        if not settings.smtp_host:
            mailbox, notify_env = _start_mailbox(data)
        crm_env = _crm_credentials(data, api_port, kept["crm_callback"])
        env = {
            **crm_env,
            **os.environ,
            "MESFLOW_DATABASE_URL": db_url,
            "MESFLOW_MQTT_URL": mqtt_url,
            "MESFLOW_HTTP_PORT": str(http_port),
            "MESFLOW_PLANT_CONFIG": str(settings.plant_config),
            # The demo's alert rules: the example file, unless another one is configured.
            "MESFLOW_ALERTS_CONFIG": str(
                settings.alerts_config or resource_dir("config") / "alerts.example.yaml"
            ),
            "MESFLOW_DATA_DIR": str(data),
            "PYTHONUNBUFFERED": "1",
        }
        # Started downstream first, so nothing an upstream component sends is waiting on
        # a component that is not up yet; stopped in STOP_ORDER. The CRM stand-in before
        # the notifier (its callbacks have a receiver from the first one) and before the
        # simulator (the machines find the CRM's work orders planned when they start
        # their first jobs, and produce for the sales orders, not only for stock).
        components = [
            Component("collector-mqtt", ["run", "collector-mqtt"], "collector-mqtt: subscribing"),
            Component("dataflow", ["run", "dataflow"], "dataflow: following"),
            Component("api", ["run", "api"]),
            Component("crm", ["simulate-crm", "--seed", str(seed)], CRM_READY),
            Component("notify", ["run", "notify"], "notify: delivering", env=notify_env),
            Component("dashboard", ["run", "dashboard"]),
            Component(
                "simulator",
                ["simulate", "--speed", str(speed), "--seed", str(seed)],
                # It publishes like a gateway; the collector's user may only read.
                env={"MESFLOW_MQTT_URL": sim_mqtt_url},
            ),
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
        client, _, token = env["MESFLOW_CRM_TOKENS"].split(",")[0].partition(":")
        _say(f"  CRM client '{client}': Authorization: Bearer {token}")
        _say(f"  callback signing secret: {env['MESFLOW_CRM_WEBHOOK_SECRET']}")
        _say(f"  callbacks go to {env['MESFLOW_CRM_CALLBACK_URL']}")
        _say(f"  (kept in {data / 'demo-crm.json'}; MESFLOW_CRM_TOKENS etc. override them)")
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
        by_name = {comp.name: comp for comp in components}
        for name in STOP_ORDER:
            if name in by_name:
                _stop(by_name[name])
        if mailbox is not None:
            mailbox.stop()
            _say(f"mail: stopped ({mailbox.received} e-mail(s) received)")
        if broker is not None:
            broker.stop()
            _say("broker: stopped")
        if pg is not None:
            pg.stop()
            _say("database: stopped")
        _say("stopped; run `mesflow demo` again to resume")


def _start_mailbox(data: Path) -> tuple[DemoMailbox | None, dict[str, str]]:
    """The demo's mailbox (mesflow/demo_mail.py) and the notifier's settings for it; none
    without aiosmtpd (installed with the demo from requirements/lock.txt)."""
    try:
        mailbox = DemoMailbox(data / "demo-mail", free_port(), _say)
    except ImportError:
        _say("mail: aiosmtpd is not installed: alert e-mails wait (pip install aiosmtpd)")
        return None, {}
    mailbox.start()
    _say(
        f"mail: alert e-mails go to a local mailbox on 127.0.0.1:{mailbox.port}, printed "
        f"here and kept in {data / 'demo-mail'} (MESFLOW_SMTP_HOST: a real server instead)"
    )
    env = {
        "MESFLOW_SMTP_HOST": "127.0.0.1",
        "MESFLOW_SMTP_PORT": str(mailbox.port),
        "MESFLOW_SMTP_STARTTLS": "false",  # 127.0.0.1 only
    }
    return mailbox, env


def simulator_state_file(data: Path, plant: PlantConfig, seed: int) -> Path:
    """Where `mesflow simulate` keeps the simulated time it reached (see mesflow/cli.py)."""
    return data / "simulator" / f"{plant.plant.id}-seed{seed}.json"


def backfill_history(
    plant: PlantConfig,
    db_url: str,
    data: Path,
    *,
    seed: int,
    history: timedelta = HISTORY,
    now: datetime | None = None,
) -> bool:
    """On the demo's first start: the last `history` of the plant into the ingest log (the
    dataflow processes it like any source), so the boards open on a week of figures. The
    live simulator then continues right after it (its state file says where).

    A restart does not backfill again: the simulator resumes from its state file. The plan
    (start, end) is written before anything is stored, so an interrupted backfill is
    finished by the next start with the same events (same ids: nothing is stored twice).
    Returns whether anything was backfilled now."""
    from collectors.simulator.history import backfill_log
    from collectors.simulator.publisher import read_state, write_state

    state_file = simulator_state_file(data, plant, seed)
    plan_file = state_file.with_name(f"{state_file.stem}-backfill.json")
    try:
        plan = json.loads(plan_file.read_text("utf-8"))
        start = datetime.fromisoformat(plan["start"])
        end = datetime.fromisoformat(plan["end"])
        done = bool(plan["done"])
    except (OSError, ValueError, KeyError, TypeError):
        if read_state(state_file) is not None:
            return False  # a demo from before backfills existed: it resumes
        # Dated before now: the live part starts where it ends, never ahead of the clock.
        end = (now or datetime.now(plant.tz)).astimezone(plant.tz).replace(second=0, microsecond=0)  # fmt: skip
        start = end - history
        done = False
        _write_plan(plan_file, start, end, done=False)
        write_state(state_file, end)
    if done:
        return False
    _say(f"history: simulating {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} (first start only)")
    t0 = time.monotonic()
    events, new = backfill_log(plant, db_url, seed=seed, start=start, end=end, progress=_say)
    _write_plan(plan_file, start, end, done=True)
    _say(
        f"history: {events:,} events into the ingest log in {time.monotonic() - t0:.1f} s "
        f"({new:,} new); the dataflow works through them while the demo starts"
    )
    return True


def _write_plan(path: Path, start: datetime, end: datetime, *, done: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = {"start": start.isoformat(), "end": end.isoformat(), "done": done}
    tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash leaves the old plan or the new one


# Producers first, so nothing new arrives; then the collector, which stores and acknowledges
# what the broker still holds for it; the dataflow finishes what is in the log; the broker
# and PostgreSQL (stopped after this list) outlive every client.
STOP_ORDER = ("simulator", "crm", "collector-mqtt", "dataflow", "notify", "api", "dashboard")


def _kept_ports(data: Path, wanted: dict[str, int]) -> dict[str, int]:
    """Ports picked on the first start and kept: a restart finds its broker and callback
    where it left them. A kept port that is taken now is an error, never a silent move."""
    path = data / "demo-ports.json"
    try:
        kept = {k: int(v) for k, v in json.loads(path.read_text("utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        kept = {}
    out = {}
    for name, preferred in wanted.items():
        if name in kept:
            out[name] = require_port(kept[name], what=f"the demo's {name} (kept in {path})")
        else:
            out[name] = free_port(preferred)
    path.write_text(json.dumps({**kept, **out}, indent=2) + "\n", encoding="utf-8")
    return out


def _crm_credentials(data: Path, api_port: int, callback_port: int) -> dict[str, str]:
    """The CRM stand-in's token and callback secret: made once, kept in var/demo-crm.json,
    so an integrator's copy stays valid across restarts. MESFLOW_CRM_* variables win."""
    from collectors.simulator.crm import demo_env

    path = data / "demo-crm.json"
    try:
        saved = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        saved = {}
    fresh = demo_env(api_port, callback_port)
    keys = ("MESFLOW_CRM_TOKENS", "MESFLOW_CRM_WEBHOOK_SECRET")
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), str) for k in keys):
        saved = {k: fresh[k] for k in keys}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets: owner only
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(saved, f, indent=2)
    env = {**fresh, **{k: saved[k] for k in keys}}
    return {k: os.environ.get(k) or v for k, v in env.items()}


COLLECTOR_USER = "mesflow-collector"  # reads mesflow/v1/# (config/mosquitto/acl)
GATEWAY_USER = "mesflow-gateway"  # writes mesflow/v1/#
DEMO_MQTT_FILE = "demo-mqtt.json"


def _mqtt_passwords(data: Path) -> dict[str, str]:
    """The demo broker's users and passwords: made once, kept owner-only in
    var/demo-mqtt.json, so a restart (and a client configured by hand) keeps working."""
    path = data / DEMO_MQTT_FILE
    try:
        saved = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        saved = {}
    users = (COLLECTOR_USER, GATEWAY_USER)
    if isinstance(saved, dict) and all(isinstance(saved.get(u), str) and saved[u] for u in users):
        return {u: saved[u] for u in users}
    fresh = {u: secrets.token_urlsafe(18) for u in users}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets: owner only
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(fresh, f, indent=2)
    return fresh


def external_broker_lines(mqtt_url: str, sim_mqtt_url: str) -> list[str]:
    """What the demo says about a broker it was given: the URLs, never a password."""
    lines = [f"broker: using {redact_mqtt_url(mqtt_url)}"]
    if sim_mqtt_url != mqtt_url:
        lines.append(f"broker: the simulator publishes with {redact_mqtt_url(sim_mqtt_url)}")
    return lines


def _mosquitto_installed() -> bool:
    # Where start_broker looks for it too.
    return bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"))


def _start_closed_broker(data: Path, port: int) -> Broker:
    """mosquitto with passwords and the shipped ACL; without mosquitto, an open amqtt broker
    (it has no ACL), with a warning that cannot be missed."""
    if _mosquitto_installed():
        return start_broker(data / "broker", port, users=_mqtt_passwords(data))
    _say(
        "WARNING: mosquitto is not installed, so the demo's broker is amqtt and OPEN: any "
        f"program on this computer can publish and read on port {port} without a password. "
        "Install mosquitto (apt-get install mosquitto, or brew install mosquitto) for a "
        "closed broker."
    )
    return start_broker(data / "broker", port, prefer="amqtt")


def _start(comp: Component, env: dict[str, str], logs: Path) -> None:
    comp.process = subprocess.Popen(
        [sys.executable, "-m", "mesflow.cli", *comp.args],
        env={**env, **comp.env},
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
