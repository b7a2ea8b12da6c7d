"""SQL for the order board and an order's page, on the public views only.

`v_order_board` and `v_work_order_progress` (sql/009), `v_order_history` (sql/007),
`v_outbox_status` (sql/008) and `v_order_losses` (sql/017: why an order is late).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import args_row, class_row

from dashboards.queries import Database


@dataclass(frozen=True, slots=True)
class BoardRow:
    """One row of `v_order_board`."""

    rank: int
    order_no: str
    customer: str | None
    priority: int | None
    product: str | None
    qty: int | None
    good: int
    scrap: int
    remaining: int | None
    progress: float | None
    eta: datetime | None
    due: datetime | None
    late_by_s: float | None
    at_risk: bool
    status: str | None
    version: int | None
    work_orders: int
    last_event_ts: datetime

    @property
    def slack_s(self) -> float | None:
        """Due minus ETA in seconds: negative when the order will be late."""
        if self.eta is None or self.due is None:
            return None
        return (self.due - self.eta).total_seconds()


@dataclass(frozen=True, slots=True)
class WorkOrderRow:
    work_order: str
    product: str | None
    qty: int | None
    machine: str | None
    good: int
    scrap: int
    progress: float | None
    rate_per_h: float
    eta: datetime | None
    started_at: datetime | None
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    work_order: str | None
    version: int
    changed_by: str
    accepted_at: datetime
    event_ts: datetime
    change: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallbackRow:
    id: int
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    delivered_at: datetime | None
    last_http_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class LossRow:
    """One row of `v_order_losses` with the reason's names from the reason tree."""

    machine: str
    kind: str  # stop | speed | scrap
    state: str | None
    reason: str | None
    category: str | None
    seconds: float
    stops: int
    reason_en: str | None
    reason_zh: str | None


@dataclass(frozen=True, slots=True)
class OrderDetail:
    order: BoardRow
    work_orders: list[WorkOrderRow]
    history: list[HistoryRow]
    callbacks: list[CallbackRow]
    losses: list[LossRow]


_BOARD_COLUMNS = (
    "rank, order_no, customer, priority, product, qty, good, scrap, remaining, progress, eta,"
    " due, late_by_s, at_risk, status, version, work_orders, last_event_ts"
)


# One order's board row (v_order_progress, sql/034: v_order_board without the rank, found by
# its key). Its rank is 1 + the orders the board puts before it: v_order_board's order as one
# row comparison, NULLs last (the keys never compare NULL).
_RANK_KEY = (
    "(NOT {t}.at_risk, {t}.priority IS NULL, COALESCE({t}.priority, 0), {t}.due IS NULL,"
    " COALESCE({t}.due, '-infinity'), {t}.order_no)"
)
_ORDER_ROW = (
    "SELECT (SELECT count(*) FROM v_order_progress r WHERE "
    + _RANK_KEY.format(t="r")
    + " < "
    + _RANK_KEY.format(t="b")
    + ") + 1 AS rank, b.order_no, b.customer, b.priority, b.product, b.qty, b.good, b.scrap,"
    " b.remaining, b.progress, b.eta, b.due, b.late_by_s, b.at_risk, b.status, b.version,"
    " b.work_orders, b.last_event_ts FROM v_order_progress b WHERE b.order_no = %s"
)


def order_board(
    db: Database, *, status: str | None = None, customer: str | None = None
) -> list[BoardRow]:
    """The board in rank order (at risk, priority, due), optionally filtered.

    Filtered, the ranks are v_order_board's (every order numbered), but only the orders
    shown are read whole: filtering v_order_board itself counted the work orders of every
    order first (0.25 s for 500 open orders of 18,000).
    """
    if not status and not customer:
        sql = f"SELECT {_BOARD_COLUMNS} FROM v_order_board WHERE true"
    else:
        sql = (
            "SELECT r.rank, b.order_no, b.customer, b.priority, b.product, b.qty, b.good,"
            " b.scrap, b.remaining, b.progress, b.eta, b.due, b.late_by_s, b.at_risk, b.status,"
            " b.version, b.work_orders, b.last_event_ts FROM v_order_progress b"
            " JOIN (SELECT order_no, row_number() OVER (ORDER BY at_risk DESC,"
            " priority ASC NULLS LAST, due ASC NULLS LAST, order_no) AS rank"
            " FROM v_order_progress) r USING (order_no) WHERE true"
        )
    params: list[Any] = []
    if status:
        sql += " AND status = %s"
        params.append(status)
    if customer:
        sql += " AND customer = %s"
        params.append(customer)
    sql += " ORDER BY rank"

    def query(conn: psycopg.Connection) -> list[BoardRow]:
        # Positional (the columns are BoardRow's fields in order): class_row's keyword
        # arguments cost more than the query for a whole board (18,000 orders: 0.5 s).
        with conn.cursor(row_factory=args_row(BoardRow)) as cur:
            return cur.execute(sql, params).fetchall()

    return db.run(query)


# Orders on one page of the board: about two screens. 18,000 orders (a whole board of a large
# plant) are 0.16 s to read; the browser is slower still: Dash renders a board row in about
# 0.1 s on a loaded 2-core machine (200 rows blocked the page for 23 s at load 9).
BOARD_PAGE = 50


def order_board_page(
    db: Database,
    *,
    status: str | None = None,
    customer: str | None = None,
    page: int = 0,
    size: int = BOARD_PAGE,
) -> tuple[list[BoardRow], int, int]:
    """One page of the board in rank order: (rows, orders matching the filters, the page
    shown). `page` counts from 0 and is clamped to the last page (an empty board: page 0).

    The ranks are v_order_board's (every order numbered); the page's orders are picked by
    rank with the light columns alone and only they are read whole (their work-order count),
    so a deep page costs about what the first does.
    """
    where = ""
    params: list[Any] = []
    if status:
        where += " AND r.status = %s"
        params.append(status)
    if customer:
        where += " AND r.customer = %s"
        params.append(customer)
    count_sql = f"SELECT count(*) FROM v_order_progress r WHERE true{where}"
    page_sql = (
        "SELECT p.rank, b.order_no, b.customer, b.priority, b.product, b.qty, b.good,"
        " b.scrap, b.remaining, b.progress, b.eta, b.due, b.late_by_s, b.at_risk, b.status,"
        " b.version, b.work_orders, b.last_event_ts FROM (SELECT r.order_no, r.rank FROM"
        " (SELECT order_no, status, customer, row_number() OVER (ORDER BY at_risk DESC,"
        " priority ASC NULLS LAST, due ASC NULLS LAST, order_no) AS rank"
        f" FROM v_order_progress) r WHERE true{where} ORDER BY r.rank LIMIT %s OFFSET %s) p"
        " JOIN v_order_progress b USING (order_no) ORDER BY p.rank"
    )
    size = max(1, size)

    def query(conn: psycopg.Connection) -> tuple[list[BoardRow], int, int]:
        with conn.transaction():
            row = conn.execute(count_sql, params).fetchone()
            total = int(row[0]) if row else 0
            shown = max(0, min(page, (total - 1) // size)) if total else 0
            with conn.cursor(row_factory=args_row(BoardRow)) as cur:
                rows = cur.execute(page_sql, [*params, size, shown * size]).fetchall()
        return rows, total, shown

    return db.run(query)


def customers(db: Database) -> list[str]:
    def query(conn: psycopg.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT DISTINCT customer FROM v_order_board WHERE customer IS NOT NULL ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    return db.run(query)


def order_detail(db: Database, order_no: str) -> OrderDetail | None:
    """Everything the order's page shows; None for an order the board does not know."""

    def query(conn: psycopg.Connection) -> OrderDetail | None:
        with conn.cursor(row_factory=class_row(BoardRow)) as cur:
            order = cur.execute(_ORDER_ROW, (order_no,)).fetchone()
        if order is None:
            return None
        with conn.cursor(row_factory=class_row(WorkOrderRow)) as cur:
            wos = cur.execute(
                "SELECT work_order, product, qty, machine, good, scrap, progress, rate_per_h,"
                " eta, started_at, completed_at FROM v_work_order_progress"
                " WHERE order_no = %s ORDER BY started_at NULLS LAST, work_order",
                (order_no,),
            ).fetchall()
        with conn.cursor(row_factory=class_row(HistoryRow)) as cur:
            history = cur.execute(
                "SELECT work_order, version, changed_by, accepted_at, event_ts, change"
                " FROM v_order_history WHERE order_no = %s"
                " ORDER BY accepted_at DESC, version DESC",
                (order_no,),
            ).fetchall()
        with conn.cursor(row_factory=class_row(CallbackRow)) as cur:
            callbacks = cur.execute(
                "SELECT id, event_type, status, attempts, created_at, delivered_at,"
                " last_http_status, last_error FROM v_outbox_status"
                " WHERE order_no = %s ORDER BY id DESC",
                (order_no,),
            ).fetchall()
        return OrderDetail(order, wos, history, callbacks, order_losses(conn, order_no))

    return db.run(query)


def order_losses(conn: psycopg.Connection, order_no: str) -> list[LossRow]:
    """Why the order is late: its losses, largest first."""
    with conn.cursor(row_factory=class_row(LossRow)) as cur:
        return cur.execute(
            "SELECT machine, kind, state, reason, category, seconds, stops, reason_en, reason_zh"
            " FROM v_order_losses WHERE order_no = %s"
            " ORDER BY seconds DESC, machine, kind, reason",
            (order_no,),
        ).fetchall()
