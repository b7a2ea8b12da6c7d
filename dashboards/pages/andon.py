"""Andon wall screen: every machine as a big coloured tile, grouped by line.

Made for a 1920x1080 TV read from five metres: one colour per state, the state word, how long
the machine has been in it, the stop reason and the work order. Reads `v_machine_status` every
two seconds. The tile rendering is a pure function of the rows (`render_board`), so it is
tested without a browser or a database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

import dash
import psycopg
from dash import Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards.i18n import STATE_LABELS, STATE_ORDER, format_duration, state_label, t
from dashboards.nav import account_links, nav_links
from dashboards.queries import MachineStatus, machine_status
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

PATH = "/"
ALIASES = ("/andon",)
REFRESH_MS = 2_000
MIN_ROLE = "viewer"  # a wall screen: every signed-in user and every screen token

# Component ids, prefixed so that later pages cannot collide with them.
_TICK = "andon-tick"
_LANG = "andon-lang"
_BOARD = "andon-board"
_CLOCK = "andon-clock"
_BANNER = "andon-banner"


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
        Input(_TICK, "n_intervals"),
        State(_LANG, "data"),
    )(_refresh)


# -- layout and callback ------------------------------------------------------------------


def layout(lang: str | None = None, **_query: str) -> html.Div:
    """The page skeleton; the board fills in on the first tick (fired when it mounts).

    Kept free of database reads: Dash also calls it without a request's query to validate
    callbacks, and a layout that failed with the database would blank the whole screen.
    """
    ctx = context.current()
    lang = ctx.lang(lang)
    plant = ctx.plant
    return html.Div(
        className=f"andon lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            html.Header(
                className="andon-header",
                children=[
                    html.Div(
                        className="andon-title",
                        children=[
                            html.Div(plant.plant.name.get(lang), className="plant-name"),
                            html.Div(t("andon", lang), className="board-name"),
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
                            html.Nav(
                                className="andon-links",
                                children=[
                                    *nav_links(lang, PATH),
                                    *account_links(lang),
                                    # Full reload on purpose: the whole board, not only the
                                    # tiles, switches language.
                                    html.A(
                                        t("language", lang),
                                        href=f"?lang={'en' if lang == 'zh' else 'zh'}",
                                        className="lang-switch",
                                    ),
                                ],
                            ),
                        ],
                    ),
                ],
            ),
            html.Div(id=_BANNER, className="andon-banner hidden"),
            html.Main(id=_BOARD, className="andon-board"),
        ],
    )


def _refresh(_n: int | None, lang: str | None) -> tuple[Any, str, str, str]:
    ctx = context.current()
    lang = ctx.lang(lang)
    clock = format_clock(datetime.now(ctx.plant.tz), ctx.plant.tz)
    try:
        rows = machine_status(ctx.db)
    except psycopg.Error as err:
        # Keep the last tiles on screen but say so loudly: a frozen board that looks live
        # is worse than a visible fault.
        log.warning("andon: cannot read v_machine_status: %s", err)
        return dash.no_update, clock, t("db_unreachable", lang), "andon-banner"
    return render_board(rows, ctx.plant, lang), clock, "", "andon-banner hidden"


# -- pure rendering -------------------------------------------------------------------------


def state_class(state: str) -> str:
    """CSS class of a state; unknown states get a neutral class instead of no colour."""
    return f"state-{state.replace('_', '-')}" if state in STATE_LABELS else "state-unknown"


def format_clock(now: datetime, tz: tzinfo) -> str:
    """Plant-local wall time, whatever the time zone of the TV or the server."""
    return now.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def render_tile(row: MachineStatus, lang: str) -> html.Div:
    reason = row.reason_text(lang)
    foot: list[Any] = []
    if reason is not None:
        foot.append(html.Div(reason, className="tile-reason", title=row.reason or ""))
    wo: list[Any] = (
        [html.Span(t("work_order", lang), className="tile-wo-label"), row.work_order]
        if row.work_order
        else []
    )
    foot.append(
        html.Div(
            className="tile-bottom",
            children=[
                html.Span(wo, className="tile-wo"),
                # The id is what maintenance and the PLC use; small, but always there.
                html.Span(row.machine, className="tile-id"),
            ],
        )
    )
    return html.Div(
        className=f"tile {state_class(row.state)}",
        # data-* attributes let the browser test (and anyone debugging) find a machine's tile.
        **_data(machine=row.machine, state=row.state),
        children=[
            html.Div(row.name(lang), className="tile-name"),
            html.Div(state_label(row.state, lang), className="tile-state"),
            html.Div(
                format_duration(row.state_seconds if row.since else None, lang),
                className="tile-duration",
            ),
            html.Div(foot, className="tile-foot"),
        ],
    )


def render_board(rows: Sequence[MachineStatus], plant: PlantConfig, lang: str) -> list[Any]:
    """One section per line (plant-model order), each a grid of machine tiles."""
    if not rows:
        return [html.Div(t("no_data", lang), className="andon-empty")]
    line_names = {line.id: line.name.get(lang) for line in plant.lines}
    by_line: dict[str, list[MachineStatus]] = {}
    for row in rows:  # rows arrive in plant order (line_position, machine_position)
        by_line.setdefault(row.line, []).append(row)
    sections: list[Any] = []
    for line_id, machines in by_line.items():
        running = sum(1 for m in machines if m.state == "running")
        sections.append(
            html.Section(
                className="line",
                **_data(line=line_id),
                children=[
                    html.H2(
                        className="line-head",
                        children=[
                            # A line missing from this config (stale database) still shows.
                            html.Span(line_names.get(line_id, line_id), className="line-name"),
                            html.Span(
                                f"{state_label('running', lang)} {running}/{len(machines)}",
                                className="line-summary",
                            ),
                        ],
                    ),
                    html.Div(
                        [render_tile(m, lang) for m in machines],
                        className="tiles",
                        style={"--tiles": str(len(machines))},
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
