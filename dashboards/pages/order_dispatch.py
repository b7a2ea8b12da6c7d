"""The order page's link to the dispatch lists (docs/dispatch.md): each work order's machine
opens that machine's list on /dispatch, where the order's place in the run order, its
projected finish and what pushes it past its due date show."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from dash import html

TITLE = {"zh": "查看该设备的派工队列", "en": "This machine's dispatch list"}


def machine_link(machine: str | None, lang: str) -> Any:
    if not machine:
        return "—"
    query = urlencode({"machine": machine, "lang": lang})
    return html.A(
        machine,
        href=f"/dispatch?{query}",
        title=TITLE.get(lang, TITLE["en"]),
        className="dispatch-link",
    )
