"""The order page's change-control panel (dashboards/pages/orders.py hooks it; issue 12).

- A pending change request shows its impact: the change, the order's work orders (machine,
  made so far), the current ETA against the new due, and an ETA for the new quantity at the
  order's current rate (mesflow/change_control.py `project`). A planner (role manager)
  approves or rejects it with a required comment.
- A planner may propose a change (qty, due, cancel): held if the order is locked, applied
  at once if not: the same path as a CRM change (change_control.propose).
- The change history: every request and decision, who, when, what, why, in plant time.

The forms are static in the layout (the info part re-renders every few seconds and would
wipe what is typed); the pending request's id travels in a store, so a decision always
names the request the planner saw (a superseded one is refused: not_pending).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

import dash
import psycopg
from dash import Input, Output, State, ctx, dcc, html

from dashboards import auth, context
from dashboards.widgets import text_table
from mesflow import change_control as cc

log = logging.getLogger(__name__)

ROLE: Final = cc.PLANNER_ROLE
REFRESH_MS: Final = 5_000
_P = "occ-"
_KEY = f"{_P}key"
_LANG = f"{_P}lang"
_TICK = f"{_P}tick"
_INFO = f"{_P}info"
_PENDING = f"{_P}pending"
_COMMENT = f"{_P}comment"
_APPROVE = f"{_P}approve"
_REJECT = f"{_P}reject"
_QTY = f"{_P}qty"
_DUE = f"{_P}due"
_CANCEL = f"{_P}cancel"
_PROPOSE = f"{_P}propose"
_MSG = f"{_P}msg"

STRINGS: Final[dict[str, dict[str, str]]] = {
    "title": {"zh": "变更控制", "en": "Change control"},
    "locked": {"zh": "已锁定（已开工）：数量、交期、产品、取消需审批", "en": "Locked (work started): qty, due, product and cancellation need approval"},
    "unlocked": {"zh": "未锁定：变更立即生效", "en": "Not locked: changes apply at once"},
    "pending": {"zh": "待审批变更", "en": "Pending change"},
    "none_pending": {"zh": "无待审批变更", "en": "No pending change"},
    "field": {"zh": "字段", "en": "Field"},
    "old": {"zh": "原值", "en": "Old"},
    "new": {"zh": "新值", "en": "New"},
    "impact": {"zh": "影响", "en": "Impact"},
    "wo": {"zh": "工单", "en": "Work order"},
    "machine": {"zh": "设备", "en": "Machine"},
    "made": {"zh": "已完成", "en": "Made"},
    "eta_now": {"zh": "当前预计完成", "en": "Current ETA"},
    "due_new": {"zh": "新交期", "en": "New due"},
    "eta_new": {"zh": "新数量预计完成", "en": "ETA for the new quantity"},
    "late": {"zh": "晚于新交期", "en": "late against the new due"},
    "on_time": {"zh": "可按新交期完成", "en": "in time for the new due"},
    "no_rate": {"zh": "无近期产出，无法预估", "en": "no recent output: no projection"},
    "comment": {"zh": "意见（必填）", "en": "Comment (required)"},
    "approve": {"zh": "批准", "en": "Approve"},
    "reject": {"zh": "驳回", "en": "Reject"},
    "propose": {"zh": "提出变更", "en": "Propose a change"},
    "qty": {"zh": "数量", "en": "Quantity"},
    "due": {"zh": "交期（工厂时间 YYYY-MM-DD HH:MM）", "en": "Due (plant time, YYYY-MM-DD HH:MM)"},
    "cancel": {"zh": "取消订单", "en": "Cancel the order"},
    "submit": {"zh": "提交", "en": "Submit"},
    "history": {"zh": "变更与审批记录", "en": "Changes and decisions"},
    "when": {"zh": "时间", "en": "When"},
    "by": {"zh": "提出人", "en": "By"},
    "status": {"zh": "状态", "en": "Status"},
    "decided": {"zh": "决定人 / 时间", "en": "Decided by / at"},
    "why": {"zh": "意见", "en": "Comment"},
    "floor": {"zh": "现场确认", "en": "Floor ack"},
    "ok_approved": {"zh": "已批准并生效", "en": "Approved and applied"},
    "ok_rejected": {"zh": "已驳回", "en": "Rejected"},
    "ok_applied": {"zh": "变更已生效", "en": "Change applied"},
    "ok_held": {"zh": "订单已锁定：变更待审批", "en": "Order locked: the change waits for approval"},
    "ok_unchanged": {"zh": "无变化", "en": "Nothing changed"},
    "comment_required": {"zh": "请填写意见", "en": "A comment is required"},
    "comment_invalid": {"zh": "意见含非法字符", "en": "The comment holds an invalid character"},
    "not_pending": {"zh": "该变更已被处理或被新版本取代", "en": "Already decided or superseded"},
    "qty_invalid": {"zh": "数量无效", "en": "Invalid quantity"},
    "due_invalid": {"zh": "交期无效", "en": "Invalid due date"},
    "unknown_order": {"zh": "订单不存在", "en": "Unknown order"},
    "unknown_request": {"zh": "变更不存在", "en": "Unknown change request"},
    "stale": {"zh": "订单已被更新，请重试", "en": "The order changed meanwhile; retry"},
    "db_error": {"zh": "数据库不可用", "en": "Database unavailable"},
    "pending_s": {"zh": "待审批", "en": "pending"},
    "approved_s": {"zh": "已批准", "en": "approved"},
    "rejected_s": {"zh": "已驳回", "en": "rejected"},
    "superseded_s": {"zh": "已被取代", "en": "superseded"},
    "applied_s": {"zh": "已直接生效", "en": "applied at once"},
}  # fmt: skip


def _attrs(**values: str) -> dict[str, Any]:
    return {f"data-{k}": v for k, v in values.items()}


def s(key: str, lang: str) -> str:
    return STRINGS.get(key, {}).get("zh" if lang == "zh" else "en", key)


def fmt(ts: datetime | None, tz: tzinfo) -> str:
    return "—" if ts is None else ts.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _value(v: Any, tz: tzinfo, field: str = "", lang: str = "en") -> str:
    if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and "T" in v:
        try:
            return fmt(datetime.fromisoformat(v), tz)
        except ValueError:
            return v
    return "—" if v is None else cc.value_label(field, str(v), lang)


def _change(change: dict[str, Any], tz: tzinfo, lang: str) -> str:
    """'数量: 600 → 1200; 状态: 进行中 → 暂停': a request's fields in the page's language."""
    return "; ".join(
        f"{cc.field_label(f, lang)}: {_value(v.get('old'), tz, f, lang)}"
        f" → {_value(v.get('new'), tz, f, lang)}"
        for f, v in change.items()
    )


def panel(order_no: str | None, lang: str) -> list[Any]:
    """The static part of the panel (the order page's layout holds it)."""
    return [
        html.Section(
            className="order-card order-changes",
            children=[
                dcc.Store(id=_KEY, data=order_no),
                dcc.Store(id=_LANG, data=lang),
                dcc.Store(id=_PENDING),
                dcc.Interval(id=_TICK, interval=REFRESH_MS),
                html.H2(s("title", lang)),
                html.Div(id=_INFO),
                html.Div(
                    className="occ-decide",
                    children=[
                        dcc.Textarea(id=_COMMENT, placeholder=s("comment", lang), maxLength=500),
                        html.Button(s("approve", lang), id=_APPROVE, className="occ-approve"),
                        html.Button(s("reject", lang), id=_REJECT, className="occ-reject"),
                    ],
                ),
                html.H3(s("propose", lang)),
                html.Div(
                    className="occ-propose",
                    children=[
                        dcc.Input(id=_QTY, type="number", min=1, placeholder=s("qty", lang)),
                        dcc.Input(id=_DUE, type="text", placeholder=s("due", lang)),
                        dcc.Checklist(
                            id=_CANCEL, options=[{"label": s("cancel", lang), "value": "cancel"}]
                        ),
                        html.Button(s("submit", lang), id=_PROPOSE, className="occ-submit"),
                    ],
                ),
                html.Div(id=_MSG, className="occ-msg"),
            ],
        )
    ]


# -- reading ----------------------------------------------------------------------------


def read(conn: psycopg.Connection, order_no: str) -> dict[str, Any]:
    requests = cc.order_requests(conn, order_no)
    locked = cc.is_locked(conn, order_no)
    wos = conn.execute(
        """SELECT w.work_order, COALESCE(p.machine, w.machine), COALESCE(p.good, 0), w.qty,
                  COALESCE(p.rate_per_h, 0), p.started_at
           FROM work_order w LEFT JOIN work_order_progress p USING (work_order)
           WHERE w.order_no = %s ORDER BY w.work_order""",
        (order_no,),
    ).fetchall()
    order = conn.execute(
        "SELECT good, eta FROM order_progress WHERE order_no = %s", (order_no,)
    ).fetchone()
    return {"requests": requests, "locked": locked, "wos": wos, "progress": order}


def render(data: dict[str, Any], tz: tzinfo, lang: str, now: datetime) -> tuple[list[Any], Any]:
    out: list[Any] = [html.P(s("locked" if data["locked"] else "unlocked", lang))]
    pending = next((r for r in data["requests"] if r["status"] == "pending"), None)
    if pending is None:
        out.append(html.P(s("none_pending", lang), className="occ-none"))
    else:
        change = pending["change"]
        rows = [
            html.Tr(
                [html.Td(cc.field_label(f, lang)), html.Td(_value(v.get("old"), tz, f, lang)),
                 html.Td(_value(v.get("new"), tz, f, lang))]
            )
            for f, v in change.items()
        ]  # fmt: skip
        out.append(
            html.Div(
                className="occ-pending",
                **_attrs(request=str(pending["id"])),
                children=[
                    html.H3(
                        f"{s('pending', lang)} #{pending['id']} · {pending['requested_by']}"
                        f" · {fmt(pending['received_at'], tz)}"
                    ),
                    html.Table(
                        [html.Tr([html.Th(s(k, lang)) for k in ("field", "old", "new")]), *rows]
                    ),
                    *_impact(data, pending, tz, lang, now),
                ],
            )
        )
    out.append(html.H3(s("history", lang)))
    # One text component however long the history: a CRM that re-sends a locked order every
    # few minutes leaves hundreds of superseded requests (the demo's: ~60 an hour).
    heads = ("when", "by", "field", "status", "decided", "why", "floor")
    out.append(
        text_table(
            [s(k, lang) for k in heads],
            [
                [
                    fmt(r["received_at"], tz),
                    f"{r['requested_by']} ({r['source']})",
                    _change(r["change"], tz, lang),
                    s(f"{r['status']}_s", lang),
                    f"{r['decided_by'] or '—'} {fmt(r['decided_at'], tz)}",
                    cc.comment_label(r["comment"] or "", lang),
                    f"{r['acknowledged']}/{r['notices']}",
                ]
                for r in data["requests"]
            ],
            "occ-history",
        )
    )
    return out, None if pending is None else int(pending["id"])


def _impact(
    data: dict[str, Any], pending: dict[str, Any], tz: tzinfo, lang: str, now: datetime
) -> list[Any]:
    snap = pending["snapshot"]
    wos = data["wos"]
    good = sum(int(w[2]) for w in wos)
    rate = sum(float(w[4]) for w in wos)
    progress = data["progress"]
    eta_now = progress[1] if progress else None
    due_new = datetime.fromisoformat(snap["due"]) if snap.get("due") else None
    qty_old = pending["change"].get("qty", {}).get("old", snap["qty"])
    p = cc.project(good=good, qty_now=int(qty_old), qty_new=int(snap["qty"]), rate_per_h=rate,
                   eta_now=eta_now, due_new=due_new, now=now)  # fmt: skip
    if p.eta_new is None:
        verdict = s("no_rate", lang)
    else:
        verdict = s("late" if (p.late_s or 0) > 0 else "on_time", lang)
    table = html.Table(
        [
            html.Tr([html.Th(s(k, lang)) for k in ("wo", "machine", "made")]),
            *(
                html.Tr([html.Td(w[0]), html.Td(w[1] or "—"), html.Td(f"{w[2]}/{w[3]}")])
                for w in wos
            ),
        ]
    )
    facts = [
        ("made", f"{good}/{qty_old} → {snap['qty']}"),
        ("eta_now", fmt(eta_now, tz)),
        ("due_new", fmt(due_new, tz)),
        ("eta_new", f"{fmt(p.eta_new, tz)} ({verdict})"),
    ]
    return [
        html.H3(s("impact", lang)),
        table,
        html.Dl(
            [html.Div([html.Dt(s(k, lang)), html.Dd(v)]) for k, v in facts], className="occ-impact"
        ),
    ]


# -- callbacks --------------------------------------------------------------------------


def _refresh(_n: Any, order_no: Any, lang: Any) -> tuple[Any, Any]:
    bctx = context.current()
    lang = bctx.lang(lang)
    if not isinstance(order_no, str) or not order_no:
        return [], None
    try:
        data = bctx.db.run(lambda conn: read(conn, order_no))
    except psycopg.Error as err:
        log.warning("order changes: cannot read %s: %s", order_no, err)
        return dash.no_update, dash.no_update
    return render(data, bctx.plant.tz, lang, datetime.now(UTC))


def parse_due(text: Any, tz: tzinfo) -> datetime | None:
    """Plant-local 'YYYY-MM-DD HH:MM' (or ISO with an offset); ChangeError if unreadable."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str) or len(text) > 40:
        raise cc.ChangeError("due_invalid")
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise cc.ChangeError("due_invalid") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def _act(
    _a: Any, _r: Any, _p: Any, pending: Any, comment: Any, qty: Any, due: Any, cancel: Any,
    order_no: Any, lang: Any,
) -> Any:  # fmt: skip
    bctx = context.current()
    lang = bctx.lang(lang)
    principal = auth.require(ROLE)
    alerts = cc.load_alerts(bctx.settings.alerts_config, bctx.plant)
    trigger = ctx.triggered_id
    try:
        if trigger in (_APPROVE, _REJECT):
            if not isinstance(pending, int):
                raise cc.ChangeError("not_pending")
            decision = "approved" if trigger == _APPROVE else "rejected"

            def run(conn: psycopg.Connection) -> str:
                with conn.transaction():
                    cc.decide(conn, bctx.plant, alerts, pending, decision,  # type: ignore[arg-type]
                              by=principal.name, comment=comment)  # fmt: skip
                return f"ok_{decision}"

        elif trigger == _PROPOSE:
            if not isinstance(order_no, str):
                raise cc.ChangeError("unknown_order")
            if qty is not None and (not isinstance(qty, int | float) or qty != int(qty)):
                raise cc.ChangeError("qty_invalid")
            proposal = cc.Proposal(
                qty=None if qty is None else int(qty),
                due=parse_due(due, bctx.plant.tz),
                cancel=isinstance(cancel, list) and "cancel" in cancel,
            )

            def run(conn: psycopg.Connection) -> str:
                with conn.transaction():
                    done = cc.propose(conn, bctx.plant, alerts, order_no, proposal,
                                      by=principal.name, comment=comment)  # fmt: skip
                return f"ok_{done.status}"

        else:
            return dash.no_update
        return s(bctx.db.run(run), lang)
    except cc.ChangeError as err:
        return s(err.code, lang)
    except psycopg.Error as err:
        log.warning("order changes: %s", err)
        return s("db_error", lang)


def register(app: dash.Dash) -> None:
    auth.callback(
        app,
        ROLE,
        Output(_INFO, "children"),
        Output(_PENDING, "data"),
        Input(_TICK, "n_intervals"),
        Input(_MSG, "children"),
        State(_KEY, "data"),
        State(_LANG, "data"),
    )(lambda n, _m, key, lang: _refresh(n, key, lang))
    auth.callback(
        app,
        ROLE,
        Output(_MSG, "children"),
        Input(_APPROVE, "n_clicks"),
        Input(_REJECT, "n_clicks"),
        Input(_PROPOSE, "n_clicks"),
        State(_PENDING, "data"),
        State(_COMMENT, "value"),
        State(_QTY, "value"),
        State(_DUE, "value"),
        State(_CANCEL, "value"),
        State(_KEY, "data"),
        State(_LANG, "data"),
        prevent_initial_call=True,
    )(_act)
