"""The operator tablet's quality section: record a defect (scrapped or sent to rework) and a
rework outcome (good again, or scrapped after rework) for a work order made at this station
(docs/quality.md). dashboards/pages/operator.py places it under the station's body and
registers its callback.

A tap becomes a canonical `defect` / `rework` report and goes through the same `submit` path
as every other tap (dashboards/operator_reports.py): the ingest log, then the dataflow
(streams/quality.py), which moves scrapped parts from good to scrap on the machine and keeps
first-pass and final yield.

The work order: the one typed, else the one running at the station now. The defect code is
chosen from the plant's defect tree (typed only when the plant file has no tree).

Double taps: the event id is a hash of a per-page random key, the tap's minute and what was
reported, so the same report twice in a minute is stored once. Hostile input: the machine
is the tablet's station from the plant model, the work order must be one the dataflow knows,
the code must be in the tree, quantities are whole numbers from 1 to a tray (999); anything
else is refused with a message, never stored.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import datetime
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import operator_reports as reports
from dashboards.operator_reports import MAX_SCRAP_QTY, Refused
from mesflow.events import MAX_ID_LENGTH
from mesflow.plant import DefectCode, PlantConfig

log = logging.getLogger(__name__)

ROLE: Final = "operator"
_WORK_ORDER = re.compile(r"^[A-Za-z0-9._:/-]{1,100}$")  # as the tablet's work-order taps
_P = "op-q-"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_WO = f"{_P}wo"
_CODE = f"{_P}code"
_CODE_TEXT = f"{_P}code-text"
_QTY = f"{_P}qty"
_SCRAP = f"{_P}scrap"
_REWORK = f"{_P}rework"
_BACK_GOOD = f"{_P}back-good"
_BACK_SCRAP = f"{_P}back-scrap"
_FEEDBACK = f"{_P}feedback"

# Button -> (report kind, disposition / outcome).
ACTIONS: Final[dict[str, tuple[str, str]]] = {
    _SCRAP: ("defect", "scrap"),
    _REWORK: ("defect", "rework"),
    _BACK_GOOD: ("rework", "good"),
    _BACK_SCRAP: ("rework", "scrap"),
}

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "不良与返工", "en": "Defects and rework"},
    "work_order": {"zh": "工单（空：当前工单）", "en": "Work order (empty: the running one)"},
    "code": {"zh": "不良代码", "en": "Defect code"},
    "qty": {"zh": "数量", "en": "Qty"},
    "scrap": {"zh": "不良：报废", "en": "Defect: scrap"},
    "rework": {"zh": "不良：送返工", "en": "Defect: to rework"},
    "back_good": {"zh": "返工后合格", "en": "Reworked: good"},
    "back_scrap": {"zh": "返工后报废", "en": "Reworked: scrapped"},
    "ok_defect_scrap": {"zh": "已记录：{qty} 件 {code} 报废", "en": "Recorded: {qty} × {code} scrapped"},
    "ok_defect_rework": {"zh": "已记录：{qty} 件 {code} 送返工", "en": "Recorded: {qty} × {code} to rework"},
    "ok_rework_good": {"zh": "已记录：{qty} 件返工后合格", "en": "Recorded: {qty} reworked good"},
    "ok_rework_scrap": {"zh": "已记录：{qty} 件返工后报废", "en": "Recorded: {qty} scrapped after rework"},
    "duplicate": {"zh": "已记录（重复点按已忽略）", "en": "Already recorded (double tap ignored)"},
    "no_station": {"zh": "请先选择本终端的设备", "en": "Choose this tablet's machine first"},
    "no_running": {"zh": "本设备当前无工单，请填写工单", "en": "No work order running here: type one"},
    "bad_code": {"zh": "请选择不良代码", "en": "Choose a defect code"},
    "bad_qty": {
        "zh": f"数量须为 1 到 {MAX_SCRAP_QTY} 的整数",
        "en": f"Quantity must be a whole number from 1 to {MAX_SCRAP_QTY}",
    },
    "unknown_work_order": {"zh": "系统中没有该工单", "en": "Work order not known to the system"},
    "unknown_machine": {"zh": "设备不在工厂模型中", "en": "Machine not in the plant model"},
    "db_error": {"zh": "数据库不可用，未记录", "en": "Database unreachable: not recorded"},
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**kw) if kw else text


def code_options(plant: PlantConfig, lang: str) -> list[dict[str, str]]:
    """The tree's leaves (what a part actually has), labelled "family › defect"."""
    out: list[dict[str, str]] = []

    def walk(nodes: list[DefectCode], above: str) -> None:
        for n in nodes:
            label = f"{above} › {n.name.get(lang)}" if above else n.name.get(lang)
            if n.children:
                walk(n.children, n.name.get(lang))
            else:
                out.append({"label": label, "value": n.code})

    walk(plant.defects, "")
    return out


def section(lang: str) -> html.Section:
    """The section's layout: static (the station body re-renders every 2 s and would wipe
    what is typed)."""
    try:
        options = code_options(context.current().plant, lang)
    except RuntimeError:  # outside a request (a layout built at import): no tree to show
        options = []

    def field(label: str, control: Any) -> html.Label:
        return html.Label([html.Span(s(label, lang)), control], className="op-q-field")

    return html.Section(
        className="op-q",
        children=[
            dcc.Store(id=_KEY, data=secrets.token_hex(16)),
            dcc.Store(id=_LANG, data=lang),
            html.H2(s("title", lang), className="op-h"),
            html.Div(
                className="op-q-fields",
                children=[
                    field(
                        "work_order",
                        dcc.Input(id=_WO, type="text", maxLength=100, className="op-q-input"),
                    ),
                    field(
                        "qty",
                        dcc.Input(
                            id=_QTY,
                            type="number",
                            min=1,
                            max=MAX_SCRAP_QTY,
                            step=1,
                            className="op-q-input",
                        ),
                    ),
                ],
            ),
            html.Div(s("code", lang), className="op-q-label"),
            dcc.RadioItems(
                id=_CODE,
                options=options,
                className="op-q-codes",
                labelClassName="op-q-code",
                inline=True,
            ),
            # Only without a defect tree: any code, typed.
            dcc.Input(
                id=_CODE_TEXT,
                type="text",
                maxLength=MAX_ID_LENGTH,
                className="op-q-input",
                style={} if not options else {"display": "none"},
            ),
            html.Div(
                className="op-q-buttons",
                children=[
                    html.Button(s("scrap", lang), id=_SCRAP, className="op-btn"),
                    html.Button(s("rework", lang), id=_REWORK, className="op-btn"),
                    html.Button(s("back_good", lang), id=_BACK_GOOD, className="op-btn"),
                    html.Button(s("back_scrap", lang), id=_BACK_SCRAP, className="op-btn"),
                ],
            ),
            html.Div(id=_FEEDBACK, className="op-feedback"),
        ],
    )


def register(app: dash.Dash, station_store: str) -> None:
    """`station_store`: the id of the tablet page's station store (its machine)."""
    auth.callback(
        app,
        ROLE,
        Output(_FEEDBACK, "children"),
        Output(_FEEDBACK, "className"),
        *(Input(b, "n_clicks") for b in ACTIONS),
        State(station_store, "data"),
        State(_KEY, "data"),
        State(_WO, "value"),
        State(_CODE, "value"),
        State(_CODE_TEXT, "value"),
        State(_QTY, "value"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_report)


# -- building the event (pure) ----------------------------------------------------------------


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not 1 <= len(text) <= MAX_ID_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    return text


def typed_work_order(value: Any) -> str | None:
    """The work order typed (None: empty, use the running one); Refused if malformed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not _WORK_ORDER.fullmatch(value.strip()):
        raise Refused("unknown_work_order")
    return value.strip()


def quality_event(
    plant: PlantConfig,
    key: str,
    machine: Any,
    action: str,
    work_order: str,
    code: Any,
    qty: Any,
    operator: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The `defect` or `rework` report of one tap (Refused if it cannot be)."""
    if not isinstance(machine, str) or machine not in plant.machines:
        raise Refused("unknown_machine")
    kind, how = ACTIONS[action]
    if not _WORK_ORDER.fullmatch(work_order):
        raise Refused("unknown_work_order")
    tree = plant.defects_by_code
    code_text = _text(code)
    if code_text is not None and tree and code_text not in tree:
        code_text = None
    if code_text is None and kind == "defect":
        raise Refused("bad_code")
    if not (isinstance(qty, int) and not isinstance(qty, bool) and 1 <= qty <= MAX_SCRAP_QTY):
        raise Refused("bad_qty")
    ts = reports.tap_time(now)
    event: dict[str, Any] = {
        "type": "report",
        "kind": kind,
        "machine": machine,
        "ts": ts.isoformat(),
        "work_order": work_order,
        "qty": qty,
        "operator": operator[:MAX_ID_LENGTH] or "operator",
    }
    if code_text is not None:
        event["code"] = code_text
    event["disposition" if kind == "defect" else "outcome"] = how
    what = "\x1f".join(
        str(event.get(k))
        for k in ("kind", "machine", "ts", "work_order", "code", "qty", "disposition", "outcome")
    )
    digest = hashlib.blake2b(what.encode(), digest_size=8).hexdigest()
    event["id"] = f"tablet-quality-{key[:32]}-{digest}"
    return event


# -- the callback ------------------------------------------------------------------------------


def _report(
    _scrap: Any,
    _rework: Any,
    _good: Any,
    _scrapped: Any,
    station: Any,
    key: Any,
    wo: Any,
    code: Any,
    code_text: Any,
    qty: Any,
    lang: Any,
) -> tuple[Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    principal = auth.require(ROLE)
    action = str(dash.ctx.triggered_id)
    if action not in ACTIONS:
        return dash.no_update, dash.no_update
    if not isinstance(station, str):
        return s("no_station", lang), "op-feedback error"
    try:
        typed = typed_work_order(wo)
        chosen = code if code not in (None, "") else code_text

        def store(conn: psycopg.Connection) -> tuple[bool, dict[str, Any]]:
            work_order = typed if typed is not None else _running(conn, station)
            event = quality_event(
                ctx.plant,
                key if isinstance(key, str) else "",
                station,
                action,
                work_order,
                chosen,
                qty,
                principal.name,
            )
            return _check_and_submit(conn, principal.name, event), event

        stored, event = ctx.db.run(store)
    except Refused as err:
        return s(err.code, lang), "op-feedback error"
    except psycopg.Error as err:
        log.warning("operator quality: cannot store a report: %s", type(err).__name__)
        return s("db_error", lang), "op-feedback error"
    if not stored:
        return s("duplicate", lang), "op-feedback ok"
    kind, how = ACTIONS[action]
    name = ctx.plant.defects_by_code.get(event.get("code", ""))
    shown = name.name.get(lang) if name is not None else event.get("code", "")
    return s(f"ok_{kind}_{how}", lang, qty=event["qty"], code=shown), "op-feedback ok"


def _running(conn: psycopg.Connection, machine: str) -> str:
    row = conn.execute(
        "SELECT work_order FROM v_machine_status WHERE machine = %s", (machine,)
    ).fetchone()
    if row is None or not row[0]:
        raise Refused("no_running")
    return str(row[0])


def _check_and_submit(conn: psycopg.Connection, user: str, event: dict[str, Any]) -> bool:
    """Store `event` if the dataflow knows its work order; True if it was new."""
    row = conn.execute(
        "SELECT 1 FROM v_work_order_progress WHERE work_order = %s", (event["work_order"],)
    ).fetchone()
    if row is None:
        raise Refused("unknown_work_order")
    return reports.submit(conn, user, event).new > 0
