"""The operator tablet's sign-in section: people sign in and out at the station with their
operator code, typed or badge-scanned (docs/labor.md). dashboards/pages/operator.py places
it under the station's body and registers its callbacks.

A sign-in or sign-out becomes a canonical `sign_in` / `sign_out` report (`operator`: the
person's code) and goes through the same `submit` path as every tap
(dashboards/operator_reports.py): the ingest log, then the dataflow's labor step, whose
presence rows (v_station_people) this section lists.

Badge scanners type like a keyboard and end with Enter: Enter in the code field signs in.
Each person listed has their own Sign out button (the list is re-rendered only when it
changes, so a button is not replaced under a finger).
Double taps: the event id is a hash of the section's random key, the tap's minute and what
was reported; the key is renewed after each report, so a double tap (both taps carry the
old key) is stored once while a later sign-in of the same person makes a new event.
Hostile input: the machine is the tablet's station from the plant model; a code is 1 to 64
characters without control or format characters; anything else is refused with a message.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import dash
import psycopg
from dash import ALL, Input, Output, State, dcc, html

from dashboards import auth, context
from dashboards import operator_reports as reports
from dashboards.operator_reports import Refused
from mesflow.plant import PlantConfig

log = logging.getLogger(__name__)

ROLE: Final = "operator"
MAX_CODE: Final = 64
REFRESH_MS: Final = 3_000
_P = "op-signin-"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_CODE = f"{_P}code"
_IN = f"{_P}in"
_OUT = f"{_P}out"
_PEOPLE = f"{_P}people"
_TICK = f"{_P}tick"
_FEEDBACK = f"{_P}feedback"
_SIG = f"{_P}sig"
_LEAVE = f"{_P}leave"  # a person's own sign-out button in the list (pattern id)

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "本工位人员", "en": "People at this station"},
    "code": {"zh": "工号（可刷卡）", "en": "Operator code (scan badge or type)"},
    "sign_in": {"zh": "上岗", "en": "Sign in"},
    "sign_out": {"zh": "离岗", "en": "Sign out"},
    "nobody": {"zh": "无人上岗", "en": "Nobody signed in"},
    "since": {"zh": "{time} 起", "en": "since {time}"},
    "shared": {"zh": "（兼顾 {k} 个工位）", "en": " (at {k} stations)"},
    "ok_sign_in": {"zh": "{who} 已上岗", "en": "{who} signed in"},
    "ok_sign_out": {"zh": "{who} 已离岗", "en": "{who} signed out"},
    "duplicate": {"zh": "已记录（重复点按已忽略）", "en": "Already recorded (double tap ignored)"},
    "already_in": {"zh": "{who} 已在本工位上岗", "en": "{who} is already signed in here"},
    "not_in": {"zh": "{who} 未在本工位上岗", "en": "{who} is not signed in here"},
    "bad_code": {
        "zh": f"工号须为 1 到 {MAX_CODE} 个字符，不含控制字符",
        "en": f"An operator code is 1 to {MAX_CODE} characters, no control characters",
    },
    "no_station": {"zh": "请先选择本终端的设备", "en": "Choose this tablet's machine first"},
    "unknown_machine": {"zh": "设备不在工厂模型中", "en": "Machine not in the plant model"},
    "db_error": {"zh": "数据库不可用，未记录", "en": "Database unreachable: not recorded"},
}


def s(key: str, lang: str, **kw: Any) -> str:
    text = STRINGS[key].get(lang, STRINGS[key]["en"])
    return text.format(**kw) if kw else text


def section(lang: str) -> html.Section:
    """The section's layout: static, so what is typed survives the station's refreshes."""
    return html.Section(
        className="op-signin",
        children=[
            dcc.Store(id=_KEY, data=secrets.token_hex(16)),
            dcc.Store(id=_LANG, data=lang),
            dcc.Interval(id=_TICK, interval=REFRESH_MS),
            dcc.Store(id=_SIG),
            html.H2(s("title", lang), className="op-h"),
            html.Ul(id=_PEOPLE, className="op-signin-people"),
            html.Div(
                className="op-signin-form",
                children=[
                    html.Label(
                        [
                            html.Span(s("code", lang)),
                            dcc.Input(
                                id=_CODE,
                                type="text",
                                maxLength=MAX_CODE,
                                autoComplete="off",
                                debounce=False,
                                className="op-signin-input",
                            ),
                        ],
                        className="op-signin-field",
                    ),
                    html.Button(s("sign_in", lang), id=_IN, className="op-btn"),
                    html.Button(s("sign_out", lang), id=_OUT, className="op-btn"),
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
        Output(_PEOPLE, "children"),
        Output(_SIG, "data"),
        Input(_TICK, "n_intervals"),
        Input(station_store, "data"),
        State(_LANG, "data"),
        State(_SIG, "data"),
    )(_refresh)
    auth.callback(
        app,
        ROLE,
        Output(_FEEDBACK, "children"),
        Output(_FEEDBACK, "className"),
        Output(_KEY, "data"),
        Output(_CODE, "value"),
        Input(_IN, "n_clicks"),
        Input(_OUT, "n_clicks"),
        Input(_CODE, "n_submit"),
        Input({"type": _LEAVE, "person": ALL}, "n_clicks"),
        State(station_store, "data"),
        State(_KEY, "data"),
        State(_CODE, "value"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_act)


# -- pure ------------------------------------------------------------------------------------


def operator_code(value: Any) -> str:
    """A typed or scanned operator code, trimmed (Refused if it is not a plausible one)."""
    if not isinstance(value, str):
        raise Refused("bad_code")
    code = value.strip()
    if not 1 <= len(code) <= MAX_CODE:
        raise Refused("bad_code")
    # Control, format (zero-width, bidi), surrogate, private and unassigned characters, and
    # line/paragraph separators: none belongs in a code, and some would fool the boards.
    if any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
           for c in code):  # fmt: skip
        raise Refused("bad_code")
    return code


def sign_event(
    plant: PlantConfig, key: str, machine: Any, kind: str, code: Any, now: datetime | None = None
) -> dict[str, Any]:
    """The `sign_in` / `sign_out` report of one tap (Refused if it cannot be one)."""
    if not isinstance(machine, str) or machine not in plant.machines:
        raise Refused("unknown_machine")
    if kind not in ("sign_in", "sign_out"):
        raise Refused("bad_code")
    person = operator_code(code)
    ts = reports.tap_time(now)
    event: dict[str, Any] = {
        "type": "report",
        "kind": kind,
        "machine": machine,
        "ts": ts.isoformat(),
        "operator": person,
    }
    what = "\x1f".join((kind, machine, ts.isoformat(), person))
    digest = hashlib.blake2b(what.encode(), digest_size=8).hexdigest()
    event["id"] = f"tablet-sign-{key[:32]}-{digest}"
    return event


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Present:
    person: str
    since: datetime
    work_order: str | None
    share: float


def read_people(conn: psycopg.Connection, station: str) -> list[Present]:
    rows = conn.execute(
        "SELECT person, since, work_order, share FROM v_station_people"
        " WHERE station = %s ORDER BY since, person",
        (station,),
    ).fetchall()
    return [Present(p, since, wo, share) for p, since, wo, share in rows]


def render_people(people: list[Present], tz: ZoneInfo, lang: str) -> list[Any]:
    if not people:
        return [html.Li(s("nobody", lang), className="op-signin-nobody")]
    out: list[Any] = []
    for p in people:
        since = s("since", lang, time=p.since.astimezone(tz).strftime("%H:%M"))
        k = round(1 / p.share) if p.share > 0 else 1
        shared = s("shared", lang, k=k) if k > 1 else ""
        out.append(
            html.Li(
                [
                    html.Span(p.person, className="op-signin-name"),
                    html.Span(f" {since}{shared}", className="op-signin-since"),
                    html.Button(
                        s("sign_out", lang),
                        id={"type": _LEAVE, "person": p.person},
                        className="op-btn op-signin-leave",
                    ),
                ],
                className="op-signin-person",
            )
        )
    return out


# -- callbacks --------------------------------------------------------------------------------


def _refresh(_n: Any, station: Any, lang: Any, sig: Any) -> tuple[Any, Any]:
    ctx = context.current()
    lang = ctx.lang(lang)
    auth.require(ROLE)
    if not isinstance(station, str) or station not in ctx.plant.machines:
        return [], None
    try:
        people = ctx.db.run(lambda conn: read_people(conn, station), timeout=1.0)
    except psycopg.Error:
        # The station body already says the database is away.
        return dash.no_update, dash.no_update
    new_sig = repr((station, lang, [(p.person, p.since.isoformat(), p.share) for p in people]))
    if new_sig == sig:  # re-render only on a change: a button replaced under a finger
        return dash.no_update, dash.no_update
    return render_people(people, ZoneInfo(ctx.plant.plant.timezone), lang), new_sig


def _act(
    _in: Any,
    _out: Any,
    _submit: Any,
    leave: Any,
    station: Any,
    key: Any,
    code: Any,
    lang: Any,
) -> tuple[Any, ...]:
    ctx = context.current()
    lang = ctx.lang(lang)
    principal = auth.require(ROLE)
    trigger = dash.ctx.triggered_id
    keep = dash.no_update
    from_list = isinstance(trigger, Mapping)
    if isinstance(trigger, Mapping):
        # A person's own button in the list; a list re-rendered with new buttons (no clicks)
        # triggers too, and is no tap.
        if not any(leave or []):
            return keep, keep, keep, keep
        kind: str | None = "sign_out"
        code = trigger.get("person")
    else:
        kind = {_IN: "sign_in", _OUT: "sign_out", _CODE: "sign_in"}.get(str(trigger))
    if kind is None:
        return keep, keep, keep, keep
    if not isinstance(station, str):
        return s("no_station", lang), "op-feedback error", keep, keep
    try:
        event = sign_event(ctx.plant, key if isinstance(key, str) else "", station, kind, code)
        stored = ctx.db.run(lambda conn: _check_and_submit(conn, principal.name, event))
    except Refused as err:
        # Only a valid code is echoed (the refusal of a bad one names no code).
        who = event_who(code)
        return s(err.code, lang, who=who), "op-feedback error", keep, keep
    except psycopg.Error as err:
        log.warning("operator sign-in: cannot store a report: %s", type(err).__name__)
        return s("db_error", lang), "op-feedback error", keep, keep
    if not stored:
        return s("duplicate", lang), "op-feedback ok", keep, keep
    # The list follows within seconds, once the dataflow has booked the report.
    return (
        s(f"ok_{kind}", lang, who=event["operator"]),
        "op-feedback ok",
        secrets.token_hex(16),  # the next report gets a new id
        keep if from_list else "",  # a code being typed stays
    )


def event_who(code: Any) -> str:
    try:
        return operator_code(code)
    except Refused:
        return ""


def _check_and_submit(conn: psycopg.Connection, user: str, event: dict[str, Any]) -> bool:
    """Store `event` unless it cannot change anything (already in, or not in, as far as the
    dataflow has booked); True if it was new."""
    here = any(p.person == event["operator"] for p in read_people(conn, event["machine"]))
    if event["kind"] == "sign_in" and here:
        raise Refused("already_in")
    if event["kind"] == "sign_out" and not here:
        raise Refused("not_in")
    return reports.submit(conn, user, event).new > 0
