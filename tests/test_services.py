"""Services that behave: an unreachable database is one clear line; Ctrl-C stops the demo
in order with no traceback; a restart keeps its ports; a port really taken is one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
