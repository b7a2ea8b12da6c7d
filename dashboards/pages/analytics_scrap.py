"""The analytics page's "Scrap by reason and product" panel (issue 9, item 3).

A stacked bar per scrap reason (most first), one colour per product, and the table of
(reason, product, parts, share) with a CSV export, under the page's date / scope / shift
filters. Reads v_scrap_by_reason through dashboards/scrap_queries.py. Kept apart from
dashboards/pages/analytics.py, which only places `panel()` and calls `register()`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import scrap_queries as sq
from dashboards.analytics_queries import Filters
from dashboards.pages import analytics as an
from dashboards.widgets import csv_download
from mesflow.plant import PlantConfig
from mesflow.report import fmt_pct, to_csv

log = logging.getLogger(__name__)

STRINGS: dict[str, dict[str, str]] = {
    "scrap_title": {"zh": "废品原因与产品分析", "en": "Scrap by reason and product"},
    "product": {"zh": "产品", "en": "Product"},
    "parts": {"zh": "件数", "en": "Parts"},
    "unspecified": {"zh": "未注明原因", "en": "Unspecified"},
    "unknown_product": {"zh": "未知产品", "en": "Unknown product"},
    "no_scrap": {"zh": "所选范围内没有废品", "en": "No scrap in this selection"},
}

# Literal ids (not built from analytics._P): this module is imported while analytics.py is.
_CHART, _TABLE, _CSV, _DL = "an-scrap-chart", "an-scrap-table", "an-csv-scrap", "an-dl-scrap"


def s(key: str, lang: str) -> str:
    entry = STRINGS.get(key)
    return entry.get(lang, entry["en"]) if entry else an.s(key, lang)


def reason_name(row: sq.ScrapRow, plant: PlantConfig, lang: str) -> str:
    """The reason tree's name; a defect code's (a `defect` report scrapped) from the plant's
    defect tree, which the view does not join; else the code."""
    if row.reason == "unspecified":
        return s("unspecified", lang)
    if row.reason_en or row.reason_zh:
        return row.name(lang)
    defect = plant.defects_by_code.get(row.reason)
    return defect.name.get(lang) if defect is not None else row.reason


def product_name(code: str, plant: PlantConfig, lang: str) -> str:
    if code == "unknown":
        return s("unknown_product", lang)
    named = {p.id: p.name.get(lang) for p in plant.products}.get(code)
    return f"{code} {named}" if named else code


def category_name(row: sq.ScrapRow, plant: PlantConfig, lang: str) -> str:
    """The reason's category; a defect code's is its group in the defect tree (the view
    says 'other' for any code outside the reason tree)."""
    if row.category == "other" and (group := plant.defect_groups.get(row.reason)):
        return group.name.get(lang)
    if row.category == "unspecified":
        return s("unspecified", lang)
    return an.category_label(row.category, lang)


def panel(lang: str) -> html.Section:
    """The card: title, CSV button, chart and table (filled by the callback)."""
    return html.Section(
        className="an-card an-scrap",
        style={"gridColumn": "1 / -1"},  # full width, as the other tables
        children=[
            html.Div(
                [
                    html.H2(s("scrap_title", lang)),
                    html.Button(an.s("csv", lang), id=_CSV, className="an-csv"),
                    dcc.Download(id=_DL),
                ],
                className="an-card-head",
            ),
            dcc.Graph(id=_CHART, config={"displayModeBar": False}, className="an-graph"),
            html.Div(id=_TABLE, className="an-table-wrap"),
        ],
    )


def register(app: dash.Dash) -> None:
    auth.callback(
        app,
        an.MIN_ROLE,
        Output(_CHART, "figure"),
        Output(_TABLE, "children"),
        Input(an._RANGE, "start_date"),
        Input(an._RANGE, "end_date"),
        Input(an._SCOPE, "value"),
        Input(an._SHIFT, "value"),
        State(an._LANG, "data"),
    )(_refresh)
    auth.callback(
        app,
        an.MIN_ROLE,
        Output(_DL, "data"),
        Input(_CSV, "n_clicks"),
        State(an._RANGE, "start_date"),
        State(an._RANGE, "end_date"),
        State(an._SCOPE, "value"),
        State(an._SHIFT, "value"),
        prevent_initial_call=True,
    )(_download)


# -- figures (pure given the rows) ------------------------------------------------------------


def figure(rows: Sequence[sq.ScrapRow], plant: PlantConfig, lang: str) -> go.Figure:
    """One bar per reason (most scrap first), stacked by product."""
    fig = an._fig()
    order = [code for code, _ in sq.by_reason(rows)]
    names = {r.reason: reason_name(r, plant, lang) for r in rows}
    products = sorted({r.product for r in rows}, key=lambda p: (p == "unknown", p))
    qty = {(r.reason, r.product): r.qty for r in rows}
    for p in products:
        fig.add_trace(
            go.Bar(
                x=[names[c] for c in order],
                y=[qty.get((c, p), 0) for c in order],
                customdata=order,
                name=product_name(p, plant, lang),
            )
        )
    fig.update_layout(barmode="stack", legend_title_text=s("product", lang))
    an.legend_on_top(fig)
    fig.update_yaxes(title=s("parts", lang), rangemode="tozero")
    return fig


def scrap_table(rows: Sequence[sq.ScrapRow], plant: PlantConfig, lang: str) -> Any:
    if not rows:
        return html.Div(s("no_scrap", lang), className="an-empty")
    heads = [s(k, lang) for k in ("reason", "category", "product", "parts", "share")]
    body = [
        [
            reason_name(r, plant, lang),
            category_name(r, plant, lang),
            product_name(r.product, plant, lang),
            r.qty,
            fmt_pct(r.share),
        ]
        for r in rows
    ]
    return an.table(heads, body, "an-scrap-table")


def export(db: Any, f: Filters, tz: ZoneInfo) -> tuple[str, str]:
    """(file name, CSV text): the table's rows with the view's codes, as the other tables."""
    scope = f.scope.id or "plant"
    stem = f"scrap_{scope}_{f.start.isoformat()}_{(f.end - timedelta(days=1)).isoformat()}"
    if f.shift:
        stem += f"_{f.shift}"
    return f"{stem}.csv", to_csv(sq.scrap_by_reason(db, f, tz), sq.ScrapRow, tz)


# -- callbacks --------------------------------------------------------------------------------


def _refresh(start: Any, end: Any, scope: Any, shift: Any, lang: Any) -> tuple[Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    f = an.parse_filters(ctx.plant, start, end, scope, shift)
    try:
        rows = sq.scrap_by_reason(ctx.db, f, ctx.plant.tz)
    except an._DB_ERRORS as err:
        log.warning("analytics: cannot read v_scrap_by_reason: %s", err)
        return dash.no_update, html.Div(an.s("db_error", lang), className="an-error")
    return figure(rows, ctx.plant, lang), scrap_table(rows, ctx.plant, lang)


def _download(_n: Any, start: Any, end: Any, scope: Any, shift: Any) -> Any:
    ctx = context.current()
    f = an.parse_filters(ctx.plant, start, end, scope, shift)
    name, text = export(ctx.db, f, ctx.plant.tz)
    return csv_download(text, name)


__all__ = ["panel", "register"]
