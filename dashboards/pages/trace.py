"""Traceability page (/trace, manager): from a lot to its orders and customers, or from an
order to its lots, work orders, machines, operators, stops and inspections (docs/traceability.md).

One search box: a lot id or an order number (the choice beside it says which). Results are
tables, times in the plant's time zone, and one CSV of every table (a `section` column says
which). `/trace?order=SO-1` or `/trace?lot=L-7` opens with that search done (the order
page links here). Queries: mesflow/trace.py over the views of sql/024_traceability.sql.

Role: manager, as the order page: it names customers and people.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from types import MappingProxyType
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards.nav import page_header
from dashboards.widgets import csv_download, page_text, text_table
from mesflow import trace
from mesflow.terms import INSPECTION_RESULTS, INSPECTION_STAGES, ORDER_STATUSES, suffixed

log = logging.getLogger(__name__)

PATH: Final = "/trace"
ROLE: Final = "manager"
MAX_QUERY: Final = 200  # an Id's bound: longer is no lot and no order

_P = "trace-"
_LANG = f"{_P}lang"
_KIND = f"{_P}kind"
_QUERY = f"{_P}query"
_GO = f"{_P}go"
_BODY = f"{_P}body"
_DONE = f"{_P}done"  # the search whose results show: what the CSV exports
_CSV = f"{_P}csv"
_DOWNLOAD = f"{_P}download"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "质量追溯", "en": "Traceability"},
    "lot": {"zh": "批次", "en": "Lot"},
    "order": {"zh": "订单", "en": "Order"},
    "placeholder": {"zh": "输入批次号或订单号", "en": "A lot id or an order number"},
    "search": {"zh": "查询", "en": "Search"},
    "csv": {"zh": "导出 CSV", "en": "Export CSV"},
    "hint": {
        "zh": "从批次查到订单和客户；从订单查到批次、设备、人员、停机和检验。",
        "en": "From a lot to its orders and customers; from an order to its lots, machines, "
        "people, stops and inspections.",
    },
    "not_found_lot": {"zh": "没有批次 {q} 的记录", "en": "No report names lot {q}"},
    "not_found_order": {"zh": "没有订单 {q}", "en": "No order {q}"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "empty": {"zh": "无", "en": "None"},
    # sections
    "reports": {"zh": "批次记录", "en": "Lot reports"},
    "orders": {"zh": "订单与客户", "en": "Orders and customers"},
    "products": {"zh": "使用该物料批次生产的成品批次", "en": "Production lots made with this material"},
    "materials": {"zh": "该成品批次所用物料批次", "en": "Material lots that went into it"},
    "work_orders": {"zh": "工单", "en": "Work orders"},
    "lots": {"zh": "批次", "en": "Lots"},
    "machines": {"zh": "设备", "en": "Machines"},
    "operators": {"zh": "人员", "en": "Operators"},
    "stops": {"zh": "停机", "en": "Stops"},
    "inspections": {"zh": "检验", "en": "Inspections"},
    # columns
    "lot_kind": {"zh": "类型", "en": "Kind"},
    "material": {"zh": "物料", "en": "Material"},
    "qty": {"zh": "数量", "en": "Qty"},
    "machine": {"zh": "设备", "en": "Machine"},
    "ts": {"zh": "时间", "en": "Time"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "order_no": {"zh": "订单", "en": "Order"},
    "customer": {"zh": "客户", "en": "Customer"},
    "product": {"zh": "产品", "en": "Product"},
    "operator": {"zh": "人员", "en": "Operator"},
    "due": {"zh": "交期", "en": "Due"},
    "status": {"zh": "状态", "en": "Status"},
    "good": {"zh": "合格", "en": "Good"},
    "scrap": {"zh": "报废", "en": "Scrap"},
    "started_at": {"zh": "开工", "en": "Started"},
    "completed_at": {"zh": "完工", "en": "Completed"},
    "from_ts": {"zh": "从", "en": "From"},
    "to_ts": {"zh": "到", "en": "To"},
    "kind": {"zh": "操作", "en": "Action"},
    "start_ts": {"zh": "开始", "en": "Start"},
    "end_ts": {"zh": "结束", "en": "End"},
    "minutes": {"zh": "分钟", "en": "Minutes"},
    "state": {"zh": "状态", "en": "State"},
    "reason": {"zh": "原因", "en": "Reason"},
    "eta": {"zh": "预计完成", "en": "ETA"},
    "material_kind": {"zh": "物料", "en": "Material"},
    "production_kind": {"zh": "成品", "en": "Production"},
    "stage": {"zh": "类型", "en": "Stage"},
    "result": {"zh": "结果", "en": "Result"},
    "sample_qty": {"zh": "抽样数", "en": "Sample"},
    "findings": {"zh": "超差与不良", "en": "Out of limits, defects"},
    "note": {"zh": "备注", "en": "Note"},
    # values: an inspection's stage and result, an order's status, a report's kind
    **suffixed(INSPECTION_STAGES, "_stage"),
    **suffixed(INSPECTION_RESULTS, "_result"),
    **suffixed(ORDER_STATUSES, "_status"),
    "downtime_reason_kind": {"zh": "停机原因", "en": "Stop reason"},
    "scrap_kind": {"zh": "报废", "en": "Scrap"},
    "wo_start_kind": {"zh": "开工", "en": "Work order start"},
    "wo_end_kind": {"zh": "完工", "en": "Work order end"},
    "sign_in_kind": {"zh": "上岗", "en": "Sign in"},
    "sign_out_kind": {"zh": "离岗", "en": "Sign out"},
    "inspection_kind": {"zh": "检验", "en": "Inspection"},
    "defect_kind": {"zh": "不良", "en": "Defect"},
    "rework_kind": {"zh": "返工", "en": "Rework"},
    "material_lot_kind": {"zh": "物料批次", "en": "Material lot"},
    "production_lot_kind": {"zh": "成品批次", "en": "Production lot"},
}  # fmt: skip

# Cells whose value is a code with a name per language: STRINGS[f"{value}{suffix}"].
_NAMED: Final = {
    "lot_kind": "_kind",
    "kind": "_kind",
    "stage": "_stage",
    "result": "_result",
    "status": "_status",
}

# Columns per section, in order (keys of the rows of mesflow/trace.py).
LOT_SECTIONS: Final = {
    "orders": ("order_no", "customer", "product", "qty", "due", "status"),
    "reports": ("lot_kind", "material", "qty", "machine", "ts", "work_order", "order_no", "operator"),
    "products": ("lot", "qty", "machine", "ts", "work_order", "order_no", "customer"),
    "materials": ("lot", "material", "qty", "machine", "ts", "work_order"),
}  # fmt: skip
ORDER_SECTIONS: Final = {
    "lots": ("lot_kind", "lot", "material", "qty", "machine", "ts", "work_order", "operator"),
    "work_orders": ("work_order", "machine", "product", "qty", "good", "scrap", "started_at", "completed_at"),
    "machines": ("machine", "from_ts", "to_ts"),
    "operators": ("operator", "kind", "machine", "ts", "work_order"),
    "stops": ("machine", "start_ts", "end_ts", "minutes", "state", "reason"),
    "inspections": ("ts", "stage", "result", "machine", "work_order", "operator", "sample_qty", "findings", "note"),
}  # fmt: skip


def s(key: str, lang: str, **kw: Any) -> str:
    return page_text(STRINGS, key, lang, **kw)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Trace",
        order=45,
        nav=True,
        nav_label={"zh": "追溯", "en": "Trace"},
        layout=layout,
        title="Trace · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        Output(_DONE, "data"),
        Input(_GO, "n_clicks"),
        Input(_QUERY, "n_submit"),
        State(_KIND, "value"),
        State(_QUERY, "value"),
        State(_LANG, "data"),
    )(_search)
    auth.callback(
        app,
        ROLE,
        Output(_DOWNLOAD, "data"),
        Input(_CSV, "n_clicks"),
        State(_DONE, "data"),
        prevent_initial_call=True,
    )(_export)


def layout(
    lang: str | None = None, order: str | None = None, lot: str | None = None, **_q: str
) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    kind, query = ("lot", lot) if lot else ("order", order)
    return html.Div(
        className=f"orders trace-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Store(id=_DONE),
            _header(lang, ctx.plant.plant.name.get(lang)),
            html.P(s("hint", lang), className="orders-note trace-hint"),
            html.Div(
                className="orders-filters trace-search",
                children=[
                    dcc.RadioItems(
                        id=_KIND,
                        options=[{"label": s(k, lang), "value": k} for k in ("lot", "order")],
                        value=kind,
                        inline=True,
                        className="trace-kind",
                    ),
                    dcc.Input(
                        id=_QUERY,
                        type="search",
                        value=(query or "")[:MAX_QUERY],
                        maxLength=MAX_QUERY,
                        placeholder=s("placeholder", lang),
                        debounce=True,
                        className="trace-query",
                    ),
                    html.Button(s("search", lang), id=_GO, className="orders-csv"),
                    html.Button(s("csv", lang), id=_CSV, className="orders-csv"),
                    dcc.Download(id=_DOWNLOAD),
                ],
            ),
            html.Div(id=_BODY, className="order-body trace-body"),
        ],
    )


def _header(lang: str, plant_name: str) -> html.Header:
    # The order pages' header (the same classes, so the same look).
    return page_header(
        lang, s("title", lang), PATH, plant_name, prefix="orders", title_class="board-name"
    )


# -- callbacks -------------------------------------------------------------------------------


def _clean(kind: Any, query: Any) -> tuple[str, str] | None:
    if kind not in ("lot", "order") or not isinstance(query, str):
        return None
    q = query.strip()
    if not q or len(q) > MAX_QUERY or "\x00" in q:
        return None
    return kind, q


def _search(_n: Any, _submit: Any, kind: Any, query: Any, lang: Any) -> tuple[Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    asked = _clean(kind, query)
    if asked is None:
        return "", None
    kind, q = asked
    tz = ctx.plant.tz
    try:
        found = ctx.db.run(
            lambda conn: (
                trace.lot_trace(conn, q, tz) if kind == "lot" else trace.order_trace(conn, q, tz)
            )
        )
    except psycopg.Error as err:
        log.warning("trace: cannot read %s %r: %s", kind, q, type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty"), None
    if not found.found:
        return html.Div(s(f"not_found_{kind}", lang, q=q), className="orders-empty"), None
    names = {code: d.name.get(lang) for code, d in ctx.plant.defects_by_code.items()}
    return render(found, tz, lang, names), {"kind": kind, "q": q}


def _export(_n: Any, done: Any) -> Any:
    if not isinstance(done, dict):
        return dash.no_update
    asked = _clean(done.get("kind"), done.get("q"))
    if asked is None:
        return dash.no_update
    kind, q = asked
    ctx = context.current()
    tz = ctx.plant.tz
    found = ctx.db.run(
        lambda conn: (
            trace.lot_trace(conn, q, tz) if kind == "lot" else trace.order_trace(conn, q, tz)
        )
    )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in q)[:60]
    return csv_download(to_csv(found), f"trace-{kind}-{safe}.csv")


# -- rendering (pure) ------------------------------------------------------------------------

_NO_NAMES: Mapping[str, str] = MappingProxyType({})


def _sections(
    found: trace.LotTrace | trace.OrderTrace, defect_names: Mapping[str, str] = _NO_NAMES
) -> dict[str, tuple[tuple[str, ...], list[dict[str, Any]]]]:
    if isinstance(found, trace.LotTrace):
        return {name: (cols, getattr(found, name)) for name, cols in LOT_SECTIONS.items()}
    out: dict[str, tuple[tuple[str, ...], list[dict[str, Any]]]] = {}
    for name, cols in ORDER_SECTIONS.items():
        rows = getattr(found, name)
        if name == "stops":
            rows = [{**r, "minutes": round(r["seconds"] / 60, 1)} for r in rows]
        elif name == "inspections":
            rows = [{**r, "findings": findings(r, defect_names)} for r in rows]
        out[name] = (cols, rows)
    return out


def findings(inspection: dict[str, Any], defect_names: Mapping[str, str] = _NO_NAMES) -> str:
    """What an inspection found: each characteristic judged out of its limits ('✗ diameter
    10.32 mm (9.9–10.1)'), then each defect ('flash ×2'; by its name in `defect_names`, the
    page's language, where given: the CSV keeps the codes)."""
    parts = []
    for c in inspection.get("characteristics") or []:
        if not isinstance(c, dict) or not _out_of_limits(c):
            continue
        text = f"✗ {c.get('name', '?')}"
        if c.get("value") is not None:
            text += f" {_num(c['value'])}" + (f" {c['unit']}" if c.get("unit") else "")
        if c.get("lsl") is not None or c.get("usl") is not None:
            lo, hi = (_num(c[k]) if c.get(k) is not None else "" for k in ("lsl", "usl"))
            text += f" ({lo}–{hi})"
        parts.append(text)
    for d in inspection.get("defects") or []:
        if isinstance(d, dict):
            code = d.get("code", "?")
            name = defect_names.get(code, code) if isinstance(code, str) else code
            parts.append(f"{name} ×{d.get('qty', '?')}")
    return "; ".join(parts)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _out_of_limits(c: dict[str, Any]) -> bool:
    """The report's (or the dataflow's) judgement; unjudged, the value against its limits."""
    if c.get("ok") is not None:
        return c["ok"] is False
    value, lsl, usl = c.get("value"), c.get("lsl"), c.get("usl")
    if not isinstance(value, (int, float)):
        return False
    return (isinstance(lsl, (int, float)) and value < lsl) or (
        isinstance(usl, (int, float)) and value > usl
    )


def _cell(key: str, value: Any, tz: tzinfo, lang: str) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    if key in _NAMED:
        named = f"{value}{_NAMED[key]}"
        return s(named, lang) if named in STRINGS else str(value)
    return str(value)


def _table(cols: Sequence[str], rows: list[dict[str, Any]], tz: tzinfo, lang: str) -> Any:
    return text_table(
        [s(c, lang) for c in cols],
        [[_cell(c, r.get(c), tz, lang) for c in cols] for r in rows],
        "orders-table trace-table",
        s("empty", lang),
    )


def render(
    found: trace.LotTrace | trace.OrderTrace,
    tz: tzinfo,
    lang: str,
    defect_names: Mapping[str, str] = _NO_NAMES,
) -> list[Any]:
    """The page's sections; `defect_names`: defect code -> name in `lang` (the plant's)."""
    out: list[Any] = []
    if isinstance(found, trace.OrderTrace) and found.order is not None:
        o = found.order
        facts = [
            ("order_no", o["order_no"]),
            ("customer", o["customer"]),
            ("product", o["product"]),
            ("qty", f"{o['good'] or 0}/{o['qty']}"),
            ("due", _cell("due", o["due"], tz, lang)),
            ("eta", _cell("eta", o["eta"], tz, lang) or "—"),
            ("status", _cell("status", o["status"], tz, lang)),
        ]
        out.append(
            html.Section(
                className="order-summary",
                children=[html.Dl([html.Div([html.Dt(s(k, lang)), html.Dd(v)]) for k, v in facts])],
            )
        )
    elif isinstance(found, trace.LotTrace):
        out.append(html.H2(f"{s('lot', lang)} {found.lot}", className="trace-lot"))
    for name, (cols, rows) in _sections(found, defect_names).items():
        out.append(
            html.Section(
                className=f"order-card trace-{name.replace('_', '-')}",
                children=[html.H2(f"{s(name, lang)} ({len(rows)})"), _table(cols, rows, tz, lang)],
            )
        )
    return out


def to_csv(found: trace.LotTrace | trace.OrderTrace) -> str:
    """Every section's rows, one CSV: `section` first, then the union of the columns; times
    as RFC 3339 with the plant's offset (a spreadsheet reads them; no locale guesswork)."""
    sections = _sections(found)
    columns: list[str] = []
    for cols, _rows in sections.values():
        columns += [c for c in cols if c not in columns]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["section", *columns])
    for name, (cols, rows) in sections.items():
        for r in rows:
            writer.writerow([name, *(_csv_value(r.get(c)) if c in cols else "" for c in columns)])
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a lot id is not a spreadsheet formula (CSV injection)
    return "" if value is None else value
