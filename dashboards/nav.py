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


def page_links(lang: str, current_path: str, *extra: Any) -> list[Any]:
    """A page header's links: the page's own buttons, the other pages, sign out, and the
    switch to the other language (same page, same query otherwise dropped)."""
    return [
        *extra,
        *nav_links(lang, current_path),
        *account_links(lang),
        html.A(
            t("language", lang),
            href=f"?lang={'en' if lang == 'zh' else 'zh'}",
            className="lang-switch",
        ),
    ]


def page_header(
    lang: str,
    title: str,
    current_path: str,
    plant_name: str,
    *,
    prefix: str = "an",
    title_class: str | None = None,
) -> html.Header:
    """The header block of the office pages: plant name over the page title, links at the
    right. `prefix` names the page's CSS classes (`<prefix>-header`, `-title`, `-links`)."""
    return html.Header(
        className=f"{prefix}-header",
        children=[
            html.Div(
                [
                    html.Span(plant_name, className="plant-name"),
                    html.H1(title, className=title_class),
                ],
                className=f"{prefix}-title",
            ),
            html.Nav(className=f"{prefix}-links", children=page_links(lang, current_path)),
        ],
    )
