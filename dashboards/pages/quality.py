"""Quality board (/quality, manager): first-pass and final yield, defects by code (a
Pareto), by product and by machine, and the rework still open (docs/quality.md).

Filters: a date range (plant-local days, default the last 7, at most 92), a product and a
machine. Figures come from the public views v_yield, v_defects and v_rework
(dashboards/quality_queries.py); defect codes are named from the plant file's defect tree.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Final

import dash
import plotly.graph_objects as go
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import quality_queries as qq
from dashboards.nav import page_header
from dashboards.widgets import day_range, filter_pick, page_text, picked_days, text_table
from mesflow.delivery_kpis import fmt_pct
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

PATH: Final = "/quality"
ROLE: Final = "manager"
DEFAULT_DAYS: Final = 7
MAX_DAYS: Final = 92

_P = "q-"
_LANG = f"{_P}lang"
_RANGE = f"{_P}range"
_PRODUCT = f"{_P}product"
_MACHINE = f"{_P}machine"
_TILES = f"{_P}tiles"
_BODY = f"{_P}body"
_PARETO = f"{_P}pareto"
_PARETO_BY = f"{_P}pareto-by"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "质量：良率与不良", "en": "Quality: yield and defects"},
    "nav": {"zh": "质量", "en": "Quality"},
    "range": {"zh": "日期", "en": "Dates"},
    "product": {"zh": "产品", "en": "Product"},
    "machine": {"zh": "设备", "en": "Machine"},
    "all": {"zh": "全部", "en": "All"},
    "made": {"zh": "生产数", "en": "Made"},
    "fpy": {"zh": "一次合格率", "en": "First-pass yield"},
    "final": {"zh": "最终良率", "en": "Final yield"},
    "rework_rate": {"zh": "返工率", "en": "Rework rate"},
    "pending": {"zh": "返工中", "en": "In rework"},
    "sent": {"zh": "送返工", "en": "Sent to rework"},
    "good_after": {"zh": "返工合格", "en": "Reworked good"},
    "scrap_after": {"zh": "返工报废", "en": "Scrapped after rework"},
    "since": {"zh": "首次", "en": "Since"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "qty": {"zh": "数量", "en": "Qty"},
    "code": {"zh": "不良代码", "en": "Defect"},
    "pareto": {"zh": "不良柏拉图", "en": "Defects (Pareto)"},
    "cum": {"zh": "累计 %", "en": "Cumulative %"},
    "by_code": {"zh": "按代码", "en": "By code"},
    "by_family": {"zh": "按类别", "en": "By family"},
    "yield_product": {"zh": "按产品良率", "en": "Yield by product"},
    "yield_machine": {"zh": "按设备良率", "en": "Yield by machine"},
    "defects_product": {"zh": "按产品不良", "en": "Defects by product"},
    "defects_machine": {"zh": "按设备不良", "en": "Defects by machine"},
    "open_rework": {"zh": "未完成返工", "en": "Open rework"},
    "found": {"zh": "检验样品中发现的不良（另计）", "en": "Found in inspection samples (counted apart)"},
    "empty": {"zh": "所选范围内没有数据", "en": "No figures for this selection"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "note": {
        "zh": "一次合格率 = (生产数 − 首次报废 − 送返工) / 生产数；最终良率 = (一次合格 + 返工合格) / 生产数。"
        "不良为报废或送返工的零件；检验样品中发现的不良另计。日期按工厂时区与班次。",
        "en": "First-pass yield = (made − first-time scrap − sent to rework) / made; final "
        "yield = (first-pass good + reworked good) / made. Defects are parts scrapped or sent "
        "to rework; those found in inspection samples are counted apart. Days in the plant's "
        "time zone, by shift.",
    },
}  # fmt: skip


def s(key: str, lang: str) -> str:
    return page_text(STRINGS, key, lang)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Quality",
        order=46,
        nav=True,
        nav_label={"zh": STRINGS["nav"]["zh"], "en": STRINGS["nav"]["en"]},
        layout=layout,
        title="Quality · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_TILES, "children"),
        Output(_BODY, "children"),
        Output(_PARETO, "figure"),
        State(_LANG, "data"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
        Input(_PRODUCT, "value"),
        Input(_MACHINE, "value"),
        Input(_PARETO_BY, "value"),
    )(_update)


def parse_filters(
    plant: PlantConfig, start: Any, end: Any, product: Any, machine: Any
) -> qq.QualityFilters:
    """The filter values from the browser (hostile or broken) as filters; bad ones: defaults."""
    today = datetime.now(plant.tz).date()
    first, last = picked_days(start, end, today, DEFAULT_DAYS, MAX_DAYS)
    prod = product if isinstance(product, str) and 0 < len(product) <= 200 else None
    mach = machine if isinstance(machine, str) and machine in plant.machines else None
    return qq.QualityFilters(first, last + timedelta(days=1), prod, mach)


def layout(
    lang: str | None = None, start: str | None = None, end: str | None = None, **_q: str
) -> html.Div:
    """Skeleton and filters; the figures come with the first callback. `?start=&end=`
    preset the dates (a link to a given period)."""
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    f = parse_filters(plant, start, end, None, None)
    try:
        products = qq.products(ctx.db)
    except psycopg.Error as err:  # PoolTimeout is one
        log.warning("quality: cannot read the products: %s", type(err).__name__)
        products = []
    machines = [
        {"label": f"{m.id} · {m.name.get(lang)}", "value": m.id}
        for line in plant.lines
        for m in line.machines
    ]
    return html.Div(
        className=f"orders quality-page lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            page_header(
                lang,
                s("title", lang),
                PATH,
                plant.plant.name.get(lang),
                prefix="orders",
                title_class="board-name",
            ),
            html.Div(
                className="orders-filters quality-filters",
                children=[
                    html.Label(s("range", lang)),
                    day_range(_RANGE, f.start, (f.end - timedelta(days=1))),
                    filter_pick(
                        s("product", lang),
                        _PRODUCT,
                        [{"label": p, "value": p} for p in products],
                        s("all", lang),
                    ),
                    filter_pick(s("machine", lang), _MACHINE, machines, s("all", lang)),
                ],
            ),
            html.Div(id=_TILES, className="q-kpis"),
            html.Section(
                className="order-card quality-pareto",
                children=[
                    html.Div(
                        className="q-pareto-head",
                        children=[
                            html.H2(s("pareto", lang)),
                            dcc.RadioItems(
                                id=_PARETO_BY,
                                options=[
                                    {"label": s("by_code", lang), "value": "code"},
                                    {"label": s("by_family", lang), "value": "family"},
                                ],
                                value="code",
                                inline=True,
                            ),
                        ],
                    ),
                    dcc.Graph(
                        id=_PARETO,
                        config={"displayModeBar": False, "responsive": True},
                        style={"height": "280px"},
                    ),
                ],
            ),
            html.Div(id=_BODY, className="order-body quality-body"),
            html.P(s("note", lang), className="orders-note"),
        ],
    )


# -- callback ------------------------------------------------------------------------------------


def _update(lang: Any, start: Any, end: Any, product: Any, machine: Any, by: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    f = parse_filters(ctx.plant, start, end, product, machine)
    try:
        data = qq.board(ctx.db, f, ctx.plant.tz)
    except psycopg.Error as err:
        log.warning("quality: cannot read: %s", type(err).__name__)
        return [], html.Div(s("db_error", lang), className="orders-empty"), go.Figure()
    names = code_names(ctx.plant, lang)
    bars = data.by_family if by == "family" else data.by_code
    return tiles(data.total, lang), render(data, lang, names), pareto_figure(bars, names, lang)


# -- rendering (pure) ----------------------------------------------------------------------------


def code_names(plant: PlantConfig, lang: str) -> dict[str, str]:
    return {c: d.name.get(lang) for c, d in plant.defects_by_code.items()}


def _tile(label: str, value: str) -> html.Div:
    return html.Div(
        className="q-kpi",
        children=[
            html.Div(value, className="q-kpi-value"),
            html.Div(label, className="q-kpi-label"),
        ],
    )


def _yield_table(rows: list[qq.YieldGroup], head: str, lang: str) -> Any:
    return text_table(
        [
            head,
            s("made", lang),
            s("fpy", lang),
            s("final", lang),
            s("sent", lang),
            s("pending", lang),
        ],
        [
            [
                r.key,
                str(r.made),
                fmt_pct(r.first_pass_yield),
                fmt_pct(r.final_yield),
                str(r.sent_to_rework),
                str(r.rework_pending),
            ]
            for r in rows
        ],
        "orders-table quality-table",
        s("empty", lang),
    )


def _count_table(rows: list[qq.DefectCount], head: str, lang: str) -> Any:
    return text_table(
        [head, s("qty", lang)],
        [[r.key, str(r.qty)] for r in rows],
        "orders-table quality-table",
        s("empty", lang),
    )


def _card(title: str, body: Any) -> html.Section:
    return html.Section(className="order-card", children=[html.H2(title), body])


def tiles(t: qq.YieldGroup, lang: str) -> list[html.Div]:
    return [
        _tile(s("made", lang), str(t.made)),
        _tile(s("fpy", lang), fmt_pct(t.first_pass_yield) or "–"),
        _tile(s("final", lang), fmt_pct(t.final_yield) or "–"),
        _tile(s("rework_rate", lang), fmt_pct(t.rework_rate) or "–"),
        _tile(s("pending", lang), str(t.rework_pending)),
    ]


def render(data: qq.Board, lang: str, names: dict[str, str] | None = None) -> Any:
    rework = text_table(
        [
            s("work_order", lang),
            s("machine", lang),
            s("product", lang),
            s("sent", lang),
            s("good_after", lang),
            s("scrap_after", lang),
            s("pending", lang),
        ],
        [
            [
                r.work_order,
                r.machine,
                r.product,
                str(r.sent_to_rework),
                str(r.rework_good),
                str(r.rework_scrap),
                str(r.rework_pending),
            ]
            for r in data.rework
        ],
        "orders-table quality-table quality-rework",
        s("empty", lang),
    )
    return [
        _card(s("yield_product", lang), _yield_table(data.by_product, s("product", lang), lang)),
        _card(s("yield_machine", lang), _yield_table(data.by_machine, s("machine", lang), lang)),
        _card(
            s("defects_product", lang),
            _count_table(data.defects_by_product, s("product", lang), lang),
        ),
        _card(
            s("defects_machine", lang),
            _count_table(data.defects_by_machine, s("machine", lang), lang),
        ),
        _card(
            s("found", lang),
            _count_table(
                [
                    qq.DefectCount((names or {}).get(r.key, r.key), r.qty)
                    for r in data.found_by_code
                ],
                s("code", lang),
                lang,
            ),
        ),
        _card(s("open_rework", lang), rework),
    ]


def pareto_figure(rows: list[qq.DefectCount], names: dict[str, str], lang: str) -> go.Figure:
    """Bars largest first, and the cumulative share as a line on a second axis."""
    total = sum(r.qty for r in rows)
    labels = [names.get(r.key, r.key) for r in rows]
    cum: list[float] = []
    run = 0
    for r in rows:
        run += r.qty
        cum.append(100 * run / total if total else 0.0)
    fig = go.Figure()
    fig.add_bar(x=labels, y=[r.qty for r in rows], marker_color="#c0504d", name=s("qty", lang))
    fig.add_scatter(
        x=labels,
        y=cum,
        yaxis="y2",
        mode="lines+markers",
        line={"color": "#2a7ab0"},
        name=s("cum", lang),
        hovertemplate="%{x}: %{y:.1f}%<extra></extra>",
    )
    fig.update_layout(
        margin={"l": 40, "r": 40, "t": 10, "b": 40},
        font={"color": "#9aa4b2"},
        yaxis={"gridcolor": "rgba(154,164,178,0.2)"},
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "range": [0, 105],
            "tickvals": [0, 20, 40, 60, 80, 100],
            "ticktext": ["0%", "20%", "40%", "60%", "80%", "100%"],
            "showgrid": False,
        },
        xaxis={"type": "category"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
    )
    return fig
