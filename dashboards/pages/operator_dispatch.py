"""The operator tablet starts work orders in dispatch order (docs/dispatch.md, docs/operator.md).

Two hooks for dashboards/pages/operator.py: `in_dispatch_order` puts the machine's released
work orders in the order of its dispatch list (at risk first, then priority, then due date),
and `css` marks the first one waiting, the one to start next. Work orders the list leaves
out (an order on hold, one already made) keep their place after it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import flask
import psycopg

from dashboards import context
from dashboards import dispatch_queries as dq

log = logging.getLogger(__name__)

WorkOrderRow = tuple[str, str | None, int | None, int]  # wo, product, qty, good (operator.py)
MAX_SHOWN = 8  # as many as the tablet's list shows


def in_dispatch_order(
    conn: psycopg.Connection[Any], machine: str, wos: list[WorkOrderRow]
) -> list[WorkOrderRow]:
    """`wos` reordered as the machine's dispatch list, with the list's work orders the query
    did not return (its limit is by due date) added in their place."""
    if not flask.has_app_context():
        return wos  # called outside a board (a script): keep the page's own order
    plant = context.current().plant
    if machine not in plant.machines:
        return wos
    now = time.time_ns() // 1000
    try:
        inputs = dq.read_inputs(conn, plant, now, machine)  # its rows only: a tablet polls
    except psycopg.Error as err:  # the page still works without the ordering
        log.warning("operator: no dispatch order for %s: %s", machine, type(err).__name__)
        return wos
    [ml] = dq.machine_lists(plant, inputs, now, [machine])
    ordered: list[WorkOrderRow] = [
        (e.job.work_order, e.job.product, e.job.qty, e.job.good) for e in ml.entries
    ]
    listed = {w[0] for w in ordered}
    rest = [w for w in wos if w[0] not in listed]
    return (ordered + rest)[:MAX_SHOWN]


def css(wo: str, wos: list[WorkOrderRow], active: str | None) -> str:
    """' next-up' for the first work order waiting to start (not the one running)."""
    first = next((w[0] for w in wos if w[0] != active), None)
    return " next-up" if wo == first else ""
