"""Small pieces several office pages build the same way (the header is in dashboards/nav.py).

Only what is the same logic on every page that uses it lives here: a page whose piece differs
(a CSS class per cell, a row badge) keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from dash import dcc, html


def page_text(strings: Mapping[str, Mapping[str, str]], key: str, lang: str, **kw: Any) -> str:
    """A page's string `key` in `lang` (English if that language is missing, the key itself if
    the page has no such string), with `{fields}` filled from `kw` when given."""
    entry = strings.get(key)
    text = entry.get(lang, entry["en"]) if entry else key
    return text.format(**kw) if kw else text


def picked_days(
    start: Any, end: Any, today: date, default_days: int, max_days: int
) -> tuple[date, date]:
    """First and last day (both inclusive) from a date-range picker's values, which come from
    the browser and may be anything: a bad start is `default_days` back from `today`, a bad
    end is `today`, swapped ends are put in order, and the range is cut to `max_days`."""
    try:
        first = date.fromisoformat(str(start)[:10])
    except ValueError:
        first = today - timedelta(days=default_days - 1)
    try:
        last = date.fromisoformat(str(end)[:10])
    except ValueError:
        last = today
    if last < first:
        first, last = last, first
    return max(first, last - timedelta(days=max_days - 1)), last


def csv_download(text: str, filename: str) -> dict[str, Any]:
    """What a `dcc.Download` takes to save `text` as a CSV file (the bytes are the caller's)."""
    return {"content": text, "filename": filename, "type": "text/csv"}


def text_table(
    head: Sequence[str], rows: Iterable[Sequence[str]], class_name: str, empty: str
) -> Any:
    """A table of plain text cells under a header row; `empty` as a note when there are no
    rows (the order pages' classes, so every such table looks the same)."""
    body = [html.Tr([html.Td(cell) for cell in row]) for row in rows]
    if not body:
        return html.Div(empty, className="orders-empty")
    return html.Table(
        className=class_name,
        children=[html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
    )


def day_range(component_id: str, first: date, last: date) -> dcc.DatePickerRange:
    """The office pages' date range: inclusive days, ISO dates, weeks from Monday."""
    return dcc.DatePickerRange(
        id=component_id,
        start_date=first.isoformat(),
        end_date=last.isoformat(),
        display_format="YYYY-MM-DD",
        first_day_of_week=1,
    )


def filter_pick(label: str, component_id: str, options: Any, placeholder: str) -> html.Label:
    """A labelled drop-down filter (nothing picked: all)."""
    return html.Label(
        [
            label,
            dcc.Dropdown(
                id=component_id, options=options, placeholder=placeholder, className="kpis-pick"
            ),
        ]
    )
