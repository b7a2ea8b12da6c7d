"""Links between pages, built from Dash's page registry.

A page opts in with `nav=True` and a `nav_label={"zh": ..., "en": ...}` in its
`dash.register_page(...)` call; order follows the registry's `order`. Pages add themselves
to the navigation by registering, so adding a page never means editing a menu.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import html

from dashboards.auth import current_principal
from dashboards.i18n import t


def nav_links(lang: str, current_path: str) -> list[Any]:
    """Links to the other pages (none while there is only one: a wall screen needs no menu)."""
    pages = [p for p in dash.page_registry.values() if p.get("nav")]
    if len(pages) < 2:
        return []
    links: list[Any] = []
    for page in pages:
        labels: dict[str, str] = page.get("nav_label") or {}
        label = labels.get(lang) or page["name"]
        css = "nav-link current" if page["path"] == current_path else "nav-link"
        links.append(html.A(label, href=f"{page['relative_path']}?lang={lang}", className=css))
    return links


def account_links(lang: str) -> list[Any]:
    """ "Sign out (name)" for a signed-in person; nothing for a wall-screen token or a proxy
    user (the proxy would sign them in again at once)."""
    principal = current_principal()
    if principal is None or principal.kind != "user":
        return []
    return [
        html.A(
            f"{t('logout', lang)} ({principal.name})",
            href=f"/logout?lang={lang}",
            className="nav-link logout",
        )
    ]
