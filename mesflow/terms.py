"""The domain's words in Chinese and English, one place for every board and message.

An order's status, an inspection's stage and result are codes in the events and results;
pages, tablet notices and CRM-facing texts show them by these names. A page keeps its own
layout words (titles, column heads) in its STRINGS.
"""

from __future__ import annotations

from typing import Final

Names = dict[str, str]  # {"zh": ..., "en": ...}

ORDER_STATUSES: Final[dict[str, Names]] = {
    "open": {"zh": "进行中", "en": "Open"},
    "on_hold": {"zh": "暂停", "en": "On hold"},
    "cancelled": {"zh": "已取消", "en": "Cancelled"},
    "closed": {"zh": "已关闭", "en": "Closed"},
}

INSPECTION_STAGES: Final[dict[str, Names]] = {
    "first": {"zh": "首检", "en": "First article"},
    "patrol": {"zh": "巡检", "en": "Patrol"},
    "last": {"zh": "末检", "en": "Last piece"},
}

INSPECTION_RESULTS: Final[dict[str, Names]] = {
    "pass": {"zh": "合格", "en": "Pass"},
    "fail": {"zh": "不合格", "en": "Fail"},
}


def suffixed(terms: dict[str, Names], suffix: str) -> dict[str, Names]:
    """`terms` under keys `<code><suffix>` ('first' -> 'first_stage'), for a page whose
    STRINGS hold other words under the bare codes."""
    return {f"{code}{suffix}": names for code, names in terms.items()}
