"""Andon wall screen: every machine as a big coloured tile, grouped by line.

Made for a 1920x1080 TV read from five metres: one colour per state, the state word, how long
the machine has been in it, the stop reason and the work order. Reads `v_machine_status` every
two seconds. The tile rendering is a pure function of the rows (`render_board`), so it is
tested without a browser or a database.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards.alert_queries import open_count
from dashboards.i18n import STATE_LABELS, STATE_ORDER, format_duration, state_label, t
from dashboards.nav import account_links, nav_links
from dashboards.pages import inspections, labor, operator_notices
from dashboards.queries import AndonTile, andon_tiles
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

PATH = "/"
ALIASES = ("/andon",)
REFRESH_MS = 1_000  # a change shows within 2 s: one tick plus the query and the render
MIN_ROLE = "viewer"  # a wall screen: every signed-in user and every screen token

# Component ids, prefixed so that later pages cannot collide with them.
_TICK = "andon-tick"
_LANG = "andon-lang"
_BOARD = "andon-board"
_CLOCK = "andon-clock"
_BANNER = "andon-banner"
_VIEW = "andon-view"
_ALERTS = "andon-alerts"  # open alerts count (dashboards/pages/alerts.py), one cheap query

# Down longer than these (seconds): the tile escalates (thicker ring, then faster pulse and a
# darker red), so a stop nobody answered stands out from one that just began.
ESCALATE_AFTER_S = (15 * 60, 30 * 60)

# The andon's own words (same zh/en lookup as dashboards/i18n.py).
STRINGS: dict[str, dict[str, str]] = {
    "reason_missing": {"zh": "未填原因", "en": "reason missing"},
    "no_data_since": {"zh": "{time} 起无数据", "en": "no data since {time}"},
    "never_seen": {"zh": "从未收到数据", "en": "never reported"},
    "oee_shift": {"zh": "本班OEE", "en": "Shift OEE"},
    "output": {"zh": "产量", "en": "Output"},
    "due_now": {"zh": "应达", "en": "due now"},
    "shift_target": {"zh": "班目标", "en": "shift target"},
    "product": {"zh": "产品", "en": "Product"},
    "silent": {"zh": "无数据", "en": "Silent"},
}


def s_(key: str, lang: str, **fmt: str) -> str:
    text = STRINGS[key]["zh" if lang == "zh" else "en"]
    return text.format(**fmt) if fmt else text


def register(app: dash.Dash) -> None:
    """Add the page (at "/" and its aliases) and its callbacks to `app`.

    Called by `create_app` for every app instead of at import time: Dash's page registry and
    its module-level `dash.callback` list are process-wide, and module-level callbacks would
    bind only to the first app created in the process.
    """
    # min_role: the lowest role that may open the page and run its callbacks (auth.py).
    common: dict[str, Any] = {"layout": layout, "title": "Andon · mesflow", "min_role": MIN_ROLE}
    dash.register_page(
        __name__,
        path=PATH,
        name="Andon",
        order=0,
        nav=True,
        nav_label={"zh": "安灯看板", "en": "Andon"},
        **common,
    )
    for i, alias in enumerate(ALIASES):
        # A second registry entry instead of `redirect_from`: Dash's redirect is a 301 that
        # drops the query string, which would lose ?lang=en.
        dash.register_page(f"{__name__}._alias{i}", path=alias, name="Andon", nav=False, **common)

    auth.callback(
        app,
        MIN_ROLE,
        Output(_BOARD, "children"),
        Output(_CLOCK, "children"),
        Output(_BANNER, "children"),
        Output(_BANNER, "className"),
        Output(_ALERTS, "children"),
        Output(_ALERTS, "className"),
        Input(_TICK, "n_intervals"),
        State(_LANG, "data"),
        State(_VIEW, "data"),
    )(_refresh)


# -- layout and callback ------------------------------------------------------------------


def layout(
    lang: str | None = None,
    line: str | None = None,
    rotate: str | None = None,
    kiosk: str | None = None,
    **_query: str,
) -> html.Div:
    """The page skeleton; the board fills in on the first tick (fired when it mounts).

    Kept free of database reads: Dash also calls it without a request's query to validate
    callbacks, and a layout that failed with the database would blank the whole screen.
    `?line=IM,CNC` shows only those lines, `?rotate=20` one line at a time for 20 s each,
    `?kiosk=1` drops the links (a wall screen has no mouse).
    """
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    view = parse_view(line, rotate, kiosk)
    links: list[Any] = (
        []
        if view.kiosk
        else [
            html.Nav(
                className="andon-links",
                children=[
                    *nav_links(lang, PATH),
                    *account_links(lang),
                    # Full reload on purpose: the whole board, not only the tiles, switches.
                    html.A(
                        t("language", lang),
                        href=f"?lang={'en' if lang == 'zh' else 'zh'}",
                        className="lang-switch",
                    ),
                ],
            )
        ]
    )
    return html.Div(
        className=f"andon lang-{lang}" + (" kiosk" if view.kiosk else ""),
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Store(id=_VIEW, data=view.as_data()),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            html.Header(
                className="andon-header",
                children=[
                    html.Div(
                        className="andon-title",
                        children=[
                            html.Div(plant.plant.name.get(lang), className="plant-name"),
                            html.Div(t("andon", lang), className="board-name"),
                            # A link to the alerts page, except on a kiosk (no mouse there).
                            html.Div(id=_ALERTS, className="andon-alerts hidden")
                            if view.kiosk
                            else html.A(
                                id=_ALERTS,
                                className="andon-alerts hidden",
                                href=f"/alerts?lang={lang}",
                            ),
                        ],
                    ),
                    render_legend(lang),
                    html.Div(
                        className="andon-right",
                        children=[
                            html.Div(
                                format_clock(datetime.now(plant.tz), plant.tz),
                                id=_CLOCK,
                                className="andon-clock",
                            ),
                            *links,
                        ],
                    ),
                ],
            ),
            html.Div(id=_BANNER, className="andon-banner hidden"),
            html.Main(id=_BOARD, className="andon-board"),
        ],
    )


@dataclass(frozen=True)
class View:
    """What part of the plant a screen shows, from its URL."""

    lines: tuple[str, ...] = ()
    rotate_s: int = 0
    kiosk: bool = False

    def as_data(self) -> dict[str, Any]:
        return {"lines": list(self.lines), "rotate_s": self.rotate_s, "kiosk": self.kiosk}

    @classmethod
    def from_data(cls, data: Any) -> View:
        # Browser state: hostile or broken values fall back to the whole plant.
        if not isinstance(data, dict):
            return cls()
        lines = data.get("lines")
        rotate = data.get("rotate_s")
        return cls(
            lines=tuple(x for x in lines if isinstance(x, str)) if isinstance(lines, list) else (),
            rotate_s=rotate if isinstance(rotate, int) and 0 < rotate <= 3600 else 0,
            kiosk=data.get("kiosk") is True,
        )


def parse_view(line: str | None, rotate: str | None, kiosk: str | None) -> View:
    lines = tuple(x.strip() for x in (line or "").split(",") if x.strip())
    try:
        rotate_s = int(rotate) if rotate else 0
    except ValueError:
        rotate_s = 0
    rotate_s = rotate_s if 0 < rotate_s <= 3600 else 0
    is_kiosk = (kiosk or "").lower() in ("1", "true", "yes", "on")
    return View(lines=lines, rotate_s=rotate_s, kiosk=is_kiosk)


def _refresh(
    _n: int | None, lang: str | None, view_data: Any
) -> tuple[Any, str, str, str, Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    clock = format_clock(datetime.now(ctx.plant.tz), ctx.plant.tz)
    try:
        rows = andon_tiles(ctx.db)
    except psycopg.Error as err:
        # Keep the last tiles on screen but say so loudly: a frozen board that looks live
        # is worse than a visible fault.
        log.warning("andon: cannot read v_andon_tile: %s", err)
        no = dash.no_update
        return no, clock, t("db_unreachable", lang), "andon-banner", no, no
    view = View.from_data(view_data)
    alerts_text, alerts_css = _alerts_badge(ctx, lang, view.lines)
    rows = select_lines(rows, view, _n or 0)
    opts = BoardOptions(
        reason_missing_s=ctx.settings.andon_reason_missing_s,
        silent_s=ctx.settings.andon_silent_s,
    )
    board = render_board(rows, ctx.plant, lang, opts)
    board = operator_notices.mark_andon(ctx.db, board, lang)  # order changes (issue 12)
    board = labor.mark_andon(ctx.db, board, lang)  # who is at the station (docs/labor.md)
    board = inspections.mark_andon(ctx.db, board, lang)  # inspection flags, BLOCKED
    return board, clock, "", "andon-banner hidden", alerts_text, alerts_css


def _alerts_badge(
    ctx: context.BoardContext, lang: str, lines: tuple[str, ...] = ()
) -> tuple[str, str]:
    """ "3 alerts" open on the lines shown (red when one is critical); hidden when none is
    open or the count cannot be read."""
    try:
        count = open_count(ctx.db, lines)
    except psycopg.Error as err:  # e.g. migration 018 not applied yet: the tiles matter more
        log.debug("andon: cannot count open alerts: %s", err)
        return "", "andon-alerts hidden"
    if count.open == 0:
        return "", "andon-alerts hidden"
    text = t("alerts_open_one", lang) if count.open == 1 else t("alerts_open_count", lang)
    return text.format(n=count.open), "andon-alerts" + (" critical" if count.critical else "")


# -- pure rendering -------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardOptions:
    reason_missing_s: float = 120.0
    silent_s: float = 600.0


def select_lines(rows: Sequence[AndonTile], view: View, tick: int) -> list[AndonTile]:
    """The rows of the lines this screen shows now (`?line=`, then `?rotate=` picks one)."""
    chosen = [r for r in rows if not view.lines or r.line in view.lines]
    if view.rotate_s <= 0:
        return chosen
    order: list[str] = []
    for r in chosen:
        if r.line not in order:
            order.append(r.line)
    if not order:
        return chosen
    # The tick counts refreshes since the page loaded; each line stays rotate_s seconds.
    current = order[(tick * REFRESH_MS // 1000 // view.rotate_s) % len(order)]
    return [r for r in chosen if r.line == current]


def state_class(state: str) -> str:
    """CSS class of a state; unknown states get a neutral class instead of no colour."""
    return f"state-{state.replace('_', '-')}" if state in STATE_LABELS else "state-unknown"


def format_clock(now: datetime, tz: tzinfo) -> str:
    """Plant-local wall time, whatever the time zone of the TV or the server."""
    return now.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def is_silent(row: AndonTile, opts: BoardOptions) -> bool:
    """No event for `silent_s`: the stored state is stale, whatever it says."""
    if row.last_event_ts is None:
        return False  # never seen: already "offline"
    return (row.silent_seconds or 0.0) >= opts.silent_s


def shift_target(row: AndonTile, plant: PlantConfig) -> tuple[int, int] | None:
    """(parts by the end of the shift, parts expected by now) at the ideal cycle time of the
    machine's current product; None outside a shift."""
    if row.shift_start is None or row.shift_end is None:
        return None
    # The product's cycle time from the plant file; the database's copy of the machine's
    # own when this config does not know the machine.
    cycle = (
        plant.ideal_cycle_seconds(row.machine, row.product)
        if row.machine in plant.machines
        else row.ideal_cycle_s
    )
    length = (row.shift_end - row.shift_start).total_seconds()
    elapsed = (min(row.ref_ts, row.shift_end) - row.shift_start).total_seconds()
    if cycle <= 0 or length <= 0:
        return None
    return int(length / cycle), int(max(0.0, elapsed) / cycle)


def escalation(row: AndonTile) -> int:
    """0, 1 or 2: how long a down machine has been waiting for someone."""
    if row.state != "down" or row.state_seconds is None:
        return 0
    return sum(1 for limit in ESCALATE_AFTER_S if row.state_seconds >= limit)


def format_pct(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value * 100:.0f}%"


def render_tile(
    row: AndonTile, lang: str, plant: PlantConfig, opts: BoardOptions | None = None
) -> html.Div:
    opts = opts or BoardOptions()
    silent = is_silent(row, opts)
    css = ["tile", "state-silent" if silent else state_class(row.state)]
    level = 0 if silent else escalation(row)
    if level:
        css.append(f"escalate-{level}")
    if silent and row.last_event_ts is not None:
        when = row.last_event_ts.astimezone(plant.tz).strftime("%H:%M")
        if (row.db_now - row.last_event_ts).total_seconds() >= 86_400:
            when = row.last_event_ts.astimezone(plant.tz).strftime("%m-%d %H:%M")
        status = s_("silent", lang)
        duration = s_("no_data_since", lang, time=when)
    else:
        status = state_label(row.state, lang)
        duration = format_duration(row.state_seconds if row.since else None, lang)

    reason_line: list[Any] = []
    reason = row.reason_text(lang)
    if not silent and reason is not None:
        reason_line.append(html.Div(reason, className="tile-reason", title=row.reason or ""))
    elif (
        not silent
        and row.state in ("down", "idle", "setup")
        and (row.state_seconds or 0.0) >= opts.reason_missing_s
    ):
        reason_line.append(
            html.Div(s_("reason_missing", lang), className="tile-reason reason-missing")
        )

    order_bits = [x for x in (row.work_order, row.product) if x]
    progress: list[Any] = []
    target = shift_target(row, plant)
    good = row.shift_good or 0
    if target is not None and target[0] > 0:
        full, by_now = target
        progress = [
            html.Div(
                className="tile-progress",
                children=[
                    html.Div(
                        className="bar",
                        children=[
                            html.Div(
                                className="bar-fill" + (" behind" if good < by_now * 0.9 else ""),
                                style={"width": f"{min(100.0, 100.0 * good / full):.1f}%"},
                            ),
                            html.Div(
                                className="bar-marker",
                                style={"left": f"{min(100.0, 100.0 * by_now / full):.1f}%"},
                            ),
                        ],
                    ),
                    html.Div(
                        className="tile-figures",
                        children=[
                            html.Span(f"{good}/{full}", className="tile-count"),
                            html.Span(f"OEE {format_pct(row.shift_oee)}", className="tile-oee"),
                        ],
                    ),
                ],
            )
        ]
    return html.Div(
        className=" ".join(css),
        # data-* attributes let the browser test (and anyone debugging) find a machine's tile.
        **_data(machine=row.machine, state="silent" if silent else row.state),
        children=[
            html.Div(row.name(lang), className="tile-name", title=row.machine),
            html.Div(
                className="tile-status",
                children=[
                    html.Span(status, className="tile-state"),
                    html.Span(duration, className="tile-duration"),
                ],
            ),
            *reason_line,
            html.Div(" · ".join(order_bits), className="tile-wo") if order_bits else None,
            *progress,
        ],
    )


@dataclass(frozen=True)
class LineSummary:
    counts: dict[str, int]
    oee: float | None
    good: int
    target_by_now: int
    target_full: int


def line_summary(
    machines: Sequence[AndonTile], plant: PlantConfig, opts: BoardOptions
) -> LineSummary:
    """Machines per state (silent ones apart), OEE over the stored shift figures added up
    (the formula of sql/005_metrics.sql), output against the by-now and full-shift targets."""
    counts: dict[str, int] = {}
    planned = apt = ideal = 0.0
    good = scrap = by_now = full = 0
    for m in machines:
        key = "silent" if is_silent(m, opts) else m.state
        counts[key] = counts.get(key, 0) + 1
        planned += m.shift_planned_s or 0.0
        apt += m.shift_apt_s or 0.0
        ideal += m.shift_ideal_s or 0.0
        good += m.shift_good or 0
        scrap += m.shift_scrap or 0
        target = shift_target(m, plant)
        if target is not None:
            full += target[0]
            by_now += target[1]
    oee: float | None = None
    if planned > 0:
        oee = (ideal / planned) * (good / (good + scrap)) if apt > 0 and good + scrap else 0.0
    return LineSummary(counts, oee, good, by_now, full)


def columns_for(line_sizes: Sequence[int], aspect: float = 16 / 9) -> int:
    """Tiles per row, the same for every line so all tiles are alike: the count that gives
    the largest tile of about 1.2:1 when the lines share a screen of `aspect` (each line's
    header costs about a third of a tile row)."""
    if not line_sizes:
        return 1
    best, best_size = 1, -1.0
    for cols in range(1, max(line_sizes) + 1):
        rows = sum(math.ceil(n / cols) for n in line_sizes) + len(line_sizes) / 3
        width, height = aspect / cols, 1.0 / rows
        size = min(width / 1.2, height)
        if size > best_size + 1e-9:
            best, best_size = cols, size
    return best


def render_board(
    rows: Sequence[AndonTile], plant: PlantConfig, lang: str, opts: BoardOptions | None = None
) -> list[Any]:
    """One section per line (plant-model order): its header, then a grid of machine tiles."""
    opts = opts or BoardOptions()
    if not rows:
        return [html.Div(t("no_data", lang), className="andon-empty")]
    line_names = {line.id: line.name.get(lang) for line in plant.lines}
    by_line: dict[str, list[AndonTile]] = {}
    for row in rows:  # rows arrive in plant order (line_position, machine_position)
        by_line.setdefault(row.line, []).append(row)
    cols = columns_for([len(m) for m in by_line.values()])
    sections: list[Any] = []
    for line_id, machines in by_line.items():
        summary = line_summary(machines, plant, opts)
        chips = [
            html.Span(
                [html.Span(className="legend-swatch"), str(summary.counts[state])],
                className=f"line-count {'state-silent' if state == 'silent' else state_class(state)}",
                title=s_("silent", lang) if state == "silent" else state_label(state, lang),
            )
            for state in (*STATE_ORDER, "silent")
            if summary.counts.get(state)
        ]
        rows_needed = math.ceil(len(machines) / cols)
        sections.append(
            html.Section(
                className="line",
                style={"flexGrow": str(rows_needed)},
                **_data(line=line_id),
                children=[
                    html.H2(
                        className="line-head",
                        children=[
                            # A line missing from this config (stale database) still shows.
                            html.Span(line_names.get(line_id, line_id), className="line-name"),
                            html.Span(
                                f"{state_label('running', lang)} "
                                f"{summary.counts.get('running', 0)}/{len(machines)}",
                                className="line-summary",
                            ),
                            html.Span(chips, className="line-counts"),
                            html.Span(
                                f"{s_('oee_shift', lang)} {format_pct(summary.oee)}",
                                className="line-oee",
                            ),
                            html.Span(
                                f"{s_('output', lang)} {summary.good} · "
                                f"{s_('due_now', lang)} {summary.target_by_now} · "
                                f"{s_('shift_target', lang)} {summary.target_full}",
                                className="line-output",
                            ),
                        ],
                    ),
                    html.Div(
                        [render_tile(m, lang, plant, opts) for m in machines],
                        className="tiles",
                        style={
                            "gridTemplateColumns": f"repeat({cols}, minmax(0, 1fr))",
                            "gridTemplateRows": f"repeat({rows_needed}, minmax(0, 1fr))",
                        },
                    ),
                ],
            )
        )
    return sections


def _data(**attrs: str) -> dict[str, Any]:
    """`data-*` attributes for a Dash html component (its typed signature cannot name them)."""
    return {f"data-{name}": value for name, value in attrs.items()}


def render_legend(lang: str) -> html.Div:
    return html.Div(
        className="andon-legend",
        children=[
            html.Span(
                className=f"legend-item {state_class(state)}",
                children=[html.Span(className="legend-swatch"), state_label(state, lang)],
            )
            for state in STATE_ORDER
        ],
    )
