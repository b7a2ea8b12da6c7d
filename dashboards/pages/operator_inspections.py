"""The operator tablet's inspections section: what the station owes now (first article
pending or failed, BLOCKED, patrol due in N minutes or overdue, last piece) and an entry
form for a first-article (首检), patrol (巡检) or last-piece (末检) inspection
(docs/inspections.md). dashboards/pages/operator.py places it under the station's body and
registers its callbacks.

An entry becomes a canonical `inspection` report and goes through the same `submit` path as
every other tap (dashboards/operator_reports.py): the ingest log, then the dataflow
(streams/inspections.py). The work order: the one typed, else the one running at the station.

Double taps: the event id is a hash of a per-page random key, the tap's minute and what was
reported, so the same entry twice in a minute is stored once. Hostile input: the machine is
the tablet's station from the plant model, the work order must be one the dataflow knows,
stage and result are one of their choices, characteristic names 1 to 200 characters without
control characters, values finite numbers, the defect code in the plant's defect tree, its
quantity a whole number from 1 to a tray; anything else is refused with a message.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from datetime import UTC, datetime
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import inspection_queries as iq
from dashboards import operator_reports as reports
from dashboards.operator_reports import MAX_SCRAP_QTY, Refused
from dashboards.pages.operator_quality import code_options, typed_work_order
from mesflow.events import MAX_ID_LENGTH
from mesflow.plant import PlantConfig
from mesflow.terms import INSPECTION_RESULTS, INSPECTION_STAGES

log = logging.getLogger(__name__)

ROLE: Final = "operator"
ROWS: Final = 3  # characteristic lines on the form
MAX_VALUE: Final = 1e12  # a measurement beyond this is a typo
REFRESH_MS: Final = 15_000
_P = "op-insp-"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_TICK = f"{_P}tick"
_DUE = f"{_P}due"
_WO = f"{_P}wo"
_STAGE = f"{_P}stage"
_RESULT = f"{_P}result"
_DEFECT = f"{_P}defect"
_DEFECT_QTY = f"{_P}defect-qty"
_NOTE = f"{_P}note"
_SUBMIT = f"{_P}submit"
_FEEDBACK = f"{_P}feedback"
NAMES: Final = tuple(f"{_P}c{i}-name" for i in range(ROWS))
VALUES: Final = tuple(f"{_P}c{i}-value" for i in range(ROWS))
LSLS: Final = tuple(f"{_P}c{i}-lsl" for i in range(ROWS))
USLS: Final = tuple(f"{_P}c{i}-usl" for i in range(ROWS))
STAGES: Final = ("first", "patrol", "last")

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {
        "zh": "检验（首检 / 巡检 / 末检）",
        "en": "Inspections (first article / patrol / last piece)",
    },
    "work_order": {"zh": "工单（空：当前工单）", "en": "Work order (empty: the running one)"},
    "stage": {"zh": "检验类型", "en": "Stage"},
    **INSPECTION_STAGES,
    "result": {"zh": "结果", "en": "Result"},
    **INSPECTION_RESULTS,
    "char": {"zh": "检测项", "en": "Characteristic"},
    "value": {"zh": "实测值", "en": "Value"},
    "lsl": {"zh": "下限", "en": "LSL"},
    "usl": {"zh": "上限", "en": "USL"},
    "defect": {"zh": "发现不良（可选）", "en": "Defect found (optional)"},
    "defect_qty": {"zh": "不良数", "en": "Defect qty"},
    "note": {"zh": "备注", "en": "Note"},
    "submit": {"zh": "提交检验", "en": "Record inspection"},
    "ok": {"zh": "已记录 {stage}：{result}", "en": "Recorded {stage}: {result}"},
    "duplicate": {"zh": "已记录（重复点按已忽略）", "en": "Already recorded (double tap ignored)"},
    "no_station": {"zh": "请先选择本终端的设备", "en": "Choose this tablet's machine first"},
    "no_running": {
        "zh": "本设备当前无工单，请填写工单",
        "en": "No work order running here: type one",
    },
    "bad_stage": {"zh": "请选择检验类型", "en": "Choose the stage"},
    "bad_result": {"zh": "请选择结果", "en": "Choose the result"},
    "bad_char": {
        "zh": "检测项名称须为 1 到 200 个字符",
        "en": "A characteristic name is 1 to 200 characters",
    },
    "bad_value": {"zh": "实测值与上下限须为数字", "en": "Values and limits must be numbers"},
    "bad_code": {"zh": "请选择不良代码", "en": "Choose a defect code"},
    "bad_qty": {
        "zh": f"不良数须为 1 到 {MAX_SCRAP_QTY} 的整数",
        "en": f"Defect quantity must be a whole number from 1 to {MAX_SCRAP_QTY}",
    },
    "bad_note": {"zh": "备注最多 200 个字符", "en": "A note is at most 200 characters"},
    "unknown_work_order": {"zh": "系统中没有该工单", "en": "Work order not known to the system"},
    "unknown_machine": {"zh": "设备不在工厂模型中", "en": "Machine not in the plant model"},
    "db_error": {"zh": "数据库不可用，未记录", "en": "Database unreachable: not recorded"},
    "nothing_due": {"zh": "本设备当前没有待做的检验", "en": "No inspection due at this station"},
    "fa_pending": {
        "zh": "{wo}：首检待做（已生产 {n} 件）",
        "en": "{wo}: first article due ({n} parts made)",
    },
    "fa_missing": {
        "zh": "{wo}：首检缺失（已生产 {n} 件）",
        "en": "{wo}: first article MISSING ({n} parts made)",
    },
    "fa_failed": {
        "zh": "{wo}：首检不合格，请重新首检",
        "en": "{wo}: first article FAILED: inspect again",
    },
    "blocked": {
        "zh": "已锁定：首检通过前禁止报产",
        "en": "BLOCKED: no production reports until the first article passes",
    },
    "patrol_due": {"zh": "{wo}：巡检 {n} 分钟后到期", "en": "{wo}: patrol due in {n} min"},
    "patrol_over": {"zh": "{wo}：巡检已超期 {n} 分钟", "en": "{wo}: patrol OVERDUE by {n} min"},
    "last_pending": {"zh": "{wo}：结束前需做末检", "en": "{wo}: last piece due before the end"},
}


def s(key: str, lang: str, **kw: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**kw) if kw else text


def section(lang: str) -> html.Section:
    """The section's layout: static (the station body re-renders every 2 s and would wipe
    what is typed); the list of what is due refreshes itself."""
    try:
        options = code_options(context.current().plant, lang)
    except RuntimeError:  # outside a request: no tree to show
        options = []

    def field(label: str, control: Any) -> html.Label:
        return html.Label([html.Span(s(label, lang)), control], className="op-insp-field")

    def number(id_: str) -> dcc.Input:
        return dcc.Input(id=id_, type="number", className="op-insp-input op-insp-num")

    chars = [
        html.Div(
            className="op-insp-char",
            children=[
                dcc.Input(
                    id=NAMES[i],
                    type="text",
                    maxLength=MAX_ID_LENGTH,
                    placeholder=s("char", lang),
                    className="op-insp-input",
                ),
                number(VALUES[i]),
                number(LSLS[i]),
                number(USLS[i]),
            ],
        )
        for i in range(ROWS)
    ]
    return html.Section(
        className="op-insp",
        children=[
            dcc.Store(id=_KEY, data=secrets.token_hex(16)),
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            html.H2(s("title", lang), className="op-h"),
            html.Ul(id=_DUE, className="op-insp-due"),
            field(
                "work_order",
                dcc.Input(id=_WO, type="text", maxLength=100, className="op-insp-input"),
            ),
            html.Div(s("stage", lang), className="op-insp-label"),
            dcc.RadioItems(
                id=_STAGE,
                options=[{"label": s(k, lang), "value": k} for k in STAGES],
                className="op-insp-stages",
                labelClassName="op-insp-choice",
                inline=True,
            ),
            html.Div(s("result", lang), className="op-insp-label"),
            dcc.RadioItems(
                id=_RESULT,
                options=[{"label": s(k, lang), "value": k} for k in ("pass", "fail")],
                className="op-insp-results",
                labelClassName="op-insp-choice",
                inline=True,
            ),
            html.Div(
                className="op-insp-char op-insp-head",
                children=[html.Span(s(k, lang)) for k in ("char", "value", "lsl", "usl")],
            ),
            *chars,
            field("defect", dcc.Dropdown(id=_DEFECT, options=options, className="op-insp-code")),
            field(
                "defect_qty",
                dcc.Input(
                    id=_DEFECT_QTY,
                    type="number",
                    min=1,
                    max=MAX_SCRAP_QTY,
                    step=1,
                    className="op-insp-input",
                ),
            ),
            field(
                "note",
                dcc.Input(
                    id=_NOTE, type="text", maxLength=MAX_ID_LENGTH, className="op-insp-input"
                ),
            ),
            html.Button(s("submit", lang), id=_SUBMIT, className="op-btn"),
            html.Div(id=_FEEDBACK, className="op-feedback"),
        ],
    )


def register(app: dash.Dash, station_store: str) -> None:
    """`station_store`: the id of the tablet page's station store (its machine)."""
    auth.callback(
        app,
        ROLE,
        Output(_DUE, "children"),
        Input(_TICK, "n_intervals"),
        Input(station_store, "data"),
        State(_LANG, "data"),
    )(_due)
    auth.callback(
        app,
        ROLE,
        Output(_FEEDBACK, "children"),
        Output(_FEEDBACK, "className"),
        Output(_DUE, "children", allow_duplicate=True),
        Input(_SUBMIT, "n_clicks"),
        State(station_store, "data"),
        State(_KEY, "data"),
        State(_WO, "value"),
        State(_STAGE, "value"),
        State(_RESULT, "value"),
        *(State(i, "value") for i in NAMES),
        *(State(i, "value") for i in VALUES),
        *(State(i, "value") for i in LSLS),
        *(State(i, "value") for i in USLS),
        State(_DEFECT, "value"),
        State(_DEFECT_QTY, "value"),
        State(_NOTE, "value"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_report)


# -- what is due (pure) ------------------------------------------------------------------------


def due_lines(runs: list[iq.StationRun], now: datetime, lang: str) -> list[tuple[str, bool]]:
    """(text, urgent) for each thing the station owes now."""
    out: list[tuple[str, bool]] = []
    for r in runs:
        wo = r.work_order + (f" / {r.operation}" if r.operation else "")
        if r.first_article in ("pending", "missing", "failed"):
            out.append(
                (
                    s(f"fa_{r.first_article}", lang, wo=wo, n=r.parts_made),
                    r.first_article != "pending",
                )
            )
        if r.blocked:
            out.append((s("blocked", lang), True))
        if r.next_patrol_due is not None:
            minutes = (r.next_patrol_due - now).total_seconds() / 60
            if minutes >= 0:
                out.append((s("patrol_due", lang, wo=wo, n=math.ceil(minutes)), minutes < 15))
            else:
                out.append((s("patrol_over", lang, wo=wo, n=math.floor(-minutes)), True))
        if r.last_piece == "pending":
            out.append((s("last_pending", lang, wo=wo), False))
    return out


def _due(_n: Any, station: Any, lang: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    if not isinstance(station, str) or station not in ctx.plant.machines:
        return []
    return _due_items(ctx, station, lang)


def _due_items(ctx: Any, station: str, lang: str) -> Any:
    try:
        runs = ctx.db.run(lambda conn: iq.station_runs(conn, station))
    except psycopg.Error as err:
        log.warning("operator inspections: cannot read: %s", type(err).__name__)
        return [html.Li(s("db_error", lang), className="op-insp-urgent")]
    lines = due_lines(runs, datetime.now(UTC), lang)
    if not lines:
        return [html.Li(s("nothing_due", lang), className="op-insp-ok")]
    return [
        html.Li(t, className="op-insp-urgent" if urgent else "op-insp-soon") for t, urgent in lines
    ]


# -- building the event (pure) ----------------------------------------------------------------


def _text(value: Any, code: str) -> str:
    if not isinstance(value, str):
        raise Refused(code)
    text = value.strip()
    if not 1 <= len(text) <= MAX_ID_LENGTH or any(
        ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text
    ):
        raise Refused(code)
    return text


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    # bool is an int in Python; JSON `true` is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused("bad_value")
    f = float(value)
    if not math.isfinite(f) or abs(f) > MAX_VALUE:
        raise Refused("bad_value")
    return f


def characteristics(
    names: list[Any], values: list[Any], lsls: list[Any], usls: list[Any]
) -> list[dict[str, Any]]:
    """The filled lines of the form (a line with no name and no numbers is skipped)."""
    out: list[dict[str, Any]] = []
    for name, value, lsl, usl in zip(names, values, lsls, usls, strict=True):
        nums = [_number(v) for v in (value, lsl, usl)]
        if (name is None or (isinstance(name, str) and not name.strip())) and nums == [None] * 3:
            continue
        c: dict[str, Any] = {"name": _text(name, "bad_char")}
        for k, v in zip(("value", "lsl", "usl"), nums, strict=True):
            if v is not None:
                c[k] = v
        out.append(c)
    return out


def inspection_event(
    plant: PlantConfig,
    key: str,
    machine: Any,
    work_order: str,
    stage: Any,
    result: Any,
    chars: list[dict[str, Any]],
    defect: Any,
    defect_qty: Any,
    note: Any,
    operator: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The `inspection` report of one entry (Refused if it cannot be)."""
    if not isinstance(machine, str) or machine not in plant.machines:
        raise Refused("unknown_machine")
    if stage not in STAGES:
        raise Refused("bad_stage")
    if result not in ("pass", "fail"):
        raise Refused("bad_result")
    ts = reports.tap_time(now)
    event: dict[str, Any] = {
        "type": "report",
        "kind": "inspection",
        "machine": machine,
        "ts": ts.isoformat(),
        "work_order": work_order,
        "stage": stage,
        "result": result,
        "operator": operator[:MAX_ID_LENGTH] or "operator",
    }
    if chars:
        event["characteristics"] = chars
    if defect not in (None, ""):
        tree = plant.defects_by_code
        if not isinstance(defect, str) or (tree and defect not in tree):
            raise Refused("bad_code")
        code = _text(defect, "bad_code")
        if not (
            isinstance(defect_qty, int)
            and not isinstance(defect_qty, bool)
            and 1 <= defect_qty <= MAX_SCRAP_QTY
        ):
            raise Refused("bad_qty")
        event["defects"] = [{"code": code, "qty": defect_qty}]
    if note not in (None, ""):
        event["note"] = _text(note, "bad_note")
    what = "\x1f".join(
        [str(event.get(k)) for k in ("machine", "ts", "work_order", "stage", "result", "note")]
        + [repr(chars), repr(event.get("defects"))]
    )
    digest = hashlib.blake2b(what.encode(), digest_size=8).hexdigest()
    event["id"] = f"tablet-insp-{key[:32]}-{digest}"
    return event


# -- the callback ------------------------------------------------------------------------------


def _report(_n: Any, station: Any, key: Any, wo: Any, stage: Any, result: Any, *rest: Any) -> Any:
    ctx = context.current()
    names, values = list(rest[0:ROWS]), list(rest[ROWS : 2 * ROWS])
    lsls, usls = list(rest[2 * ROWS : 3 * ROWS]), list(rest[3 * ROWS : 4 * ROWS])
    defect, defect_qty, note, lang = rest[4 * ROWS :]
    lang = ctx.lang(lang)
    principal = auth.require(ROLE)
    if not isinstance(station, str):
        return s("no_station", lang), "op-feedback error", dash.no_update
    try:
        typed = typed_work_order(wo)
        chars = characteristics(names, values, lsls, usls)

        def store(conn: psycopg.Connection) -> tuple[bool, dict[str, Any]]:
            work_order = typed if typed is not None else _running(conn, station)
            event = inspection_event(
                ctx.plant,
                key if isinstance(key, str) else "",
                station,
                work_order,
                stage,
                result,
                chars,
                defect,
                defect_qty,
                note,
                principal.name,
            )
            known = conn.execute(
                "SELECT 1 FROM v_work_order_progress WHERE work_order = %s", (work_order,)
            ).fetchone()
            if known is None:
                raise Refused("unknown_work_order")
            return reports.submit(conn, principal.name, event).new > 0, event

        stored, event = ctx.db.run(store)
    except Refused as err:
        return s(err.code, lang), "op-feedback error", dash.no_update
    except psycopg.Error as err:
        log.warning("operator inspections: cannot store a report: %s", type(err).__name__)
        return s("db_error", lang), "op-feedback error", dash.no_update
    if not stored:
        return s("duplicate", lang), "op-feedback ok", dash.no_update
    shown = s("ok", lang, stage=s(event["stage"], lang), result=s(event["result"], lang))
    return shown, "op-feedback ok", _due_items(ctx, station, lang)


def _running(conn: psycopg.Connection, machine: str) -> str:
    row = conn.execute(
        "SELECT work_order FROM v_machine_status WHERE machine = %s", (machine,)
    ).fetchone()
    if row is None or not row[0]:
        raise Refused("no_running")
    return str(row[0])
