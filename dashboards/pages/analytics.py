"""Manager analytics: OEE trends, shift comparison, loss waterfall, stop Pareto with drill-down,
state timeline and MTBF/MTTR, for a date range, a plant / line / machine and a shift.

Every figure is built by a pure function of query rows (`render`), and every number is the
`mesflow report` one (dashboards/analytics_queries.py reuses its SQL and its totals). Each table
exports its rows as CSV with the report's columns.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dash
import plotly.graph_objects as go
import psycopg
from dash import Input, Output, State, dcc, html
from psycopg_pool import PoolTimeout

from dashboards import analytics_queries as aq
from dashboards import auth, context
from dashboards.i18n import state_label, t
from dashboards.nav import page_header
from dashboards.pages import analytics_scrap
from dashboards.widgets import csv_download, picked_days, text_table
from mesflow.plant import PlantConfig
from mesflow.report import KpiRow, ReasonRow, Scope, fmt_hm, fmt_pct, to_csv, total_row

log = logging.getLogger(__name__)

PATH = "/analytics"
MIN_ROLE = "manager"
DEFAULT_DAYS = 7
MAX_DAYS = 92  # a quarter: beyond that the shift rows are too many for one screen

STRINGS: dict[str, dict[str, str]] = {
    "title": {"zh": "生产分析", "en": "Production analytics"},
    "range": {"zh": "日期", "en": "Dates"},
    "scope": {"zh": "范围", "en": "Scope"},
    "shift": {"zh": "班次", "en": "Shift"},
    "all_shifts": {"zh": "全部班次", "en": "All shifts"},
    "plant": {"zh": "全厂", "en": "Plant"},
    "line": {"zh": "产线", "en": "Line"},
    "machine": {"zh": "设备", "en": "Machine"},
    "oee": {"zh": "OEE", "en": "OEE"},
    "availability": {"zh": "可用率", "en": "Availability"},
    "performance": {"zh": "性能", "en": "Performance"},
    "quality": {"zh": "质量", "en": "Quality"},
    "good": {"zh": "良品", "en": "Good"},
    "scrap": {"zh": "废品", "en": "Scrap"},
    "mttr": {"zh": "平均修复时间", "en": "MTTR"},
    "mtbf": {"zh": "平均故障间隔", "en": "MTBF"},
    "failures": {"zh": "故障次数", "en": "Failures"},
    "trend": {"zh": "每日 OEE 趋势", "en": "OEE trend by day"},
    "shift_cmp": {"zh": "班次对比", "en": "Shift comparison"},
    "waterfall": {"zh": "损失瀑布图（六大损失）", "en": "Loss waterfall (six big losses)"},
    "pareto_reason": {"zh": "停机原因柏拉图", "en": "Stop Pareto by reason"},
    "pareto_category": {"zh": "停机类别柏拉图", "en": "Stop Pareto by category"},
    "stops": {"zh": "停机明细", "en": "Stops"},
    "stops_hint": {
        "zh": "点击柏拉图中的柱子查看对应停机",
        "en": "Click a Pareto bar to see its stops",
    },
    "timeline": {"zh": "状态时间线", "en": "State timeline"},
    "timeline_lines": {
        "zh": "每条产线每小时各状态占比；点击产线查看其设备",
        "en": "Each line's state shares hour by hour; click a line for its machines",
    },
    "reliability": {"zh": "设备可靠性", "en": "Reliability by machine"},
    "shift_table": {"zh": "班次明细", "en": "Shifts"},
    "csv": {"zh": "导出 CSV", "en": "Export CSV"},
    "hours": {"zh": "小时", "en": "hours"},
    "cumulative": {"zh": "累计", "en": "Cumulative"},
    "no_figures": {"zh": "所选范围内没有数据", "en": "No figures for this selection"},
    "db_error": {"zh": "数据库暂时无法连接", "en": "The database cannot be reached"},
    "wf_planned": {"zh": "计划时间", "en": "Planned time"},
    "wf_unexplained": {"zh": "其他停机", "en": "Other downtime"},
    "wf_microstops": {"zh": "小停机", "en": "Micro-stops"},
    "wf_speed": {"zh": "速度损失", "en": "Speed loss"},
    "wf_scrap": {"zh": "废品损失", "en": "Scrap"},
    "wf_productive": {"zh": "完全有效生产时间", "en": "Fully productive time"},
    "start": {"zh": "开始", "en": "Start"},
    "end": {"zh": "结束", "en": "End"},
    "state": {"zh": "状态", "en": "State"},
    "duration": {"zh": "时长", "en": "Duration"},
    "reason": {"zh": "原因", "en": "Reason"},
    "category": {"zh": "类别", "en": "Category"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "stops_count": {"zh": "次数", "en": "Stops"},
    "share": {"zh": "占比", "en": "Share"},
    "date": {"zh": "日期", "en": "Date"},
    "planned_h": {"zh": "计划 h", "en": "Planned h"},
    "sort": {"zh": "排序", "en": "Order"},
    "sort_mtbf": {"zh": "MTBF 最短优先", "en": "Shortest MTBF first"},
    "sort_failures": {"zh": "故障最多优先", "en": "Most failures first"},
    "sort_mttr": {"zh": "MTTR 最长优先", "en": "Longest MTTR first"},
    "sort_machine": {"zh": "按设备编号", "en": "By machine"},
    "prev": {"zh": "上一页", "en": "Previous"},
    "next": {"zh": "下一页", "en": "Next"},
    "pager": {"zh": "第 {first}–{last} 台，共 {total} 台", "en": "{first}–{last} of {total}"},
}

CATEGORY_LABELS: dict[str, dict[str, str]] = {
    "technical": {"zh": "技术故障", "en": "Technical"},
    "material": {"zh": "物料", "en": "Material"},
    "process": {"zh": "工艺", "en": "Process"},
    "operator": {"zh": "人员", "en": "Operator"},
    "quality": {"zh": "质量", "en": "Quality"},
    "organisational": {"zh": "组织管理", "en": "Organisational"},
    "planned": {"zh": "计划", "en": "Planned"},
    "unassigned": {"zh": "未填原因", "en": "Unassigned"},
    "no_data": {"zh": "无数据", "en": "No data"},
    "other": {"zh": "其他", "en": "Other"},
}

STATE_COLOURS = {
    "running": "#2e9d44",
    "idle": "#e0b000",
    "down": "#d62728",
    "setup": "#1f77b4",
    "planned_stop": "#8c8c8c",
    "offline": "#4d4d4d",
}

_P = "an-"  # component id prefix
_LANG, _START, _END, _SCOPE, _SHIFT = (
    f"{_P}{x}" for x in ("lang", "start", "end", "scope", "shift")
)
_RANGE = f"{_P}range"
_BANNER = f"{_P}banner"
_SUMMARY = f"{_P}summary"
_TREND, _SHIFTS, _WATERFALL = f"{_P}trend", f"{_P}shifts", f"{_P}waterfall"
_PARETO_R, _PARETO_C, _TIMELINE = f"{_P}pareto-reason", f"{_P}pareto-category", f"{_P}timeline"
_STOPS, _RELIABILITY, _SHIFT_TABLE = f"{_P}stops", f"{_P}reliability", f"{_P}shift-table"
_PICK = f"{_P}pick"  # the Pareto bar clicked: {"reason": ...} or {"category": ...}
# The reliability table's order, page (from 0), buttons and "1–25 of 500" text.
_REL_SORT, _REL_PAGE, _REL_PAGER = f"{_P}rel-sort", f"{_P}rel-page", f"{_P}rel-pager"
_REL_PREV, _REL_NEXT = f"{_P}rel-prev", f"{_P}rel-next"
# Rows of the reliability table a page: Dash draws ~0.1 s a row of components on a loaded
# machine (docs/performance.md), so a 500-machine plant shows its worst 25 and pages on.
RELIABILITY_PAGE = 25
RELIABILITY_SORTS = ("mtbf", "failures", "mttr", "machine")
TABLES = ("shifts", "reasons", "stops", "reliability")


def s(key: str, lang: str, **fmt: str) -> str:
    entry = STRINGS.get(key)
    if entry is None:
        return t(key, lang)
    text = entry.get(lang, entry["en"])
    return text.format(**fmt) if fmt else text


def category_label(code: str, lang: str) -> str:
    entry = CATEGORY_LABELS.get(code)
    return entry[lang] if entry else code


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Analytics",
        order=10,
        nav=True,
        nav_label={"zh": "生产分析", "en": "Analytics"},
        layout=layout,
        title="Analytics · mesflow",
        min_role=MIN_ROLE,
    )
    auth.callback(
        app,
        MIN_ROLE,
        Output(_BANNER, "children"),
        Output(_SUMMARY, "children"),
        Output(_TREND, "figure"),
        Output(_SHIFTS, "figure"),
        Output(_WATERFALL, "figure"),
        Output(_PARETO_R, "figure"),
        Output(_PARETO_C, "figure"),
        Output(_TIMELINE, "figure"),
        Output(_SHIFT_TABLE, "children"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
        Input(_SCOPE, "value"),
        Input(_SHIFT, "value"),
        State(_LANG, "data"),
    )(_refresh)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_SCOPE, "value"),
        Input(_TIMELINE, "clickData"),
        prevent_initial_call=True,
    )(_line_click)
    # Its own callback: paging or re-ordering reads only the reliability rows.
    auth.callback(
        app,
        MIN_ROLE,
        Output(_RELIABILITY, "children"),
        Output(_REL_PAGE, "data"),
        Output(_REL_PAGER, "children"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
        Input(_SCOPE, "value"),
        Input(_SHIFT, "value"),
        Input(_REL_SORT, "value"),
        Input(_REL_PREV, "n_clicks"),
        Input(_REL_NEXT, "n_clicks"),
        State(_LANG, "data"),
        State(_REL_PAGE, "data"),
    )(_reliability)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_PICK, "data"),
        Input(_PARETO_R, "clickData"),
        Input(_PARETO_C, "clickData"),
        prevent_initial_call=True,
    )(_pick)
    auth.callback(
        app,
        MIN_ROLE,
        Output(_STOPS, "children"),
        Input(_PICK, "data"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
        Input(_SCOPE, "value"),
        Input(_SHIFT, "value"),
        State(_LANG, "data"),
    )(_stops)
    for table in TABLES:
        auth.callback(
            app,
            MIN_ROLE,
            Output(f"{_P}dl-{table}", "data"),
            Input(f"{_P}csv-{table}", "n_clicks"),
            State(_RANGE, "start_date"),
            State(_RANGE, "end_date"),
            State(_SCOPE, "value"),
            State(_SHIFT, "value"),
            State(_PICK, "data"),
            prevent_initial_call=True,
        )(_csv_callback(table))
    analytics_scrap.register(app)


# -- filters ----------------------------------------------------------------------------------


def scope_options(plant: PlantConfig, lang: str) -> list[dict[str, str]]:
    opts = [{"label": f"{s('plant', lang)}: {plant.plant.name.get(lang)}", "value": "plant"}]
    for line in plant.lines:
        opts.append(
            {"label": f"{s('line', lang)}: {line.name.get(lang)}", "value": f"line:{line.id}"}
        )
        for m in line.machines:
            opts.append({"label": f"  {m.id} {m.name.get(lang)}", "value": f"machine:{m.id}"})
    return opts


def shift_options(plant: PlantConfig, lang: str) -> list[dict[str, str]]:
    names: list[str] = []
    for cal in [
        plant.shift_calendar,
        *(ln.shift_calendar for ln in plant.lines if ln.shift_calendar),
    ]:
        names += [sh.name for sh in cal.shifts if sh.name not in names]
    return [{"label": s("all_shifts", lang), "value": ""}] + [
        {"label": plant.shift_label(n, lang), "value": n} for n in names
    ]


def parse_filters(plant: PlantConfig, start: Any, end: Any, scope: Any, shift: Any) -> aq.Filters:
    """The filter values from the browser (hostile or broken) as Filters; bad ones -> defaults.

    The date picker's end is inclusive for a person; Filters' end is exclusive.
    """
    today = datetime.now(plant.tz).date()
    first, last = picked_days(start, end, today, DEFAULT_DAYS, MAX_DAYS)
    kind, _, ident = str(scope or "plant").partition(":")
    sc = Scope("plant")
    if kind == "line" and any(ln.id == ident for ln in plant.lines):
        sc = Scope("line", ident)
    elif kind == "machine" and ident in plant.machines:
        sc = Scope("machine", ident)
    names = {o["value"] for o in shift_options(plant, "en")} - {""}
    return aq.Filters(first, last + timedelta(days=1), sc, shift if shift in names else None)


# -- layout -----------------------------------------------------------------------------------


def layout(
    lang: str | None = None,
    start: str | None = None,
    end: str | None = None,
    scope: str | None = None,
    shift: str | None = None,
    **_query: str,
) -> html.Div:
    """Skeleton and filters; the figures come with the first callback. `?start=&end=&scope=&
    shift=` preset the filters (a link to a given view)."""
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    f = parse_filters(plant, start, end, scope, shift)
    scope_value = "plant" if f.scope.kind == "plant" else f"{f.scope.kind}:{f.scope.id}"

    def card(title_key: str, body_id: str, table: str | None = None, graph: bool = True) -> Any:
        head: list[Any] = [html.H2(s(title_key, lang))]
        if table:
            head.append(html.Button(s("csv", lang), id=f"{_P}csv-{table}", className="an-csv"))
            head.append(dcc.Download(id=f"{_P}dl-{table}"))
        body: Any = (
            # No mode bar: it covered titles and export buttons; drag still zooms.
            dcc.Graph(id=body_id, config={"displayModeBar": False}, className="an-graph")
            if graph
            else html.Div(id=body_id, className="an-table-wrap")
        )
        return html.Section(
            className="an-card", children=[html.Div(head, className="an-card-head"), body]
        )

    return html.Div(
        className=f"analytics lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Store(id=_PICK, data=None),
            page_header(lang, s("title", lang), PATH, plant.plant.name.get(lang)),
            html.Div(
                className="an-filters",
                children=[
                    html.Label([s("range", lang)], className="an-label"),
                    dcc.DatePickerRange(
                        id=_RANGE,
                        start_date=f.start.isoformat(),
                        end_date=(f.end - timedelta(days=1)).isoformat(),
                        display_format="YYYY-MM-DD",
                        first_day_of_week=1,
                    ),
                    html.Label([s("scope", lang)], className="an-label"),
                    dcc.Dropdown(
                        id=_SCOPE,
                        options=scope_options(plant, lang),
                        value=scope_value,
                        clearable=False,
                        className="an-dropdown an-scope",
                    ),
                    html.Label([s("shift", lang)], className="an-label"),
                    dcc.Dropdown(
                        id=_SHIFT,
                        options=shift_options(plant, lang),
                        value=f.shift or "",
                        clearable=False,
                        className="an-dropdown an-shift",
                    ),
                ],
            ),
            html.Div(id=_BANNER, className="an-banner"),
            html.Div(id=_SUMMARY, className="an-summary"),
            html.Div(
                className="an-grid",
                children=[
                    card("trend", _TREND),
                    card("shift_cmp", _SHIFTS),
                    card("pareto_reason", _PARETO_R, "reasons"),
                    card("pareto_category", _PARETO_C),
                    card("stops", _STOPS, "stops", graph=False),
                    card("waterfall", _WATERFALL),
                    reliability_card(lang),
                    card("timeline", _TIMELINE),
                    card("shift_table", _SHIFT_TABLE, "shifts", graph=False),
                    analytics_scrap.panel(lang),
                ],
            ),
        ],
    )


def reliability_card(lang: str) -> Any:
    """The reliability card: an order to rank the machines by (worst first), the CSV of every
    machine, one page of the table, and the pager."""
    head = html.Div(
        className="an-card-head",
        children=[
            html.H2(s("reliability", lang)),
            dcc.Dropdown(
                id=_REL_SORT,
                options=[{"label": s(f"sort_{k}", lang), "value": k} for k in RELIABILITY_SORTS],
                value=RELIABILITY_SORTS[0],
                clearable=False,
                searchable=False,
                className="an-dropdown an-rel-sort",
            ),
            html.Button(s("csv", lang), id=f"{_P}csv-reliability", className="an-csv"),
            dcc.Download(id=f"{_P}dl-reliability"),
        ],
    )
    pager = html.Div(
        className="an-pager",
        children=[
            html.Button(s("prev", lang), id=_REL_PREV, className="an-rel-prev"),
            html.Span(id=_REL_PAGER, className="an-pager-text"),
            html.Button(s("next", lang), id=_REL_NEXT, className="an-rel-next"),
        ],
    )
    return html.Section(
        className="an-card",
        children=[
            head,
            dcc.Store(id=_REL_PAGE, data=0),
            html.Div(id=_RELIABILITY, className="an-table-wrap"),
            pager,
        ],
    )


# -- data and figures (pure given the rows) ---------------------------------------------------


@dataclass(frozen=True)
class Analytics:
    """Everything the page shows for one filter, read in one go."""

    shifts: list[KpiRow]
    total: KpiRow
    reasons: list[ReasonRow]
    categories: list[aq.CategoryRow]
    waterfall: list[aq.LossStep]
    reliability: list[aq.MachineReliability]
    intervals: list[aq.IntervalRow]
    spans: list[aq.ShiftSpan]
    window: tuple[datetime, datetime]
    # Set instead of `intervals` for a large plant's scope: a lane per line (lines_timeline).
    line_hours: list[aq.LineHour] | None = None


def lanes_by_line(plant: PlantConfig, f: aq.Filters) -> bool:
    """Whether the timeline draws a lane per line (each hour's state shares) rather than a
    lane per machine: the plant's scope with more machines than a screen has lanes for."""
    return f.scope.kind == "plant" and len(plant.machines) > aq.TIMELINE_MACHINE_LANES


def load(
    db: Any, f: aq.Filters, tz: ZoneInfo, *, by_line: bool = False, reliability: bool = True
) -> Analytics:
    shifts = aq.kpis(db, f, tz)
    total = total_row(shifts)
    reasons = aq.reasons(db, f, tz)
    categories = aq.by_category(reasons)
    micro = aq.microstop_seconds(db, f, tz)
    intervals: list[aq.IntervalRow] = []
    line_hours: list[aq.LineHour] | None = None
    if by_line:
        line_hours, spans, lo, hi = aq.timeline_shares(db, f, tz)
    else:
        intervals, spans, lo, hi = aq.timeline(db, f, tz)
    return Analytics(
        shifts=shifts,
        total=total,
        reasons=reasons,
        categories=categories,
        waterfall=aq.waterfall(total, categories, micro),
        # The page reads them in their own callback (reliability=False there).
        reliability=aq.reliability(db, f, tz) if reliability else [],
        intervals=intervals,
        spans=spans,
        window=(lo, hi),
        line_hours=line_hours,
    )


def _fig(title: str | None = None) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        margin={"l": 50, "r": 20, "t": 30 if title else 10, "b": 40},
        height=320,
        legend={"orientation": "h", "y": -0.2},
        font={"family": "Noto Sans CJK SC, Noto Sans SC, WenQuanYi Micro Hei, sans-serif"},
        title=title,
        plot_bgcolor="white",
    )
    fig.update_yaxes(gridcolor="#e5e5e5")
    return fig


def legend_on_top(fig: go.Figure) -> None:
    """The legend above the plot, right-aligned: below it, the slanted category names of a
    bar chart (long reason or product names) run into it."""
    fig.update_layout(
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
        margin={"t": 30},
    )
    fig.update_xaxes(automargin=True)


def _pct(v: float | None) -> float | None:
    return None if v is None else round(v * 100, 1)


def trend_figure(shifts: Sequence[KpiRow], lang: str) -> go.Figure:
    fig = _fig()
    days = aq.by_day(shifts)
    x = [d.isoformat() for d, _ in days]
    for key in ("oee", "availability", "performance", "quality"):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[_pct(getattr(r, key)) for _, r in days],
                name=s(key, lang),
                mode="lines+markers",
                line={"width": 4 if key == "oee" else 2},
            )
        )
    fig.update_yaxes(ticksuffix=" %", rangemode="tozero")
    fig.update_xaxes(type="category")
    return fig


def shift_figure(shifts: Sequence[KpiRow], plant: PlantConfig, lang: str) -> go.Figure:
    fig = _fig()
    groups = aq.by_shift_name(shifts)
    for key in ("oee", "availability", "performance", "quality"):
        fig.add_trace(
            go.Bar(
                x=[plant.shift_label(n, lang) for n, _ in groups],
                y=[_pct(getattr(r, key)) for _, r in groups],
                name=s(key, lang),
                text=[fmt_pct(getattr(r, key)) for _, r in groups],
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(ticksuffix=" %")
    return fig


def waterfall_figure(steps: Sequence[aq.LossStep], lang: str) -> go.Figure:
    fig = _fig()

    def label(st: aq.LossStep) -> str:
        return (
            category_label(st.label_key, lang)
            if st.key.startswith("cat:") and st.label_key in CATEGORY_LABELS
            else s(st.label_key, lang)
        )

    hours = [st.seconds / 3600 for st in steps]
    fig.add_trace(
        go.Waterfall(
            x=[label(st) for st in steps],
            y=[round(h, 2) for h in hours],
            measure=[
                "absolute" if st.kind == "total" else "total" if st.kind == "result" else "relative"
                for st in steps
            ],
            text=[f"{abs(h):.1f} h" for h in hours],
            textposition="outside",
            decreasing={"marker": {"color": "#d62728"}},
            totals={"marker": {"color": "#2e9d44"}},
            increasing={"marker": {"color": "#1f77b4"}},
            connector={"line": {"color": "#999"}},
        )
    )
    fig.update_yaxes(title=s("hours", lang))
    return fig


def pareto_figure(
    names: Sequence[str], codes: Sequence[str], seconds: Sequence[float], lang: str
) -> go.Figure:
    """Bars (hours, longest first) and the cumulative share line: the classic Pareto."""
    fig = _fig()
    total = sum(seconds) or 1.0
    cumulative: list[float] = []
    acc = 0.0
    for v in seconds:
        acc += v
        cumulative.append(round(acc / total * 100, 1))
    fig.add_trace(
        go.Bar(
            x=list(names),
            y=[round(v / 3600, 2) for v in seconds],
            customdata=list(codes),
            name=s("hours", lang),
            marker={"color": "#d62728"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=list(names),
            y=cumulative,
            yaxis="y2",
            name=s("cumulative", lang),
            mode="lines+markers",
        )
    )
    fig.update_layout(
        yaxis={"title": s("hours", lang)},
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "range": [0, 105],
            "tickvals": [0, 25, 50, 75, 100],
            "ticksuffix": " %",
            "showgrid": False,
        },
    )
    legend_on_top(fig)
    return fig


def timeline_figure(
    intervals: Sequence[aq.IntervalRow],
    spans: Sequence[aq.ShiftSpan],
    window: tuple[datetime, datetime],
    plant: PlantConfig,
    lang: str,
) -> dict[str, Any]:
    """One lane per machine, one bar trace per state; shift starts as lines, breaks shaded.

    A plain figure dict, not a plotly Figure: 50 machines over two days are ~15,000 bars, and
    plotly's validation of them took over a second (bench/analytics_bench.py).
    """
    tz = plant.tz
    lo, hi = window
    seen = {i.machine for i in intervals}
    machines = [m for m in plant.machines if m in seen]
    traces: list[dict[str, Any]] = []
    for state, colour in STATE_COLOURS.items():
        ys: list[str] = []
        xs: list[float] = []
        bases: list[str] = []
        reasons: list[str] = []
        for i in intervals:
            if i.state != state:
                continue
            b = max(i.start_ts, lo)
            e = min(i.end_ts or i.start_ts + timedelta(seconds=i.duration_s), hi)
            if e <= b:  # an open interval whose machine fell silent before the window
                continue
            ys.append(i.machine)
            xs.append((e - b).total_seconds() * 1000)
            bases.append(b.astimezone(tz).isoformat())
            reasons.append(i.reason or "")
        if ys:
            label = state_label(state, lang)
            traces.append(
                {
                    "type": "bar",
                    "orientation": "h",
                    "y": ys,
                    "x": xs,
                    "base": bases,
                    "name": label,
                    "marker": {"color": colour},
                    "customdata": reasons,
                    "hovertemplate": "%{y} %{base|%H:%M}: %{customdata}<extra>"
                    + label
                    + "</extra>",
                }
            )
    base = _fig().to_plotly_json()["layout"]
    layout = {
        **base,
        "barmode": "overlay",
        "height": max(240, 28 * len(machines) + 90),
        "yaxis": {"categoryorder": "array", "categoryarray": list(reversed(machines))},
        "xaxis": {
            "type": "date",
            "range": [lo.astimezone(tz).isoformat(), hi.astimezone(tz).isoformat()],
        },
        "shapes": _shift_shapes(spans, window, plant),
    }
    return {"data": traces, "layout": layout}


def lines_timeline_figure(
    hours: Sequence[aq.LineHour],
    spans: Sequence[aq.ShiftSpan],
    window: tuple[datetime, datetime],
    plant: PlantConfig,
    lang: str,
) -> dict[str, Any]:
    """One lane per line: each hour split into its states' shares of the line's machine time
    (running first, in STATE_COLOURS' order; time without data stays blank), so 84 lines of a
    500-machine plant fit one screen and come from 4,000 rows, not 144,000 intervals. A click
    on a lane picks the line as the page's scope (`customdata`: the scope value).
    """
    tz = plant.tz
    lo, hi = window
    size = {ln.id: len(ln.machines) for ln in plant.lines}
    seen = {h.line for h in hours}
    lines = [ln for ln in plant.lines if ln.id in seen]
    names = {ln.id: ln.name.get(lang) for ln in plant.lines}
    # One pass over the hours, each split into its states in STATE_COLOURS' order. 84 lines x
    # 48 hours x their states are 20,000 bars, so a bar is a few floats and shared strings: its
    # base in milliseconds of plant-local wall time (a date axis reads a number as UTC
    # milliseconds, so the zone's offset is added once per hour), not an ISO string per bar.
    states = list(STATE_COLOURS)
    ys: dict[str, list[str]] = {st: [] for st in states}
    xs: dict[str, list[float]] = {st: [] for st in states}
    bases: dict[str, list[float]] = {st: [] for st in states}
    texts: dict[str, list[str]] = {st: [] for st in states}
    custom: dict[str, list[str]] = {st: [] for st in states}
    hour_of: dict[datetime, tuple[float, str]] = {}
    for h in hours:
        n = size.get(h.line, 0)
        if n == 0:
            continue
        known = hour_of.get(h.hour_start)
        if known is None:
            start = h.hour_start.astimezone(tz)
            offset = start.utcoffset() or timedelta(0)
            known = hour_of[h.hour_start] = (
                (h.hour_start.timestamp() + offset.total_seconds()) * 1000,
                f"{start:%H:%M}",
            )
        at, hm = known
        scope = f"line:{h.line}"
        for st, secs in zip(
            states,
            (h.running_s, h.idle_s, h.down_s, h.setup_s, h.planned_stop_s, h.offline_s),
            strict=True,
        ):
            if secs <= 0:
                continue
            ms = secs / n * 1000  # the share of the hour, in the hour's milliseconds
            ys[st].append(h.line)
            xs[st].append(ms)
            bases[st].append(at)
            texts[st].append(f"{hm} {ms / 36_000:.0f} %")
            custom[st].append(scope)
            at += ms
    traces: list[dict[str, Any]] = []
    for st, colour in STATE_COLOURS.items():
        if ys[st]:
            label = state_label(st, lang)
            traces.append(
                {
                    "type": "bar",
                    "orientation": "h",
                    "y": ys[st],
                    "x": xs[st],
                    "base": bases[st],
                    "name": label,
                    "marker": {"color": colour},
                    "text": texts[st],
                    "textposition": "none",
                    "customdata": custom[st],
                    "hovertemplate": "%{y} %{text}<extra>" + label + "</extra>",
                }
            )
    base = _fig(s("timeline_lines", lang)).to_plotly_json()["layout"]
    ids = [ln.id for ln in lines]
    layout = {
        **base,
        "barmode": "overlay",
        "height": max(240, 22 * len(lines) + 110),
        "yaxis": {
            "categoryorder": "array",
            "categoryarray": list(reversed(ids)),
            "tickvals": ids,
            "ticktext": [names[i] for i in ids],
        },
        "xaxis": {
            "type": "date",
            "range": [lo.astimezone(tz).isoformat(), hi.astimezone(tz).isoformat()],
        },
        "shapes": _shift_shapes(spans, window, plant),
    }
    return {"data": traces, "layout": layout}


def _shift_shapes(
    spans: Sequence[aq.ShiftSpan], window: tuple[datetime, datetime], plant: PlantConfig
) -> list[dict[str, Any]]:
    """Shift starts as dashed lines, scheduled breaks shaded."""
    tz = plant.tz
    lo, hi = window
    shapes: list[dict[str, Any]] = [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": span.bucket_start.astimezone(tz).isoformat(),
            "x1": span.bucket_start.astimezone(tz).isoformat(),
            "y0": 0,
            "y1": 1,
            "line": {"color": "#333", "dash": "dash", "width": 1},
        }
        for span in spans
    ]
    shapes += [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": b0.isoformat(),
            "x1": b1.isoformat(),
            "y0": 0,
            "y1": 1,
            "fillcolor": "#999",
            "opacity": 0.25,
            "line": {"width": 0},
            "layer": "above",
        }
        for b0, b1 in breaks(plant, lo, hi)
    ]
    return shapes


def breaks(plant: PlantConfig, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
    """The scheduled breaks of the plant's calendars between lo and hi, plant-local."""
    tz = plant.tz
    out: set[tuple[datetime, datetime]] = set()
    cals = [plant.shift_calendar, *(ln.shift_calendar for ln in plant.lines if ln.shift_calendar)]
    day = lo.astimezone(tz).date() - timedelta(days=1)
    while day <= hi.astimezone(tz).date():
        for cal in cals:
            for shift in cal.shifts:
                for br in shift.breaks:
                    b0 = datetime.combine(day, br.start, tz)
                    if br.start < shift.start:  # a night shift's break after midnight
                        b0 += timedelta(days=1)
                    b1 = datetime.combine(b0.date(), br.end, tz)
                    if b1 <= b0:
                        b1 += timedelta(days=1)
                    if b0 < hi and b1 > lo:
                        out.add((b0, b1))
        day += timedelta(days=1)
    return sorted(out)


def summary(total: KpiRow, lang: str) -> list[Any]:
    items = [
        ("oee", fmt_pct(total.oee)),
        ("availability", fmt_pct(total.availability)),
        ("performance", fmt_pct(total.performance)),
        ("quality", fmt_pct(total.quality)),
        ("good", str(total.good)),
        ("scrap", str(total.scrap)),
        ("mttr", fmt_hm(total.mttr_s)),
        ("mtbf", fmt_hm(total.mtbf_s)),
    ]
    return [
        html.Div(
            [
                html.Div(s(k, lang), className="an-kpi-label"),
                html.Div(v or "—", className="an-kpi-value"),
            ],
            className=f"an-kpi an-kpi-{k}",
            **_data_kpi(k),
        )
        for k, v in items
    ]


def _data_kpi(key: str) -> dict[str, Any]:
    """`data-kpi` attribute (Dash's typed signature cannot name data-* attributes)."""
    return {"data-kpi": key}


def table(headers: Sequence[str], body: Sequence[Sequence[Any]], css: str = "") -> html.Table:
    return html.Table(
        className=f"an-table {css}".strip(),
        children=[
            html.Thead(html.Tr([html.Th(h) for h in headers])),
            html.Tbody([html.Tr([html.Td(c) for c in row]) for row in body]),
        ],
    )


def _local(ts: datetime | None, tz: ZoneInfo) -> str:
    return "" if ts is None else ts.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def shift_table(rows: Sequence[KpiRow], plant: PlantConfig, lang: str) -> Any:
    heads = [
        s(k, lang)
        for k in (
            "date",
            "shift",
            "planned_h",
            "availability",
            "performance",
            "quality",
            "oee",
            "good",
            "scrap",
        )
    ]
    body = [
        [
            r.shift_date.isoformat() if r.shift_date else "",
            plant.shift_label(r.shift_name, lang),
            fmt_hm(r.planned_s),
            fmt_pct(r.availability),
            fmt_pct(r.performance),
            fmt_pct(r.quality),
            fmt_pct(r.oee),
            r.good,
            r.scrap,
        ]
        for r in rows
    ]
    return text_table(heads, body, "an-table")


def _sort_key(order: str) -> Any:
    """Worst first: the shortest MTBF, the most failures, the longest MTTR (machines without
    failures, which have neither, last); ties by machine so pages never overlap."""
    if order == "failures":
        return lambda r: (-r.failures, -r.failure_s, r.machine)
    if order == "mttr":
        return lambda r: (r.mttr_s is None, -(r.mttr_s or 0.0), r.machine)
    if order == "mtbf":
        return lambda r: (r.mtbf_s is None, r.mtbf_s or 0.0, -r.failures, r.machine)
    return lambda r: r.machine


def reliability_page(
    rows: Sequence[aq.MachineReliability],
    order: Any,
    page: Any,
    size: int | None = None,
) -> tuple[list[aq.MachineReliability], int]:
    """(the rows of one page in `order`, that page's number, clamped to the last page).
    Anything but a known order from the browser: the default (shortest MTBF first)."""
    key = _sort_key(order if order in RELIABILITY_SORTS else RELIABILITY_SORTS[0])
    ranked = sorted(rows, key=key)
    size = size or RELIABILITY_PAGE
    last = max(0, (len(ranked) - 1) // size)
    shown = min(page if isinstance(page, int) and page >= 0 else 0, last)
    return ranked[shown * size : (shown + 1) * size], shown


def reliability_pager(shown: int, on_page: int, total: int, lang: str) -> str:
    """'26–50 of 500': the page's place in the table; empty when it is empty."""
    if not on_page:
        return ""
    first = shown * RELIABILITY_PAGE + 1
    return s("pager", lang, first=f"{first:,}", last=f"{first + on_page - 1:,}", total=f"{total:,}")


def reliability_table(
    rows: Sequence[aq.MachineReliability],
    plant: PlantConfig,
    lang: str,
    day: date | None = None,
) -> html.Table:
    """Failures, MTTR and MTBF per machine; each machine links to its day (machine page)."""
    heads = [s(k, lang) for k in ("machine", "failures", "mttr", "mtbf")]
    when = f"&date={day.isoformat()}" if day else ""
    body = [
        [
            html.A(
                f"{r.machine} {plant.machines[r.machine].name.get(lang) if r.machine in plant.machines else ''}",
                href=f"/machine?machine={r.machine}&lang={lang}{when}",
            ),
            r.failures,
            fmt_hm(r.mttr_s),
            fmt_hm(r.mtbf_s),
        ]
        for r in rows
    ]
    return table(heads, body)


def stops_table(rows: Sequence[aq.StopRow], tz: ZoneInfo, names: dict[str, str], lang: str) -> Any:
    heads = [
        s(k, lang)
        for k in (
            "machine",
            "start",
            "end",
            "state",
            "duration",
            "reason",
            "category",
            "work_order",
        )
    ]
    body = [
        [
            r.machine,
            _local(r.start_ts, tz),
            _local(r.end_ts, tz),
            state_label(r.state, lang),
            fmt_hm(r.duration_s),
            names.get(r.reason, r.reason),
            category_label(r.category, lang),
            r.work_order or "",
        ]
        for r in rows
    ]
    return text_table(heads, body, "an-table an-stops-table")


def render(a: Analytics, plant: PlantConfig, lang: str) -> dict[str, Any]:
    """Every output of the main callback for the loaded figures."""
    tz = plant.tz
    return {
        "summary": summary(a.total, lang),
        "trend": trend_figure(a.shifts, lang),
        "shifts": shift_figure(a.shifts, plant, lang),
        "waterfall": waterfall_figure(a.waterfall, lang),
        "pareto_reason": pareto_figure(
            [r.name(lang) for r in a.reasons],
            [r.reason for r in a.reasons],
            [r.seconds for r in a.reasons],
            lang,
        ),
        "pareto_category": pareto_figure(
            [category_label(c.category, lang) for c in a.categories],
            [c.category for c in a.categories],
            [c.seconds for c in a.categories],
            lang,
        ),
        "timeline": (
            timeline_figure(a.intervals, a.spans, a.window, plant, lang)
            if a.line_hours is None
            else lines_timeline_figure(a.line_hours, a.spans, a.window, plant, lang)
        ),
        "reliability": reliability_table(
            reliability_page(a.reliability, None, 0)[0],
            plant,
            lang,
            _last_day(a.window[1], tz),
        ),
        "shift_table": shift_table(a.shifts, plant, lang),
    }


# -- callbacks --------------------------------------------------------------------------------


_DB_ERRORS = (psycopg.Error, PoolTimeout)


def _last_day(window_end: datetime, tz: ZoneInfo) -> date:
    """The range's last day (the window ends at the midnight after it)."""
    return (window_end - timedelta(seconds=1)).astimezone(tz).date()


def _refresh(start: Any, end: Any, scope: Any, shift: Any, lang: Any) -> tuple[Any, ...]:
    ctx = context.current()
    lang = ctx.lang(lang)
    f = parse_filters(ctx.plant, start, end, scope, shift)
    try:
        a = load(ctx.db, f, ctx.plant.tz, by_line=lanes_by_line(ctx.plant, f), reliability=False)
    except _DB_ERRORS as err:
        log.warning("analytics: cannot read the KPI views: %s", err)
        return (html.Div(s("db_error", lang), className="an-error"), *([dash.no_update] * 8))
    out = render(a, ctx.plant, lang)
    banner = "" if a.shifts else html.Div(s("no_figures", lang), className="an-empty")
    return (
        banner,
        out["summary"],
        out["trend"],
        out["shifts"],
        out["waterfall"],
        out["pareto_reason"],
        out["pareto_category"],
        out["timeline"],
        out["shift_table"],
    )


def _reliability(
    start: Any,
    end: Any,
    scope: Any,
    shift: Any,
    order: Any,
    _prev: Any,
    _next: Any,
    lang: Any,
    page: Any,
) -> tuple[Any, Any, Any]:
    """One page of the reliability table: the next or previous one on a click, the first on a
    new filter or order."""
    ctx = context.current()
    lang = ctx.lang(lang)
    f = parse_filters(ctx.plant, start, end, scope, shift)
    current = page if isinstance(page, int) and 0 <= page < 1_000_000 else 0
    trigger = dash.ctx.triggered_id
    want = {_REL_PREV: max(0, current - 1), _REL_NEXT: current + 1}.get(trigger, 0)
    try:
        rows = aq.reliability(ctx.db, f, ctx.plant.tz)
    except _DB_ERRORS as err:
        log.warning("analytics: cannot read the reliability rows: %s", err)
        no = dash.no_update
        return html.Div(s("db_error", lang), className="an-error"), no, no
    on_page, shown = reliability_page(rows, order, want)
    # Each machine links to the range's last day (Filters' end is the day after it).
    body = reliability_table(on_page, ctx.plant, lang, f.end - timedelta(days=1))
    return body, shown, reliability_pager(shown, len(on_page), len(rows), lang)


def _line_click(click: Any) -> Any:
    """A click on a line's lane of the plant timeline: that line as the scope (its machines'
    lanes with every interval). Clicks on a machine's lane change nothing."""
    try:
        value = click["points"][0]["customdata"]
    except (TypeError, KeyError, IndexError):
        return dash.no_update
    ctx = context.current()
    if not isinstance(value, str) or not value.startswith("line:"):
        return dash.no_update
    if not any(ln.id == value.removeprefix("line:") for ln in ctx.plant.lines):
        return dash.no_update
    return value


def _pick(reason_click: Any, category_click: Any) -> Any:
    """The clicked Pareto bar as a stops filter (the figure's customdata is the code)."""
    trigger = dash.ctx.triggered_id
    click = reason_click if trigger == _PARETO_R else category_click
    try:
        code = click["points"][0]["customdata"]
    except (TypeError, KeyError, IndexError):
        return None
    if not isinstance(code, str):
        return None
    return {"reason": code} if trigger == _PARETO_R else {"category": code}


def _pick_args(pick: Any) -> tuple[str | None, str | None]:
    """(reason, category) of the clicked bar; anything else from the browser is no filter."""
    pick = pick if isinstance(pick, dict) else {}
    reason, category = pick.get("reason"), pick.get("category")
    return (
        reason if isinstance(reason, str) else None,
        category if isinstance(category, str) else None,
    )


def _stops(pick: Any, start: Any, end: Any, scope: Any, shift: Any, lang: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    f = parse_filters(ctx.plant, start, end, scope, shift)
    reason, category = _pick_args(pick)
    try:
        rows = aq.stops(ctx.db, f, ctx.plant.tz, reason=reason, category=category)
    except _DB_ERRORS as err:
        log.warning("analytics: cannot read v_stops: %s", err)
        return html.Div(s("db_error", lang), className="an-error")
    names = {code: r.name.get(lang) for code, r in ctx.plant.reasons_by_code.items()}
    chosen = reason or (category_label(category, lang) if category else None)
    head = html.Div(
        f"{s('reason', lang)}/{s('category', lang)}: {names.get(chosen, chosen)}"
        if chosen
        else s("stops_hint", lang),
        className="an-stops-filter",
    )
    return [head, stops_table(rows, ctx.plant.tz, names, lang)]


def csv_text(rows: Sequence[Any], cls: type, tz: ZoneInfo) -> str:
    """The report's CSV (same columns and formats as `mesflow report --format csv`)."""
    return to_csv(rows, cls, tz)


def export(
    table_name: str, db: Any, f: aq.Filters, tz: ZoneInfo, pick: Any = None
) -> tuple[str, str]:
    """(file name, CSV text) of one of the page's tables for these filters."""
    scope = f.scope.id or "plant"
    stem = f"{table_name}_{scope}_{f.start.isoformat()}_{(f.end - timedelta(days=1)).isoformat()}"
    if f.shift:
        stem += f"_{f.shift}"
    if table_name == "shifts":
        return f"{stem}.csv", csv_text(aq.kpis(db, f, tz), KpiRow, tz)
    if table_name == "reasons":
        return f"{stem}.csv", csv_text(aq.reasons(db, f, tz), ReasonRow, tz)
    if table_name == "stops":
        return f"{stem}.csv", csv_text(
            aq.stops(db, f, tz, reason=_pick_args(pick)[0], category=_pick_args(pick)[1]),
            aq.StopRow,
            tz,
        )
    rows = aq.reliability(db, f, tz)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fl.name for fl in fields(aq.MachineReliability))
    for r in rows:
        writer.writerow("" if v is None else v for v in asdict(r).values())
    return f"{stem}.csv", out.getvalue()


def _csv_callback(table_name: str) -> Any:
    def download(_n: Any, start: Any, end: Any, scope: Any, shift: Any, pick: Any) -> Any:
        ctx = context.current()
        f = parse_filters(ctx.plant, start, end, scope, shift)
        name, text = export(table_name, ctx.db, f, ctx.plant.tz, pick)
        return csv_download(text, name)

    download.__name__ = f"download_{table_name}"
    return download


__all__ = ["register"]
