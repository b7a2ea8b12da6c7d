"""The poison list (tests/poison.py) through the real `mesflow replay` into PostgreSQL.

Each poison is followed by valid events. Every poison must be dead-lettered with its
reason, every valid event stored and counted, the process must exit 0, and a second run
of the same file must store nothing new. Also: id conflicts across sources end as
`id_conflict` dead letters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from collectors.mqtt_json import map_message
from mesflow.ingest_log import append
from mesflow.plant import PlantConfig
from streams.replay import replay_file
from tests.conftest import EXAMPLE_CONFIG
from tests.poison import (
    MQTT_ONLY,
    POISON,
    POISON_MACHINE,
    TRICKY_VALID,
    running_state,
    valid_events,
)

VALID_AFTER_EACH = 2


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _poison_file(path: Path) -> tuple[dict[int, tuple[str, str]], int, int]:
    """Write the file; return {line: (poison name, reason)}, valid events, their good parts."""
    lines: list[bytes] = [_line(running_state())]
    good = 0
    for _name, raw in TRICKY_VALID:
        lines.append(raw)
        good += json.loads(raw).get("good", 0)
    expected: dict[int, tuple[str, str]] = {}
    valid = 0
    for name, raw, reason in POISON:
        if name in MQTT_ONLY:
            continue
        assert b"\n" not in raw, name
        lines.append(raw)
        expected[len(lines)] = (name, reason)
        for ev in valid_events(valid, VALID_AFTER_EACH):
            lines.append(_line(ev))
        valid += VALID_AFTER_EACH
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected, valid, good + valid


def _mesflow_replay(path: Path, db_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": db_url,
        "MESFLOW_DATA_DIR": str(tmp_path / "var"),
        # The example plant as shipped: the default clock policy.
        "MESFLOW_PLANT_CONFIG": str(EXAMPLE_CONFIG),
    }
    return subprocess.run(
        [sys.executable, "-m", "mesflow.cli", "replay", "--quiet", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # without the clock policy a ten-year jump never finishes
    )


def test_poison_list_through_mesflow_replay(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "poison.jsonl"
    expected, valid, good = _poison_file(path)

    run = _mesflow_replay(path, db_url, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert f"{len(expected)} dead-lettered (" in run.stdout, run.stdout  # with the top reasons
    assert "older than max_event_age_days (30 days)" in run.stdout, run.stdout  # the hint

    with psycopg.connect(db_url) as conn:
        dead = {
            int(source.rsplit(":", 1)[1]): (reason, detail)
            for source, reason, detail in conn.execute(
                "SELECT source, reason, detail FROM dead_letter"
            )
        }
        status = conn.execute(
            "SELECT good_total, state FROM machine_status WHERE machine = %s", (POISON_MACHINE,)
        ).fetchone()
        hour_good = conn.execute(
            "SELECT sum(good) FROM machine_hour WHERE machine = %s", (POISON_MACHINE,)
        ).fetchone()
        stored_ids = {
            str(json.loads(bytes(row[0])).get("id"))
            for row in conn.execute("SELECT payload FROM ingest_log WHERE error IS NULL")
        }
    wrong = {
        name: (reason, dead.get(line))
        for line, (name, reason) in expected.items()
        if dead.get(line, ("",))[0] != reason
    }
    assert not wrong, wrong
    assert set(dead) == set(expected), "only the poisons are dead-lettered"
    # Every valid event is stored and counted (the tricky ones too).
    assert {f"valid-{i}" for i in range(valid)} <= stored_ids
    assert status is not None and status[0] == good
    assert hour_good is not None and hour_good[0] == good

    # The same file again: nothing new, no second dead letter, the same figures.
    again = _mesflow_replay(path, db_url, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 dead-lettered" in again.stdout, again.stdout
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
        assert row is not None and row[0] == len(expected)
        row = conn.execute(
            "SELECT good_total FROM machine_status WHERE machine = %s", (POISON_MACHINE,)
        ).fetchone()
        assert row is not None and row[0] == good


def _count(ts: str, good: int, event_id: str) -> dict[str, Any]:
    return {"type": "count", "machine": "IM-03", "ts": ts, "good": good, "id": event_id}


def test_id_conflict_across_sources_is_dead_lettered(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    t0, t1 = "2026-11-20T08:00:00+08:00", "2026-11-20T08:01:00+08:00"
    # Over MQTT the topic names type and machine: the collector's own mapping.
    topic = "mesflow/v1/suzhou/molding/IM/IM-03/{}".format
    state = {"ts": t0, "state": "running", "id": "s-1"}
    with psycopg.connect(db_url, autocommit=True) as conn:
        append(conn, [map_message(plant, topic("state"), json.dumps(state).encode())])
        count = {"ts": t0, "good": 1, "id": "dup-1"}
        append(conn, [map_message(plant, topic("count"), json.dumps(count).encode())])
    # The same event in a file, spelled differently (escaped id, spaces): a silent duplicate. The same id
    # with other content: an id_conflict dead letter. A nested meta id is no event id.
    path = tmp_path / "f.jsonl"
    path.write_text(
        "\n".join(
            [
                '{ "id": "dup\\u002d1", "machine": "IM-03", "type": "count", "good": 1,\t'
                f'"ts": "{t0}" }}',
                json.dumps(_count(t1, 5, "dup-1")),
                json.dumps({"meta": {"id": "dup-1"}, **_count(t1, 2, "other")}),
            ]
        )
    )
    summary = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert (summary.read, summary.new, summary.dead_lettered) == (3, 2, 1)
    with psycopg.connect(db_url) as conn:
        dead = conn.execute("SELECT reason, detail, source FROM dead_letter").fetchall()
        good = conn.execute(
            "SELECT good_total FROM machine_status WHERE machine = 'IM-03'"
        ).fetchone()
    assert [(r, s) for r, _, s in dead] == [("id_conflict", f"replay:{path.name}:2")]
    assert "with different content" in dead[0][1]
    assert good == (3,)  # the MQTT event and the "other" one; not the conflicting 5


def test_a_file_name_that_is_not_unicode(db_url: str, plant: PlantConfig, tmp_path: Path) -> None:
    # Linux file names are bytes; Python decodes a non-UTF-8 one with lone surrogates.
    path = tmp_path / os.fsdecode(b"day-\xff_50%.jsonl")
    lines = [_line(running_state()), b"not json", _line(valid_events(0, 1)[0])]
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = replay_file(path, plant, db_url, tmp_path / "rec", progress=False)
    assert (summary.read, summary.dead_lettered, summary.by_reason) == (3, 1, {"malformed": 1})
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT source FROM dead_letter").fetchone()
    assert row == ("replay:day-\\udcff_50%.jsonl:2",)
