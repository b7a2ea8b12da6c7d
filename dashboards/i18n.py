"""UI strings in Chinese and English.

Only the boards' own words live here. Machine, line and reason names come from the plant model
(through the SQL views or `PlantConfig`), so a plant renames a machine in one place.
"""

from __future__ import annotations

import math
from typing import Final

LANGUAGES: Final = ("zh", "en")

# State labels use the words operators use on the floor, not literal translations.
STATE_LABELS: Final[dict[str, dict[str, str]]] = {
    "running": {"zh": "运行", "en": "Running"},
    "idle": {"zh": "待机", "en": "Idle"},
    "down": {"zh": "故障停机", "en": "Down"},
    "setup": {"zh": "换模调机", "en": "Setup"},
    "planned_stop": {"zh": "计划停机", "en": "Planned stop"},
    "offline": {"zh": "离线", "en": "Offline"},
}

# Legend order: the states that need someone first.
STATE_ORDER: Final = ("down", "setup", "idle", "running", "planned_stop", "offline")

_STRINGS: Final[dict[str, dict[str, str]]] = {
    "andon": {"zh": "安灯看板", "en": "Andon board"},
    "work_order": {"zh": "工单", "en": "WO"},
    "reason": {"zh": "原因", "en": "Reason"},
    "no_data": {"zh": "暂无设备数据", "en": "No machine data"},
    "db_unreachable": {
        "zh": "数据库连接中断，显示的是最后一次读取的状态",
        "en": "Database unreachable: showing the last status read",
    },
    "language": {"zh": "EN", "en": "中文"},
    "unknown_state": {"zh": "未知", "en": "Unknown"},
    # Sign-in (dashboards/auth.py).
    "login_title": {"zh": "登录", "en": "Sign in"},
    "username": {"zh": "用户名", "en": "User name"},
    "password": {"zh": "密码", "en": "Password"},
    "login_submit": {"zh": "登录", "en": "Sign in"},
    "login_failed": {"zh": "用户名或密码错误", "en": "Wrong user name or password"},
    "login_throttled": {
        "zh": "登录失败次数过多，请 {seconds} 秒后再试",
        "en": "Too many failed sign-ins: try again in {seconds} s",
    },
    "login_expired": {
        "zh": "登录表单已过期，请重新输入",
        "en": "The sign-in form expired: please enter your details again",
    },
    "login_db_down": {
        "zh": "暂时无法连接数据库，请稍后再试",
        "en": "The database cannot be reached: try again shortly",
    },
    "token_invalid": {
        "zh": "看板链接无效或已被撤销，请联系管理员获取新链接",
        "en": "This screen's link is not valid or was revoked: ask an administrator for a new one",
    },
    "forbidden": {
        "zh": "您的角色（{role}）无权打开此页面，需要：{required}",
        "en": "Your role ({role}) may not open this page; it needs: {required}",
    },
    "switch_user": {"zh": "切换用户", "en": "Sign in as someone else"},
    # The app's own 404 page (dashboards/app.py).
    "not_found_title": {"zh": "找不到此页面", "en": "Page not found"},
    "not_found_text": {
        "zh": "地址 {path} 不存在，可能已被移动或输入有误。",
        "en": "There is no page at {path}: it may have moved, or the address has a typo.",
    },
    "go_home": {"zh": "返回安灯看板", "en": "Back to the andon board"},
    "logout": {"zh": "退出", "en": "Sign out"},
    # Alerts (dashboards/pages/alerts.py, the andon's count, the /ack/<token> page).
    "alerts": {"zh": "告警", "en": "Alerts"},
    # Short: it sits in the andon's header next to the legend.
    "alerts_open_count": {"zh": "{n} 条告警", "en": "{n} alerts"},
    "alerts_open_one": {"zh": "1 条告警", "en": "1 alert"},
    "alert_kind_machine_down": {"zh": "设备停机", "en": "Machine down"},
    "alert_kind_no_reason": {"zh": "停机未填原因", "en": "Stop without a reason"},
    "alert_kind_kpi_below": {"zh": "指标低于目标", "en": "Below target"},
    "alert_kind_scrap_rate": {"zh": "报废率过高", "en": "Scrap rate too high"},
    "alert_kind_silent": {"zh": "设备无数据", "en": "Machine silent"},
    "alert_kind_order_at_risk": {"zh": "订单有延期风险", "en": "Order at risk"},
    "alert_kind_process_limit": {"zh": "工艺参数超限", "en": "Process value out of limits"},
    "alert_kind_first_article": {"zh": "首检未做或不合格", "en": "First article missing or failed"},
    "alert_kind_patrol_missed": {"zh": "巡检漏检", "en": "Patrol inspection missed"},
    "alert_severity_info": {"zh": "提示", "en": "Info"},
    "alert_severity_warning": {"zh": "警告", "en": "Warning"},
    "alert_severity_critical": {"zh": "严重", "en": "Critical"},
    "alert_status_open": {"zh": "未处理", "en": "Open"},
    "alert_status_acknowledged": {"zh": "已确认", "en": "Acknowledged"},
    "alert_status_resolved": {"zh": "已恢复", "en": "Resolved"},
}

ROLE_LABELS: Final[dict[str, dict[str, str]]] = {
    "viewer": {"zh": "查看者", "en": "viewer"},
    "operator": {"zh": "操作员", "en": "operator"},
    "manager": {"zh": "经理", "en": "manager"},
    "admin": {"zh": "管理员", "en": "admin"},
}


def normalize_lang(lang: str | None, default: str = "zh") -> str:
    """`?lang=` value (or the configured default) as one of LANGUAGES."""
    for candidate in (lang, default):
        # Not a string: a callback's state arrives from the browser, hostile or broken.
        if isinstance(candidate, str) and candidate:
            code = candidate.strip().lower()
            if code.startswith("zh"):
                return "zh"
            if code.startswith("en"):
                return "en"
    return "zh"


def t(key: str, lang: str) -> str:
    """The UI string `key` in `lang`; the key itself if it is missing (visible, not a crash)."""
    entry = _STRINGS.get(key)
    if entry is None:
        return key
    return entry.get(lang, entry["en"])


def role_label(role: str, lang: str) -> str:
    entry = ROLE_LABELS.get(role)
    return entry[lang] if entry else role


def state_label(state: str, lang: str) -> str:
    entry = STATE_LABELS.get(state)
    if entry is None:
        # A state added to the contract before the board knows it: show it raw, not blank.
        return state
    return entry[lang]


def format_duration(seconds: float | None, lang: str) -> str:
    """Time in a state: "0:04:07", "23:59:59", then "2 d 05 h" / "2天05小时".

    Under a day the clock form ticks visibly on a wall screen, which shows the board is live;
    beyond a day the seconds are noise. Negative values (clock skew between a machine and the
    database) show as zero rather than as a confusing minus sign.
    """
    if seconds is None or math.isnan(seconds):
        return "—"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}天{hours:02d}小时" if lang == "zh" else f"{days} d {hours:02d} h"
    return f"{hours}:{minutes:02d}:{secs:02d}"
