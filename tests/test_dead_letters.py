"""Dead letters: list by reason, show safely, requeue after a fix through a real dataflow."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.mqtt_json import map_message
from collectors.topics import machine_topic
from mesflow.cli import main
from mesflow.db import sync_plant
from mesflow.dead_letters import (
    AlreadyApplied,
    escape_payload,
    origin_source,
    parse_since,
    requeue,
    requeue_record,
    summarize,
)
from mesflow.ingest_log import append
from mesflow.plant import PlantConfig, load_plant_config
from mesflow.retention import RetentionPolicy, run_retention
from streams.replay import replay_file
from streams.runner import run_flow
from tests.conftest import EXAMPLE_CONFIG

NEW_MACHINE = "IM-07"


def _rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def _one(url: str, query: str, params: Any = None) -> Any:
    return _rows(url, query, params)[0][0]


def _plant_with_new_machine(plant: PlantConfig, tmp_path: Path) -> PlantConfig:
    """The fixes an engineer makes: the machine added to the plant file, and a EUROMAP 77
    state code the presses send that the mapping lacked."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    anchor = "      - {id: IM-06,"
    assert anchor in text
    added = (
        f"      - {{id: {NEW_MACHINE}, name: {{en: Press 7, zh: 7号注塑机}}, "
        "ideal_cycle_seconds: 18}\n"
    )
    text = text.replace(anchor, added + anchor)
    mapping = '    "5": down                      # alarm\n'
    assert mapping in text
    text = text.replace(mapping, mapping + '    "99": down\n')
    path = tmp_path / "plant.yaml"
    path.write_text(text, encoding="utf-8")
    fixed = load_plant_config(path)
    # Keep the test plant's clock policy (tests/conftest.py).
    return fixed.model_copy(update={"plant": fixed.plant.model_copy(update={"max_event_age_days": plant.plant.max_event_age_days})})  # fmt: skip


def _events(n: int) -> list[dict[str, Any]]:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    out: list[dict[str, Any]] = [
        {"type": "state", "machine": NEW_MACHINE, "ts": t0.isoformat(), "state": "running",
         "id": "s-0"},
    ]  # fmt: skip
    for i in range(1, n + 1):
        out.append(
            {
                "type": "count",
                "machine": NEW_MACHINE,
                "ts": (t0 + timedelta(seconds=20 * i)).isoformat(),
                "good": 1,
                "id": f"c-{i}",
            }
        )
    return out


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def _figures(url: str) -> tuple[Any, ...]:
    return (
        _one(url, "SELECT good_total FROM machine_status WHERE machine = %s", (NEW_MACHINE,)),
        _one(url, "SELECT sum(good) FROM machine_hour WHERE machine = %s", (NEW_MACHINE,)),
    )


def test_requeue_after_the_machine_is_added_counts_each_event_once(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    n = 40
    rec = tmp_path / "recovery"
    events = _write(tmp_path / "events.jsonl", _events(n))
    first = replay_file(events, plant, db_url, rec, progress=False, snapshot_seconds=1.0)
    assert first.dead_lettered == n + 1
    with psycopg.connect(db_url, autocommit=True) as conn:
        [summary] = summarize(conn)
    assert (summary.reason, summary.open) == ("unknown_machine", n + 1)

    fixed = _plant_with_new_machine(plant, tmp_path)
    sync_plant(db_url, fixed)
    with psycopg.connect(db_url, autocommit=True) as conn:
        done = requeue(conn, reason="unknown_machine")
        assert done.requeued == n + 1 and len(done.new_seqs) == n + 1
        # Twice does nothing, by reason or by seq.
        assert requeue(conn, reason="unknown_machine").requeued == 0
        again = requeue(conn, seqs=[s for (s,) in conn.execute("SELECT log_seq FROM dead_letter")])
        assert (again.requeued, again.already_resolved) == (0, n + 1)
    end = _one(db_url, "SELECT max(seq) FROM ingest_log")
    assert end == max(done.new_seqs)
    run_flow(fixed, db_url, rec, 1.0, upto_seq=end)
    assert _figures(db_url) == (n, n)
    # Nothing new dead-lettered; every old one says where it went.
    assert _one(db_url, "SELECT count(*) FROM dead_letter") == n + 1
    assert _rows(db_url, "SELECT DISTINCT status FROM v_dead_letter") == [("requeued",)]
    assert (
        _one(
            db_url,
            "SELECT count(*) FROM dead_letter d JOIN ingest_log l ON l.seq = d.requeued_seq "
            "WHERE l.source = 'requeue:' || d.log_seq || ':' || d.source",
        )
        == n + 1
    )

    # The file again, and another requeue: nothing is stored, nothing counted twice.
    second = replay_file(events, fixed, db_url, rec, progress=False, snapshot_seconds=1.0)
    assert second.new == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert requeue(conn, reason="unknown_machine").requeued == 0
    run_flow(fixed, db_url, rec, 1.0, upto_seq=_one(db_url, "SELECT max(seq) FROM ingest_log"))
    assert _figures(db_url) == (n, n)
    # A dataflow that reads the whole log again under the fixed plant file (no snapshot; a
    # resume or a machine rebuild re-reads a part of it) refuses the retired originals.
    with psycopg.connect(db_url, autocommit=True) as conn:
        for table in ("machine_status", "machine_hour", "machine_state_interval"):
            conn.execute(f"DELETE FROM {table}")
    run_flow(fixed, db_url, tmp_path / "fresh", 1.0, upto_seq=end)
    assert _figures(db_url) == (n, n)
    assert _one(db_url, "SELECT count(*) FROM dead_letter") == n + 1


def _dead(conn: psycopg.Connection[Any], payload: bytes, reason: str, when: datetime) -> int:
    row = conn.execute(
        "INSERT INTO ingest_log (received_at, source, payload) VALUES (%s, 'mqtt:t', %s) "
        "RETURNING seq",
        (when, payload),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO dead_letter (log_seq, received_at, source, payload, reason, detail) "
        "SELECT seq, received_at, source, payload, %s, 'detail of ' || seq FROM ingest_log "
        "WHERE seq = %s",
        (reason, row[0]),
    )
    return int(row[0])


def test_requeue_uses_the_dead_letters_own_copy_once_the_log_row_is_pruned(db_url: str) -> None:
    payload = json.dumps({"type": "count", "machine": NEW_MACHINE, "ts": "2026-11-20T08:00:00Z",
                          "good": 1, "id": "x"}).encode()  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as conn:
        seq = _dead(conn, payload, "unknown_machine", datetime.now(UTC) - timedelta(days=60))
        conn.execute("INSERT INTO dataflow_progress VALUES ('machines', %s, now())", (seq,))
        conn.execute(
            "INSERT INTO retention_observation VALUES ('machines', %s, now() - interval '1 hour')",
            (seq,),
        )
    run_retention(db_url, RetentionPolicy())
    assert _one(db_url, "SELECT count(*) FROM ingest_log") == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        result = requeue(conn, seqs=[seq, 999_999])
    assert (result.requeued, result.not_found) == (1, 1)
    stored = _rows(db_url, "SELECT payload, machine FROM ingest_log")
    assert [(json.loads(p), m) for p, m in stored] == [(json.loads(payload), NEW_MACHINE)]


def test_list_show_requeue_and_discard_commands(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    hostile = b'{"machine":"\x1b[2J\xe2\x80\xae","bad":"\xff\x00"}'
    with psycopg.connect(db_url, autocommit=True) as conn:
        seqs = [_dead(conn, b'{"n":%d}' % i, "unknown_machine", now) for i in range(5)]
        bad = _dead(conn, hostile, "malformed", now - timedelta(days=3))
    monkeypatch.setenv("MESFLOW_DATABASE_URL", db_url)
    cli = CliRunner()

    listed = cli.invoke(main, ["dead-letters", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[1].split()[:4] == ["unknown_machine", "5", "0", "0"]
    assert f"seq {seqs[-1]}: detail of {seqs[-1]}" in listed.output
    recent = cli.invoke(main, ["dead-letters", "list", "--since", "1d"])
    assert "malformed" not in recent.output and "unknown_machine" in recent.output
    assert cli.invoke(main, ["dead-letters", "list", "--since", "soon"]).exit_code != 0

    shown = cli.invoke(main, ["dead-letters", "show", str(bad)])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\u202e" not in shown.output
    assert "\\u001b[2J" in shown.output and "\\u202e" in shown.output and "\\xff" in shown.output
    raw = cli.invoke(main, ["dead-letters", "show", "--raw", str(bad)])
    assert raw.stdout_bytes == hostile
    assert cli.invoke(main, ["dead-letters", "show", "424242"]).exit_code != 0

    assert cli.invoke(main, ["dead-letters", "requeue"]).exit_code != 0  # nothing named
    done = cli.invoke(main, ["dead-letters", "requeue", str(seqs[0]), str(seqs[1])])
    assert done.exit_code == 0, done.output
    assert "2 requeued" in done.output and "requeue: 2/2" in done.output
    by_reason = cli.invoke(main, ["dead-letters", "requeue", "--reason", "unknown_machine"])
    assert "3 requeued" in by_reason.output
    twice = cli.invoke(main, ["dead-letters", "requeue", str(seqs[0])])
    assert "0 requeued" in twice.output and "1 already resolved" in twice.output
    discarded = cli.invoke(main, ["dead-letters", "discard", "--reason", "malformed"])
    assert "1 dead letter(s) discarded" in discarded.output
    statuses = _rows(db_url, "SELECT reason, status, count(*) FROM v_dead_letter GROUP BY 1, 2")
    assert sorted(statuses) == [("malformed", "discarded", 1), ("unknown_machine", "requeued", 5)]


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_shown_payloads_hold_no_control_characters(payload: bytes) -> None:
    text = escape_payload(payload)
    assert all(
        ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
        for ch in text
    )
    if payload.isascii() and payload.decode().isprintable():
        assert text == payload.decode()


def test_parse_since() -> None:
    now = datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("3d", now) == now - timedelta(days=3)
    assert parse_since("2026-11-19T08:00", now) == datetime(2026, 11, 19, 8, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_since("yesterday", now)


def test_requeue_maps_an_mqtt_input_again_with_the_fixed_plant(
    db_url: str, plant: PlantConfig, tmp_path: Path
) -> None:
    line = plant.line_of_machine["IM-01"]
    topic = machine_topic(plant.plant.site, line.area, line.id, "IM-01", "state")
    ts = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    published = json.dumps({"ts": ts, "state": "99", "id": "st-99"}).encode()
    rec = tmp_path / "recovery"
    with psycopg.connect(db_url, autocommit=True) as conn:
        append(conn, [map_message(plant, topic, published)])  # what the collector stores
    run_flow(plant, db_url, rec, 1.0, upto_seq=_one(db_url, "SELECT max(seq) FROM ingest_log"))
    [(seq, reason)] = _rows(db_url, "SELECT log_seq, reason FROM dead_letter")
    assert reason == "unmapped_state"

    fixed = _plant_with_new_machine(plant, tmp_path)
    with psycopg.connect(db_url, autocommit=True) as conn:
        done = requeue(conn, seqs=[seq], plant=fixed)
    assert done.requeued == 1
    [(source, payload, error)] = _rows(
        db_url, "SELECT source, payload, error FROM ingest_log WHERE seq = %s", (done.new_seqs[0],)
    )
    assert source == f"requeue:{seq}:mqtt:{topic}" and error is None
    assert json.loads(payload)["state"] == "down"
    run_flow(fixed, db_url, rec, 1.0, upto_seq=done.new_seqs[0])
    assert _rows(db_url, "SELECT state FROM machine_status WHERE machine = 'IM-01'") == [("down",)]


def test_a_requeued_copy_keeps_its_origin(plant: PlantConfig) -> None:
    line = plant.line_of_machine["IM-01"]
    topic = machine_topic(plant.plant.site, line.area, line.id, "IM-01", "state")
    raw = b'{"ts": "2026-11-20T08:00:00+08:00", "state": "99"}'
    first = requeue_record(7, f"mqtt:{topic}", raw, plant)
    assert first.error is not None and first.error.startswith("unmapped_state")
    # The copy is dead-lettered again, then requeued: still mapped as the topic says.
    again = requeue_record(9, first.source, first.payload, plant)
    assert again.source == f"requeue:9:mqtt:{topic}"
    assert origin_source(again.source) == f"mqtt:{topic}"
    assert again.dedupe_key != first.dedupe_key


def _refused_by_the_sink(db_url: str) -> tuple[int, int]:
    """A real `db_refused` dead letter (the results writer refuses IM-01's status row, a
    count beyond int8) and an `unknown_machine` one: (refused seq, unknown seq)."""
    from streams.pg_sink import ResultsSink
    from streams.records import Progress, StatusRow
    from tests.helpers import feed

    t = datetime.now(UTC) - timedelta(minutes=5)
    feed(db_url, [{"id": "r1", "type": "count", "machine": "IM-01", "ts": t.isoformat(), "good": 1}])  # fmt: skip
    applied = _one(db_url, "SELECT max(seq) FROM ingest_log")
    part = ResultsSink(db_url).build_part("results", "results", None)
    try:
        part.write_batch([StatusRow("IM-01", "running", t, None, None, t, 2**70, 0),
                          Progress(applied, 1, 0)])  # fmt: skip
        part.snapshot()  # waits for the commit
    finally:
        part.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        unknown = _dead(conn, b'{"n": 1}', "unknown_machine", datetime.now(UTC))
    assert _rows(db_url, "SELECT log_seq, reason FROM dead_letter ORDER BY log_seq") == [
        (applied, "db_refused"),
        (unknown, "unknown_machine"),
    ]
    return applied, unknown


def test_requeue_refuses_dead_letters_whose_event_was_already_applied(db_url: str) -> None:
    """`db_refused` names an event the dataflow had counted: a copy would count it twice."""
    applied, unknown = _refused_by_the_sink(db_url)
    log_before = _rows(db_url, "SELECT seq, error FROM ingest_log ORDER BY seq")
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(AlreadyApplied) as refused:
            requeue(conn, reason="db_refused")
        assert refused.value.by_reason == {"db_refused": [applied]}
        with pytest.raises(AlreadyApplied):  # mixed with a requeueable one: nothing at all
            requeue(conn, seqs=[unknown, applied])
    # Nothing changed: no copy, the original not retired, both still open.
    assert _rows(db_url, "SELECT seq, error FROM ingest_log ORDER BY seq") == log_before
    assert _rows(db_url, "SELECT DISTINCT status FROM v_dead_letter") == [("open",)]


def test_requeue_command_refuses_db_refused_unless_told_with_a_warning(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied, unknown = _refused_by_the_sink(db_url)
    end = _one(db_url, "SELECT max(seq) FROM ingest_log")
    monkeypatch.setenv("MESFLOW_DATABASE_URL", db_url)
    cli = CliRunner()
    refused = cli.invoke(main, ["dead-letters", "requeue", "--reason", "db_refused"])
    assert refused.exit_code == 1, refused.output
    [message] = refused.stderr.strip().splitlines()
    assert f"1 db_refused (seq {applied})" in message and "counted twice" in message
    assert "--even-if-applied" in message
    assert _one(db_url, "SELECT max(seq) FROM ingest_log") == end

    # The others of a list go through only once the applied one is left out.
    mixed = cli.invoke(main, ["dead-letters", "requeue", str(unknown), str(applied)])
    assert mixed.exit_code == 1 and _one(db_url, "SELECT max(seq) FROM ingest_log") == end
    alone = cli.invoke(main, ["dead-letters", "requeue", str(unknown)])
    assert alone.exit_code == 0 and "1 requeued" in alone.stdout, alone.output

    forced = cli.invoke(
        main, ["dead-letters", "requeue", "--even-if-applied", "--reason", "db_refused"]
    )
    assert forced.exit_code == 0, forced.output
    assert "warning:" in forced.stderr and "counted twice" in forced.stderr
    assert "1 requeued" in forced.stdout
    assert _rows(db_url, "SELECT status FROM v_dead_letter WHERE log_seq = %s", (applied,)) == [
        ("requeued",)
    ]


UNREACHABLE = "postgresql://mesflow:s3cret-pw@127.0.0.1:9/mesflow"
COMMANDS = [
    ["dead-letters", "list"],
    ["dead-letters", "show", "1"],
    ["dead-letters", "requeue", "1"],
    ["dead-letters", "discard", "1"],
    ["retention", "run"],
    ["retention", "status"],
    ["user", "add", "ann", "--role", "viewer", "--generate"],
    ["user", "passwd", "ann", "--generate"],
    ["user", "role", "ann", "manager"],
    ["user", "list"],
    ["user", "remove", "ann"],
    ["token", "create", "hall-2-tv"],
    ["token", "list"],
    ["token", "revoke", "1"],
]


def test_unreachable_database_is_one_line_from_dead_letter_retention_user_token_commands(
    tmp_path: Path,
) -> None:
    """Like every other command (mesflow/cli.py): one line naming the database, its
    password hidden, exit 1; not libpq's two-line message, not a traceback."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from mesflow.settings import REPO_ROOT

    env = {**os.environ, "MESFLOW_DATABASE_URL": UNREACHABLE,
           "MESFLOW_DATA_DIR": str(tmp_path / "var")}  # fmt: skip

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mesflow.cli", *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, COMMANDS))
    expected = (
        "Error: cannot reach the database at postgresql://mesflow:***@127.0.0.1:9/mesflow: "
        'connection failed: connection to server at "127.0.0.1", port 9 failed: '
        "Connection refused"
    )
    for cmd, res in zip(COMMANDS, results, strict=True):
        assert res.stderr.splitlines() == [expected], (cmd, res.stderr)
        assert res.returncode == 1, (cmd, res.returncode)
        assert "s3cret-pw" not in res.stdout + res.stderr, cmd
