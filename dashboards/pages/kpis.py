"""Delivery KPIs board (/kpis, manager): order lead time, change response time, on-time
delivery rate, scrap rate and rework rate per customer, product or month
(docs/kpis.md).

Filters: a month range (plant time zone), a customer, a product, and what a row is about.
The table's CSV export is the CSV of `mesflow report --kpis --csv` with the same filters
(dashboards/kpi_queries.py). A small chart shows the on-time rate by month for the same
customer and product filters.

Role: manager, as the order page: it names customers.
"""

from __future__ import annotations

import logging
from typing import Any, Final, cast

import dash
import plotly.graph_objects as go
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context, kpi_queries
from dashboards.nav import page_header
from dashboards.widgets import csv_download, page_text, text_table
from mesflow.delivery_kpis import (
    DIMENSIONS,
    DeliveryKpiRow,
    Dimension,
    MonthRange,
    fmt_duration,
    fmt_pct,
)

log = logging.getLogger(__name__)

PATH: Final = "/kpis"
ROLE: Final = "manager"

_P = "kpis-"
_LANG = f"{_P}lang"
_FROM = f"{_P}from"
_TO = f"{_P}to"
_CUSTOMER = f"{_P}customer"
_PRODUCT = f"{_P}product"
_BY = f"{_P}by"
_BODY = f"{_P}body"
_TREND = f"{_P}trend"
_CSV = f"{_P}csv"
_DOWNLOAD = f"{_P}download"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "交付指标", "en": "Delivery KPIs"},
    "from": {"zh": "起始月", "en": "From month"},
    "to": {"zh": "截止月", "en": "To month"},
    "customer": {"zh": "客户", "en": "Customer"},
    "product": {"zh": "产品", "en": "Product"},
    "month": {"zh": "月份", "en": "Month"},
    "by": {"zh": "按", "en": "By"},
    "all": {"zh": "全部", "en": "All"},
    "csv": {"zh": "导出 CSV", "en": "Export CSV"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "empty": {"zh": "所选范围内没有数据", "en": "No figures for this selection"},
    "trend": {"zh": "按月准时交付率", "en": "On-time delivery rate by month"},
    "no_completed": {"zh": "所选范围内尚无完成的订单", "en": "No order completed in this selection yet"},
    "note": {
        "zh": "月份按工厂时区。返工率 = 送返工数 / 生产数。",
        "en": "Months in the plant's time zone. Rework rate = parts sent to rework / parts made.",
    },
    # columns
    "orders_started": {"zh": "开工订单", "en": "Started"},
    "lead_time_avg_s": {"zh": "交货周期均值", "en": "Lead avg"},
    "lead_time_median_s": {"zh": "交货周期中位数", "en": "Lead median"},
    "lead_time_p90_s": {"zh": "交货周期 P90", "en": "Lead p90"},
    "changes": {"zh": "变更", "en": "Changes"},
    "unacknowledged": {"zh": "未确认", "en": "Unacked"},
    "response_median_s": {"zh": "响应中位数", "en": "Resp. median"},
    "response_p90_s": {"zh": "响应 P90", "en": "Resp. p90"},
    "completed": {"zh": "完成", "en": "Completed"},
    "on_time": {"zh": "准时", "en": "On time"},
    "on_time_rate": {"zh": "准时率", "en": "On-time rate"},
    "good": {"zh": "合格", "en": "Good"},
    "scrap": {"zh": "报废", "en": "Scrap"},
    "scrap_rate": {"zh": "报废率", "en": "Scrap rate"},
    "made": {"zh": "生产数", "en": "Made"},
    "sent_to_rework": {"zh": "送返工", "en": "Rework"},
    "rework_rate": {"zh": "返工率", "en": "Rework rate"},
}  # fmt: skip

COLUMNS: Final = (
    "orders_started", "lead_time_avg_s", "lead_time_median_s", "lead_time_p90_s", "changes",
    "unacknowledged", "response_median_s", "response_p90_s", "completed", "on_time",
    "on_time_rate", "good", "scrap", "scrap_rate", "rework_rate",
)  # fmt: skip


def s(key: str, lang: str) -> str:
    return page_text(STRINGS, key, lang)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="KPIs",
        order=47,
        nav=True,
        nav_label={"zh": "交付指标", "en": "KPIs"},
        layout=layout,
        title="KPIs · mesflow",
        min_role=ROLE,
    )
    filters = (
        State(_LANG, "data"),
        Input(_FROM, "value"),
        Input(_TO, "value"),
        Input(_CUSTOMER, "value"),
        Input(_PRODUCT, "value"),
        Input(_BY, "value"),
    )
    auth.callback(app, ROLE, Output(_BODY, "children"), Output(_TREND, "figure"), *filters)(_update)
    auth.callback(
        app,
        ROLE,
        Output(_DOWNLOAD, "data"),
        Input(_CSV, "n_clicks"),
        *(State(f.component_id, f.component_property) for f in filters[1:]),
        prevent_initial_call=True,
    )(_export)


def layout(lang: str | None = None, **_q: str) -> html.Div:
    ctx = context.current()
    lang = ctx.lang(lang)
    try:
        customers, products, months = kpi_queries.choices(ctx.db, ctx.plant.tz)
    except psycopg.Error as err:  # PoolTimeout is one
        log.warning("kpis: cannot read the filter choices: %s", type(err).__name__)
        customers, products, months = [], [], []

    def pick(id_: str, values: list[str], value: str | None, all_: bool) -> dcc.Dropdown:
        opts = [{"label": v, "value": v} for v in values]
        return dcc.Dropdown(
            id=id_,
            options=opts,
            value=value,
            clearable=all_,
            placeholder=s("all", lang),
            className="kpis-pick",
        )

    return html.Div(
        className=f"orders kpis-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            _header(lang, ctx.plant.plant.name.get(lang)),
            html.Div(
                className="orders-filters kpis-filters",
                children=[
                    html.Label([s("from", lang), pick(_FROM, months, None, True)]),
                    html.Label([s("to", lang), pick(_TO, months, None, True)]),
                    html.Label([s("customer", lang), pick(_CUSTOMER, customers, None, True)]),
                    html.Label([s("product", lang), pick(_PRODUCT, products, None, True)]),
                    html.Label(
                        [
                            s("by", lang),
                            dcc.RadioItems(
                                id=_BY,
                                options=[{"label": s(d, lang), "value": d} for d in DIMENSIONS],
                                value="month",
                                inline=True,
                            ),
                        ]
                    ),
                    html.Button(s("csv", lang), id=_CSV, className="orders-csv"),
                    dcc.Download(id=_DOWNLOAD),
                ],
            ),
            html.Div(id=_BODY, className="order-body kpis-body"),
            html.Section(
                className="order-card kpis-trend",
                children=[
                    html.H2(s("trend", lang)),
                    dcc.Graph(
                        id=_TREND,
                        config={"displayModeBar": False, "responsive": True},
                        style={"height": "220px"},
                    ),
                ],
            ),
            html.P(s("note", lang), className="orders-note"),
        ],
    )


def _header(lang: str, plant_name: str) -> html.Header:
    # The order pages' header (the same classes, so the same look).
    return page_header(
        lang, s("title", lang), PATH, plant_name, prefix="orders", title_class="board-name"
    )


# -- callbacks -------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= 200 else None


def _filters(
    first: Any, last: Any, customer: Any, product: Any, by: Any
) -> tuple[Dimension, MonthRange, str | None, str | None]:
    dim = cast(Dimension, by if by in DIMENSIONS else "month")
    a, b = _text(first), _text(last)
    if a and b and b < a:
        a, b = b, a
    return dim, MonthRange(a, b), _text(customer), _text(product)


def _update(lang: Any, first: Any, last: Any, customer: Any, product: Any, by: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    dim, months, cust, prod = _filters(first, last, customer, product, by)
    tz = ctx.plant.tz
    try:
        rows = kpi_queries.kpi_rows(ctx.db, tz, dim, months, cust, prod)
        trend = kpi_queries.kpi_rows(ctx.db, tz, "month", months, cust, prod)
    except psycopg.Error as err:
        log.warning("kpis: cannot read: %s", type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty"), go.Figure()
    return render(rows, dim, lang), trend_figure(trend, lang)


def _export(_n: Any, first: Any, last: Any, customer: Any, product: Any, by: Any) -> Any:
    ctx = context.current()
    dim, months, cust, prod = _filters(first, last, customer, product, by)
    text = kpi_queries.kpi_csv(ctx.db, ctx.plant.tz, dim, months, cust, prod)
    return csv_download(text, f"delivery-kpis-by-{dim}.csv")


# -- rendering (pure) ------------------------------------------------------------------------


def _cell(col: str, r: DeliveryKpiRow) -> str:
    value = getattr(r, col)
    if col.endswith("_s"):
        return fmt_duration(value)
    if col.endswith("_rate"):
        return fmt_pct(value)
    return str(value)


def render(rows: list[DeliveryKpiRow], by: Dimension, lang: str) -> Any:
    return text_table(
        [s(by, lang), *(s(c, lang) for c in COLUMNS)],
        [[r.key, *(_cell(c, r) for c in COLUMNS)] for r in rows],
        "orders-table kpis-table",
        s("empty", lang),
    )


def trend_figure(rows: list[DeliveryKpiRow], lang: str) -> go.Figure:
    points = [(r.key, r.on_time_rate) for r in rows if r.on_time_rate is not None]
    fig = go.Figure(
        go.Scatter(
            x=[k for k, _ in points],
            y=[v * 100 for _, v in points],
            mode="lines+markers",
            line={"color": "#2a7ab0"},
            hovertemplate="%{x}: %{y:.1f}%<extra></extra>",
        )
    )
    fig.update_layout(
        margin={"l": 40, "r": 10, "t": 10, "b": 30},
        font={"color": "#9aa4b2"},
        # No zero line: with no completed order it read as an on-time rate of 0 %.
        yaxis={
            "range": [0, 105],
            "ticksuffix": "%",
            "gridcolor": "rgba(154,164,178,0.2)",
            "zeroline": False,
        },
        xaxis={"type": "category", "gridcolor": "rgba(154,164,178,0.2)"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
    )
    if not points:
        fig.add_annotation(
            text=s("no_completed", lang), showarrow=False, x=0.5, y=0.5,
            xref="paper", yref="paper", font={"size": 16},
        )  # fmt: skip
    return fig
