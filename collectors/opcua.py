"""OPC UA collector: machines' state, counters and process values -> the ingest log.

Same shape as collectors/mqtt_json.py: connect to the source, map each value to the event
contract (`map_samples`, pure), hand batches to the ingest log.

- One asyncua Client per endpoint (machines behind one gateway share it), one subscription
  per machine with explicit publishing interval, keep-alive and lifetime counts, and one
  monitored item per node with explicit sampling interval and queue size.
- The data-change callback only builds a small `Sample` and puts it into an unbounded
  thread-safe queue (never blocks: blocking there would starve asyncua's loop). A writer
  thread appends batches; while PostgreSQL is down the queue holds the samples (up to
  `max_queued`, then the newest are counted as dropped and logged).
- Reconnect: a supervising task per endpoint. A lost connection is recorded at once as a
  `state` event `offline` (reason `connection_lost`) for each machine of the endpoint; the
  loop then connects a *fresh* Client with backoff (re-using one could hang, asyncua #1660)
  and re-creates the subscriptions. The first value of each node on a new connection is a
  snapshot: dated at its source time if that is after the connection was made, else at
  the time it arrived, so the state snapshot ends the `offline` gap when data is back.
- Time of an event: SourceTimestamp, else ServerTimestamp, else the time of arrival; the
  dataflow's clock policy judges it as for every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import psycopg
from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from collectors.mqtt_json import _append_isolating
from mesflow.db import connect
from mesflow.events import CANONICAL_STATES, MAX_PROCESS_VALUES, MachineState
from mesflow.ingest_log import LogRecord, error_record, record_for
from mesflow.plant import PlantConfig
from mesflow.source_health import EndpointHealth, SourceHealthReporter
from mesflow.source_opcua import NodeRef, OpcUaSource, Security, state_table

log = logging.getLogger(__name__)

OFFLINE_REASON = "connection_lost"
# OPC UA's "no time" is 1601-01-01; anything before the Unix epoch is taken as absent.
_MIN_TS = datetime(1970, 1, 2, tzinfo=UTC)

_AUTH_CODES = {
    "BadUserAccessDenied",
    "BadIdentityTokenInvalid",
    "BadIdentityTokenRejected",
    "BadUserSignatureInvalid",
}
_CERT_PREFIXES = ("BadCertificate", "BadSecurity", "BadNonceInvalid", "BadApplicationSignature")


# -- what the callback hands to the writer --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One value notification (or an offline marker, role "offline") as received."""

    machine: str
    role: str  # state | counter | process_value | offline
    name: str  # state | total | scrap | <process value name> | offline
    node: str  # the node as configured, for messages
    value: Any
    status: str | None  # None = Good; else the status code's name
    bad: bool
    source_ts: datetime | None
    server_ts: datetime | None
    received: datetime
    # When this is the first value of its node on a connection: that connection's start.
    snapshot_of: datetime | None = None


def event_time(s: Sample) -> datetime:
    """SourceTimestamp, else ServerTimestamp, else arrival; a snapshot older than its
    connection is dated at its arrival (it says "still so", not "changed then")."""
    t = next((x for x in (s.source_ts, s.server_ts) if x is not None and x >= _MIN_TS), s.received)
    if s.snapshot_of is not None and t < s.snapshot_of:
        return s.received
    return t


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def _source(s: Sample) -> str:
    return f"opcua:{s.machine}/{s.name} {s.node}"


def _raw(s: Sample) -> bytes:
    """What a dead letter keeps of a value: enough to see what the server sent."""
    body = {
        "machine": s.machine,
        "name": s.name,
        "node": s.node,
        "value": s.value if isinstance(s.value, int | float | str | bool | None) else repr(s.value),
        "value_type": type(s.value).__name__,
        "status": s.status or "Good",
        "source_ts": _iso(s.source_ts) if s.source_ts else None,
        "server_ts": _iso(s.server_ts) if s.server_ts else None,
    }
    return json.dumps(body, ensure_ascii=False, default=repr, allow_nan=True).encode(
        "utf-8", "backslashreplace"
    )


def _bad(s: Sample, reason: str, detail: str) -> LogRecord:
    return error_record(
        _source(s), _raw(s), reason, f"machine {s.machine}, node {s.node} ({s.name}): {detail}"
    )


def state_code(value: Any) -> str | None:
    """A state node's value as a mapping key: enumerations and integers as their number,
    text as itself, LocalizedText as its text, booleans as true/false; None otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):  # IntEnum too: its number, as the mappings list it
        return str(int(value))
    if isinstance(value, str):
        return value
    if isinstance(value, ua.LocalizedText):
        return value.Text
    return None


@dataclass(frozen=True)
class MachineMap:
    """What the mapping needs to know of one machine."""

    states: dict[str, MachineState] | None


def _map_one(s: Sample, m: MachineMap) -> dict[str, Any] | LogRecord:
    if s.role == "offline":
        return {
            "type": "state",
            "machine": s.machine,
            "ts": _iso(s.received),
            "state": "offline",
            # a built-in reason code (mesflow/plant.py): valid in every plant
            "reason": OFFLINE_REASON,
        }
    if s.bad:
        return _bad(s, "bad_status", f"the server reports {s.status} for this value")
    ts = _iso(event_time(s))
    v = s.value
    if s.role == "state":
        code = state_code(v)
        if code is None:
            return _bad(
                s,
                "invalid_field",
                f"a state must be a number, text or boolean, got {type(v).__name__}",
            )
        mapped: str | None = code if code in CANONICAL_STATES else None
        if mapped is None and m.states is not None:
            mapped = m.states.get(code)
        if mapped is None:
            return _bad(
                s, "unmapped_state", f"state code {code!r} is not in the machine's state mapping"
            )
        return {"type": "state", "machine": s.machine, "ts": ts, "state": mapped}
    if s.role == "counter":
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)  # a Double counter holding whole numbers
        if isinstance(v, bool) or not isinstance(v, int):
            return _bad(
                s,
                "invalid_field",
                f"a counter must be a whole number, got {type(v).__name__} {v!r}",
            )
        return {"type": "counter", "machine": s.machine, "ts": ts, "name": s.name, "value": int(v)}
    # process value
    if isinstance(v, bool) or not isinstance(v, int | float):
        return _bad(
            s, "invalid_field", f"a process value must be a number, got {type(v).__name__} {v!r}"
        )
    if not math.isfinite(v):
        return _bad(s, "invalid_field", f"a process value must be finite, got {v!r}")
    return {"type": "process_value", "machine": s.machine, "ts": ts, "values": {s.name: float(v)}}


def map_samples(samples: Iterable[Sample], machines: dict[str, MachineMap]) -> list[LogRecord]:
    """Samples -> log records, in order. Process values of one machine with one time in the
    same batch become one event (up to 64 values). Never raises."""
    out: list[LogRecord | dict[str, Any]] = []
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for s in samples:
        try:
            item = _map_one(s, machines[s.machine])
        except Exception as err:  # one value must never stop the collector
            out.append(_bad(s, "malformed", f"{type(err).__name__}: {err}"))
            continue
        if isinstance(item, dict) and item["type"] == "process_value":
            key = (item["machine"], item["ts"])
            into = merged.get(key)
            if into is not None and len(into["values"]) < MAX_PROCESS_VALUES:
                into["values"].update(item["values"])
                continue
            merged[key] = item
        out.append(item)
    return [x if isinstance(x, LogRecord) else record_for(f"opcua:{x['machine']}", x) for x in out]


# -- connection errors as one line ----------------------------------------------------------


def describe_error(err: BaseException, source: OpcUaSource) -> str:
    """Why a connection failed, for a plant engineer (never the password)."""
    if isinstance(err, UaStatusCodeError):
        name = ua.StatusCode(err.code).name
        if name in _AUTH_CODES:
            who = f"user {source.user!r}" if source.user else "anonymous access"
            hint = f" (check {source.password_env})" if source.password_env else ""
            return f"the server refused {who}: {name}{hint}"
        if name.startswith(_CERT_PREFIXES):
            return f"the server refused our certificate or security settings: {name}"
        return f"the server answered {name}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused: nothing listens at that address and port"
    if isinstance(err, socket.gaierror):
        return f"host name not found ({err})"
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        if source.security.policy != "None":
            # A server that cannot decrypt our request (server_certificate not its own)
            # closes nothing and answers nothing.
            return (
                "no answer in time (wrong address, firewall, server busy, or a "
                "server_certificate that is not this server's)"
            )
        return "no answer in time (wrong address, firewall, or server busy)"
    if isinstance(err, FileNotFoundError):
        return f"file not found: {err.filename}"
    if isinstance(err, UaError) and "No matching endpoints" in str(err):
        return (
            f"the server offers no endpoint with policy {source.security.policy} "
            f"and mode {source.security.mode}"
        )
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


# -- endpoints -------------------------------------------------------------------------------


@dataclass
class EndpointStatus:
    """Health of one endpoint, for logs and a sources page."""

    url: str
    machines: list[str]
    connected: bool = False
    since: datetime | None = None
    last_data: datetime | None = None
    received: int = 0
    errors: int = 0
    last_error: str | None = None


@dataclass
class _Endpoint:
    url: str
    source: OpcUaSource  # connection settings (the first machine's; all equal by grouping)
    password: str | None
    machines: list[tuple[str, OpcUaSource]]
    status: EndpointStatus
    node_errors: set[str] = field(default_factory=set)


def group_endpoints(plant: PlantConfig, env: dict[str, str]) -> list[_Endpoint]:
    """One entry per distinct connection (endpoint, security, user). Raises ValueError
    naming the machine for what can be known before connecting (mapping, password)."""
    groups: dict[tuple[Any, ...], _Endpoint] = {}
    for machine in plant.machines.values():
        src = machine.opcua
        if src is None:
            continue
        state_table(plant, machine)  # unknown mapping: an error now, not per value
        check_security_files(machine.id, src.security)
        password = None
        if src.password_env:
            password = env.get(src.password_env)
            if password is None:
                raise ValueError(
                    f"machine {machine.id!r}: the environment variable {src.password_env} "
                    "(its OPC UA password) is not set"
                )
        key = (src.endpoint, src.security, src.user, src.password_env)
        ep = groups.get(key)
        if ep is None:
            ep = groups[key] = _Endpoint(
                src.endpoint, src, password, [], EndpointStatus(src.endpoint, [])
            )
        ep.machines.append((machine.id, src))
        ep.status.machines.append(machine.id)
    return list(groups.values())


class _Handler:
    """asyncua subscription handler of one machine on one connection: builds a Sample and
    puts it into the queue; nothing else (no I/O, no waiting)."""

    def __init__(
        self,
        collector: OpcUaCollector,
        ep: _Endpoint,
        machine: str,
        items: dict[int, tuple[str, str, str]],
        connected_at: datetime,
        lost: asyncio.Event,
    ) -> None:
        self.collector = collector
        self.ep = ep
        self.machine = machine
        self.items = items  # client handle -> (role, name, node label)
        self.connected_at = connected_at
        self.seen: set[int] = set()
        self.lost = lost

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        now = datetime.now(UTC)
        item = data.monitored_item
        handle = item.ClientHandle
        what = self.items.get(handle)
        if what is None:
            return
        dv = item.Value
        status = dv.StatusCode if dv is not None else None
        bad = status is not None and status.is_bad()
        snapshot = None
        if handle not in self.seen and not bad:
            # The first good value: one that was Bad (e.g. BadWaitingForInitialData) does
            # not end the snapshot, so a value that comes only then is still dated fairly.
            self.seen.add(handle)
            snapshot = self.connected_at
        self.collector._put(
            Sample(
                self.machine,
                what[0],
                what[1],
                what[2],
                val,
                None if status is None or status.is_good() else status.name,
                bad,
                _aware(dv.SourceTimestamp) if dv is not None else None,
                _aware(dv.ServerTimestamp) if dv is not None else None,
                now,
                snapshot,
            )
        )
        st = self.ep.status
        st.last_data = now
        st.received += 1

    def status_change_notification(self, status: Any) -> None:
        # The server ended the subscription (shutting down, timed out): a lost connection.
        self.lost.set()


class OpcUaCollector:
    """Reads every machine with an `opcua:` section and lands its values in the ingest log.

    Two threads: the asyncio loop (all OPC UA connections) and the log writer. If either
    dies, `failed` is set and `failure` says why; the process must then exit.
    """

    def __init__(
        self,
        plant: PlantConfig,
        database_url: str,
        *,
        env: dict[str, str] | None = None,
        max_batch: int = 2000,
        max_wait: float = 0.05,
        max_queued: int = 1_000_000,
        reconnect_max_delay: float = 30.0,
        request_timeout: float = 4.0,
    ) -> None:
        self.plant = plant
        self.database_url = database_url
        self.endpoints = group_endpoints(plant, dict(os.environ) if env is None else env)
        self.machine_maps = {
            m.id: MachineMap(state_table(plant, m))
            for m in plant.machines.values()
            if m.opcua is not None
        }
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queued = max_queued
        self.reconnect_max_delay = reconnect_max_delay
        self.request_timeout = request_timeout
        self._inbox: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self.received = 0
        self.stored = 0
        self.with_errors = 0
        self.dropped = 0
        self._drop_logged_at = -60.0
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.failed = threading.Event()
        self.failure: str | None = None
        self._writer = threading.Thread(
            target=self._write_main, name="opcua-log-writer", daemon=True
        )
        self._network = threading.Thread(target=self._loop_main, name="opcua-loop", daemon=True)

    # -- callback side (asyncio loop thread) -------------------------------------------------

    def _put(self, sample: Sample) -> None:
        if self._inbox.qsize() >= self.max_queued:
            self.dropped += 1
            now = time.monotonic()
            if now - self._drop_logged_at >= 60:
                self._drop_logged_at = now
                log.error(
                    "OPC UA: %d values waiting for the database (the limit): newer values are "
                    "dropped (%d so far) until it is back",
                    self.max_queued,
                    self.dropped,
                )
            return
        self._inbox.put_nowait(sample)

    def _offline(self, ep: _Endpoint, at: datetime) -> None:
        for machine, src in ep.machines:
            if src.state is None:
                continue  # no state node would end the gap: leave the state as it was
            self._put(
                Sample(machine, "offline", "offline", ep.url, None, None, False, None, None, at)
            )

    def _loop_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self._fail("OPC UA loop", err)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop.is_set():
            return
        tasks = [asyncio.create_task(self._run_endpoint(ep)) for ep in self.endpoints]
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop:  # an endpoint loop ends only by a bug: say so, exit
                task.result()
                raise RuntimeError("an OPC UA endpoint loop ended on its own")
        # Stopping: give the loops a moment to close their sessions, then cut them off
        # (a connect in progress could otherwise hold the stop for its whole timeout).
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run_endpoint(self, ep: _Endpoint) -> None:
        assert self._stopping is not None
        delay = 1.0
        gap_open = False  # an offline event is written and no data has ended it yet
        last_logged: tuple[str, float] = ("", 0.0)
        names = ", ".join(m for m, _ in ep.machines)
        while not self._stopping.is_set():
            client = Client(ep.url, timeout=self.request_timeout)
            # The server drops our session this long after we vanish (asyncua asks for 1 h).
            client.session_timeout = 60_000
            lost = asyncio.Event()

            async def on_lost(exc: Exception, lost: asyncio.Event = lost) -> None:
                lost.set()

            client.connection_lost_callback = on_lost
            try:
                await self._configure(client, ep)
                await asyncio.wait_for(client.connect(), self.request_timeout * 3)
            except Exception as err:
                text = describe_error(err, ep.source)
                ep.status.errors += 1
                ep.status.last_error = text
                ep.status.connected = False
                now = time.monotonic()
                # One line per distinct error, repeated every 10 minutes while it lasts.
                if text != last_logged[0] or now - last_logged[1] >= 600:
                    log.error(
                        "OPC UA machine %s: cannot connect to %s: %s; retrying (every %.0f s at most)",
                        names,
                        ep.url,
                        text,
                        self.reconnect_max_delay,
                    )
                    last_logged = (text, now)
                if not gap_open:
                    self._offline(ep, datetime.now(UTC))
                    gap_open = True
                await _quiet(client.disconnect(), 2)
                await self._sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
                continue
            connected_at = datetime.now(UTC)
            try:
                await self._subscribe(client, ep, connected_at, lost)
            except Exception as err:
                log.error(
                    "OPC UA machine %s: subscribing on %s failed: %s",
                    names,
                    ep.url,
                    describe_error(err, ep.source),
                )
                ep.status.errors += 1
                lost.set()
            if not lost.is_set():
                log.info("OPC UA %s: connected (%s)", ep.url, names)
                ep.status.connected = True
                ep.status.since = connected_at
                delay = 1.0
                last_logged = ("", 0.0)
                gap_open = False
                await self._wait_any(lost)
            ep.status.connected = False
            await _quiet(client.disconnect(), 2)
            if self._stopping.is_set():
                break
            if not gap_open:
                self._offline(ep, datetime.now(UTC))
                gap_open = True
            ep.status.since = datetime.now(UTC)
            log.warning("OPC UA %s: connection lost (%s); reconnecting", ep.url, names)
            await self._sleep(delay)
            delay = min(delay * 2, self.reconnect_max_delay)

    async def _configure(self, client: Client, ep: _Endpoint) -> None:
        sec = ep.source.security
        if ep.source.user:
            client.set_user(ep.source.user)
        if ep.password is not None:
            client.set_password(ep.password)
        if sec.policy == "None":
            return
        assert sec.certificate and sec.private_key
        uri = _certificate_uri(sec.certificate)
        if uri:  # servers check that our application URI is the certificate's
            client.application_uri = uri
        await client.set_security(
            security_policies.SecurityPolicyBasic256Sha256,
            certificate=sec.certificate,
            private_key=sec.private_key,
            server_certificate=sec.server_certificate,
            mode=getattr(ua.MessageSecurityMode, sec.mode),
        )

    async def _subscribe(
        self, client: Client, ep: _Endpoint, connected_at: datetime, lost: asyncio.Event
    ) -> None:
        ns_cache: dict[str, int] = {}
        for machine, src in ep.machines:
            items: dict[int, tuple[str, str, str]] = {}
            requests: list[ua.MonitoredItemCreateRequest] = []
            for role, name, ref in src.nodes():
                try:
                    node_id = await _resolve(client, src, ref, ns_cache)
                except Exception as err:
                    self._node_error(ep, machine, name, ref, describe_error(err, src))
                    continue
                handle = len(requests) + 1
                items[handle] = (role, name, ref.label())
                requests.append(_item_request(node_id, handle, src))
            if not requests:
                continue
            params = ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=src.publishing_interval_ms,
                RequestedLifetimeCount=src.lifetime_count,
                RequestedMaxKeepAliveCount=src.keep_alive_count,
                MaxNotificationsPerPublish=10000,
                PublishingEnabled=True,
                Priority=0,
            )
            handler = _Handler(self, ep, machine, items, connected_at, lost)
            sub = await client.create_subscription(params, handler)
            results = await sub.create_monitored_items(requests)
            for request, result in zip(requests, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    role, name, label = items.pop(request.RequestedParameters.ClientHandle)
                    self._node_error(ep, machine, name, label, result.name)

    def _node_error(
        self, ep: _Endpoint, machine: str, name: str, ref: NodeRef | str, why: str
    ) -> None:
        label = ref if isinstance(ref, str) else ref.label()
        ep.status.errors += 1
        key = f"{machine}/{name}/{why}"
        if key in ep.node_errors:
            return  # said once; a reconnect would say it again every time otherwise
        ep.node_errors.add(key)
        ep.status.last_error = f"machine {machine}: node {label} ({name}): {why}"
        log.error(
            "OPC UA machine %s: node %s (%s) cannot be read on %s: %s; it is left out",
            machine,
            label,
            name,
            ep.url,
            why,
        )

    async def _wait_any(self, lost: asyncio.Event) -> None:
        assert self._stopping is not None
        waits = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- writer thread -------------------------------------------------------------------

    def _write_main(self) -> None:
        try:
            self._write_loop()
        except BaseException as err:
            self._fail("ingest log writer", err)

    def _fail(self, thread: str, err: BaseException) -> None:
        self.failure = f"{thread} failed: {type(err).__name__}: {err}"
        log.critical("%s", self.failure, exc_info=err)
        self.failed.set()

    def _write_loop(self) -> None:
        conn: psycopg.Connection | None = None
        records: list[LogRecord] = []
        delay = 0.5
        try:
            while True:
                if not records:
                    # Stop only once the loop thread is gone and everything it queued is stored.
                    if self._stop.is_set() and not self._network.is_alive() and self._inbox.empty():
                        break
                    batch = self._take_batch()
                    if not batch:
                        continue
                    records = map_samples(batch, self.machine_maps)
                    self.received += len(batch)
                try:
                    if conn is None or conn.closed:
                        conn = connect(self.database_url, autocommit=True)
                    new = _append_isolating(conn, records)
                except psycopg.OperationalError as err:
                    # The samples stay in memory (the queue keeps filling); nothing is lost
                    # unless the outage outlasts max_queued values.
                    log.warning("ingest log unreachable (%s); retrying in %.1fs", err, delay)
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5
                self.stored += new
                self.with_errors += sum(1 for r in records if r.error)
                records = []
        finally:
            if conn is not None:
                conn.close()

    def _take_batch(self) -> list[Sample]:
        try:
            first = self._inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._inbox.get(timeout=left))
                except queue.Empty:
                    break
        return batch

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()
        self._network.start()

    def health(self) -> list[EndpointHealth]:
        """The sources page's rows (mesflow/source_health.py): one per endpoint."""
        return [
            EndpointHealth(
                ep.url,
                ep.status.connected,
                ep.status.received,
                ep.status.errors,
                ep.status.last_error,
                ep.status.since,
                ep.status.last_data,
            )
            for ep in self.endpoints
        ]

    def stop(self) -> None:
        """Disconnect, store what has arrived, then return."""
        self._stop.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stopping.set)
        if self._network.is_alive():
            self._network.join(timeout=15)
        if self._writer.is_alive():
            self._writer.join(timeout=30)


def _item_request(
    node_id: ua.NodeId, handle: int, src: OpcUaSource
) -> ua.MonitoredItemCreateRequest:
    rv = ua.ReadValueId()
    rv.NodeId = node_id
    rv.AttributeId = ua.AttributeIds.Value
    mparams = ua.MonitoringParameters()
    mparams.ClientHandle = handle
    mparams.SamplingInterval = src.sampling_interval_ms
    mparams.QueueSize = src.queue_size
    mparams.DiscardOldest = True
    mir = ua.MonitoredItemCreateRequest()
    mir.ItemToMonitor = rv
    mir.MonitoringMode = ua.MonitoringMode.Reporting
    mir.RequestedParameters = mparams
    return mir


async def _namespace(client: Client, src: OpcUaSource, prefix: str, cache: dict[str, int]) -> int:
    if prefix.isdigit():
        return int(prefix)
    uri = src.namespaces.get(prefix, prefix)
    if uri not in cache:
        try:
            cache[uri] = await client.get_namespace_index(uri)
        except ValueError:
            raise LookupError(f"the server has no namespace {uri!r}") from None
    return cache[uri]


async def _resolve(
    client: Client, src: OpcUaSource, ref: NodeRef, cache: dict[str, int]
) -> ua.NodeId:
    """A configured node as a NodeId: a node id (nsu= resolved), or a browse path from
    Objects, translated by the server (an unknown element raises BadNoMatch)."""
    if ref.node is not None:
        text = ref.node
        if text.startswith("nsu="):
            uri, _, rest = text[4:].partition(";")
            text = f"ns={await _namespace(client, src, uri, cache)};{rest}"
        return ua.NodeId.from_string(text)
    assert ref.path is not None
    parts = [p for p in ref.path.strip("/").split("/")]
    if parts and parts[0] in ("Objects", "0:Objects"):
        parts = parts[1:]
    names = []
    for part in parts:
        prefix, sep, name = part.rpartition(":")
        idx = await _namespace(client, src, prefix, cache) if sep else 0
        names.append(f"{idx}:{name}")
    node = await client.nodes.objects.get_child(names)
    return node.nodeid


def _load_certificate(path: str) -> Any:
    from cryptography import x509

    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def check_security_files(machine: str, sec: Security) -> None:
    """Certificates and key readable, and the key ours: a mistake here is a configuration
    error at start (naming the machine), not a connection that silently times out."""
    from cryptography.hazmat.primitives import serialization

    if sec.policy == "None":
        return
    assert sec.certificate and sec.private_key
    files = [("certificate", sec.certificate), ("private_key", sec.private_key)]
    if sec.server_certificate:
        files.append(("server_certificate", sec.server_certificate))
    loaded: dict[str, Any] = {}
    for what, path in files:
        try:
            if what == "private_key":
                with open(path, "rb") as f:
                    raw = f.read()
                loaded[what] = (
                    serialization.load_pem_private_key(raw, None)
                    if raw.lstrip().startswith(b"-----")
                    else serialization.load_der_private_key(raw, None)
                )
            else:
                loaded[what] = _load_certificate(path)
        except OSError as err:
            raise ValueError(
                f"machine {machine!r}: opcua security {what} {path}: {err.strerror or err}"
            ) from None
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"machine {machine!r}: opcua security {what} {path} is not a readable "
                f"certificate or unencrypted key ({err})"
            ) from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if loaded["certificate"].public_key().public_bytes(der, pub) != loaded[
        "private_key"
    ].public_key().public_bytes(der, pub):
        raise ValueError(
            f"machine {machine!r}: opcua security private_key {sec.private_key} does not "
            f"belong to certificate {sec.certificate}"
        )


def _certificate_uri(path: str) -> str | None:
    from cryptography import x509

    cert = _load_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def _quiet(coro: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except Exception as err:  # closing a dead connection: nothing to report
        log.debug("disconnect: %r", err)


def run_opcua(plant: PlantConfig, database_url: str) -> None:
    """`mesflow run opcua`: run until SIGINT/SIGTERM, print a line every 10 s.

    A machine whose endpoint, certificate or password is wrong is one error line naming
    it (repeated every 10 minutes) while the collector keeps retrying it and keeps reading
    the other machines. Exits 2 at start on configuration errors (unset password variable,
    unknown state mapping, no machine with `opcua:`), 1 if a thread dies.
    """
    try:
        collector = OpcUaCollector(plant, database_url)
    except ValueError as err:
        print(f"opcua: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    if not collector.endpoints:
        print(
            "opcua: no machine in the plant file has an 'opcua:' section",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    collector.start()
    health = SourceHealthReporter(database_url, "opcua", socket.gethostname(), collector.health)
    health.start()
    for ep in collector.endpoints:
        print(f"opcua: reading {', '.join(ep.status.machines)} from {ep.url}", flush=True)
    last = time.monotonic()
    while not stopping.wait(0.5):
        if collector.failed.is_set():
            break
        if time.monotonic() - last >= 10:
            up = sum(1 for ep in collector.endpoints if ep.status.connected)
            print(
                f"opcua: {up}/{len(collector.endpoints)} endpoints connected; {collector.received} "
                f"values received, {collector.stored} stored, {collector.with_errors} dead-lettered, "
                f"{collector.dropped} dropped",
                flush=True,
            )
            last = time.monotonic()
    collector.stop()
    health.stop()
    if collector.failed.is_set():
        print(f"opcua: stopping: {collector.failure}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("opcua: stopped", flush=True)
