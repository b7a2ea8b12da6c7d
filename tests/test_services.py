"""Services that behave: an unreachable database is one clear line; Ctrl-C stops the demo
in order with no traceback; a restart keeps its ports; a port really taken is one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mesflow.plant import PlantConfig
from mesflow.services import Broker
from mesflow.settings import REPO_ROOT

if TYPE_CHECKING:
    import pytest

UNREACHABLE = "postgresql://mesflow:s3cret-pw@127.0.0.1:9/mesflow"

COMMANDS = [
    ["db", "migrate"],
    ["report", "--date", "2026-11-20"],
    ["replay", "EVENTS"],
    ["run", "dataflow"],
    ["run", "collector-mqtt"],
    ["run", "api"],
    ["run", "notify"],
    ["run", "dashboard"],
]


def _mesflow(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesflow.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_unreachable_database_is_one_line_from_every_command(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    env = {
        "MESFLOW_DATABASE_URL": UNREACHABLE,
        "MESFLOW_MQTT_URL": "mqtt://127.0.0.1:9",
        "MESFLOW_DATA_DIR": str(tmp_path / "var"),
    }
    cmds = [[str(events) if a == "EVENTS" else a for a in c] for c in COMMANDS]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: _mesflow(c, env), cmds))
    for cmd, res in zip(cmds, results, strict=True):
        out = (res.stdout + res.stderr).strip().splitlines()
        errors = [ln for ln in out if ln.startswith("Error:")]
        assert res.returncode != 0, (cmd, out)
        assert "Traceback" not in res.stderr, (cmd, res.stderr)
        assert errors == [
            "Error: cannot reach the database at postgresql://mesflow:***@127.0.0.1:9/mesflow: "
            'connection failed: connection to server at "127.0.0.1", port 9 failed: '
            "Connection refused"
        ], (cmd, out)
        assert "s3cret-pw" not in res.stdout + res.stderr, cmd


def test_redacted_urls() -> None:
    from mesflow.db import redact_url

    assert redact_url("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert (
        redact_url("postgresql://u@/db?host=/s&password=x")
        == "postgresql://u@/db?host=/s&password=***"
    )
    assert redact_url("host=h password='a b' dbname=d") == "host=h password=*** dbname=d"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"


# -- simulator resume ------------------------------------------------------------------------


def test_resume_start_never_goes_back_nor_ahead() -> None:
    from datetime import UTC, datetime, timedelta

    from collectors.simulator.publisher import BACKFILL, resume_start

    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert resume_start(None, now, speed=1) == now
    assert resume_start(None, now, speed=60) == now - BACKFILL  # a past to play fast
    assert resume_start(now - hour, now, speed=60) == now - hour  # where it stopped
    assert resume_start(now - hour, now, speed=1) == now  # real time: a gap, never behind now
    assert resume_start(now - 10 * BACKFILL, now, speed=60) == now - BACKFILL
    assert resume_start(now + hour, now, speed=60) == now  # an old state ahead: not the future


def test_simulator_restart_continues_after_the_previous_run(
    broker: Broker, plant: PlantConfig, tmp_path: Path
) -> None:
    """Two runs with one state file: the second starts after the last event of the first
    (no event twice, none dated before it), and no event is ever dated after the wall clock."""
    import json
    import threading
    import time
    from datetime import datetime

    import paho.mqtt.client as mqtt

    from collectors.simulator import run_simulator
    from collectors.simulator.publisher import read_state

    got: list[tuple[float, dict[str, object]]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-resume-sub")
    sub.on_connect = lambda c, *_: c.subscribe("mesflow/v1/#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, msg: got.append((time.time(), json.loads(msg.payload)))
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    state = tmp_path / "sim.json"
    runs: list[list[dict[str, object]]] = []
    try:
        assert subscribed.wait(5)
        for _ in range(2):
            before = len(got)
            run_simulator(
                plant, broker.url, seed=5, speed=3600, start=None, duration_s=900, state_file=state
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                n = len(got)
                time.sleep(0.3)
                if len(got) == n:
                    break
            runs.append([body for _, body in got[before:]])
    finally:
        sub.loop_stop()
        sub.disconnect()

    def ts(body: dict[str, object]) -> datetime:
        return datetime.fromisoformat(str(body["ts"]))

    first, second = runs
    assert first and second
    assert min(ts(b) for b in second) > max(ts(b) for b in first)
    ids = [b["id"] for b in first + second]
    assert len(ids) == len(set(ids))
    for received, body in got:
        assert ts(body).timestamp() <= received + 1  # never ahead of the wall clock
    resumed = read_state(state)
    assert resumed is not None and resumed >= max(ts(b) for b in second)


# -- the demo: Ctrl-C, order of stopping, ports kept -------------------------------------------


class _Demo:
    """`mesflow demo` in its own session, as a terminal runs it; `interrupt` is a Ctrl-C
    (SIGINT to the whole process group, as the terminal sends it)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import threading

        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mesflow.cli", "demo", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line:
                self.ready.set()

    def interrupt(self, timeout: float = 120) -> int:
        import signal

        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _close_after_request(port: int) -> None:
    """An HTTP request the server answers and closes: its side of the socket is left in
    TIME_WAIT, which made the old demo move to a random port on the next start."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass


def _check_demo_broker_closed(data: Path) -> dict[str, str]:
    """The running demo's broker refuses anonymous clients, and still carries the plant's
    data: the simulator publishes as mesflow-gateway, the collector reads and stores."""
    import json
    import re
    import stat
    import threading
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from collectors.mqtt_conn import TlsFiles, configure_client, parse_mqtt_url

    port = json.loads((data / "demo-ports.json").read_text())["mqtt"]
    kept = data / "demo-mqtt.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600  # passwords: owner only
    passwords = json.loads(kept.read_text())
    assert set(passwords) == {"mesflow-collector", "mesflow-gateway"}

    def connack(url: str) -> str:
        c = mqtt.Client(CallbackAPIVersion.VERSION2)
        configure_client(c, parse_mqtt_url(url), TlsFiles())
        answered = threading.Event()
        reason: list[str] = []

        def on_connect(cl: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            reason.append(str(rc))
            answered.set()

        c.on_connect = on_connect
        c.connect("127.0.0.1", port)
        c.loop_start()
        answered.wait(10)
        # An anonymous publish: with the connection refused it never reaches a subscriber.
        c.publish("mesflow/v1/x/y/z/IM-01/count", b'{"good": 1}', qos=1)
        c.disconnect()
        c.loop_stop()
        return reason[0] if reason else "no answer"

    assert connack(f"mqtt://127.0.0.1:{port}") == "Not authorized"
    assert connack(f"mqtt://mesflow-gateway:{passwords['mesflow-gateway']}@127.0.0.1:{port}") == (
        "Success"
    )
    # The simulator's events (published as the gateway) are stored by the collector.
    log = data / "logs" / "collector-mqtt.log"
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline and not stored:
        found = re.findall(r"(\d+) stored", log.read_text(errors="replace"))
        stored = int(found[-1]) if found else 0
        time.sleep(1)
    assert stored > 0, log.read_text(errors="replace")
    return dict(passwords)


def test_demo_ctrl_c_stops_in_order_without_tracebacks_and_restarts_on_its_ports(
    tmp_path: Path,
) -> None:
    import json
    import re
    import shutil
    import socket
    import time

    from mesflow.services import free_port
    from tests.conftest import require

    require(
        bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")),
        "mosquitto (apt-get install mosquitto)",
    )
    data = tmp_path / "var"
    http_port = free_port()
    api_port = free_port()
    while api_port in (http_port, http_port + 1) or http_port == api_port + 1:
        api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESFLOW_")}
    env |= {"MESFLOW_DATA_DIR": str(data), "MESFLOW_API_PORT": str(api_port)}
    args = ["--speed", "60", "--port", str(http_port)]

    runs: list[_Demo] = []
    try:
        for _ in range(2):
            demo = _Demo(args, env)
            runs.append(demo)
            assert demo.ready.wait(240), demo.text
            for port in (http_port, api_port, http_port, api_port):
                _close_after_request(port)
            time.sleep(3)
            if len(runs) == 1:
                first_passwords = _check_demo_broker_closed(data)
            assert demo.interrupt() == 0, demo.text
    finally:
        for demo in runs:
            demo.kill()

    logs = "\n".join(p.read_text(errors="replace") for p in (data / "logs").glob("*.log"))
    for demo in runs:
        out = demo.text
        for bad in ("Traceback", "panicked", "RUST_BACKTRACE", "exited with code"):
            assert bad not in out, out
        # Same ports after a restart, though the last connections are in TIME_WAIT.
        assert f"dashboard: http://127.0.0.1:{http_port}" in out
        assert f"order intake API: http://127.0.0.1:{api_port}/docs" in out
        # What a client needs, printed: the database URL and the CRM credentials.
        assert "[demo] database: export MESFLOW_DATABASE_URL='postgresql://" in out
        assert re.search(r"CRM client 'demo-crm': Authorization: Bearer \S{20,}", out)
        # The closed broker: its users and where their passwords are, never a password.
        assert "broker: mosquitto listening on mqtt://mesflow-collector:***@127.0.0.1:" in out
        assert "mesflow-collector reads, mesflow-gateway publishes" in out
        assert f"passwords kept in {data / 'demo-mqtt.json'}" in out
        for password in json.loads((data / "demo-mqtt.json").read_text()).values():
            assert password not in out
        stopped = [m[1] for m in re.finditer(r"^\[demo\] (\S+): stopped$", out, re.M)]
        assert stopped == [
            "simulator", "crm", "collector-mqtt", "dataflow", "notify", "api", "dashboard",
            "broker", "database",
        ], out  # fmt: skip
    for bad in ("Traceback", "panicked"):
        assert bad not in logs, logs
    # The broker's passwords are kept too: a client configured by hand keeps working.
    assert json.loads((data / "demo-mqtt.json").read_text()) == first_passwords
    # The CRM token is kept: an integrator's copy stays valid across restarts.
    tokens = [re.search(r"Bearer (\S+)", d.text) for d in runs]
    assert tokens[0] and tokens[1] and tokens[0][1] == tokens[1][1]
    # The broker outlived its clients: the collector disconnected before it terminated,
    # each time (a terminal Ctrl-C reaching the broker would stop it first).
    broker_log = (data / "broker" / "mosquitto.log").read_text(errors="replace")
    events = re.findall(r"(Client mesflow-collector\S* disconnected|terminating)", broker_log)
    assert [e == "terminating" for e in events] == [False, True, False, True], events
    # The second run resumed the simulated plant where the first one stopped.
    assert "simulator: previous run reached" in runs[1].text
    # The CRM stand-in posts its orders before the simulator starts: the machines take its
    # work orders over from their first jobs (the order board moves from the start), and
    # the notifier's first callbacks find the stand-in's receiver up.
    assert re.search(r"simulator: \S+ runs the CRM's work order WO-", runs[0].text), runs[0].text
    assert "Connection refused" not in (data / "logs" / "notify.log").read_text(errors="replace")

    # A port really taken: one clear line and a non-zero exit, not a random port.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past its TIME_WAIT
        taken.bind(("127.0.0.1", http_port))
        taken.listen()
        res = subprocess.run(
            [sys.executable, "-m", "mesflow.cli", "demo", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert (
        f"Error: port {http_port} on 127.0.0.1 is in use by another program: stop that "
        "program or choose another port for the dashboard (mesflow demo --port N)"
    ) in res.stderr.splitlines()


def test_ctrl_c_during_a_replay_stops_it_cleanly_and_the_next_run_finishes(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    """A KeyboardInterrupt raised inside Bytewax aborts with a Rust backtrace; the runner
    turns the signal into an end of input and raises it outside."""
    import signal
    import time
    from datetime import datetime, timedelta

    import psycopg

    from collectors.simulator import write_history

    events = tmp_path / "days.jsonl"
    start = (datetime.now(plant.tz) - timedelta(days=3)).replace(microsecond=0)
    write_history(plant, events, seed=11, start=start, duration_s=2 * 86400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESFLOW_")}
    env |= {"MESFLOW_DATABASE_URL": db_url, "MESFLOW_DATA_DIR": str(tmp_path / "var")}
    # Snapshots (which write the results) every 0.5 s: the first lands while the replay
    # still has seconds to go. At the default 10 s the only one came as it ended.
    cmd = [sys.executable, "-m", "mesflow.cli", "replay", "--quiet", "--snapshot-seconds", "0.5"]
    cmd.append(str(events))
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    # Interrupt once the dataflow has written results: Bytewax is running then.
    deadline = time.monotonic() + 120
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            row = conn.execute("SELECT count(*) FROM machine_state_interval").fetchone()
            if row and row[0] > 0:
                break
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "Traceback" not in out and "panicked" not in out, out
    assert proc.returncode == 1 and "Aborted!" in out, out  # as click says for Ctrl-C
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stderr


def test_a_taken_port_is_one_line_and_a_failure(db_url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "MESFLOW_DATABASE_URL": db_url,
            "MESFLOW_HTTP_PORT": str(port),
            "MESFLOW_API_PORT": str(port),
            "MESFLOW_DATA_DIR": str(tmp_path / "var"),
        }
        for cmd in (["run", "api"], ["run", "dashboard"]):
            res = _mesflow(cmd, env)
            lines = (res.stdout + res.stderr).strip().splitlines()
            assert res.returncode == 1, (cmd, lines)
            assert "Traceback" not in res.stderr, (cmd, res.stderr)
            assert str(port) in lines[-1] and "in use" in lines[-1], (cmd, lines)


def test_demo_without_mosquitto_falls_back_to_an_open_broker_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """amqtt has no password file or ACL: the demo still runs, and a warning says the broker
    is open and how to get a closed one."""
    from mesflow import demo
    from mesflow.services import free_port

    monkeypatch.setattr(demo, "_mosquitto_installed", lambda: False)
    broker = demo._start_closed_broker(tmp_path, free_port())
    try:
        assert broker.kind == "amqtt" and not broker.users
    finally:
        broker.stop()
    out = capsys.readouterr().out
    assert "WARNING" in out and "OPEN" in out and "apt-get install mosquitto" in out
    # No password was made for a broker that cannot check it.
    assert not (tmp_path / "demo-mqtt.json").exists()


def test_demo_never_prints_a_given_broker_password() -> None:
    from mesflow.demo import external_broker_lines

    lines = external_broker_lines(
        "mqtt://mesflow-collector:c%40secret@broker.plant:1883",
        "mqtts://mesflow-gateway:gw-secret@broker.plant:8883",
    )
    assert lines == [
        "broker: using mqtt://mesflow-collector:***@broker.plant:1883",
        "broker: the simulator publishes with mqtts://mesflow-gateway:***@broker.plant:8883",
    ]
    assert external_broker_lines("mqtt://b:1883", "mqtt://b:1883") == [
        "broker: using mqtt://b:1883"
    ]


def test_database_urls_are_redacted_only_where_they_hold_a_password() -> None:
    from mesflow.db import redact_url

    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    # The embedded server's trust login: the printed export must be usable as it is.
    assert redact_url("postgresql://postgres:@/mesflow?host=/v/pg") == (
        "postgresql://postgres@/mesflow?host=/v/pg"
    )
    assert redact_url("postgresql://h/db?password=x&sslmode=require") == (
        "postgresql://h/db?password=***&sslmode=require"
    )
