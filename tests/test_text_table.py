"""The office pages' text tables (dashboards/widgets.py `text_table`: one Markdown component
per table) in a real browser: whatever a cell holds (names, notes and work orders typed by
people or sent by the CRM) reads back as it was written, nothing in it becomes a link, an
image, emphasis, code or a new row or column, and a long table is all there."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import waitress
from dash import Dash, Input, Output, dcc, html

from dashboards.widgets import text_table
from tests.conftest import require
from tests.test_dashboard import Chromium

HOSTILE = [
    "*bold* and _em_ and **strong**",
    "[click](http://example.invalid/) ![img](http://example.invalid/x.png)",
    "`code` ``double``",
    "http://example.invalid/a https://x.invalid ftp://y.invalid HTTP://Z.INVALID",
    "www.example.invalid mailto:a@b.invalid MAILTO:c@d.invalid e@f.invalid",
    "~~struck~~ ~one~",
    "a | b || c",
    "back\\slash \\* \\| \\\\",
    "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>",
    "<b>bold tag</b> &amp; &lt;tag&gt; & AT&T",
    "# heading",
    "- item",
    "1. first",
    "> quoted",
    "+ plus",
    "---",
    "| --- | --- |",
    "2026-11-21 08:00",
    "86.0%",
    "P&G (China) {x} [y] #3",
    "line one\nline two\ttabbed   spaced",
    "nul\x00byte",
    "模具 注塑机-03 「加急」",
    "",
]


def _expected(cell: str) -> str:
    """What the browser shows: whitespace folded, as the table folds it (a newline would end
    the row), and no NUL (Markdown turns it into U+FFFD, the browser's innerText keeps it)."""
    return " ".join(cell.split())


@pytest.fixture
def served() -> Iterator[str]:
    app = Dash(__name__)
    app.layout = html.Div([dcc.Location(id="loc"), html.Div(id="out")])

    @app.callback(Output("out", "children"), Input("loc", "search"))
    def show(search: str | None) -> object:
        query = dict(p.split("=") for p in (search or "?rows=hostile")[1:].split("&"))
        if query["rows"] == "hostile":
            return text_table(["value", "again"], [[c, c] for c in HOSTILE], "probe")
        if query["rows"] == "none":
            return text_table(["value"], [], "probe", "nothing here")
        n = int(query["rows"])
        return text_table(
            ["n", "when", "who"], [[i, f"2026-11-{i % 28 + 1:02d}", f"op {i}"] for i in range(n)]
        )

    server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
    finally:
        server.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    require(shutil.which("chromium") is not None, "chromium (apt-get install chromium)")
    b = Chromium(tmp_path)
    try:
        yield b
    finally:
        b.close()


def test_hostile_cells_read_back_as_written(served: str, browser: Chromium) -> None:
    browser.goto(f"{served}/?rows=hostile")
    browser.wait_for("document.querySelectorAll('.probe tbody tr').length > 0")
    shown = browser.eval(
        "[...document.querySelectorAll('.probe tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )
    heads = browser.eval(
        "[...document.querySelectorAll('.probe thead th')].map(t => t.textContent)"
    )
    assert heads == ["value", "again"]
    assert len(shown) == len(HOSTILE)  # no row split or swallowed
    for cell, row in zip(HOSTILE, shown, strict=True):
        want = _expected(cell)
        got = [c.replace("\ufffd", "\x00").strip() for c in row]
        assert got == [want, want], (cell, row)  # no column split, nothing lost
    # Nothing became markup, and no script ran.
    made = browser.eval(
        "[...document.querySelectorAll('.probe table *')].map(e => e.tagName.toLowerCase())"
        ".filter(t => !['thead', 'tbody', 'tr', 'th', 'td'].includes(t))"
    )
    assert made == []
    assert browser.eval("window.pwned === undefined") is True


def test_no_rows_is_the_note_and_a_long_table_is_whole(served: str, browser: Chromium) -> None:
    browser.goto(f"{served}/?rows=none")
    browser.wait_for("document.querySelector('#out .orders-empty')?.textContent === 'nothing here'")
    assert browser.eval("document.querySelector('#out table') === null") is True
    browser.goto(f"{served}/?rows=2000")
    # 2,000 rows took ~2 s here; as one component per cell, 200 rows took 8 s and 500 hung
    # the page for more than 30 s (docs/performance.md "Boards at scale").
    browser.wait_for("document.querySelectorAll('.text-table tbody tr').length === 2000", 120)
    last = browser.eval(
        "[...document.querySelector('.text-table tbody tr:last-child').cells]"
        ".map(td => td.textContent)"
    )
    assert last == ["1999", f"2026-11-{1999 % 28 + 1:02d}", "op 1999"]
