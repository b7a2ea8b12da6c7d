"""The operator tablet's lots section: report a material lot used or a production lot made
(traceability, docs/traceability.md). dashboards/pages/operator.py places it under the
station's body and registers its callback.

A report becomes a canonical `material_lot` / `production_lot` event and goes through the
same `submit` path as every other tap (dashboards/operator_reports.py): the ingest log, then
the dataflow, which stores it in sql/024's tables. Scanners type into the lot field like a
keyboard, so a scanned lot id needs no extra code.

Double taps: the event id is a hash of a per-page random key, the tap's minute and what was
reported, so the same report twice in a minute is stored once. Hostile input: the machine
is the tablet's station from the plant model, the work order must be released to it, lot
and material ids are 1 to 200 characters without control characters, quantities are whole
numbers in the contract's bounds; anything else is refused with a message, never stored.
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

from dashboards import auth, context, inspection_queries
from dashboards import operator_reports as reports
from dashboards.operator_reports import Refused
from mesflow.events import MAX_COUNT, MAX_ID_LENGTH
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

ROLE: Final = "operator"
_WORK_ORDER = re.compile(r"^[A-Za-z0-9._:/-]{1,100}$")  # as the tablet's work-order taps
_P = "op-lots-"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_WO = f"{_P}wo"
_LOT = f"{_P}lot"
_MATERIAL = f"{_P}material"
_QTY = f"{_P}qty"
_USED = f"{_P}used"
_MADE = f"{_P}made"
_FEEDBACK = f"{_P}feedback"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "批次（追溯）", "en": "Lots (traceability)"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "lot": {"zh": "批次号（可扫码）", "en": "Lot id (scan or type)"},
    "material": {"zh": "物料", "en": "Material"},
    "qty": {"zh": "数量", "en": "Qty"},
    "used": {"zh": "投入物料批次", "en": "Material lot used"},
    "made": {"zh": "产出成品批次", "en": "Production lot made"},
    "ok_material_lot": {"zh": "已记录物料批次 {lot}", "en": "Material lot {lot} recorded"},
    "ok_production_lot": {"zh": "已记录成品批次 {lot}", "en": "Production lot {lot} recorded"},
    "duplicate": {"zh": "已记录（重复点按已忽略）", "en": "Already recorded (double tap ignored)"},
    "no_station": {"zh": "请先选择本终端的设备", "en": "Choose this tablet's machine first"},
    "bad_lot": {"zh": "批次号须为 1 到 200 个字符", "en": "A lot id is 1 to 200 characters"},
    "bad_material": {"zh": "请填写物料（1 到 200 个字符）", "en": "Give the material (1 to 200 characters)"},
    "bad_qty": {"zh": "数量须为正整数", "en": "Quantity must be a whole number of 1 or more"},
    "unknown_work_order": {"zh": "该工单未下达到本设备", "en": "Work order not released to this machine"},
    "unknown_machine": {"zh": "设备不在工厂模型中", "en": "Machine not in the plant model"},
    "db_error": {"zh": "数据库不可用，未记录", "en": "Database unreachable: not recorded"},
    "blocked_first_article": {"zh": "首检未通过，禁止报产", "en": "Blocked: the first article has not passed"},
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**kw) if kw else text


def section(lang: str) -> html.Section:
    """The section's layout: static (the station body re-renders every 2 s and would wipe
    what is typed)."""

    def field(label: str, id_: str, **kw: Any) -> html.Label:
        return html.Label(
            [html.Span(s(label, lang)), dcc.Input(id=id_, className="op-lots-input", **kw)],
            className="op-lots-field",
        )

    return html.Section(
        className="op-lots",
        children=[
            dcc.Store(id=_KEY, data=secrets.token_hex(16)),
            dcc.Store(id=_LANG, data=lang),
            html.H2(s("title", lang), className="op-h"),
            html.Div(
                className="op-lots-fields",
                children=[
                    field("work_order", _WO, type="text", maxLength=100),
                    field("lot", _LOT, type="text", maxLength=MAX_ID_LENGTH),
                    field("material", _MATERIAL, type="text", maxLength=MAX_ID_LENGTH),
                    field("qty", _QTY, type="number", min=1, step=1),
                ],
            ),
            html.Div(
                className="op-lots-buttons",
                children=[
                    html.Button(s("used", lang), id=_USED, className="op-btn"),
                    html.Button(s("made", lang), id=_MADE, className="op-btn"),
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
        Input(_USED, "n_clicks"),
        Input(_MADE, "n_clicks"),
        State(station_store, "data"),
        State(_KEY, "data"),
        State(_WO, "value"),
        State(_LOT, "value"),
        State(_MATERIAL, "value"),
        State(_QTY, "value"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_report)


# -- building the event (pure) ----------------------------------------------------------------


def _id_text(value: Any, code: str) -> str:
    if not isinstance(value, str):
        raise Refused(code)
    text = value.strip()
    if not 1 <= len(text) <= MAX_ID_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise Refused(code)
    return text


def lot_event(
    plant: PlantConfig,
    key: str,
    machine: Any,
    kind: str,
    work_order: Any,
    lot: Any,
    material: Any,
    qty: Any,
    operator: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The `material_lot` or `production_lot` report of one tap (Refused if it cannot be)."""
    if not isinstance(machine, str) or machine not in plant.machines:
        raise Refused("unknown_machine")
    if not isinstance(work_order, str) or not _WORK_ORDER.fullmatch(work_order.strip()):
        raise Refused("unknown_work_order")
    wo = work_order.strip()
    lot_id = _id_text(lot, "bad_lot")
    if qty in (None, "") and kind == "material_lot":
        amount: int | None = None
    elif isinstance(qty, int) and not isinstance(qty, bool) and 1 <= qty <= MAX_COUNT:
        amount = qty
    else:
        raise Refused("bad_qty")
    ts = reports.tap_time(now)
    event: dict[str, Any] = {
        "type": "report",
        "kind": kind,
        "machine": machine,
        "ts": ts.isoformat(),
        "work_order": wo,
        "lot": lot_id,
        "operator": operator[:MAX_ID_LENGTH] or "operator",
    }
    if kind == "material_lot":
        event["material"] = _id_text(material, "bad_material")
    if amount is not None:
        event["qty"] = amount
    what = "\x1f".join(
        str(event.get(k)) for k in ("kind", "machine", "ts", "work_order", "lot", "material", "qty")
    )
    digest = hashlib.blake2b(what.encode(), digest_size=8).hexdigest()
    event["id"] = f"tablet-lot-{key[:32]}-{digest}"
    return event


# -- the callback ------------------------------------------------------------------------------


def _report(
    _used: Any,
    _made: Any,
    station: Any,
    key: Any,
    wo: Any,
    lot: Any,
    material: Any,
    qty: Any,
    lang: Any,
) -> tuple[Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    principal = auth.require(ROLE)
    kind = {_USED: "material_lot", _MADE: "production_lot"}.get(str(dash.ctx.triggered_id))
    if kind is None:
        return dash.no_update, dash.no_update
    if not isinstance(station, str):
        return s("no_station", lang), "op-feedback error"
    try:
        event = lot_event(
            ctx.plant,
            key if isinstance(key, str) else "",
            station,
            kind,
            wo,
            lot,
            material,
            qty,
            principal.name,
        )
        stored = ctx.db.run(lambda conn: _check_and_submit(conn, principal.name, event))
    except Refused as err:
        return s(err.code, lang), "op-feedback error"
    except psycopg.Error as err:
        log.warning("operator lots: cannot store a report: %s", type(err).__name__)
        return s("db_error", lang), "op-feedback error"
    if not stored:
        return s("duplicate", lang), "op-feedback ok"
    return s(f"ok_{kind}", lang, lot=event["lot"]), "op-feedback ok"


def _check_and_submit(conn: psycopg.Connection, user: str, event: dict[str, Any]) -> bool:
    """Store `event` if its work order is released to its machine; True if it was new."""
    row = conn.execute(
        "SELECT 1 FROM v_work_order_progress WHERE machine = %s AND work_order = %s",
        (event["machine"], event["work_order"]),
    ).fetchone()
    if row is None:
        raise Refused("unknown_work_order")
    _check_blocked(conn, event)
    return reports.submit(conn, user, event).new > 0


def _check_blocked(conn: psycopg.Connection, event: dict[str, Any]) -> None:
    """The plant's block_until_first_article_passes (docs/inspections.md): no production
    lot for a run whose first article has not passed."""
    if event["kind"] == "production_lot" and inspection_queries.blocked(
        conn, event["machine"], event["work_order"]
    ):
        raise Refused("blocked_first_article")
