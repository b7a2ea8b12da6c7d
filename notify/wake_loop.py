"""The dispatchers' main loop: a round of work, then sleep on LISTEN until woken.

Shared by the CRM callback dispatcher (notify/dispatcher.py) and the alert dispatcher
(notify/alert_dispatcher.py). A new row's NOTIFY wakes the loop at once; otherwise it polls
every `poll_s` for retries that came due. A database outage is waited out: nothing is lost
(leases expire, rows stay pending), the loop reconnects after 2 s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from mesflow.db import connect

log = logging.getLogger(__name__)

RECONNECT_S = 2.0


def run_woken(
    database_url: str,
    channel: str,
    stop: threading.Event,
    *,
    work: Callable[[], int],
    poll_s: float,
    on_outage: Callable[[], None],
    pause_after_work_s: float = 0.0,
) -> None:
    """Call `work` until `stop` is set. After a round that did something, go again (after
    `pause_after_work_s`, if any); after an idle one, wait for a NOTIFY on `channel` or
    `poll_s`. On a lost database, `on_outage` drops the caller's own connection."""
    listener: psycopg.Connection[Any] | None = None
    while not stop.is_set():
        try:
            if listener is None or listener.closed:
                listener = connect(database_url, autocommit=True)
                listener.execute(f"LISTEN {channel}")
            if work():
                # There may be more due right away.
                if pause_after_work_s:
                    stop.wait(pause_after_work_s)
                continue
            for _ in listener.notifies(timeout=poll_s, stop_after=1):
                pass
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            log.warning("database unavailable (%s); retrying in 2 s", err)
            if listener is not None:
                listener.close()
            listener = None
            on_outage()
            stop.wait(RECONNECT_S)
    if listener is not None:
        listener.close()
