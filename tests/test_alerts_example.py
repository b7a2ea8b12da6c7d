"""The demo's alerts file (config/alerts.example.yaml) loads against the demo plant, with
its order-change routes (one per line, to the line's supervisor)."""

from __future__ import annotations

from pathlib import Path

from mesflow.alert_rules import load_alerts_config
from mesflow.plant import load_plant_config
from tests.conftest import EXAMPLE_CONFIG

ALERTS = Path(__file__).resolve().parent.parent / "config" / "alerts.example.yaml"


def test_the_example_alerts_file_loads_with_its_order_change_routes() -> None:
    plant = load_plant_config(EXAMPLE_CONFIG)
    config = load_alerts_config(ALERTS, plant, environ={})
    routes = {r.line: (r.people, r.channels) for r in config.order_changes}
    assert routes == {"IM": (["li"], ["im-wecom"]), "CNC": (["chen"], ["cnc-wecom"])}
    assert set(routes) <= {line.id for line in plant.lines}
