"""Operator tablet: one station's stops, scrap and work orders, for a 1280x800 touch screen.

The station is chosen once and kept in the tablet's localStorage. Every tap is at most two
taps from the answer (a stop's reason is one tap on the stop's card), every target is at
least 56 px high, and the reasons this machine gets most often come first. Taps become
canonical report events in the ingest log (dashboards/operator_reports.py), the same path as
MQTT reports; the andon shows them once the live dataflow has processed them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import operator_reports as reports
from dashboards.i18n import format_duration, state_label, t
from dashboards.nav import page_links
from dashboards.operator_reports import Refused, Ticket
from dashboards.pages import operator_dispatch as dispatch_order
from dashboards.pages import (
    operator_inspections,
    operator_lots,
    operator_notices,
    operator_quality,
    operator_signin,
)
from mesflow.plant import PlantConfig, Reason

log = logging.getLogger(__name__)

PATH = "/operator"
REFRESH_MS = 2_000
MIN_ROLE = "operator"
RECENT_STOPS = 5
QTY_STEPS: Final = (1, 2, 5, 10)

_STATION = "op-station"
_TICKET = "op-ticket"
_QTY = "op-qty"
_LANG = "op-lang"
_TICK = "op-tick"
_BODY = "op-body"
_SIG = "op-sig"
_FEEDBACK = "op-feedback"
_CHANGE = "op-change"
_TAP = "op-tap"
_OPEN = "op-open"  # the stop whose reason buttons show (the newest one by default)
_WANT = "op-want"  # the station the address names (?machine=), for this page load only

STRINGS: Final[dict[str, dict[str, str]]] = {
    "operator": {"zh": "操作员终端", "en": "Operator tablet"},
    "choose_station": {"zh": "请选择本终端的设备", "en": "Choose this tablet's machine"},
    "change_station": {"zh": "更换设备", "en": "Change machine"},
    "stops": {"zh": "停机记录（点按原因）", "en": "Stops (tap a reason)"},
    "no_stops": {"zh": "暂无停机", "en": "No stops"},
    "now": {"zh": "进行中", "en": "now"},
    "scrap": {"zh": "报废", "en": "Scrap"},
    "scrap_hint": {"zh": "先选数量，再点原因", "en": "Pick a quantity, then tap a reason"},
    "work_orders": {"zh": "工单", "en": "Work orders"},
    "no_work_orders": {"zh": "无已下达工单", "en": "No released work orders"},
    "start": {"zh": "开工", "en": "Start"},
    "finish": {"zh": "完工", "en": "Finish"},
    "active": {"zh": "生产中", "en": "Running"},
    "ok_downtime_reason": {"zh": "已记录停机原因：{what}", "en": "Stop reason recorded: {what}"},
    "ok_scrap": {"zh": "已记录报废：{what}", "en": "Scrap recorded: {what}"},
    "ok_wo_start": {"zh": "已开工：{what}", "en": "Started: {what}"},
    "ok_wo_end": {"zh": "已完工：{what}", "en": "Finished: {what}"},
    "duplicate": {"zh": "已记录（重复点按已忽略）", "en": "Already recorded (double tap ignored)"},
    "unknown_machine": {"zh": "设备不在工厂模型中", "en": "Machine not in the plant model"},
    "unknown_reason": {"zh": "未知原因", "en": "Unknown reason"},
    "unknown_stop": {"zh": "找不到该停机", "en": "Stop not found"},
    "unknown_work_order": {
        "zh": "该工单未下达到本设备",
        "en": "Work order not released to this machine",
    },
    "bad_qty": {
        "zh": f"数量须在 1 到 {reports.MAX_SCRAP_QTY} 之间",
        "en": f"Quantity must be 1 to {reports.MAX_SCRAP_QTY}",
    },
    "bad_action": {"zh": "无效操作", "en": "Invalid action"},
    "stale_form": {"zh": "页面已过期，请重试", "en": "The page was out of date: tap again"},
    "db_error": {"zh": "数据库不可用，未记录", "en": "Database unreachable: not recorded"},
}


def s(key: str, lang: str, **kw: Any) -> str:
    """This page's string `key` in `lang` (the shared ones come from i18n.t)."""
    entry = STRINGS.get(key)
    text = t(key, lang) if entry is None else entry.get(lang, entry["en"])
    return text.format(**kw) if kw else text


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Operator",
        order=30,
        nav=True,
        nav_label={"zh": "操作员", "en": "Operator"},
        layout=layout,
        title="Operator · mesflow",
        min_role=MIN_ROLE,
    )
    auth.callback(
        app,
        MIN_ROLE,
        Output(_BODY, "children"),
        Output(_SIG, "data"),
        Input(_TICK, "n_intervals"),
        Input(_STATION, "data"),
        Input(_QTY, "data"),
        Input(_OPEN, "data"),
        State(_LANG, "data"),
        State(_SIG, "data"),
    )(_refresh)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_FEEDBACK, "children"),
        Output(_FEEDBACK, "className"),
        Output(_TICKET, "data"),
        Output(_QTY, "data"),
        Output(_STATION, "data"),
        Output(_OPEN, "data"),
        Input(_TAP, "data"),
        State(_STATION, "data"),
        State(_TICKET, "data"),
        State(_QTY, "data"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_act)
    # `/operator?machine=IM-03` (a bookmark or a QR code on the machine) sets the tablet's
    # station; the stored one (localStorage) otherwise wins over the layout's, so a
    # callback writes it, in the browser: nothing to check on the server, the station is
    # read back through _refresh like a picked one.
    auth.clientside_callback(
        app,
        MIN_ROLE,
        "function (want) { return want ? want : window.dash_clientside.no_update; }",
        Output(_STATION, "data", allow_duplicate=True),
        Input(_WANT, "data"),
        prevent_initial_call="initial_duplicate",
    )
    operator_signin.register(app, _STATION)  # people at the station (docs/labor.md)
    operator_lots.register(app, _STATION)
    operator_quality.register(app, _STATION)
    operator_inspections.register(app, _STATION)  # inspections due and their entry
    operator_notices.register(app)  # order-change notices (issue 12)


# -- layout --------------------------------------------------------------------------------------


def layout(lang: str | None = None, machine: str | None = None, **_query: str) -> html.Div:
    bctx = context.current()
    lang = bctx.lang(lang)
    # Only a machine of the plant: anything else in the address is ignored.
    want = machine if isinstance(machine, str) and machine in bctx.plant.machines else None
    return html.Div(
        className=f"op lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            # localStorage: the tablet stays on its machine across reloads and restarts.
            dcc.Store(id=_STATION, storage_type="local"),
            dcc.Store(id=_WANT, data=want),
            dcc.Store(id=_TICKET, data=Ticket.new().to_data()),
            dcc.Store(id=_QTY, data=None),
            dcc.Store(id=_OPEN, data=None),
            dcc.Store(id=_SIG),
            # Written by assets/operator.js on every tap on a [data-tap] button: one static
            # input for every button. (The role gate accepts pattern-matching ids since
            # 3489b0c; this page predates that and works as it is.)
            dcc.Store(id=_TAP),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            html.Header(
                className="op-header",
                children=[
                    html.Div(bctx.plant.plant.name.get(lang), className="op-plant"),
                    html.Div(s("operator", lang), className="op-title"),
                    html.Nav(
                        className="op-links",
                        children=page_links(
                            lang,
                            PATH,
                            html.Button(
                                s("change_station", lang),
                                id=_CHANGE,
                                className="op-btn op-small",
                                **_tap(a="change"),
                            ),
                        ),
                    ),
                ],
            ),
            html.Div(id=_FEEDBACK, className="op-feedback"),
            operator_notices.slot(),
            html.Main(id=_BODY, className="op-body"),
            operator_signin.section(lang),  # who is signed in here (docs/labor.md)
            operator_lots.section(lang),  # traceability: lots used and made
            operator_quality.section(lang),  # defects and rework (docs/quality.md)
            operator_inspections.section(lang),  # first article, patrol, last piece
        ],
    )


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    start_ts: datetime
    end_ts: datetime | None
    state: str
    duration_s: float
    reason: str
    is_open: bool


@dataclass(frozen=True, slots=True)
class StationView:
    stops: list[Stop]
    reason_counts: dict[str, int]
    work_orders: list[tuple[str, str | None, int | None, int]]  # wo, product, qty, good
    active_wo: str | None
    # Work order -> its routing step here (docs/routings.md); absent: no routing.
    operations: dict[str, reports.Operation] = field(default_factory=dict)


def read_station(
    conn: psycopg.Connection, machine: str, plant: PlantConfig | None = None
) -> StationView:
    stops = [
        Stop(*row)
        for row in conn.execute(
            # An open stop counts on the wall clock: the machine's own last event may be its
            # stop, so in event time it has lasted 0 s (and is a micro-stop) so far.
            "SELECT start_ts, end_ts, state,"
            " CASE WHEN is_open THEN GREATEST(EXTRACT(EPOCH FROM now() - start_ts)::float8,"
            " duration_s) ELSE duration_s END, reason, is_open FROM v_stops"
            " WHERE machine = %s AND state <> 'offline' AND (is_open OR NOT is_microstop)"
            " ORDER BY start_ts DESC LIMIT %s",
            (machine, RECENT_STOPS),
        )
    ]
    counts = {
        str(r): int(n)
        for r, n in conn.execute(
            "SELECT reason, count(*) FROM v_stops WHERE machine = %s"
            " AND start_ts > now() - interval '30 days'"
            " AND reason NOT IN ('unassigned', 'no_data') GROUP BY reason",
            (machine,),
        )
    }
    wos = [
        (str(w), p, q, int(g or 0))
        for w, p, q, g in conn.execute(
            "SELECT work_order, product, qty, good FROM v_work_order_progress"
            " WHERE machine = %s AND completed_at IS NULL"
            " ORDER BY order_due NULLS LAST, work_order LIMIT 8",
            (machine,),
        )
    ]
    wos = dispatch_order.in_dispatch_order(conn, machine, wos)  # dispatch order (issue 12)
    row = conn.execute(
        "SELECT work_order FROM v_machine_status WHERE machine = %s", (machine,)
    ).fetchone()
    ops = (
        reports.read_operations(conn, plant, machine, [(w[0], w[1]) for w in wos]) if plant else {}
    )
    return StationView(stops, counts, wos, row[0] if row else None, ops)


# -- rendering (pure) ----------------------------------------------------------------------------


def _name(reason: Reason, lang: str) -> str:
    return reason.name.get(lang)


def reason_label(plant: PlantConfig, code: str, lang: str) -> str:
    r = plant.reasons_by_code.get(code)
    return r.name.get(lang) if r else code


def _data(**attrs: str) -> dict[str, Any]:
    """`data-*` attributes (the test and anyone debugging find a stop by its start)."""
    return {f"data-{name}": value for name, value in attrs.items()}


def _tap(**payload: Any) -> dict[str, Any]:
    """What a tap on this button reports to the server (assets/operator.js sends it)."""
    return {"data-tap": json.dumps(payload, separators=(",", ":"))}


def render_chooser(plant: PlantConfig, lang: str) -> list[Any]:
    return [
        html.H2(s("choose_station", lang), className="op-h"),
        *[
            html.Section(
                className="op-line",
                children=[
                    html.H3(line.name.get(lang), className="op-line-name"),
                    html.Div(
                        className="op-grid",
                        children=[
                            html.Button(
                                [html.Span(m.name.get(lang)), html.Small(m.id)],
                                **_tap(a="pick", machine=m.id),
                                className="op-btn op-pick",
                            )
                            for m in line.machines
                        ],
                    ),
                ],
            )
            for line in plant.lines
        ],
    ]


def render_station(
    plant: PlantConfig,
    machine: str,
    view: StationView,
    qty: int | None,
    lang: str,
    expanded: str | None = None,
) -> list[Any]:
    """The station's page. One stop at a time shows its reason buttons (`expanded`, else the
    newest): the others are one tap away, so a reason is never more than two taps."""
    tz = plant.tz
    starts = [stop.start_ts.isoformat() for stop in view.stops]
    if expanded not in starts:
        expanded = starts[0] if starts else None
    reasons = reports.most_used_first(reports.stop_reasons(plant), view.reason_counts)
    stop_cards: list[Any] = []
    for stop in view.stops:
        start = stop.start_ts.astimezone(tz).strftime("%H:%M")
        end = (
            stop.end_ts.astimezone(tz).strftime("%H:%M")
            if stop.end_ts is not None and not stop.is_open
            else s("now", lang)
        )
        assigned = stop.reason not in ("unassigned", "no_data")
        iso = stop.start_ts.isoformat()
        head = [
            html.Span(state_label(stop.state, lang), className="op-stop-state"),
            html.Span(f"{start}–{end}", className="op-stop-time"),
            html.Span(format_duration(stop.duration_s, lang)),
            html.Span(
                reason_label(plant, stop.reason, lang) if assigned else "?",
                className="op-stop-reason" + ("" if assigned else " missing"),
            ),
        ]
        body: list[Any]
        if iso == expanded:
            body = [
                html.Div(head, className="op-stop-head"),
                html.Div(
                    className="op-reasons",
                    children=[
                        html.Button(
                            _name(r, lang),
                            **_tap(a="reason", start=iso, reason=r.code),
                            className="op-btn op-reason"
                            + (" chosen" if r.code == stop.reason else ""),
                        )
                        for r in reasons
                    ],
                ),
            ]
        else:
            body = [
                html.Button(head, className="op-btn op-stop-head", **_tap(a="expand", start=iso))
            ]
        stop_cards.append(
            html.Div(
                className=f"op-stop state-{stop.state.replace('_', '-')}"
                + (" open" if stop.is_open else "")
                + (" expanded" if iso == expanded else ""),
                **_data(start=iso, reason=stop.reason),
                children=body,
            )
        )
    m = plant.machines[machine]
    wo_rows: list[Any] = []
    for wo, product, wqty, good in view.work_orders:
        active = wo == view.active_wo
        wo_rows.append(
            html.Div(
                className="op-wo"
                + (" active" if active else "")
                + dispatch_order.css(wo, view.work_orders, view.active_wo),
                children=[
                    # "WO-1 · 10 注塑": the operation the start / finish will name.
                    html.Span(
                        f"{wo} · {view.operations[wo].label(lang)}"
                        if wo in view.operations
                        else wo,
                        className="op-wo-id",
                    ),
                    html.Span(f"{product or ''} {good}/{wqty or '?'}", className="op-wo-fig"),
                    html.Button(
                        s("finish" if active else "start", lang),
                        **_tap(a="wo", kind="wo_end" if active else "wo_start", wo=wo),
                        className="op-btn op-wo-btn" + (" finish" if active else ""),
                    ),
                ],
            )
        )
    return [
        html.Div(
            className="op-station",
            children=[
                html.Span(m.name.get(lang), className="op-station-name"),
                html.Span(machine, className="op-station-id"),
            ],
        ),
        html.Div(
            className="op-cols",
            children=[
                html.Section(
                    className="op-col op-stops",
                    children=[
                        html.H2(s("stops", lang), className="op-h"),
                        *(stop_cards or [html.Div(s("no_stops", lang), className="op-empty")]),
                    ],
                ),
                html.Div(
                    className="op-col",
                    children=[
                        html.Section(
                            className="op-scrap",
                            children=[
                                html.H2(s("scrap", lang), className="op-h"),
                                html.Div(s("scrap_hint", lang), className="op-hint"),
                                html.Div(
                                    className="op-qtys",
                                    children=[
                                        html.Button(
                                            str(n),
                                            **_tap(a="qty", n=n),
                                            className="op-btn op-qty"
                                            + (" chosen" if qty == n else ""),
                                        )
                                        for n in QTY_STEPS
                                    ],
                                ),
                                html.Div(
                                    className="op-reasons",
                                    children=[
                                        html.Button(
                                            _name(r, lang),
                                            **_tap(a="scrap", reason=r.code),
                                            className="op-btn op-reason",
                                            disabled=qty is None,
                                        )
                                        for r in reports.scrap_reasons(plant)
                                    ],
                                ),
                            ],
                        ),
                        html.Section(
                            className="op-wos",
                            children=[
                                html.H2(s("work_orders", lang), className="op-h"),
                                *(
                                    wo_rows
                                    or [html.Div(s("no_work_orders", lang), className="op-empty")]
                                ),
                            ],
                        ),
                    ],
                ),
            ],
        ),
    ]


# -- callbacks -----------------------------------------------------------------------------------


def _refresh(
    _n: int | None, station: Any, qty: Any, expanded: Any, lang: Any, sig: Any
) -> tuple[Any, Any]:
    bctx = context.current()
    lang = bctx.lang(lang)
    plant = bctx.plant
    if not isinstance(station, str) or station not in plant.machines:
        new_sig = f"chooser:{lang}"
        return (
            (render_chooser(plant, lang), new_sig)
            if new_sig != sig
            else (
                dash.no_update,
                dash.no_update,
            )
        )
    qty = qty if isinstance(qty, int) and qty in QTY_STEPS else None
    try:
        view = bctx.db.run(lambda conn: read_station(conn, station, plant))
    except psycopg.Error as err:
        log.warning("operator: cannot read station %s: %s", station, err)
        return dash.no_update, dash.no_update
    # Re-render only on a change: replacing the buttons under a finger can lose a tap.
    minute = datetime.now(UTC).strftime("%H:%M")
    expanded = expanded if isinstance(expanded, str) else None
    new_sig = repr((station, lang, qty, expanded, view, minute))
    if new_sig == sig:
        return dash.no_update, dash.no_update
    return render_station(plant, station, view, qty, lang, expanded), new_sig


_NOTHING: Final = (dash.no_update,) * 6


def _act(tap: Any, station: Any, ticket_data: Any, qty: Any, lang: Any) -> tuple[Any, ...]:
    """One tap (from assets/operator.js): choose a station, a quantity, or report."""
    bctx = context.current()
    lang = bctx.lang(lang)
    plant = bctx.plant
    if not isinstance(tap, dict):
        return _NOTHING
    action = tap.get("a")
    keep = dash.no_update
    if action == "change":
        return "", "op-feedback", keep, None, None, None
    if action == "expand":
        start = tap.get("start")
        return (keep,) * 5 + (start if isinstance(start, str) and len(start) <= 64 else None,)
    if action == "pick":
        machine = tap.get("machine")
        if isinstance(machine, str) and machine in plant.machines:
            return "", "op-feedback", keep, None, machine, None
        return _NOTHING
    if action == "qty":
        n = tap.get("n")
        # A new quantity is a new scrap entry: a new ticket, so its scrap is a new event.
        new_qty = n if isinstance(n, int) and n in QTY_STEPS else None
        return "", "op-feedback", Ticket.new().to_data(), new_qty, keep, keep
    principal = auth.require(MIN_ROLE)
    try:
        ticket = Ticket.from_data(ticket_data)
        if action == "reason":
            event = reports.downtime_reason(
                plant, ticket, station, tap.get("start"), tap.get("reason"), principal.name
            )
            what = reason_label(plant, event["reason"], lang)
        elif action == "scrap":
            if qty is None:  # the second tap of a double tap, after the first cleared it
                return _NOTHING
            event = reports.scrap(plant, ticket, station, qty, tap.get("reason"), principal.name)
            what = f"{event['qty']} × {reason_label(plant, event['reason'], lang)}"
        elif action == "wo":
            # Checked first (no lookup for hostile input), then built again under the work
            # order's operation at this station, read from the database, never from the tap.
            event = reports.work_order(
                plant, ticket, station, tap.get("kind"), tap.get("wo"), principal.name
            )
            ops = bctx.db.run(
                lambda conn: reports.read_operations(
                    conn, plant, station, [(event["work_order"], None)]
                )
            )
            op = ops.get(event["work_order"])
            event = reports.work_order(
                plant, ticket, station, event["kind"], event["work_order"], principal.name,
                operation=op,
            )  # fmt: skip
            what = event["work_order"] + (f" · {op.label(lang)}" if op else "")
        else:
            raise Refused("bad_action")
        stored = bctx.db.run(lambda conn: _check_and_submit(conn, principal.name, event))
    except Refused as err:
        return s(err.code, lang), "op-feedback error", Ticket.new().to_data(), keep, keep, keep
    except psycopg.Error as err:
        log.warning("operator: cannot store a report: %s", err)
        return s("db_error", lang), "op-feedback error", keep, keep, keep, keep
    text = s(f"ok_{event['kind']}", lang, what=what) if stored else s("duplicate", lang)
    # Scrap: the quantity is cleared, so the next scrap is a deliberate new entry.
    return text, "op-feedback ok", keep, None if event["kind"] == "scrap" else keep, keep, keep


def _check_and_submit(conn: psycopg.Connection, user: str, event: dict[str, Any]) -> bool:
    """Store `event` if it names a stop / work order of its machine; True if it was new."""
    machine = event["machine"]
    if event["kind"] == "downtime_reason":
        row = conn.execute(
            "SELECT 1 FROM v_stops WHERE machine = %s AND start_ts = %s",
            (machine, datetime.fromisoformat(event["at"])),
        ).fetchone()
        if row is None:
            raise Refused("unknown_stop")
    elif event["kind"] in ("wo_start", "wo_end"):
        row = conn.execute(
            "SELECT 1 FROM v_work_order_progress WHERE machine = %s AND work_order = %s",
            (machine, event["work_order"]),
        ).fetchone()
        if row is None:
            raise Refused("unknown_work_order")
    return reports.submit(conn, user, event).new > 0
