"""Built-in reason codes (mesflow/plant.py BUILTIN_REASONS) are valid in every plant: the
OPC UA and Sparkplug collectors send `offline` with reason `connection_lost`, which no
plant's reason tree needs to list. A code that is neither in the tree nor built in is
still dead-lettered `unknown_reason`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from mesflow.ingest_log import LogEntry
from mesflow.plant import PlantConfig
from streams.records import Progress, Rejection
from streams.replay import replay_file
from streams.validate import Validator


def _verdict(plant: PlantConfig, ev: dict[str, Any]) -> str:
    received = datetime.fromisoformat(ev["ts"])
    out = list(Validator(plant)([LogEntry(1, json.dumps(ev).encode(), None, received)]))
    assert isinstance(out[-1], Progress)
    refused = [o for o in out[:-1] if isinstance(o, Rejection)]
    return refused[0].reason if refused else "ok"


def test_the_validator_accepts_built_in_codes_and_refuses_unknown_ones(
    plant: PlantConfig,
) -> None:
    assert plant.reasons_by_code  # the example plant has a reason tree
    assert "connection_lost" not in plant.reasons_by_code
    ev = {"type": "state", "machine": "IM-01", "ts": "2026-11-20T00:00:00+00:00"}
    offline = ev | {"state": "offline"}
    assert _verdict(plant, offline | {"reason": "connection_lost"}) == "ok"
    assert _verdict(plant, offline | {"reason": "no_data"}) == "ok"
    assert _verdict(plant, offline | {"reason": "gremlins"}) == "unknown_reason"


def test_connection_lost_is_its_own_reason_in_downtime_by_reason(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    # Half past an hour: the plant's breaks start on the hour (lunch 12:00, supper 00:00,
    # local), and a stop inside one is outside planned time, so in no reason's downtime.
    # On the hour, this test failed whenever it ran 3 hours after noon or midnight.
    t0 = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=4)

    def state(minutes: int, st: str, **extra: Any) -> dict[str, Any]:
        ts = (t0 + timedelta(minutes=minutes)).isoformat()
        return {"type": "state", "machine": "IM-03", "ts": ts, "state": st} | extra

    events = [
        state(0, "running"),
        state(10, "offline", reason="connection_lost"),
        state(20, "running"),
        state(30, "down", reason="gremlins"),  # refused: in no tree, not built in
        state(40, "running"),
    ]
    path = tmp_path / "lost.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    summary = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert summary.dead_lettered == 1
    with psycopg.connect(db_url) as conn:
        dead = [r for (r,) in conn.execute("SELECT reason FROM dead_letter")]
        rows = conn.execute(
            "SELECT reason, category, reason_en, reason_zh, sum(seconds)::int"
            " FROM v_downtime_by_reason WHERE machine = 'IM-03' AND bucket = 'hour'"
            " GROUP BY 1, 2, 3, 4"
        ).fetchall()
    assert dead == ["unknown_reason"]
    assert rows == [("connection_lost", "no_data", "Connection lost", "连接中断", 600)]
