"""Small pieces several office pages build the same way (the header is in dashboards/nav.py).

Only what is the same logic on every page that uses it lives here: a page whose piece differs
(a CSS class per cell, a row badge) keeps its own.
"""

from __future__ import annotations

import re
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
    head: Sequence[str],
    rows: Iterable[Sequence[Any]],
    class_name: str = "",
    empty: str | None = None,
) -> Any:
    """A table of plain text cells under a header row, as one component: Markdown rendered to
    <table> (with <thead>/<tbody>) inside a div of class `text-table {class_name}`. One
    component, not one per cell: Dash's renderer takes time that grows faster than the cells
    (in headless chromium, 200 rows of 7 cells took 7.8-8.5 s as cell components, 0.6 s as
    this; 2,000 rows take 2 s; docs/performance.md "Boards at scale"). `empty`, when given,
    is a note shown instead of a table without rows."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(_md_escape(c) for c in cells) + " |"

    body = [line(r) for r in rows]
    if not body and empty is not None:
        return html.Div(empty, className="orders-empty")
    lines = [line(head), "|" + "---|" * len(head), *body]
    return dcc.Markdown("\n".join(lines), className=f"text-table {class_name}".strip())


def _md_escape(value: Any) -> str:
    """Cell text as literal Markdown: the marks that mean something inside a table cell
    backslash-escaped, whitespace (a newline would end the row) folded to single spaces."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;")  # else '&amp;' in a name would read '&'
    # A web address would become a link: its colon as a character reference still reads ':'.
    text = _LINK_COLON.sub("&#58;", text)
    return "".join(f"\\{ch}" if ch in _MD_PUNCT else ch for ch in text) or " "


# The marks with a meaning inside a table cell, where Markdown parses only inline text: the
# cell's edge, code, emphasis, strike-through, links and images. Block marks (# - + . >) mean
# nothing there, and dates and figures stay readable in the page's JSON. '<' cannot be
# escaped (chromium shows the backslash) and need not be: HTML is shown as text.
# tests/test_text_table.py checks hostile cells read back as they were written.
_MD_PUNCT = frozenset("\\`*_[]|!~")
_LINK_COLON = re.compile(r"(?<=[A-Za-z]):(?=//)|(?<=mailto):", re.IGNORECASE)


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
