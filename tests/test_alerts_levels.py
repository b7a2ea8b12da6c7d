"""The alerts page counts escalation levels from 1 (stored 0-based): the open table, the
history and the deliveries' chips show level+1, and the CSV's `escalation_level` column
holds the shown value, so its header never disagrees with the page."""

from __future__ import annotations

import csv
import io
from typing import Any

from dashboards import alert_queries as aq
from dashboards.pages import alerts
from mesflow.plant import PlantConfig
from tests.test_alerts_board import NOW, alert_row


def _level_cells(tree: Any) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list | tuple):
            for n in node:
                walk(n)
            return
        if type(node).__name__ == "Td" and getattr(node, "className", None) == "al-level":
            found.append(str(node.children))
        children = getattr(node, "children", None)
        if children is not None and not isinstance(children, str):
            walk(children)

    walk(tree)
    return found


def test_levels_are_shown_and_exported_from_one(plant: PlantConfig) -> None:
    first = aq.Alert(**{**alert_row("a:1"), "status": "open", "duration_s": 60.0})
    second = aq.Alert(**{**alert_row("a:2", level=1), "status": "open", "duration_s": 60.0})
    board = aq.OpenBoard([first, second], {}, [], frozenset())
    opts = alerts.RenderOptions(tz=plant.tz, lang="en", can_ack=False, now=NOW)
    assert _level_cells(alerts.render_open(board, plant, opts)) == ["1", "2"]
    rows = list(csv.DictReader(io.StringIO(alerts.history_csv([first, second], plant.tz))))
    assert "level" not in rows[0]
    assert [r["escalation_level"] for r in rows] == ["1", "2"]
