"""Running a collector as a process: until SIGINT/SIGTERM, or until one of its threads dies.

Shared by `mesflow run collector-mqtt`, `mesflow run opcua` and `mesflow run sparkplug`.
A collector whose thread died sets `failed`; the process then stops and exits with status
1 (a supervisor restarts it) rather than look alive while storing nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Protocol

from mesflow.source_health import EndpointHealth, Kind, SourceHealthReporter

STATUS_EVERY_S = 10.0


class Collector(Protocol):
    @property
    def failed(self) -> threading.Event: ...

    @property
    def failure(self) -> str | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> list[EndpointHealth]: ...


def run_until_stopped(
    name: str,
    collector: Collector,
    *,
    database_url: str,
    source_kind: Kind,
    instance: str,
    banner: Iterable[str],
    status: Callable[[], str],
    failure_note: str = "",
) -> None:
    """Start `collector` and its health reporter, print `banner`, then `status()` every
    10 s until a signal or a thread's death; stop both. Exits 1 if a thread died."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    collector.start()
    health = SourceHealthReporter(database_url, source_kind, instance, collector.health)
    health.start()
    for line in banner:
        print(f"{name}: {line}", flush=True)
    last = time.monotonic()
    while not stopping.wait(0.5):
        if collector.failed.is_set():
            break
        if time.monotonic() - last >= STATUS_EVERY_S:
            print(f"{name}: {status()}", flush=True)
            last = time.monotonic()
    collector.stop()
    health.stop()
    if collector.failed.is_set():
        print(f"{name}: stopping: {collector.failure}{failure_note}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"{name}: stopped", flush=True)


# For MQTT collectors: what a restart after a thread's death does with the messages.
UNSTORED_NOTE = (
    " (messages not yet stored stay with the broker and are delivered again after a restart)"
)
