"""`mesflow replay FILE.jsonl`: a file of canonical events through the same dataflow.

The file is appended to the ingest log like any other source, then the dataflow runs
until it has processed the log up to the file's last line. Each line gets a dedupe key
(its event id, else a hash of the line and its occurrence number), so replaying the same
file again stores nothing new and changes no figure.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from mesflow.db import connect
from mesflow.ingest_log import LogRecord, append, last_seq
from mesflow.plant import PlantConfig
from streams.runner import DataflowBusy, hold_dataflow_lock, run_flow

# Only to find the dedupe key cheaply; the dataflow validates the line properly.
_ID = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.)+)"')
CHUNK_LINES = 20_000


@dataclass
class ReplaySummary:
    file: Path
    read: int = 0
    new: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def already_in_log(self) -> int:
        return self.read - self.new

    @property
    def accepted(self) -> int:
        return self.new - self.dead_lettered

    def describe(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.file.name}: {self.read} events read, {self.accepted} accepted, "
            f"{self.dead_lettered} dead-lettered, {self.already_in_log} already in the log "
            f"(skipped) in {self.seconds:.1f} s ({rate:,.0f} events/s)"
        )


def line_records(path: Path) -> Iterator[list[LogRecord]]:
    """The file's non-blank lines as log records, in chunks."""
    seen: dict[bytes, int] = {}
    chunk: list[LogRecord] = []
    name = path.name
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            m = _ID.search(line)
            if m:
                key = "id:" + m.group(1).decode("utf-8", "replace")
            else:
                digest = hashlib.blake2b(line, digest_size=16).digest()
                n = seen.get(digest, 0) + 1
                seen[digest] = n
                key = f"line:{digest.hex()}:{n}"
            chunk.append(LogRecord(f"replay:{name}:{lineno}", line, dedupe_key=key))
            if len(chunk) >= CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def replay_file(
    path: Path,
    plant: PlantConfig,
    database_url: str,
    recovery_dir: Path,
    *,
    progress: bool = True,
    snapshot_seconds: float = 2.0,
) -> ReplaySummary:
    summary = ReplaySummary(path)
    started = time.monotonic()
    first_new: int | None = None
    last_new: int | None = None
    size = path.stat().st_size
    with (
        connect(database_url, autocommit=True) as conn,
        click.progressbar(
            length=size, label="storing events ", show_pos=False, hidden=not progress
        ) as bar,
    ):
        for chunk in line_records(path):
            result = append(conn, chunk)
            summary.read += len(chunk)
            summary.new += result.new
            if result.first_seq is not None:
                first_new = result.first_seq if first_new is None else first_new
                last_new = result.last_seq
            bar.update(sum(len(r.payload) + 1 for r in chunk))
        target = last_seq(conn)
    _process_until(plant, database_url, recovery_dir, target, progress, snapshot_seconds)
    if first_new is not None and last_new is not None:
        with connect(database_url) as conn:
            row = conn.execute(
                """SELECT count(*) FROM dead_letter
                   WHERE log_seq BETWEEN %s AND %s AND source LIKE %s""",
                (first_new, last_new, f"replay:{path.name}:%"),
            ).fetchone()
        summary.dead_lettered = int(row[0]) if row else 0
    summary.seconds = time.monotonic() - started
    return summary


def _process_until(
    plant: PlantConfig,
    database_url: str,
    recovery_dir: Path,
    target: int,
    progress: bool,
    snapshot_seconds: float,
) -> None:
    """Run the dataflow here up to `target`; if a live dataflow runs, wait for it instead."""
    with connect(database_url, autocommit=True) as conn:
        start = _flow_position(conn)
    watcher_done = threading.Event()

    def watch(bar: click.progressbar[int]) -> None:
        with connect(database_url, autocommit=True) as conn:
            shown = start
            while not watcher_done.wait(0.25):
                pos = _flow_position(conn)
                bar.update(max(0, min(pos, target) - shown))
                shown = max(shown, min(pos, target))

    with click.progressbar(
        length=max(target - start, 0), label="processing     ", hidden=not progress
    ) as bar:
        watcher = threading.Thread(target=watch, args=(bar,), daemon=True)
        watcher.start()
        try:
            try:
                run_flow(
                    plant,
                    database_url,
                    recovery_dir,
                    snapshot_seconds,
                    upto_seq=target,
                    batch_size=5000,
                )
            except DataflowBusy:
                _wait_for_live_flow(database_url, target)
        finally:
            watcher_done.set()
            watcher.join()
        bar.update(bar.length - bar.pos if bar.length else 0)


def _wait_for_live_flow(database_url: str, target: int) -> None:
    with connect(database_url, autocommit=True) as conn:
        while _flow_position(conn) < target:
            try:
                # Still busy means the live dataflow is up; it will get there.
                hold_dataflow_lock(database_url).close()
            except DataflowBusy:
                time.sleep(0.2)
                continue
            raise click.ClickException("the live dataflow stopped before processing the file")


def _flow_position(conn: object) -> int:
    row = conn.execute(  # type: ignore[attr-defined]
        "SELECT COALESCE(max(last_seq), 0) FROM dataflow_progress"
    ).fetchone()
    return int(row[0]) if row else 0
