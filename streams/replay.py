"""`mesflow replay FILE.jsonl`: a file of canonical events through the same dataflow.

The file is appended to the ingest log like any other source, then the dataflow runs
until it has processed the log up to the file's last line. Each line is decoded on its own
(`mesflow.ingest_log`): a line that is not a usable JSON object becomes an error row that
the dataflow dead-letters, and the next line goes on. Each line gets a dedupe key (its
decoded top-level `id`, the same key as over MQTT, else a hash of the line and its
occurrence number), so replaying the same file again stores nothing new and changes no
figure.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import psycopg

from mesflow.db import connect
from mesflow.ingest_log import (
    MAX_PAYLOAD_BYTES,
    DecodeError,
    LogRecord,
    append,
    decode_object,
    dedupe_key,
    error_record,
    fast_record,
    last_seq,
    record_for,
    safe_text,
)
from mesflow.plant import PlantConfig
from streams.rebuild import merged_between, wait_for_merges
from streams.runner import DataflowBusy, hold_dataflow_lock, run_flow

CHUNK_LINES = 20_000

_T = TypeVar("_T")


class ReplayIncomplete(click.ClickException):
    """The file was not stored whole: its storing process failed or died (killed, out of
    memory). What it stored stays in the log, and a re-run of the same file skips those
    lines (their dedupe keys) and goes on, so nothing is counted twice."""


@dataclass
class ReplaySummary:
    file: Path
    read: int = 0
    new: int = 0
    dead_lettered: int = 0
    merged_late: int = 0  # accepted lines later than the allowed lateness (streams/rebuild.py)
    seconds: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)  # dead letters of this run
    max_event_age_days: float | None = None  # the clock policy's horizon, for the hint

    @property
    def already_in_log(self) -> int:
        return self.read - self.new

    @property
    def accepted(self) -> int:
        return self.new - self.dead_lettered

    def describe(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.file.name}: {self.read} events read, {self.accepted} accepted"
            f"{f' ({self.merged_late} of them late: merged)' if self.merged_late else ''}, "
            f"{self.dead_lettered} dead-lettered{self._reasons()}, {self.already_in_log} "
            f"already in the log (skipped) in {self.seconds:.1f} s ({rate:,.0f} events/s)"
            + self._hint()
        )

    def _reasons(self) -> str:
        if not self.by_reason:
            return ""
        top = sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{n} {reason}" for reason, n in top[:5])
        return f" ({shown}{', ...' if len(top) > 5 else ''})"

    def _hint(self) -> str:
        # The usual surprise of replaying an archive: the clock policy's horizon.
        if not self.by_reason.get("too_old"):
            return ""
        days = f" ({self.max_event_age_days:g} days)" if self.max_event_age_days else ""
        return (
            f"\n{self.by_reason['too_old']} events were older than max_event_age_days{days} "
            "when replayed; to load them, raise it in the plant file and run "
            "`mesflow dead-letters requeue --reason too_old`"
        )


def source_prefix(path: Path) -> str:
    """`replay:<file name>:`, the source of the file's rows (line number appended).

    A file name that is not valid Unicode (bytes decoded with surrogate escapes) is stored
    escaped, as every text is (safe_text).
    """
    return f"replay:{safe_text(path.name, 200)}:"


def line_records(path: Path) -> Iterator[list[LogRecord]]:
    """The file's non-blank lines as log records, in chunks; never raises on content."""
    seen: dict[bytes, int] = {}

    def line_key(line: bytes) -> bytes:
        # No id: the line's content and how often it occurred so far name it.
        digest = dedupe_key(line)
        n = seen.get(digest, 0) + 1
        seen[digest] = n
        return dedupe_key(b"line:%s:%d" % (digest, n))

    chunk: list[LogRecord] = []
    prefix = source_prefix(path)
    with path.open("rb") as f:
        for lineno, line, size in _bounded_lines(f):
            source = prefix + str(lineno)
            if size > MAX_PAYLOAD_BYTES:
                # Only a prefix was read: name the line by it and its size.
                rec = error_record(
                    source,
                    line,
                    "too_large",
                    f"{size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                    dedupe=line_key(b"%d:%s" % (size, line)),
                )
            else:
                rec = _line_record(source, line, line_key)
            chunk.append(rec)
            if len(chunk) >= CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _line_record(source: str, line: bytes, line_key: Callable[[bytes], bytes]) -> LogRecord:
    rec = fast_record(source, line)  # most lines: msgspec, same record (ingest_log.py)
    if rec is None:
        try:
            body = decode_object(line)
        except DecodeError as err:
            return error_record(source, line, err.reason, err.detail, dedupe=line_key(line))
        rec = record_for(source, body)
    if rec.dedupe_key is None:  # no id, or an error record
        rec = rec._replace(dedupe_key=line_key(line))
    return rec


def _bounded_lines(f: BinaryIO) -> Iterator[tuple[int, bytes, int]]:
    """(line number, stripped line, its size) of the non-blank lines.

    A line longer than MAX_PAYLOAD_BYTES is read only up to that many bytes (plus the
    rest counted, not kept), so one huge line cannot exhaust memory.
    """
    lineno = 0
    while raw := f.readline(MAX_PAYLOAD_BYTES + 1):
        lineno += 1
        size = len(raw)
        if size > MAX_PAYLOAD_BYTES and not raw.endswith(b"\n"):
            while rest := f.readline(1 << 20):
                size += len(rest)
                if rest.endswith(b"\n"):
                    break
            yield lineno, raw[:_KEPT_OF_HUGE_LINE], size
            continue
        line = raw.strip()
        if line:
            yield lineno, line, len(line)


# What is kept of a line over the size limit (error_record bounds it again).
_KEPT_OF_HUGE_LINE = 4096


def count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


@dataclass
class _Stored:
    read: int
    new: int
    first_seq: int | None
    last_seq: int | None
    log_end: int


def _store_file(path: Path, database_url: str, results: mp.Queue[object], lines: Any) -> None:
    """Child process: append the file's lines to the log; report what was stored."""
    try:
        stored = _Stored(0, 0, None, None, 0)
        with connect(database_url, autocommit=True) as conn:
            # The next chunk is decoded and hashed while PostgreSQL inserts this one.
            for chunk in prefetched(line_records(path)):
                result = append(conn, chunk)
                stored.read += len(chunk)
                stored.new += result.new
                if result.first_seq is not None:
                    stored.first_seq = stored.first_seq or result.first_seq
                    stored.last_seq = result.last_seq
                lines.value = stored.read
            stored.log_end = last_seq(conn)
        results.put(stored)
    except BaseException as err:
        # One line: it ends up in the replay's error message.
        results.put(f"storing failed: {type(err).__name__}: {' '.join(str(err).split())}")


def prefetched(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """`items`, produced by a thread up to `depth` ahead of the consumer.

    The storer's client work (decoding, hashing) and PostgreSQL's insert then overlap:
    while `append` waits on the server, the interpreter lock is free for the producer.
    An exception of the producer is raised here, at the item where it happened; closing
    the generator early stops the producer at its next item.
    """
    handoff: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stopping = threading.Event()

    def give(entry: tuple[bool, Any]) -> bool:
        # Never blocks for good: a consumer that stopped taking sets `stopping`.
        while not stopping.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not give((True, item)):
                    return
            give((False, None))
        except BaseException as err:  # handed to the consumer, raised there
            give((False, err))

    producer = threading.Thread(target=produce, name="replay-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            ok, value = handoff.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        stopping.set()
        producer.join(timeout=5)


# The `upto` a failed store turns into: the dataflow's input ends at its next read (a
# position at or past `upto` ends it, streams/log_source.py), and the dataflow writes its
# work in hand and stops as cleanly as at the end of a file. An exception raised inside
# Bytewax instead would abort the process with a Rust backtrace.
_END_NOW = 0


class _Target:
    """The last log seq of the file: unknown until the storing process reports it, or
    `_END_NOW` once that process failed or died without a report (then `failure` says how):
    a dead storer must not leave the replay waiting for ever."""

    def __init__(self, results: mp.Queue[object], storer: BaseProcess) -> None:
        self.results = results
        self.storer = storer
        self.stored: _Stored | None = None
        self.failure: str | None = None

    def __call__(self) -> int | None:
        if self.stored is None and self.failure is None:
            self._poll()
        if self.failure is not None:
            return _END_NOW
        return None if self.stored is None else self.stored.log_end

    def _poll(self) -> None:
        try:
            msg = self.results.get_nowait()
        except queue.Empty:
            if self.storer.exitcode is None:  # still storing (or not started yet)
                return
            try:  # a report sent just before it exited may still be in the pipe
                msg = self.results.get(timeout=1.0)
            except queue.Empty:
                self.failure = (
                    f"the storing process {_ended(self.storer.exitcode)} without a report"
                )
                return
        if isinstance(msg, str):
            self.failure = msg
        else:
            assert isinstance(msg, _Stored)
            self.stored = msg


def _ended(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def incomplete_message(path: Path, failure: str, lines_stored: int) -> str:
    """The one line a replay whose file was not stored whole ends with."""
    return (
        f"replay of {safe_text(path.name, 200)} stopped: {failure}; the first "
        f"{lines_stored} lines of the file are in the ingest log. Run the same replay "
        "again: lines already stored are skipped (deduplicated), so it continues safely"
    )


def replay_file(
    path: Path,
    plant: PlantConfig,
    database_url: str,
    recovery_dir: Path,
    *,
    progress: bool = True,
    snapshot_seconds: float = 10.0,
) -> ReplaySummary:
    """Store the file in the log while the dataflow processes it, until both are done.

    Storing runs in a child process, so reading and hashing the file does not compete
    with the dataflow for this process's interpreter lock; a replay takes about as long
    as the slower of the two, not their sum.
    """
    summary = ReplaySummary(path)
    started = time.monotonic()
    ctx = mp.get_context("spawn")
    results: mp.Queue[object] = ctx.Queue()
    lines_stored = ctx.Value("q", 0)
    with connect(database_url, autocommit=True) as conn:
        start_pos = _flow_position(conn)

    total = count_lines(path) if progress else 0
    storer = ctx.Process(
        target=_store_file, args=(path, database_url, results, lines_stored), daemon=True
    )
    target = _Target(results, storer)
    with click.progressbar(
        length=max(total, 1), label="replaying", hidden=not progress, show_pos=True
    ) as bar:
        watcher_done = threading.Event()

        def watch() -> None:
            with connect(database_url, autocommit=True) as conn:
                while not watcher_done.wait(0.25):
                    done = min(_flow_position(conn) - start_pos, lines_stored.value)
                    bar.update(max(0, done - bar.pos))

        watcher = threading.Thread(target=watch, daemon=True)
        storer.start()
        watcher.start()
        try:
            live_flow = False
            try:
                run_flow(
                    plant,
                    database_url,
                    recovery_dir,
                    snapshot_seconds,
                    upto_seq=target,
                    batch_size=20_000,
                )
            except DataflowBusy:
                live_flow = True
                while (end := target()) is None:
                    time.sleep(0.1)
                if target.failure is None:
                    _wait_for_live_flow(database_url, end)
        finally:
            watcher_done.set()
            watcher.join()
            storer.join()
        while target() is None:  # the flow had nothing to do: the result may still be queued
            time.sleep(0.05)
        if target.failure is not None:
            raise ReplayIncomplete(incomplete_message(path, target.failure, lines_stored.value))
        bar.update(max(total, 1) - bar.pos)
    stored = target.stored
    assert stored is not None
    summary.read, summary.new = stored.read, stored.new
    if stored.first_seq is not None and stored.last_seq is not None:
        with connect(database_url, autocommit=True) as conn:
            # Late lines are merged by a rebuild shortly after they were read: wait for it.
            wait_for_merges(conn, stored.first_seq, stored.last_seq, settle_s=0.3 * live_flow)
            summary.merged_late = merged_between(conn, stored.first_seq, stored.last_seq)
            rows = conn.execute(
                """SELECT reason, count(*) FROM dead_letter
                   WHERE log_seq BETWEEN %s AND %s AND starts_with(source, %s)
                   GROUP BY reason""",
                (stored.first_seq, stored.last_seq, source_prefix(path)),
            ).fetchall()
        summary.by_reason = {str(reason): int(n) for reason, n in rows}
        summary.dead_lettered = sum(summary.by_reason.values())
        summary.max_event_age_days = plant.plant.max_event_age_days
    summary.seconds = time.monotonic() - started
    return summary


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


def _flow_position(conn: psycopg.Connection) -> int:
    # The lowest log partition's (sql/035): a live cluster's partitions advance unevenly.
    row = conn.execute("SELECT COALESCE(min(last_seq), 0) FROM dataflow_progress").fetchone()
    return int(row[0]) if row else 0
