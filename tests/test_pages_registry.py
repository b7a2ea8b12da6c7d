"""The page registry: each page once (a page registered twice registers its callbacks
twice, and Dash refuses duplicate outputs at the first request)."""

from __future__ import annotations

from dashboards.pages import PAGES


def test_every_page_is_registered_once() -> None:
    names = [p.__name__ for p in PAGES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
