"""docker-compose.yml passes the alert settings through: the notify service gets the alerts
file, the SMTP server and the public URL (and the dashboard's session key, which signs the
acknowledgement links); the dataflow gets the alerts file. With nothing set, the defaults the
file writes are valid settings: no alerts file, no e-mail."""

from __future__ import annotations

import re
from typing import Any

import yaml

from mesflow.settings import Settings
from tests.test_compose import COMPOSE_FILE

SMTP = ["HOST", "PORT", "USER", "PASSWORD", "FROM", "STARTTLS"]


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))["services"]
    return services


def _unset(value: str) -> str:
    """What compose makes of `${VAR:-default}` when VAR is not set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_notify_and_dataflow_get_the_alert_settings() -> None:
    services = _services()
    notify = services["notify"]["environment"]
    wanted = {f"MESFLOW_SMTP_{k}" for k in SMTP} | {
        "MESFLOW_ALERTS_CONFIG",
        "MESFLOW_PUBLIC_URL",
        "MESFLOW_AUTH_SESSION_SECRET",
    }
    assert wanted <= set(notify)
    assert all(notify[k] == f"${{{k}:-" + notify[k].split(":-", 1)[1] for k in wanted)
    assert "dashboard:/app/var" in services["notify"]["volumes"]  # the kept session key
    assert services["dataflow"]["environment"]["MESFLOW_ALERTS_CONFIG"] == (
        "${MESFLOW_ALERTS_CONFIG:-}"
    )
    # Both still get the shared settings (the anchor is merged, not replaced).
    assert "MESFLOW_DATABASE_URL" in notify
    assert "MESFLOW_DATABASE_URL" in services["dataflow"]["environment"]


def test_the_defaults_are_valid_settings() -> None:
    notify = _services()["notify"]["environment"]
    env = {k: _unset(str(v)) for k, v in notify.items() if k != "MESFLOW_DATABASE_URL"}
    s = Settings.model_validate({k.removeprefix("MESFLOW_").lower(): v for k, v in env.items()})
    assert s.alerts_config is None and s.smtp_host is None and s.smtp_user is None
    assert (s.smtp_port, s.smtp_starttls, s.public_url) == (587, True, "http://127.0.0.1:8050")
