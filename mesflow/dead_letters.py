"""Dead letters: list them by reason, show one, re-queue them after a fix, discard them.

Re-queueing appends the original payload to the ingest log as a new row (through
`mesflow.ingest_log.append`, like any collector), marks the dead letter `requeued` with
that row's seq and retires the original row (its `error` becomes `requeued: ...`, so a
dataflow that reads it again refuses it instead of counting it a second time), in one
transaction. The new row's dedupe key is derived from the
dead letter (`requeue:<seq>`), not from the event id, which the dead-lettered row still
holds: so the dataflow processes it, and a second requeue (or a retried one after a
crash) finds the key already in the log and adds nothing.

A dead letter whose event the dataflow had already applied (`APPLIED_REASONS`: only a
result row was refused) is not re-queued unless asked for explicitly: its copy would be
counted a second time.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg

from mesflow.db import connect, unreachable
from mesflow.ingest_log import LogRecord, append, dedupe_key, record_from_bytes, safe_text
from mesflow.plant import PlantConfig

# Reasons whose event the dataflow had applied before its dead letter was written: the
# sink's `db_refused` (streams/pg_sink.py) names the last event of a machine or order whose
# result row PostgreSQL refused; that event is in the tracker's figures. Every other reason
# is a refusal before any machine saw the event (docs/events.md, "Bad input").
APPLIED_REASONS = frozenset({"db_refused"})

# A requeue transaction holds the log's append lock: keep it short.
_BATCH_ROWS = 500
_BATCH_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class ReasonSummary:
    reason: str
    open: int
    requeued: int
    discarded: int
    first_seen: datetime
    last_seen: datetime
    examples: tuple[tuple[int, str], ...]  # (log_seq, detail) of recent open ones

    @property
    def total(self) -> int:
        return self.open + self.requeued + self.discarded


@dataclass(frozen=True, slots=True)
class DeadLetter:
    log_seq: int
    received_at: datetime
    source: str
    reason: str
    detail: str
    recorded_at: datetime
    status: str  # open | requeued | discarded
    resolved_at: datetime | None
    requeued_seq: int | None
    payload: bytes | None  # None: resolved and its log row pruned


@dataclass(slots=True)
class RequeueResult:
    requeued: int = 0
    already_resolved: int = 0
    no_payload: int = 0
    not_found: int = 0
    new_seqs: list[int] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{self.requeued} requeued"]
        if self.new_seqs:
            parts[0] += f" (log seq {self.new_seqs[0]}..{self.new_seqs[-1]})"
        if self.already_resolved:
            parts.append(f"{self.already_resolved} already resolved (skipped)")
        if self.no_payload:
            parts.append(f"{self.no_payload} without a payload (skipped)")
        if self.not_found:
            parts.append(f"{self.not_found} not found")
        return ", ".join(parts)


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `3d`, `1w` (ago) or an ISO date/time (UTC when it has no offset)."""
    m = _RELATIVE.match(text.strip())
    if m:
        now = now or datetime.now(UTC)
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: give e.g. 2h, 3d or 2026-11-20T08:00") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def summarize(
    conn: psycopg.Connection[Any],
    *,
    reason: str | None = None,
    since: datetime | None = None,
    examples: int = 3,
) -> list[ReasonSummary]:
    """One row per reason, most open first; examples are the newest open ones."""
    rows = conn.execute(
        """WITH d AS (
               SELECT * FROM dead_letter
               WHERE (%(reason)s::text IS NULL OR reason = %(reason)s)
                 AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s))
           SELECT reason,
                  count(*) FILTER (WHERE resolved_at IS NULL),
                  count(*) FILTER (WHERE resolution = 'requeued'),
                  count(*) FILTER (WHERE resolved_at IS NOT NULL AND resolution <> 'requeued'),
                  min(received_at), max(received_at),
                  (SELECT array_agg(ARRAY[e.log_seq::text, e.detail] ORDER BY e.log_seq DESC)
                   FROM (SELECT log_seq, detail FROM d d2
                         WHERE d2.reason = d.reason AND d2.resolved_at IS NULL
                         ORDER BY log_seq DESC LIMIT %(n)s) e)
           FROM d GROUP BY reason
           ORDER BY count(*) FILTER (WHERE resolved_at IS NULL) DESC, reason""",
        {"reason": reason, "since": since, "n": examples},
    ).fetchall()
    return [
        ReasonSummary(
            r[0], r[1], r[2], r[3], r[4], r[5], tuple((int(s), d) for s, d in (r[6] or []))
        )
        for r in rows
    ]


def get(conn: psycopg.Connection[Any], log_seq: int) -> DeadLetter | None:
    with conn.cursor(binary=True) as cur:
        row = cur.execute(
            """SELECT log_seq, received_at, source, reason, detail, recorded_at, status,
                      resolved_at, requeued_seq, payload
               FROM v_dead_letter WHERE log_seq = %s""",
            (log_seq,),
        ).fetchone()
    return None if row is None else DeadLetter(*row)


def escape_payload(payload: bytes, limit: int | None = None) -> str:
    """Printable text of an untrusted payload: invalid UTF-8 as \\xNN, control and format
    characters (terminal escapes, bidi overrides, NUL) as \\uNNNN; newlines and tabs stay."""
    data = payload if limit is None else payload[:limit]
    text = data.decode("utf-8", errors="backslashreplace")
    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}")
    if limit is not None and len(payload) > limit:
        out.append(f"\n… {len(payload) - limit:,} more bytes (use --raw for all)")
    return "".join(out)


def _select(
    conn: psycopg.Connection[Any], seqs: Sequence[int] | None, reason: str | None
) -> list[int]:
    if seqs:
        return sorted(set(seqs))
    rows = conn.execute(
        "SELECT log_seq FROM dead_letter WHERE reason = %s AND resolved_at IS NULL "
        "ORDER BY log_seq",
        (reason,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _batches(conn: psycopg.Connection[Any], seqs: list[int]) -> list[list[int]]:
    """Chunks of at most _BATCH_ROWS rows and about _BATCH_BYTES of payload."""
    sizes = dict(
        conn.execute(
            "SELECT log_seq, coalesce(octet_length(payload), 0) FROM v_dead_letter "
            "WHERE log_seq = ANY(%s)",
            (seqs,),
        ).fetchall()
    )
    out: list[list[int]] = []
    chunk: list[int] = []
    size = 0
    for s in seqs:
        if chunk and (len(chunk) >= _BATCH_ROWS or size + sizes.get(s, 0) > _BATCH_BYTES):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(s)
        size += sizes.get(s, 0)
    if chunk:
        out.append(chunk)
    return out


class AlreadyApplied(ValueError):
    """Some of the dead letters to re-queue hold events the dataflow already applied."""

    def __init__(self, by_reason: dict[str, list[int]]) -> None:
        self.by_reason = by_reason
        parts = []
        for reason, seqs in sorted(by_reason.items()):
            shown = ", ".join(str(s) for s in seqs[:5]) + (", ..." if len(seqs) > 5 else "")
            parts.append(f"{len(seqs)} {reason} (seq {shown})")
        super().__init__(
            f"not re-queued: {'; '.join(parts)}: their events were already applied by the "
            "dataflow (only a result row was refused), so a copy would be counted twice. "
            "Fix the cause the detail names (`mesflow dead-letters show SEQ`) and discard "
            "them; nothing was re-queued"
        )


def applied_among(conn: psycopg.Connection[Any], seqs: Sequence[int]) -> dict[str, list[int]]:
    """Open dead letters among `seqs` whose reason is in APPLIED_REASONS, by reason."""
    out: dict[str, list[int]] = {}
    for seq, reason in conn.execute(
        "SELECT log_seq, reason FROM dead_letter WHERE log_seq = ANY(%s) "
        "AND resolved_at IS NULL AND reason = ANY(%s) ORDER BY log_seq",
        (list(seqs), sorted(APPLIED_REASONS)),
    ):
        out.setdefault(str(reason), []).append(int(seq))
    return out


def requeue_key(log_seq: int) -> bytes:
    return dedupe_key(f"requeue:{log_seq}")


_REQUEUED = re.compile(r"^(?:requeue:\d+:)+")


def origin_source(source: str) -> str:
    """Where an input first came from: `requeue:<seq>:` prefixes removed."""
    return _REQUEUED.sub("", source)


def requeue_record(
    log_seq: int, source: str, payload: bytes, plant: PlantConfig | None = None
) -> LogRecord:
    """The log row of a requeued dead letter, keyed by the dead letter, its source
    `requeue:<seq>:<origin>`.

    An MQTT input is mapped again by the collector's own function with the current plant
    model (`plant`), so that a fix in the plant file (a state code added to a mapping, a
    machine added) applies; it holds the payload as published, the topic in its source.
    Anything else is decoded like any input. An input that still fails becomes an error
    row again, and so a dead letter again, with the reason of today.
    """
    origin = origin_source(source)
    key = requeue_key(log_seq)
    if plant is not None and origin.startswith("mqtt:"):
        from collectors.mqtt_json import map_message  # the collector's mapping, not a copy

        rec = map_message(plant, origin.removeprefix("mqtt:"), payload)
    else:
        rec = record_from_bytes(origin, payload, line_key=key)
    return rec._replace(source=safe_text(f"requeue:{log_seq}:{origin}", 1000), dedupe_key=key)


def requeue(
    conn: psycopg.Connection[Any],
    *,
    seqs: Sequence[int] | None = None,
    reason: str | None = None,
    plant: PlantConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    even_if_applied: bool = False,
) -> RequeueResult:
    """Re-append the payloads of the given dead letters (or every open one of `reason`);
    `plant`: the current plant model, to map MQTT inputs again (`requeue_record`).

    Raises AlreadyApplied, changing nothing, if any of them holds an event the dataflow
    had already applied (`APPLIED_REASONS`), unless `even_if_applied`: the copy is then
    counted a second time by the live figures."""
    if not seqs and not reason:
        raise ValueError("give dead-letter seqs or a reason")
    result = RequeueResult()
    wanted = _select(conn, seqs, reason)
    if not even_if_applied:
        # A dead letter's reason never changes: checking once before the batches is enough.
        applied = applied_among(conn, wanted)
        if applied:
            raise AlreadyApplied(applied)
    done = 0
    for chunk in _batches(conn, wanted):
        with conn.transaction():
            with conn.cursor(binary=True) as cur:
                rows = cur.execute(
                    """SELECT d.log_seq, d.resolved_at IS NOT NULL, d.source,
                              COALESCE(d.payload, l.payload)
                       FROM dead_letter d LEFT JOIN ingest_log l ON l.seq = d.log_seq
                       WHERE d.log_seq = ANY(%s) ORDER BY d.log_seq
                       FOR UPDATE OF d""",
                    (chunk,),
                ).fetchall()
            result.not_found += len(chunk) - len(rows)
            todo: list[tuple[int, bytes]] = []
            records: list[LogRecord] = []
            for seq, resolved, source, payload in rows:
                if resolved:
                    result.already_resolved += 1
                elif payload is None:
                    result.no_payload += 1
                else:
                    todo.append((int(seq), bytes(payload)))
                    records.append(requeue_record(int(seq), str(source), bytes(payload), plant))
            if todo:
                append(conn, records)
                # Found by key: also right when an earlier, interrupted run stored it.
                keys = {requeue_key(seq): seq for seq, _ in todo}
                new_seq = {
                    keys[bytes(k)]: int(s)
                    for s, k in conn.execute(
                        "SELECT seq, dedupe_key FROM ingest_log WHERE dedupe_key = ANY(%s)",
                        (list(keys),),
                    )
                }
                conn.cursor().executemany(
                    """UPDATE dead_letter SET resolved_at = now(), resolution = 'requeued',
                              requeued_seq = %s
                       WHERE log_seq = %s""",
                    [(new_seq[seq], seq) for seq, _ in todo],
                )
                # Retire the original: a dataflow that reads it again (a resume from an
                # older snapshot, a machine rebuild after late data) under the fixed plant
                # file would count it besides its copy; as an error row it is refused.
                conn.cursor().executemany(
                    "UPDATE ingest_log SET error = %s WHERE seq = %s AND error IS NULL",
                    [(f"requeued: re-queued as log seq {new_seq[seq]}", seq) for seq, _ in todo],
                )
                result.requeued += len(todo)
                result.new_seqs.extend(new_seq[seq] for seq, _ in todo)
        done += len(chunk)
        if progress:
            progress(done, len(wanted))
    result.new_seqs.sort()
    return result


def discard(
    conn: psycopg.Connection[Any], *, seqs: Sequence[int] | None = None, reason: str | None = None
) -> int:
    """Mark open dead letters as discarded: nothing to fix, their payload may go."""
    if not seqs and not reason:
        raise ValueError("give dead-letter seqs or a reason")
    cur = conn.execute(
        """UPDATE dead_letter SET resolved_at = now(), resolution = 'discarded'
           WHERE resolved_at IS NULL AND (log_seq = ANY(%s) OR reason = %s)""",
        (list(seqs or []), reason if not seqs else None),
    )
    return cur.rowcount


# --- `mesflow dead-letters list|show|requeue|discard` ------------------------------------


def _url() -> str:
    from mesflow.settings import get_settings

    url = get_settings().database_url
    if not url:
        raise click.ClickException("MESFLOW_DATABASE_URL is not set")
    return url


def _conn() -> psycopg.Connection[Any]:
    url = _url()
    try:
        return connect(url, autocommit=True)
    except psycopg.OperationalError as err:  # the same one line as every other command
        raise click.ClickException(unreachable(url, err)) from None


def _one_line(text: str, width: int) -> str:
    flat = escape_payload(text.encode()).replace("\n", " ").replace("\t", " ")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@click.group("dead-letters")
def cli() -> None:
    """Inputs the pipeline refused: list by reason, show, re-queue after a fix, discard."""


@cli.command("list")
@click.option("--reason", metavar="R", help="Only this reason (e.g. unknown_machine).")
@click.option("--since", metavar="WHEN", help="Received since: 2h, 3d, 1w or an ISO time.")
def cli_list(reason: str | None, since: str | None) -> None:
    """A table by reason: open / requeued / discarded counts and recent open examples."""
    try:
        at = parse_since(since) if since else None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    with _conn() as conn:
        rows = summarize(conn, reason=reason, since=at)
    if not rows:
        click.echo("no dead letters" + (f" with reason {reason}" if reason else ""))
        return
    click.echo(
        f"{'reason':<20} {'open':>8} {'requeued':>9} {'discarded':>9}  "
        f"{'first seen':<16}  {'last seen':<16}"
    )
    for r in rows:
        click.echo(
            f"{r.reason:<20} {r.open:>8,} {r.requeued:>9,} {r.discarded:>9,}  "
            f"{r.first_seen:%Y-%m-%d %H:%M}  {r.last_seen:%Y-%m-%d %H:%M}"
        )
        for seq, detail in r.examples:
            click.echo(f"    seq {seq}: {_one_line(detail, 100)}")
    click.echo("show one: mesflow dead-letters show SEQ; after a fix: ... requeue --reason R")


@cli.command("show")
@click.argument("seq", type=int)
@click.option("--raw", is_flag=True, help="Write the payload's bytes unchanged to stdout.")
@click.option("--max-bytes", default=65536, show_default=True, help="Payload bytes to print.")
def cli_show(seq: int, raw: bool, max_bytes: int) -> None:
    """One dead letter with its payload (control characters escaped)."""
    with _conn() as conn:
        d = get(conn, seq)
    if d is None:
        raise click.ClickException(f"no dead letter with seq {seq}")
    if raw:
        if d.payload is not None:
            sys.stdout.buffer.write(d.payload)
            sys.stdout.flush()
        return
    click.echo(f"seq:       {d.log_seq}")
    click.echo(f"received:  {d.received_at.isoformat()}")
    click.echo(f"source:    {_one_line(d.source, 200)}")
    click.echo(f"reason:    {d.reason}")
    click.echo(f"detail:    {_one_line(d.detail, 500)}")
    status = d.status
    if d.requeued_seq is not None:
        status += f" as log seq {d.requeued_seq}"
    if d.resolved_at is not None:
        status += f" at {d.resolved_at.isoformat()}"
    click.echo(f"status:    {status}")
    if d.payload is None:
        click.echo("payload:   (removed by retention after the dead letter was resolved)")
        return
    click.echo(f"payload:   {len(d.payload):,} bytes")
    click.echo(escape_payload(d.payload, max_bytes))


def _target(seqs: tuple[int, ...], reason: str | None) -> None:
    if bool(seqs) == bool(reason):
        raise click.UsageError("give either --reason R or one or more SEQ")


@cli.command("requeue")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--reason", metavar="R", help="Every open dead letter with this reason.")
@click.option(
    "--even-if-applied",
    is_flag=True,
    help="Also re-queue dead letters whose event was already applied (db_refused): "
    "the copy is counted a second time.",
)
def cli_requeue(seqs: tuple[int, ...], reason: str | None, even_if_applied: bool) -> None:
    """Append the payloads again to the ingest log (after a fix, e.g. a machine added to
    the plant file and `mesflow db migrate` run): the dataflow processes them anew.
    Requeuing the same dead letter twice adds nothing. `db_refused` dead letters are
    refused: their events were already counted (only a result row was refused)."""
    _target(seqs, reason)

    def note(done: int, total: int) -> None:
        click.echo(f"requeue: {done:,}/{total:,}", err=True)

    from mesflow.plant import ConfigError, load_plant_config
    from mesflow.settings import get_settings

    try:  # the fixed plant file: MQTT inputs are mapped again with it
        plant = load_plant_config(get_settings().plant_config)
    except ConfigError as err:
        raise click.ClickException(f"plant configuration: {err}") from None
    with _conn() as conn:
        if even_if_applied and (applied := applied_among(conn, _select(conn, seqs, reason))):
            n = sum(len(v) for v in applied.values())
            click.echo(
                f"warning: re-queueing {n} dead letter(s) whose event the dataflow already "
                f"applied ({', '.join(sorted(applied))}): their events may be counted twice",
                err=True,
            )
        try:
            result = requeue(
                conn,
                seqs=list(seqs),
                reason=reason,
                plant=plant,
                progress=note,
                even_if_applied=even_if_applied,
            )
        except AlreadyApplied as err:
            raise click.ClickException(f"{err} (--even-if-applied re-queues them anyway)") from None
    click.echo(result.describe())


@cli.command("discard")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--reason", metavar="R", help="Every open dead letter with this reason.")
def cli_discard(seqs: tuple[int, ...], reason: str | None) -> None:
    """Mark dead letters as resolved without re-queueing (retention may then drop them)."""
    _target(seqs, reason)
    with _conn() as conn:
        n = discard(conn, seqs=list(seqs), reason=reason)
    click.echo(f"{n} dead letter(s) discarded")
