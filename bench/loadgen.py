"""A load generator that is never the bottleneck and counts what it really sent.

    python -m bench.loadgen --host 127.0.0.1 --port 1883 [--rate 0] [--seconds 10]

Speaks MQTT 3.1.1 over a raw socket (no paho: its per-message cost and its silently full
queue made the old live benchmark lie above ~6k/s). Each of `processes` worker processes
has its own connection, pre-encodes every PUBLISH packet of its share once, and at send
time only splices in the send time (`ts`, fixed width) and a unique event id. Messages go
at QoS 1 and a message counts as *sent* only when the broker's PUBACK for it came back:
`acked` is what the broker really took, `written` what went into the socket.

A rate of 0 sends as fast as the broker acknowledges (the generator's own ceiling, with
at most `window` messages unacknowledged per worker).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

TS_MARK = "\x00TS\x00"  # placeholders in a template's JSON: replaced at send time
ID_MARK = "\x00ID\x00"
TS_WIDTH = 32  # 2026-11-30T03:00:00.123456+00:00: isoformat() in UTC, always this wide
ID_DIGITS = 10
PUBACK = 0x40
MAX_PACKET_ID = 65535
TICK = 0.005  # seconds between the paced sends of one worker


@dataclass(frozen=True)
class Template:
    """One message to send many times: its PUBLISH packet around the two spliced fields.

    packet = head + packet id + pre + ts + mid + id digits + post"""

    head: bytes
    pre: bytes
    mid: bytes
    post: bytes

    @property
    def size(self) -> int:
        return (
            len(self.head)
            + 2
            + len(self.pre)
            + TS_WIDTH
            + len(self.mid)
            + ID_DIGITS
            + len(self.post)
        )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def template(topic: str, event: dict[str, Any], id_prefix: str) -> Template:
    """A QoS 1 PUBLISH of `event` (JSON) to `topic`; `event` holds TS_MARK where the send
    time goes and ID_MARK where the event id (`id_prefix` + 10 digits) goes."""
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    pre, rest = body.split(json.dumps(TS_MARK)[1:-1], 1)
    mid, post = rest.split(json.dumps(ID_MARK)[1:-1], 1)
    parts = pre.encode(), (mid + id_prefix).encode(), post.encode()
    variable = _utf8(topic)
    remaining = len(variable) + 2 + sum(map(len, parts)) + TS_WIDTH + ID_DIGITS
    return Template(bytes([0x32]) + _varint(remaining) + variable, *parts)


def connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, keep-alive off (we never idle long enough to need it)
    variable = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)
    payload = _utf8(client_id)
    return bytes([0x10]) + _varint(len(variable) + len(payload)) + variable + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def open_connection(host: str, port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    connack = _recv_exact(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"the broker refused the connection: CONNACK {connack.hex()}")
    return sock


class _Acks:
    """PUBACKs read off the socket without blocking; a torn packet waits for its rest."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.count = 0
        self._rest = b""

    def read(self, block: bool) -> None:
        # select, not MSG_DONTWAIT: a socket with a timeout waits for data before recv()
        if not select.select([self.sock], [], [], 1.0 if block else 0)[0]:
            return
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the broker closed the connection")
        data = self._rest + data
        whole = len(data) - len(data) % 4
        # Every packet the broker sends us is a 4-byte PUBACK (we subscribe to nothing):
        # check the type byte of each, so that a count is never made of garbage.
        if data[0:whole:4].strip(bytes([PUBACK])):
            raise ConnectionError(f"unexpected packet from the broker: {data[:8].hex()}")
        self.count += whole // 4
        self._rest = data[whole:]


@dataclass
class WorkerResult:
    written: int
    acked: int
    first_send: float  # time.time()
    last_send: float
    last_ack: float
    acked_per_second: list[int]  # acknowledgements by second since the common start
    cpu_s: float


def _worker(
    index: int,
    host: str,
    port: int,
    templates: Sequence[Template],
    rate: float,
    seconds: float,
    count: int,
    window: int,
    id_base: int,
    start_at: Any,  # a multiprocessing Value: the common start, time.time()
    progress: SynchronizedArray[int],
    results: Any,
    ready: Any,
) -> None:
    sock = open_connection(host, port, f"mesflow-loadgen-{os.getpid()}-{index}")
    sock.settimeout(1.0)
    acks = _Acks(sock)
    ready.release()
    while start_at.value == 0:
        time.sleep(0.001)
    start = start_at.value
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)
    cpu0 = time.process_time()
    n_templates = len(templates)
    written = 0
    per_second: list[int] = []
    first_send = time.time()
    last_send = first_send
    chunk_max = 500
    deadline = start + seconds if seconds > 0 else float("inf")
    limit = count if count > 0 else 1 << 62

    def note_acks(block: bool) -> None:
        before = acks.count
        acks.read(block)
        if acks.count > before:
            sec = int(time.time() - start)
            while len(per_second) <= sec:
                per_second.append(0)
            per_second[sec] += acks.count - before

    while written < limit:
        now = time.time()
        if now >= deadline:
            break
        due = limit - written if rate <= 0 else int((now - start) * rate) + 1 - written
        due = min(due, chunk_max, limit - written, window - (written - acks.count))
        if due <= 0:
            if written - acks.count >= window:
                note_acks(True)  # the window is full: wait for the broker
            else:
                note_acks(False)
                # Paced: send what is due every TICK seconds (each message is still stamped
                # with its own send time); a shorter tick only costs the generator CPU.
                time.sleep(TICK)
            continue
        ts = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds").encode()
        if len(ts) != TS_WIDTH:  # the packets' remaining length counts on this width
            raise ValueError(f"send time {ts!r} is not {TS_WIDTH} bytes wide")
        parts: list[bytes] = []
        for i in range(written, written + due):
            t = templates[i % n_templates]
            parts += (
                t.head,
                (i % MAX_PACKET_ID + 1).to_bytes(2, "big"),
                t.pre,
                ts,
                t.mid,
                b"%010d" % (id_base + i),
                t.post,
            )
        sock.sendall(b"".join(parts))
        written += due
        last_send = time.time()
        progress[2 * index] = written
        note_acks(False)
        progress[2 * index + 1] = acks.count
    # Wait for the broker to acknowledge what was written (bounded: a broker that stops
    # acknowledging leaves acked < written, which the caller reports as not sent).
    give_up = time.time() + 30
    while acks.count < written and time.time() < give_up:
        note_acks(True)
        progress[2 * index + 1] = acks.count
    last_ack = time.time()
    try:
        sock.sendall(bytes([0xE0, 0]))  # DISCONNECT
    finally:
        sock.close()
    results.put(
        (
            index,
            WorkerResult(
                written,
                acks.count,
                first_send,
                last_send,
                last_ack,
                per_second,
                time.process_time() - cpu0,
            ),
        )
    )


@dataclass
class LoadResult:
    written: int
    acked: int
    seconds: float  # from the common start to the last message written
    acked_per_second: list[int]
    cpu_s: float  # CPU of all the worker processes while sending
    workers: list[WorkerResult] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Acknowledged messages per second of sending."""
        return self.acked / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lost = self.written - self.acked
        full = self.acked_per_second[1 : int(self.seconds)]  # leave out ramp-up and tail
        return (
            f"generator: {self.acked:,} acknowledged by the broker (QoS 1) of {self.written:,} "
            f"written in {self.seconds:.1f} s = {self.rate:,.0f}/s"
            + (f", {lost:,} NOT acknowledged" if lost else "")
            + f"; per whole second min {min(full, default=0):,} max {max(full, default=0):,}"
            + f"; {len(self.workers)} processes, "
            f"{1e6 * self.cpu_s / max(self.acked, 1):.1f} µs CPU per message"
        )


class LoadGenerator:
    """`processes` publishing processes; `templates[w]` is the message cycle of worker w.

    `rate` (messages/s for all workers together; 0: as fast as the broker acknowledges),
    and `seconds` or `count` (messages for all workers together) ends the run."""

    def __init__(
        self,
        host: str,
        port: int,
        templates: Sequence[Sequence[Template]],
        *,
        rate: float = 0,
        seconds: float = 0,
        count: int = 0,
        window: int = 20000,
        id_base: int = 0,
    ) -> None:
        if not seconds and not count:
            raise ValueError("give seconds or count")
        if window >= MAX_PACKET_ID:
            raise ValueError("at most 65534 messages can be unacknowledged (packet ids)")
        ctx = mp.get_context("spawn")  # no inherited threads or sockets of the caller
        n = len(templates)
        self._progress = ctx.Array("q", 2 * n, lock=False)
        self._start = ctx.Value("d", 0.0, lock=False)
        self._results = ctx.Queue()
        self._closed = False
        ready = ctx.Semaphore(0)
        self._procs = []
        for w, cycle in enumerate(templates):
            share = count // n + (1 if w < count % n else 0) if count else 0
            self._procs.append(
                ctx.Process(
                    target=_worker,
                    args=(
                        w,
                        host,
                        port,
                        list(cycle),
                        rate / n,
                        seconds,
                        share,
                        window,
                        id_base + w * 10**9,
                        self._start,
                        self._progress,
                        self._results,
                        ready,
                    ),
                    daemon=True,
                )
            )
        for p in self._procs:
            p.start()
        connected = 0
        give_up = time.monotonic() + 60
        while connected < len(self._procs):
            if ready.acquire(timeout=0.2):
                connected += 1
            elif time.monotonic() > give_up or not all(p.is_alive() for p in self._procs):
                self.stop()
                raise RuntimeError("a load generator process did not connect to the broker")

    def start(self) -> float:
        """Start all workers together, 0.1 s from now; returns that start (time.time())."""
        self.started = time.time() + 0.1
        self._start.value = self.started
        return self.started

    def progress(self) -> tuple[int, int]:
        """(written, acknowledged) so far, summed over the workers."""
        values = list(self._progress)
        return sum(values[0::2]), sum(values[1::2])

    def join(self, timeout: float = 120) -> LoadResult:
        workers: dict[int, WorkerResult] = {}
        deadline = time.monotonic() + timeout
        while len(workers) < len(self._procs):
            left = deadline - time.monotonic()
            if left <= 0 or (not any(p.is_alive() for p in self._procs) and self._results.empty()):
                break
            try:
                index, result = self._results.get(timeout=min(left, 1.0))
            except Exception:  # queue.Empty: look again whether a worker died
                continue
            workers[index] = result
        self.stop()
        if len(workers) < len(self._procs):
            raise RuntimeError("a load generator process ended without a result")
        done = [workers[i] for i in sorted(workers)]
        per_second = [0] * max(len(w.acked_per_second) for w in done)
        for w in done:
            for s, v in enumerate(w.acked_per_second):
                per_second[s] += v
        return LoadResult(
            written=sum(w.written for w in done),
            acked=sum(w.acked for w in done),
            seconds=max(w.last_send for w in done) - self.started,
            acked_per_second=per_second,
            cpu_s=sum(w.cpu_s for w in done),
            workers=done,
        )

    def stop(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(5)
        if not self._closed:
            self._closed = True
            self._results.close()
            self._results.join_thread()


def split(items: Sequence[Any], processes: int) -> list[list[Any]]:
    """Round-robin shares, so a machine's messages all come from one worker (in order)."""
    return [list(items[w::processes]) for w in range(processes) if items[w::processes]]


def plain_templates(topic: str, processes: int, tag: str) -> list[list[Template]]:
    """A minimal message cycle for a topic that no collector reads (ceilings, tests)."""
    return [
        [template(f"{topic}/{w}", {"ts": TS_MARK, "id": ID_MARK}, f"{tag}{w}-")]
        for w in range(processes)
    ]


def main() -> None:
    from bench.common import load_average, private_tmp
    from mesflow.services import start_broker

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a private mosquitto of its own")
    parser.add_argument("--rate", type=float, default=0, help="messages/s, 0: unlimited")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--topic", default="mesflow-bench/loadgen")
    args = parser.parse_args()
    with private_tmp("mesflow-loadgen-") as work:
        broker = None
        if not args.port:
            broker = start_broker(work / "broker", persistence=False, prefer="mosquitto")
            args.host, args.port = broker.host, broker.port
        try:
            gen = LoadGenerator(
                args.host,
                args.port,
                plain_templates(args.topic, args.processes, "lg"),
                rate=args.rate,
                seconds=args.seconds,
            )
            gen.start()
            result = gen.join(args.seconds + 60)
        finally:
            if broker is not None:
                broker.stop()
    print(result.describe())
    print(f"acknowledged per second: {result.acked_per_second}")
    print(load_average())


if __name__ == "__main__":
    main()
