"""Services that behave: an unreachable database is one clear line; Ctrl-C stops the demo
in order with no traceback; a restart keeps its ports; a port really taken is one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mesflow.plant import PlantConfig
from mesflow.services import Broker
from mesflow.settings import REPO_ROOT

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
