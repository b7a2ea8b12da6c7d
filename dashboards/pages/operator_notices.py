"""Order-change notices on the floor (issue 12, item 2; sql/022 floor_notice).

An applied change of an order with work orders on machines leaves one notice per machine
(mesflow/change_control.py). The andon tile of the machine shows it (`mark_andon`, one
cheap indexed query per refresh) and the operator tablet shows it with an Acknowledge
button (`register`: its own callbacks on a slot the tablet's layout holds), until someone
with role operator acknowledges it there. The first acknowledgement stops the change's
response-time clock (v_change_response).

The acknowledgement is a direct, conditional SQL update (change_control.acknowledge), not
an ingest-log event: it is a fact about a notice only this table keeps, no dataflow figure
depends on it, and a replay of the log recomputes nothing from it (docs/crm.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import dash
import psycopg
from dash import ALL, Input, Output, State, ctx, html

from dashboards import auth, context
from dashboards.queries import Database
from mesflow import change_control
from mesflow.change_control import Notice

log = logging.getLogger(__name__)

MIN_ROLE: Final = "operator"
SLOT: Final = "op-notices"  # the tablet layout's slot (dashboards/pages/operator.py)
_FEEDBACK: Final = "op-notices-feedback"
_ACK: Final = "op-notice-ack"
_SIG: Final = "op-notices-sig"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "changed": {"zh": "订单变更", "en": "Order changed"},
    "ack": {"zh": "已知悉", "en": "Acknowledge"},
    "acked": {"zh": "已确认变更通知", "en": "Change acknowledged"},
    "already": {"zh": "已被他人确认", "en": "Already acknowledged"},
    "db_error": {"zh": "数据库不可用，请重试", "en": "Database unavailable, retry"},
    "ack_on_tablet": {"zh": "请在操作员终端确认", "en": "acknowledge on the tablet"},
}


def _data(**attrs: str) -> dict[str, Any]:
    return {f"data-{k}": v for k, v in attrs.items()}


def s(key: str, lang: str) -> str:
    return STRINGS[key]["zh" if lang == "zh" else "en"]


def open_by_machine(db: Database, machines: list[str] | None = None) -> dict[str, list[Notice]]:
    notices = db.run(lambda conn: change_control.open_notices(conn, machines))
    out: dict[str, list[Notice]] = {}
    for n in notices:
        out.setdefault(n.machine, []).append(n)
    return out


# -- the andon --------------------------------------------------------------------------


def _walk(component: Any) -> Any:
    if isinstance(component, list | tuple):
        for item in component:
            yield from _walk(item)
        return
    yield component
    children = getattr(component, "children", None)
    if isinstance(children, list | tuple):
        for child in children:
            yield from _walk(child)
    elif children is not None and not isinstance(children, str | int | float):
        yield from _walk(children)


def add_to_tiles(board: Any, notices: Mapping[str, list[Notice]], lang: str) -> Any:
    """Append a notice line to each tile (found by its data-machine) that has one."""
    if not notices:
        return board
    for comp in _walk(board):
        machine = getattr(comp, "data-machine", None)
        if not isinstance(machine, str) or machine not in notices:
            continue
        first = notices[machine][0]
        more = f" (+{len(notices[machine]) - 1})" if len(notices[machine]) > 1 else ""
        line = html.Div(
            f"⚠ {s('changed', lang)} {first.order_no}: "
            f"{change_control.localized(first.summary, lang)}{more}",
            className="tile-notice",
            title=s("ack_on_tablet", lang),
            **_data(notice=str(first.id)),
        )
        kids = comp.children if isinstance(comp.children, list) else [comp.children]
        comp.children = [*kids, line]
        comp.className = f"{getattr(comp, 'className', None) or ''} has-notice".strip()
    return board


def mark_andon(db: Database, board: Any, lang: str) -> Any:
    """The andon's hook: the tiles with open notices get them (unchanged on a DB error)."""
    try:
        notices = open_by_machine(db)
    except psycopg.Error as err:  # e.g. migration 022 not applied: the tiles matter more
        log.debug("andon: cannot read floor notices: %s", err)
        return board
    return add_to_tiles(board, notices, lang)


# -- the operator tablet ----------------------------------------------------------------


def render_notices(notices: list[Notice], lang: str, tz: Any) -> list[Any]:
    return [
        html.Div(
            className="op-notice",
            **_data(notice=str(n.id)),
            children=[
                html.Div(f"⚠ {s('changed', lang)} {n.order_no}", className="op-notice-title"),
                html.Div(change_control.localized(n.summary, lang), className="op-notice-text"),
                html.Div(
                    n.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
                    className="op-notice-time",
                ),
                html.Button(
                    s("ack", lang),
                    id={"type": _ACK, "id": n.id},
                    className="op-btn op-notice-ack",
                ),
            ],
        )
        for n in notices
    ]


def slot() -> html.Div:
    """What the tablet's layout holds for the notices (one line there)."""
    return html.Div(
        [
            dash.dcc.Store(id=_SIG),
            html.Div(id=_FEEDBACK, className="op-feedback"),
            html.Div(id=SLOT, className="op-notices"),
        ]
    )


def _refresh(_n: Any, station: Any, lang: Any, sig: Any) -> tuple[Any, Any]:
    bctx = context.current()
    lang = bctx.lang(lang)
    if not isinstance(station, str) or station not in bctx.plant.machines:
        return ([], None) if sig is not None else (dash.no_update, dash.no_update)
    try:
        notices = open_by_machine(bctx.db, [station]).get(station, [])
    except psycopg.Error as err:
        log.warning("operator: cannot read floor notices: %s", err)
        return dash.no_update, dash.no_update
    new_sig = repr((station, lang, [n.id for n in notices]))
    if new_sig == sig:  # re-render only on a change: a button replaced under a finger
        return dash.no_update, dash.no_update
    return render_notices(notices, lang, bctx.plant.tz), new_sig


def _ack(_clicks: Any, station: Any, lang: Any) -> tuple[Any, Any]:
    bctx = context.current()
    lang = bctx.lang(lang)
    principal = auth.require(MIN_ROLE)
    trigger = ctx.triggered_id
    if not isinstance(trigger, Mapping) or not any(_clicks or []):
        return dash.no_update, dash.no_update
    notice = trigger.get("id")
    if not isinstance(notice, int) or not isinstance(station, str):
        return dash.no_update, dash.no_update

    def ack(conn: psycopg.Connection) -> bool:
        with conn.transaction():
            return change_control.acknowledge(conn, notice, station, principal.name)

    try:
        done = bctx.db.run(ack)
    except psycopg.Error as err:
        log.warning("operator: cannot acknowledge notice %s: %s", notice, err)
        return s("db_error", lang), None
    return s("acked" if done else "already", lang), None


def register(app: dash.Dash) -> None:
    """The tablet's notice callbacks (called by dashboards/pages/operator.py's register)."""
    auth.callback(
        app,
        MIN_ROLE,
        Output(SLOT, "children"),
        Output(_SIG, "data"),
        Input("op-tick", "n_intervals"),
        Input("op-station", "data"),
        State("op-lang", "data"),
        State(_SIG, "data"),
    )(_refresh)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_FEEDBACK, "children"),
        Output(_SIG, "data", allow_duplicate=True),
        Input({"type": _ACK, "id": ALL}, "n_clicks"),
        State("op-station", "data"),
        State("op-lang", "data"),
        prevent_initial_call=True,
    )(_ack)
