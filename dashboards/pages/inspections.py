"""Inspections board (/inspections, manager): compliance of first-article (首检), patrol (巡检)
and last-piece (末检) inspections, and the open flags (docs/inspections.md).

Filter: a date range (plant-local days, default the last 7, at most 92). Compliance comes
from v_inspection_compliance, by stage, product and machine; the open flags from
v_inspection_flags (dashboards/inspection_queries.py), times shown in plant time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import inspection_queries as iq
from dashboards.nav import page_header
from dashboards.widgets import day_range, page_text, picked_days, text_table
from mesflow.delivery_kpis import fmt_pct
from mesflow.terms import INSPECTION_STAGES

log = logging.getLogger(__name__)

PATH: Final = "/inspections"
ROLE: Final = "manager"
DEFAULT_DAYS: Final = 7
MAX_DAYS: Final = 92

_P = "insp-"
_LANG = f"{_P}lang"
_RANGE = f"{_P}range"
_BODY = f"{_P}body"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {
        "zh": "检验：首检、巡检、末检",
        "en": "Inspections: first article, patrol, last piece",
    },
    "nav": {"zh": "检验", "en": "Inspections"},
    "range": {"zh": "日期", "en": "Dates"},
    "flags": {"zh": "未关闭的检验标记", "en": "Open inspection flags"},
    "by_stage": {"zh": "按检验类型", "en": "By stage"},
    "by_product": {"zh": "按产品", "en": "By product"},
    "by_machine": {"zh": "按设备", "en": "By machine"},
    "stage": {"zh": "类型", "en": "Stage"},
    "product": {"zh": "产品", "en": "Product"},
    "machine": {"zh": "设备", "en": "Machine"},
    "work_order": {"zh": "工单", "en": "Work order"},
    "flag": {"zh": "标记", "en": "Flag"},
    "since": {"zh": "开始于", "en": "Since"},
    "parts": {"zh": "已生产", "en": "Parts made"},
    "due": {"zh": "应检", "en": "Due"},
    "on_time": {"zh": "按时", "en": "On time"},
    "late": {"zh": "迟检", "en": "Late"},
    "missed": {"zh": "漏检", "en": "Missed"},
    "failed": {"zh": "不合格", "en": "Failed"},
    "rate": {"zh": "按时率", "en": "On-time rate"},
    **INSPECTION_STAGES,
    "flag_first_article_missing": {"zh": "首检缺失", "en": "First article missing"},
    "flag_first_article_failed": {"zh": "首检不合格", "en": "First article failed"},
    "flag_patrol_missed": {"zh": "巡检漏检", "en": "Patrol missed"},
    "flag_last_piece": {"zh": "末检缺失", "en": "Last piece missing"},
    "blocked": {"zh": "已锁定：首检通过前禁止报产", "en": "BLOCKED until the first article passes"},
    "empty": {"zh": "所选范围内没有数据", "en": "No figures for this selection"},
    "no_flags": {"zh": "没有未关闭的标记", "en": "No open flags"},
    "db_error": {"zh": "数据库不可用", "en": "Database unreachable"},
    "note": {
        "zh": "应检：已到期的检验（首检每个工单开工一次；巡检按产品设定的间隔；末检在工单结束时）。"
        "按时：首检在允许件数内、巡检在到期加宽限内完成。日期按工厂时区。"
        "“锁定”只是看板和平板上的提示与报产拦截：mesflow 不能停机。",
        "en": "Due: inspections that fell due (a first article per work-order start, patrols at "
        "the product's interval, a last piece at the work order's end). On time: a first "
        "article within the allowed parts, a patrol within its due time plus grace. Days in "
        "the plant's time zone. BLOCKED shows on the boards and refuses production-lot "
        "reports on the tablet: mesflow cannot stop a machine.",
    },
}


def s(key: str, lang: str) -> str:
    return page_text(STRINGS, key, lang)


def register(app: dash.Dash) -> None:
    dash.register_page(
        __name__,
        path=PATH,
        name="Inspections",
        order=47,
        nav=True,
        nav_label={"zh": STRINGS["nav"]["zh"], "en": STRINGS["nav"]["en"]},
        layout=layout,
        title="Inspections · mesflow",
        min_role=ROLE,
    )
    auth.callback(
        app,
        ROLE,
        Output(_BODY, "children"),
        State(_LANG, "data"),
        Input(_RANGE, "start_date"),
        Input(_RANGE, "end_date"),
    )(_update)


def layout(
    lang: str | None = None, start: str | None = None, end: str | None = None, **_q: str
) -> html.Div:
    """`start`, `end` (YYYY-MM-DD, from a link): the date range shown first."""
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    today = datetime.now(plant.tz).date()
    first, last = picked_days(start, end, today, DEFAULT_DAYS, MAX_DAYS)
    return html.Div(
        className=f"orders inspections-page lang-{lang}",
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
                className="orders-filters",
                children=[
                    html.Label(s("range", lang)),
                    day_range(_RANGE, first, last),
                ],
            ),
            html.Div(id=_BODY, className="order-body inspections-body"),
            html.P(s("note", lang), className="orders-note"),
        ],
    )


def _update(lang: Any, start: Any, end: Any) -> Any:
    ctx = context.current()
    lang = ctx.lang(lang)
    today = datetime.now(ctx.plant.tz).date()
    first, last = picked_days(start, end, today, DEFAULT_DAYS, MAX_DAYS)
    stop = last + timedelta(days=1)
    try:
        flags = iq.open_flags(ctx.db)
        groups = {
            by: iq.compliance(ctx.db, first, stop, by) for by in ("stage", "product", "machine")
        }
    except psycopg.Error as err:  # PoolTimeout is one
        log.warning("inspections: cannot read: %s", type(err).__name__)
        return html.Div(s("db_error", lang), className="orders-empty")
    return render(flags, groups, lang, ctx.plant.tz)


# -- rendering (pure) ----------------------------------------------------------------------------


def flag_label(flag: str, detail: str, lang: str) -> str:
    key = f"flag_{flag}_{detail}" if flag == "first_article" else f"flag_{flag}"
    return s(key, lang)


def _card(title: str, body: Any) -> html.Section:
    return html.Section(className="order-card", children=[html.H2(title), body])


def _compliance_table(rows: list[iq.Compliance], head: str, lang: str, stage: bool) -> Any:
    return text_table(
        [
            head,
            s("due", lang),
            s("on_time", lang),
            s("late", lang),
            s("missed", lang),
            s("failed", lang),
            s("rate", lang),
        ],
        [
            [
                s(r.key, lang) if stage else (r.key or "–"),
                str(r.due),
                str(r.done_on_time),
                str(r.done_late),
                str(r.missed),
                str(r.failed),
                fmt_pct(r.on_time_rate) or "–",
            ]
            for r in rows
        ],
        "orders-table inspections-table",
        s("empty", lang),
    )


def render(
    flags: list[iq.Flag], groups: dict[str, list[iq.Compliance]], lang: str, tz: ZoneInfo
) -> Any:
    def when(t: datetime) -> str:
        return t.astimezone(tz).strftime("%m-%d %H:%M")

    flag_rows = [
        [
            f.machine,
            f.work_order + (f" / {f.operation}" if f.operation else ""),
            f.product or "–",
            flag_label(f.flag, f.detail, lang) + (f" · {s('blocked', lang)}" if f.blocking else ""),
            when(f.since),
            str(f.parts_made),
        ]
        for f in flags
    ]
    flag_table = text_table(
        [
            s("machine", lang),
            s("work_order", lang),
            s("product", lang),
            s("flag", lang),
            s("since", lang),
            s("parts", lang),
        ],
        flag_rows,
        "orders-table inspections-table inspections-flags",
        s("no_flags", lang),
    )
    return [
        _card(s("flags", lang), flag_table),
        _card(
            s("by_stage", lang), _compliance_table(groups["stage"], s("stage", lang), lang, True)
        ),
        _card(
            s("by_product", lang),
            _compliance_table(groups["product"], s("product", lang), lang, False),
        ),
        _card(
            s("by_machine", lang),
            _compliance_table(groups["machine"], s("machine", lang), lang, False),
        ),
    ]


# -- the andon's tiles ---------------------------------------------------------------------------

_TILE_KEYS: Final = {
    "blocked": "tile_blocked",
    "first_article": "tile_first_article",
    "patrol_missed": "tile_patrol_missed",
    "last_piece": "tile_last_piece",
}
STRINGS.update(
    {
        "tile_blocked": {"zh": "锁定：首检未过", "en": "BLOCKED: first article"},
        "tile_first_article": {"zh": "首检异常", "en": "First article"},
        "tile_patrol_missed": {"zh": "巡检漏检", "en": "Patrol missed"},
        "tile_last_piece": {"zh": "末检缺失", "en": "Last piece missing"},
    }
)


def _attrs(attrs: dict[str, str]) -> dict[str, Any]:
    return attrs  # data-* attributes: Dash takes them, its type stubs do not know them


def _walk(component: Any) -> Any:
    """Every component of a layout tree, depth first."""
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


def add_flags_to_tiles(board: Any, flags: dict[str, list[str]], lang: str) -> Any:
    """Append one line of inspection flags to each tile (found by its data-machine) that
    has any; a BLOCKED station's tile also gets the class `insp-blocked`."""
    if not flags:
        return board
    for comp in _walk(board):
        machine = getattr(comp, "data-machine", None)
        if not isinstance(machine, str) or machine not in flags:
            continue
        kinds = list(dict.fromkeys(flags[machine]))
        if "blocked" in kinds and "first_article" in kinds:
            kinds.remove("first_article")  # BLOCKED says it
        line = html.Div(
            " · ".join(s(_TILE_KEYS[k], lang) for k in kinds if k in _TILE_KEYS),
            className="tile-inspection" + (" blocked" if "blocked" in kinds else ""),
            **_attrs({"data-inspection": ",".join(kinds)}),
        )
        kids = comp.children if isinstance(comp.children, list) else [comp.children]
        comp.children = [*kids, line]
        css = getattr(comp, "className", None) or ""
        comp.className = f"{css} has-inspection-flag" + (
            " insp-blocked" if "blocked" in kinds else ""
        )
    return board


def mark_andon(db: Any, board: Any, lang: str) -> Any:
    """The andon's hook: tiles with open inspection flags show them (unchanged on a DB error)."""
    try:
        flags = iq.flags_by_machine(db)
    except psycopg.Error as err:  # e.g. migration 032 not applied: the tiles matter more
        log.debug("andon: cannot read v_inspection_flags: %s", err)
        return board
    return add_flags_to_tiles(board, flags, lang)
