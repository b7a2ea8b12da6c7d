"""A CSV-folder poller: the skeleton of a new collector (docs/collectors.md shows this file).

A machine (or its PLC gateway) drops files `*.csv` with lines `machine,ts,good,scrap` into a
folder. Every collector has the same shape: connect; map each input to the event contract
(pure); hand batches to the ingest log; acknowledge the source only after the commit (here:
move the file to done/); bad input becomes a dead letter, never a crash; report health.
"""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import psycopg

from mesflow.db import connect
from mesflow.ingest_log import LogRecord, append, error_record, record_for
from mesflow.source_health import EndpointHealth, SourceHealthReporter


def map_line(source: str, line: list[str]) -> LogRecord:
    """Pure: one CSV line -> a contract `count` event, or a dead letter saying why."""
    raw = ",".join(line).encode()
    if len(line) != 4:
        return error_record(source, raw, "malformed", "expected machine,ts,good,scrap")
    machine, ts, good, scrap = (x.strip() for x in line)
    if not (good.isdigit() and scrap.isdigit()):
        return error_record(source, raw, "invalid_field", "good and scrap are whole numbers")
    # The id makes a re-sent line idempotent (in any file): the log stores it once.
    body = {"type": "count", "id": f"csv:{machine}:{ts}", "machine": machine, "ts": ts,
            "good": int(good), "scrap": int(scrap)}  # fmt: skip
    return record_for(source, body)


class CsvFolderCollector:
    def __init__(self, folder: Path, database_url: str, poll_s: float = 0.5) -> None:
        self.folder, self.database_url, self.poll_s = folder, database_url, poll_s
        self.done = folder / "done"
        self.done.mkdir(exist_ok=True)
        self.messages = self.errors = 0
        self.last_error: str | None = None
        self.connected = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="csv-poller", daemon=True)
        self.health = SourceHealthReporter(database_url, "other", "csv", self.snapshot, 1.0)

    def snapshot(self) -> list[EndpointHealth]:
        return [EndpointHealth(str(self.folder), self.connected, self.messages, self.errors,
                               self.last_error)]  # fmt: skip

    def poll_once(self, conn: psycopg.Connection) -> int:
        stored = 0
        for path in sorted(self.folder.glob("*.csv")):
            text = path.read_text(encoding="utf-8", errors="replace")
            source = f"csv:{path.name}"
            records = [map_line(source, ln) for ln in csv.reader(io.StringIO(text)) if ln]
            stored += append(conn, records).new  # commits (autocommit connection)
            path.rename(self.done / path.name)  # acknowledge only after the commit
            self.messages += len(records)
            self.errors += sum(1 for r in records if r.error)
        return stored

    def _main(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.wait(self.poll_s):
            try:
                if conn is None or conn.closed:
                    conn = connect(self.database_url, autocommit=True)
                self.connected = True
                self.poll_once(conn)
            except psycopg.OperationalError as err:  # files stay; the next round retries
                self.connected, self.last_error = False, str(err).splitlines()[0]
                self.errors += 1
                conn = None

    def start(self) -> None:
        self._thread.start()
        self.health.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.connected = False
        self.health.stop()
